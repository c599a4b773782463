"""The README's "Your own data and model" commands run as written: on shards and an open_clip
config this test writes, each `jestkit` command run as a subprocess of the installed console
script (`.venv/bin/jestkit`, beside this interpreter), as a user types it."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from shard_files import TINY_SIG, write_shards

from jestkit.dropin.cache import load_datacomp_subset
from jestkit.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
JESTKIT = Path(sys.executable).parent / "jestkit"  # the console script pip installed


def readme_commands() -> list[list[str]]:
    """The `jestkit` commands of the section's sh blocks that say they run as written."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own data and model", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", section, re.S)
              if b.startswith("# runs as written")]  # fmt: skip
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(shlex.split(line))
    return commands


def test_readme_own_data_commands_run(tmp_path):
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["jestkit", "train"], ["jestkit", "score"],
                                         ["jestkit", "train"], ["jestkit", "train"]]  # fmt: skip
    write_shards(tmp_path / "curated", shards=1, per_shard=96, seed=1)
    write_shards(tmp_path / "pool", shards=2, per_shard=100, seed=0)
    (tmp_path / "tiny-sig.json").write_text(json.dumps(TINY_SIG))
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
