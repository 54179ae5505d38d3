"""Tests for samexport.download against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import builtins
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest

import samexport.download as dl
from samexport.download import CheckpointFile, download, resolve_checkpoint
from samexport.errors import SamExportError
from samexport.utils import CACHE_ENV, default_cache_dir, sha256_file
from samexport.variants import VARIANTS

if TYPE_CHECKING:  # typing.Self is Python 3.11+
    from typing_extensions import Self

# A bit over two read chunks, so the streaming loop runs several times.
PAYLOAD = random.Random(0).randbytes(2 * (1 << 20) + 12345)
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
VIT_B = replace(VARIANTS["vit_b"], checkpoint=replace(VARIANTS["vit_b"].checkpoint, sha256=PAYLOAD_SHA256))
FILENAME = "sam_vit_b_01ec64.pth"


class _Handler(BaseHTTPRequestHandler):
    """``/files/*``: PAYLOAD; ``/truncated/*``: half of it, then hang up; ``/stalled/*``: half of
    it, then nothing for 20 s; anything else: 404."""

    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path.startswith(("/files/", "/truncated/", "/stalled/")):
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            if self.path.startswith("/files/"):
                self.wfile.write(PAYLOAD)
            elif self.path.startswith("/stalled/"):  # half, then nothing for a while (to be killed)
                self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
                self.wfile.flush()
                time.sleep(20)
            else:
                self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
                self.close_connection = True
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Base URL (no trailing slash) of a server running in a background thread."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dead_url() -> str:
    """Base URL of a port on which nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv(dl.CHECKPOINT_URL_ENV, raising=False)


def test_download_into_cache_then_found_without_network(
    server: str, dead_url: str, tmp_path: Path
):
    before = len(_Handler.requests)
    url = f"{server}/files/"
    found = resolve_checkpoint(VIT_B, cache_dir=tmp_path, base_url=url, progress=False)
    path = found.path
    assert found == CheckpointFile(tmp_path / FILENAME, PAYLOAD_SHA256)  # hashed as it arrived
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]
    assert _Handler.requests[before:] == [f"/files/{FILENAME}"]

    again = resolve_checkpoint(VIT_B, cache_dir=tmp_path, base_url=dead_url, download_missing=False)
    assert again == CheckpointFile(path, PAYLOAD_SHA256)
    assert len(_Handler.requests) == before + 1


def test_checksum_mismatch_discards_file_and_keeps_old_dest(server: str, tmp_path: Path):
    dest = tmp_path / "model.pth"
    dest.write_bytes(b"previous")
    wrong = "ab" * 32
    with pytest.raises(SamExportError, match="checksum mismatch") as info:
        download(f"{server}/files/x", dest, sha256=wrong.upper(), progress=False)
    assert f"expected sha256 {wrong}" in str(info.value)
    assert f"got {PAYLOAD_SHA256}" in str(info.value)
    assert dest.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_dropped_connection_leaves_nothing(server: str, tmp_path: Path):
    dest = tmp_path / "sub" / "model.pth"
    with pytest.raises(SamExportError, match=r"cut short: received \d+ of \d+ bytes") as info:
        download(f"{server}/truncated/x", dest, progress=False)
    assert f"received {len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes" in str(info.value)
    assert list(dest.parent.iterdir()) == []


def test_http_404_says_how_to_pass_checkpoint(server: str, tmp_path: Path):
    with pytest.raises(SamExportError, match="404") as info:
        resolve_checkpoint(VIT_B, cache_dir=tmp_path, base_url=f"{server}/missing/", progress=False)
    message = str(info.value)
    assert f"{server}/missing/{FILENAME}" in message
    assert "--checkpoint PATH" in message
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_says_how_to_pass_checkpoint(dead_url: str, tmp_path: Path):
    with pytest.raises(SamExportError, match="--checkpoint PATH") as info:
        resolve_checkpoint(VIT_B, cache_dir=tmp_path, base_url=dead_url, progress=False)
    assert dead_url + FILENAME in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_removes_partial_file(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    class _InterruptingBar:
        def __init__(self, **kwargs: object) -> None:
            pass

        def __enter__(self) -> Self:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def update(self, n: int) -> None:
            raise KeyboardInterrupt

    monkeypatch.setattr(dl, "tqdm", _InterruptingBar)
    with pytest.raises(KeyboardInterrupt):
        download(f"{server}/files/x", tmp_path / "model.pth", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_download_disabled_makes_no_request(server: str, tmp_path: Path):
    before = len(_Handler.requests)
    with pytest.raises(SamExportError, match="downloading is disabled.*--checkpoint PATH"):
        resolve_checkpoint(
            VIT_B, cache_dir=tmp_path, base_url=f"{server}/files/", download_missing=False
        )
    assert len(_Handler.requests) == before


def test_corrupt_cached_file_is_reported(tmp_path: Path):
    cached = tmp_path / FILENAME
    cached.write_bytes(b"truncated")
    with pytest.raises(SamExportError, match="corrupt") as info:
        resolve_checkpoint(VIT_B, cache_dir=tmp_path, download_missing=False)
    message = str(info.value)
    assert str(cached) in message and PAYLOAD_SHA256 in message and "delete the file" in message


def test_explicit_checkpoint(tmp_path: Path):
    given = tmp_path / "my_weights.pth"
    given.write_bytes(b"weights")
    assert resolve_checkpoint(VIT_B, given) == CheckpointFile(given)  # not hashed: any weights may be given
    assert resolve_checkpoint(VARIANTS["tiny"], str(given)) == CheckpointFile(given)
    missing = tmp_path / "nope.pth"
    with pytest.raises(SamExportError, match="nope.pth does not exist"):
        resolve_checkpoint(VIT_B, missing)
    with pytest.raises(SamExportError, match="not a file"):
        resolve_checkpoint(VIT_B, tmp_path)


def test_tiny_without_checkpoint_requires_one(tmp_path: Path):
    with pytest.raises(SamExportError, match="'tiny' has no official checkpoint") as info:
        resolve_checkpoint(VARIANTS["tiny"], cache_dir=tmp_path)
    assert "--checkpoint PATH is required" in str(info.value)


def test_cache_dir_and_url_from_environment(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(dl.CHECKPOINT_URL_ENV, f"{server}/files/")
    assert default_cache_dir() == tmp_path / "cache"
    path = resolve_checkpoint(VIT_B, progress=False).path
    assert path == tmp_path / "cache" / FILENAME
    assert sha256_file(path) == PAYLOAD_SHA256


def test_default_cache_dir_fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "samexport"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "samexport"


def test_a_killed_download_leaves_a_part_the_next_download_removes(server: str, tmp_path: Path):
    """Issue 25, item 18: SIGKILL leaves ``NAME.part-HOST-PID-*``; the next download of the same
    file removes the parts of dead processes here, and old parts of other machines, only."""
    import os
    import signal
    import subprocess
    import sys

    dest = tmp_path / FILENAME
    script = f"import samexport.download as d; d.download({server + '/stalled/' + FILENAME!r}, {str(dest)!r}, progress=False)"
    child = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 120
    while not [p for p in tmp_path.glob(f"{FILENAME}.part-*") if p.stat().st_size] and time.monotonic() < deadline:
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    (killed,) = tmp_path.glob(f"{FILENAME}.part-*")
    assert f"-{child.pid}-" in killed.name
    live = tmp_path / f"{FILENAME}.part-{dl._host_tag()}-{os.getppid()}-abcd1234"  # a download still running
    elsewhere_new = tmp_path / f"{FILENAME}.part-0badc0de-{child.pid}-abcd1234"  # another machine, recent
    elsewhere_old = tmp_path / f"{FILENAME}.part-0badc0de-77-efgh5678"  # another machine, a day old
    legacy_old = tmp_path / f"{FILENAME}.part-k2j4_9zq"  # an older samexport's name, a day old
    users = [tmp_path / f"{FILENAME}.part-mine", tmp_path / f"{FILENAME}.part-{dl._host_tag()}-{child.pid}-notes.txt",
             tmp_path / f"other.pth.part-{dl._host_tag()}-{child.pid}-abcd1234"]
    for path in (live, elsewhere_new, elsewhere_old, legacy_old, *users):
        path.write_bytes(b"x")
    day_ago = time.time() - dl.STALE_PART_SECONDS - 60
    for path in (elsewhere_old, legacy_old):
        os.utime(path, (day_ago, day_ago))
    download(f"{server}/files/{FILENAME}", dest, sha256=PAYLOAD_SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not killed.exists() and not elsewhere_old.exists() and not legacy_old.exists()
    assert live.exists() and elsewhere_new.exists() and all(path.exists() for path in users)


class _Stop(Exception):
    """Raised by the build's loading step: the test needs only what comes before it."""


@pytest.mark.parametrize("given", [False, True], ids=["cached official file", "file the user gave"])
def test_a_build_reads_its_checkpoint_once_to_hash_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: bool):
    """A cached official checkpoint is hashed by resolve_checkpoint (to verify it) and the build
    records that digest instead of reading the file again (2.4 GB for vit_h); a file the user
    gives is hashed once, by the build. Counted as bytes read by every hashing call."""
    from samexport import pipeline

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / FILENAME).write_bytes(PAYLOAD)
    monkeypatch.setenv(CACHE_ENV, str(cache))
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).name == FILENAME:
            opened.append(mode)
        return real_open(file, mode, *args, **kwargs)

    def stop(checkpoint, variant):
        raise _Stop

    # Loading would read it again (torch.load): the build stops there.
    monkeypatch.setitem(pipeline.BUILD_STEPS, "sam", replace(pipeline.SAM_STEPS, load=stop))
    monkeypatch.setattr(builtins, "open", counting_open)
    checkpoint = cache / FILENAME if given else None
    with pytest.raises(_Stop):
        pipeline.build(VIT_B, checkpoint=checkpoint, output=tmp_path / "out", engines="skip", parity=False, download=False)
    monkeypatch.setattr(builtins, "open", real_open)
    assert opened == ["rb"]  # read once, by whichever step hashed it
    assert not (tmp_path / "out").exists()
