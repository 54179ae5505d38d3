"""Fixtures shared by the engines tests: the device's virtual environment (no torch, onnx)."""

from __future__ import annotations

import re
import subprocess
import venv
from importlib import metadata
from pathlib import Path

import pytest
from support import DEVICE_DISTRIBUTIONS, NOT_ON_THE_DEVICE, REPO, _dependency_closure


@pytest.fixture(scope="module")
def device_python(tmp_path_factory) -> Path:
    """A virtual environment holding exactly samexport's base requirements, Polygraphy and
    TensorRT-RTX, and samexport from this checkout: no torch, onnx, onnxscript or Triton.

    The distributions are linked from this test environment (the same files pip installed, by
    their RECORD), so the environment is made in a second with no download."""
    base = [
        text.split(";")[0] for text in metadata.requires("samexport") or [] if "extra ==" not in text
    ]
    closure = _dependency_closure([re.split(r"[<>=!~ \[]", text, maxsplit=1)[0] for text in base] + list(DEVICE_DISTRIBUTIONS))
    assert not closure & set(NOT_ON_THE_DEVICE), closure
    root = tmp_path_factory.mktemp("device-venv")
    venv.EnvBuilder(with_pip=False).create(root)
    site = next((root / "lib").glob("python3*/site-packages"))
    for name in closure:
        dist = metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    (site / "samexport-checkout.pth").write_text(str(REPO) + "\n")
    python = root / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", f"import importlib.util as u; print([m for m in {NOT_ON_THE_DEVICE!r} if u.find_spec(m)])"],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == "[]", f"the device environment must not have {probe.stdout}"
    return python
