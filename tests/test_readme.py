"""README and docs/ stay true: the README's install and test commands are what CI runs, every
`samexport ...` command line they show names a real command and real options, every command is
shown somewhere, and every relative link points at a file that exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from samexport.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
INSTALL = 'pip install -e ".[test]"'
TEST = "python -m pytest"


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert INSTALL in README and TEST in README
    assert f"python -m {INSTALL}" in ci
    assert re.search(rf"^{re.escape(TEST)}$", ci, flags=re.MULTILINE)


def test_readme_is_a_front_door():
    """The two commands and the headline come first, and the page stays short."""
    assert len(README.splitlines()) < 200
    headline = "samexport build --variant vit_b --fp16"
    assert README.index(INSTALL) < README.index(TEST) < README.index(headline)


def _command_lines(page: Path) -> list[list[str]]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.DOTALL):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("samexport "):
                lines.append(shlex.split(line)[1:])
    return lines


_SHOWN = [(page.relative_to(ROOT).as_posix(), argv) for page in PAGES for argv in _command_lines(page)]


@pytest.mark.parametrize(("page", "argv"), _SHOWN, ids=lambda v: v if isinstance(v, str) else " ".join(v[:3]))
def test_documented_commands_use_real_options(page, argv):
    help_text = CliRunner().invoke(app, [argv[0], "--help"], terminal_width=200)
    assert help_text.exit_code == 0, f"{page}: no command {argv[0]!r}"
    for option in (a.split("=")[0] for a in argv if a.startswith("--")):
        assert option in help_text.output, f"{page}: {option} is not an option of `samexport {argv[0]}`"


def test_docs_show_every_command():
    shown = {argv[0] for _, argv in _SHOWN}
    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert registered <= shown, f"commands shown in no README or docs/ page: {registered - shown}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name} links to {target}, which does not exist"
