"""README stays true: its install and test commands are what CI runs, and every `samexport ...`
command line it shows names a real command and real options."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from samexport.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
INSTALL = 'pip install -e ".[test]"'
TEST = "python -m pytest"


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert INSTALL in README and TEST in README
    assert f"python -m {INSTALL}" in ci
    assert re.search(rf"^{re.escape(TEST)}$", ci, flags=re.MULTILINE)


def _readme_command_lines() -> list[list[str]]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("samexport "):
                lines.append(shlex.split(line)[1:])
    return lines


@pytest.mark.parametrize("argv", _readme_command_lines(), ids=lambda argv: " ".join(argv[:3]))
def test_readme_commands_use_real_options(argv):
    help_text = CliRunner().invoke(app, [argv[0], "--help"], terminal_width=200)
    assert help_text.exit_code == 0, f"no command {argv[0]!r}"
    for option in (a.split("=")[0] for a in argv if a.startswith("--")):
        assert option in help_text.output, f"{option} is not an option of `samexport {argv[0]}`"


def test_readme_shows_every_command():
    shown = {argv[0] for argv in _readme_command_lines()}
    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert registered <= shown, registered - shown
