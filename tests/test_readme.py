"""Every python block of the README runs as written, in order, in one namespace; its links to
its own headings resolve."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no python code blocks"
    namespace = {"__name__": "readme"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)


def test_readme_opens_with_the_two_set_up_commands():
    head = README.read_text().splitlines()[:10]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_within_the_readme_finds_its_heading():
    text = README.read_text()
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)
    anchors = {slug(h) for h in headings}
    assert slug("Did JEST, and Flexi-JEST, beat uniform? (`a.py`)") == (
        "did-jest-and-flexi-jest-beat-uniform-apy"
    )
    missing = sorted(set(re.findall(r"\]\(#([^)]+)\)", text)) - anchors)
    assert not missing, f"README links to headings it does not have: {missing}"
