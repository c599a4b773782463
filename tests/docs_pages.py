"""The README and the manual's pages as the tests read them: pages, sections, fenced blocks and
the `jestkit` commands in them. Every code block of every page is run by some test; these helpers
find them."""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def pages() -> list[Path]:
    """The README and every page of the manual."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def page(name: str) -> str:
    """A page's text: "README.md" or a file name under docs/."""
    return (ROOT / name if name == "README.md" else DOCS / name).read_text()


def section(text: str, heading: str) -> str:
    """The text under `heading` (a whole heading line), up to the next heading of its level or
    above."""
    level = len(heading) - len(heading.lstrip("#"))
    after = text.split(heading + "\n", 1)[1]
    fence = False
    for match in re.finditer(r"^.*$", after, re.M):
        line = match.group(0)
        fence = fence != line.lstrip().startswith("```")
        if not fence and re.match(rf"#{{1,{level}}} ", line):
            return after[: match.start()]
    return after


def blocks(text: str, language: str, runs_as_written: bool = False) -> list[str]:
    """The fenced blocks of `language`; with runs_as_written, only those that begin by saying so."""
    found = [textwrap.dedent(b) for b in
             re.findall(rf"^ *```{language}\n(.*?)^ *```", text, re.S | re.M)]
    return [b for b in found if b.startswith("# runs as written")] if runs_as_written else found


def commands(sh_blocks: list[str]) -> list[list[str]]:
    """The commands of sh blocks, continuation lines joined, comments dropped."""
    return [shlex.split(line, comments=True) for block in sh_blocks
            for line in block.replace("\\\n", " ").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip
