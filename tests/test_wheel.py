"""The package as an index would serve it: `python -m build` makes a wheel and an sdist that
`twine check --strict` passes; the wheel installs into a fresh venv (with the tested set as
constraints) and there `jestkit --version` and the README's first quickstart run, away from
this checkout so nothing is imported from src/."""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from pathlib import Path

from docs_pages import ROOT, blocks, page, section

BIN = Path(sys.executable).parent


def run(*args, cwd=None, timeout=900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_installs_in_a_fresh_venv_and_runs(tmp_path):
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT)
    [wheel] = dist.glob("jestkit-*.whl")
    [sdist] = dist.glob("jestkit-*.tar.gz")
    run(BIN / "twine", "check", "--strict", wheel, sdist)

    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "-c", ROOT / "pins.txt", wheel)
    version = run(env / "bin" / "jestkit", "--version").stdout.strip()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert version == "jestkit " + re.search(r'^version = "(.+)"', pyproject, re.M).group(1)

    [quickstart] = blocks(section(page("README.md"), "## Quickstart 1: select in your own loop"),
                          "python")  # fmt: skip
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart + "\nimport jestkit\nprint(jestkit.__file__)\n")
    where = run(python, script, cwd=tmp_path).stdout.strip().splitlines()[-1]
    assert where.startswith(str(env)), f"jestkit imported from {where}, not the installed wheel"
