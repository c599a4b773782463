"""The manual's "Your own data and model" page runs as written: on shards this test writes
and the open_clip config the README shows (tiny-sig.json), each `jestkit` command run as a
subprocess of the installed console script (`.venv/bin/jestkit`, beside this interpreter), as a
user types it; then the section's Python that reads the cache back, and `jestkit score`'s
--help example."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from docs_pages import blocks, commands, page, section
from shard_files import TINY_SIG, write_eval_set, write_shards

from jestkit.cli import EXAMPLES
from jestkit.dropin.cache import load_datacomp_subset
from jestkit.engine.checkpoint import load_checkpoint

JESTKIT = Path(sys.executable).parent / "jestkit"  # the console script pip installed


def _section() -> str:
    text = page("own-data.md")
    return section(text, "# Your own data and model")


def _blocks(language: str) -> list[str]:
    """The section's blocks in `language` that say they run as written."""
    return blocks(_section(), language, runs_as_written=True)


def readme_commands() -> list[list[str]]:
    """The `jestkit` commands of the section's sh blocks that say they run as written."""
    return commands(_blocks("sh"))


def test_readme_own_data_commands_run(tmp_path, monkeypatch):
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["jestkit", "train"], ["jestkit", "score"],
                                         ["jestkit", "train"], ["jestkit", "train"]]  # fmt: skip
    write_shards(tmp_path / "curated", shards=1, per_shard=96, seed=1)
    write_shards(tmp_path / "pool", shards=2, per_shard=100, seed=0)
    [config] = re.findall(r"```json\n(.*?)```", _section(), re.S)
    assert json.loads(config) == TINY_SIG  # the README's file is the tests' tiny config
    (tmp_path / "tiny-sig.json").write_text(config)
    for command in commands:
        run = subprocess.run([str(JESTKIT), *command[1:]], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert run.returncode == 0, f"{shlex.join(command)}\n{run.stdout}\n{run.stderr}"
    runs = tmp_path / "runs"
    subset = load_datacomp_subset(runs / "subset.npy")
    uids = subset.tolist()
    assert len(uids) == 60 and uids == sorted(uids)  # 30 % of 200 samples, sorted
    result = json.loads((runs / "jest" / "result.json").read_text())
    assert result["steps"] == 4 and len(result["losses"]) == 4 and result["skipped"] == {}
    assert result["flops"]["reference_score"] == 0 and result["flops"]["learner_score"] > 0
    state = load_checkpoint(runs / "jest" / "checkpoint.pt")
    assert all(len(ids) == 16 for ids in state["stats"]["selected_ids"])
    monkeypatch.chdir(tmp_path)
    [read_back] = _blocks("py")
    exec(compile(read_back, "docs/own-data.md", "exec"), {"__name__": "readme"})
    example = EXAMPLES["score"].split("\n(")[0].replace("\\\n", " ")
    run = subprocess.run([str(JESTKIT), *shlex.split(example)[1:], "--quiet"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, f"{example}\n{run.stdout}\n{run.stderr}"
    assert json.loads((runs / "score-pool" / "reference.json").read_text())["samples"] == 200


def test_readme_quickstart_runs(tmp_path):
    """The README's second quickstart (reference -> score -> JEST -> eval), as a user types it."""
    heading = "## Quickstart 2: your own shards and an open_clip model"
    [block] = blocks(section(page("README.md"), heading), "sh", runs_as_written=True)
    steps = commands([block])
    assert [c[:2] for c in steps] == [["jestkit", "train"], ["jestkit", "score"],
                                      ["jestkit", "train"], ["jestkit", "eval"]]  # fmt: skip
    write_shards(tmp_path / "curated", shards=1, per_shard=96, seed=1)
    write_shards(tmp_path / "pool", shards=2, per_shard=100, seed=0)
    write_eval_set(tmp_path / "eval" / "shapes", "zeroshot", per_shard=36)
    (tmp_path / "tiny-sig.json").write_text(json.dumps(TINY_SIG))
    for command in steps:
        run = subprocess.run([str(JESTKIT), *command[1:], "--quiet"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert run.returncode == 0, f"{shlex.join(command)}\n{run.stdout}\n{run.stderr}"
    metrics = json.loads((tmp_path / "runs" / "jest" / "eval.json").read_text())["metrics"]
    assert 0 <= metrics["shapes/acc1"] <= 1
