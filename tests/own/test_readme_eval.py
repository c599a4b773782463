"""The manual's "Held-out evaluation on your own data" commands run as written, through the
installed console script, on files this test writes; the run's history and `jestkit eval`'s JSON
hold the same final figures."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
from docs_pages import blocks, commands, page
from shard_files import TINY_SIG, write_eval_set, write_shards
from test_cli import _example
from test_readme_own import JESTKIT


def section_commands() -> list[list[str]]:
    return commands(blocks(page("evaluation.md"), "sh", runs_as_written=True))


def test_readme_eval_commands_run(tmp_path):
    commands = section_commands()
    assert [c[:2] for c in commands] == [["jestkit", "train"], ["jestkit", "eval"]]
    assert commands[1] == _example("eval")  # `jestkit eval --help`'s example is this command
    write_shards(tmp_path / "pool", shards=2, per_shard=100, seed=0, noisy=True)
    write_eval_set(tmp_path / "eval" / "shapes", "zeroshot", per_shard=36)
    write_eval_set(tmp_path / "eval" / "captions", "retrieval", per_shard=24, first=2 * 10**7)
    (tmp_path / "tiny-sig.json").write_text(json.dumps(TINY_SIG))
    for command in commands:
        run = subprocess.run([str(JESTKIT), *command[1:]], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert run.returncode == 0, f"{shlex.join(command)}\n{run.stdout}\n{run.stderr}"
    out = tmp_path / "runs" / "uniform"
    result = json.loads((out / "result.json").read_text())
    assert [h["step"] for h in result["history"]] == [0, 4, 8]
    assert (out / "curves.png").is_file()
    evaluated = json.loads((out / "eval.json").read_text())["metrics"]
    assert set(evaluated) == set(result["final"])
    assert evaluated == pytest.approx(result["final"], abs=1e-6)
