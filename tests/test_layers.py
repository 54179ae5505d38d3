"""The layering rule (pyproject.toml, ``[tool.importlinter]``): samexport's modules import only
from layers below their own, function-level imports included. Checked with import-linter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="needs import-linter (the test extra)")

ROOT = Path(__file__).resolve().parents[1]
_LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command(['--no-cache']))"


def _lint(folder: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package and pyproject.toml in ``folder`` (that copy first on the path)."""
    return subprocess.run(
        [sys.executable, "-c", _LINT], cwd=folder, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin"},
    )


def test_layers_contract_is_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "samexport layers point down KEPT" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("errors.py", "samexport.cli"),  # the ground reaching the top
        ("models/families.py", "samexport.variants"),  # the families <-> registry circle
        ("engines/artifact.py", "samexport.plugins.tensorrt_plugin"),  # engines importing plugins
        ("runtime/predictor.py", "samexport.compat"),  # the predictor <-> compat circle
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, upward: str):
    """A copy of the package where a lower module imports a higher one, inside a function (where
    an import hides a circle rather than removing it), fails the check and names the import."""
    shutil.copytree(ROOT / "samexport", tmp_path / "samexport", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "samexport" / module
    path.write_text(path.read_text() + f"\n\ndef _upward():\n    import {upward}  # noqa: F401\n")
    importer = "samexport." + module.removesuffix(".py").replace("/", ".")

    result = _lint(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "samexport layers point down BROKEN" in result.stdout
    assert f"- {importer} -> {upward} (l." in result.stdout  # the chain, with its line
