"""The house style (pyproject.toml, ``[tool.ruff]``): ``ruff check`` finds nothing in the package,
the tests, the tools and the benchmarks. Run with the suite, like the layering rule
(tests/test_layers.py), so the code stays clean rather than being cleaned now and then."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ruff = pytest.importorskip("ruff", reason="needs ruff (the test extra)")

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("samexport", "tests", "tools", "benchmarks")


def _pinned_version() -> str:
    """The ruff version the test extra pins: each release changes its default rules."""
    found = re.search(r'"ruff==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert found, "pyproject.toml's test extra pins no ruff version"
    return found.group(1)


def _ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def pinned_ruff() -> None:
    version = subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True, text=True).stdout.split()[-1]
    if version != _pinned_version():
        pytest.skip(f"ruff {version} is installed; the house rules are those of ruff {_pinned_version()} (the test extra)")


def test_ruff_finds_nothing(pinned_ruff):
    result = _ruff(*CHECKED)
    assert result.returncode == 0, f"`ruff check {' '.join(CHECKED)}` (fix, or `ruff check --fix`):\n{result.stdout}{result.stderr}"
    assert "All checks passed!" in result.stdout


def test_a_finding_fails_the_check(tmp_path: Path, pinned_ruff):
    """The rules bite with the project's configuration: an ``Optional`` annotation and unsorted
    imports in a copy of the package are each reported; a clean file beside them is not."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    package = tmp_path / "samexport"
    package.mkdir()
    (package / "bad.py").write_text(
        "from __future__ import annotations\n\nimport sys\nimport os\nfrom typing import Optional\n\n\n"
        "def f(x: Optional[int]) -> None:\n    print(sys.argv, os.sep, x)\n"
    )
    (package / "good.py").write_text("from __future__ import annotations\n\nLONG = " + repr("x" * 100) + "\n")
    result = _ruff("samexport", cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "samexport/bad.py:1:1: I001" in result.stdout
    assert "samexport/bad.py:8:10: UP045" in result.stdout
    assert "good.py" not in result.stdout
