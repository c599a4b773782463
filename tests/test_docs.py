"""The README and every page of the manual: their Python runs as written, page by page; every
`jestkit` command in them parses into a valid configuration (those that say they run as written
are run by the tests named in their first line); sketches compile and their imports exist; links
resolve; the site builds strictly."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from docs_pages import DOCS, ROOT, blocks, commands, page, pages

from jestkit.cli import _command, build_parser

PYTHON_PAGES = [p.name for p in pages() if blocks(p.read_text(), "python")]


@pytest.mark.parametrize("name", PYTHON_PAGES)
def test_python_blocks_run(name, tmp_path, monkeypatch):
    """A page's ```python blocks run in order, in one namespace, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs"}
    for block in blocks(page(name), "python"):
        exec(compile(block, name, "exec"), namespace)


def test_the_pages_with_python_are_found():
    assert {"README.md", "dropin.md", "demo.md"} <= set(PYTHON_PAGES)


@pytest.mark.parametrize("path", pages(), ids=lambda p: p.name)
def test_py_sketches_compile_and_their_imports_exist(path):
    """```py blocks either run as written (their first line names the test that runs them) or
    are sketches of a loop around objects the reader has (a torchrun job): those compile, and
    every name they import exists."""
    for block in blocks(path.read_text(), "py"):
        tree = ast.parse(block, path.name)
        if block.startswith("# runs as written"):
            continue
        imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        assert imports, f"{path.name}: a sketch that imports nothing from jestkit"
        exec(compile(ast.Module(imports, []), path.name, "exec"), {})


def _jestkit_argv(command: list[str]) -> list[str] | None:
    """The arguments after `jestkit` (or `python -m jestkit.cli`, torchrun's form), else None."""
    if command and Path(command[0]).name == "jestkit":
        return command[1:]
    if "jestkit.cli" in command:
        return command[command.index("jestkit.cli") + 1:]
    return None


def _sh_commands() -> list[tuple[str, list[str]]]:
    return [(p.name, c) for p in pages() for lang in ("sh", "bash")
            for c in commands(blocks(p.read_text(), lang))]  # fmt: skip


def test_every_jestkit_command_of_the_manual_parses():
    """Each `jestkit` line of every page builds its command's configuration (values checked)
    as the CLI would before running it; --config replays and --help are left to the tests that
    write their files."""
    checked = 0
    for name, command in _sh_commands():
        argv = _jestkit_argv(command)
        if argv is None or "--config" in argv or "--help" in argv or argv == ["--version"]:
            continue
        parser = build_parser()
        try:
            _command(parser, parser.parse_args(argv))
        except (SystemExit, ValueError) as e:
            raise AssertionError(f"{name}: {shlex.join(command)}: {e}") from e
        checked += 1
    assert checked >= 15


def test_other_commands_of_the_manual_name_what_exists():
    """`python benchmarks/X.py`, `make X` and `pip install` lines name files, targets and
    extras that exist."""
    makefile = (ROOT / "Makefile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for name, command in _sh_commands():
        if command[0] in ("python", "python3", "nice") and any(
                a.startswith("benchmarks/") for a in command):
            script = next(a for a in command if a.startswith("benchmarks/"))
            assert (ROOT / script).is_file(), f"{name}: {script}"
        elif command[0] == "make":
            for target in command[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{name}: {target}"
        elif command[:2] == ["pip", "install"]:
            for extra in re.findall(r"jestkit\[([\w,]+)\]", " ".join(command)):
                for e in extra.split(","):
                    assert re.search(rf"^{e} = \[", pyproject, re.M), f"{name}: extra {e}"


def test_readme_opens_with_the_two_set_up_commands():
    head = page("README.md").splitlines()[:10]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)


def test_readme_is_short_and_its_links_resolve():
    text = page("README.md")
    assert len(text.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_the_site_builds_strictly(tmp_path):
    """`make docs`'s build: a broken link, anchor or API reference fails it (strict)."""
    run = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict",
                          "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**__import__("os").environ,
                                                      "NO_MKDOCS_2_WARNING": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("jestkit.select", "jestkit.dropin.SelectiveLoader", "jestkit.openclip.JESTTask"):
        assert f'id="{name}"' in api, f"the API page has no entry for {name}"
    assert all((tmp_path / "site" / p.stem / "index.html").is_file()
               for p in DOCS.glob("*.md") if p.stem != "index")
