"""`jestkit plan` on your own shards, through the CLI: a tiny noisy pool (tests/shard_files.py),
an open_clip config, a `jestkit score` folder and held-out sets in clip_benchmark's layout; the
table, plan.json and plan.png; the printed commands run as typed; the refusals; pilots that an
interrupted plan reads back."""

from __future__ import annotations

import json
import shlex

import pytest
from docs_pages import blocks, commands, page, section
from helpers import check_pilots, check_time
from shard_files import TINY_SIG, write_eval_set, write_shards

import jestkit.plan.shards as plan_shards
from jestkit.cli import main as cli_main


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A folder with pool/ (noisy), curated/, eval/, tiny-sig.json, the reference trained on the
    curated shards (runs/ref) and its score folder of the pool (runs/score)."""
    root = tmp_path_factory.mktemp("own-plan")
    write_shards(root / "curated", shards=1, per_shard=96, seed=1)
    write_shards(root / "pool", shards=2, per_shard=100, seed=0, noisy=True)
    write_eval_set(root / "eval" / "shapes", "zeroshot", per_shard=24)
    write_eval_set(root / "eval" / "captions", "retrieval", per_shard=24, first=2 * 10**7)
    (root / "tiny-sig.json").write_text(json.dumps(TINY_SIG))
    common = ["--open_clip", str(root / "tiny-sig.json"), "--quiet"]
    assert cli_main(["train", "--shards.pattern", str(root / "curated" / "*.tar"), *common,
                     "--selection.policy", "uniform", "--training.batch_size", "32",
                     "--training.steps", "20", "--out", str(root / "runs" / "ref")]) == 0
    assert cli_main(["score", "--shards.pattern", str(root / "pool" / "*.tar"), *common,
                     "--reference", str(root / "runs" / "ref" / "checkpoint.pt"),
                     "--out", str(root / "runs" / "score")]) == 0  # fmt: skip
    return root


def plan_argv(root, out, *flags) -> list[str]:
    return ["plan", "--shards.pattern", "pool/*.tar", "--open_clip", "tiny-sig.json",
            "--reference", "runs/score", "--reference_checkpoint", "runs/ref/checkpoint.pt",
            "--eval.zeroshot", "shapes=eval/shapes", "--eval.retrieval", "captions=eval/captions",
            "--training.batch_size", "16", "--out", str(out), "--quiet", *flags]  # fmt: skip


def test_plan_on_shards_prints_commands_that_run(pool, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(pool)
    out = tmp_path / "plan"
    # easy_revisits 1e6: the filter's share is fresh at any revisits, so the filter is chosen
    argv = plan_argv(pool, out, "--budget_uniform_steps", "150", "--pilot_share", "0",
                     "--rules.easy_revisits", "1e6")  # fmt: skip
    assert cli_main(argv) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    assert (out / "plan.png").stat().st_size > 0 and (out / "config.yaml").is_file()
    assert set(plan["methods"]) == {"uniform", "filter", "easy", "jest", "filter+jest"}
    assert plan["recommended"] == "filter" and "recommended: filter" in text
    m = plan["measurements"]
    assert m["pool_size"] == 200 and m["kept"] == 60 and 0 <= m["matched_share"] <= 1
    assert m["concepts_pool"] is not None  # the zero-shot set's classes
    ref = json.loads((pool / "runs" / "ref" / "result.json").read_text())
    assert m["reference_train_flops"] == sum(ref["flops"].values())  # read off its run
    assert m["reference_flops"] > m["reference_pass_flops"] > 0
    uniform = plan["methods"]["uniform"]
    assert uniform["steps"] == 150 and plan["budget_flops"] == pytest.approx(uniform["flops"])
    for name, method in plan["methods"].items():  # every method spends the budget, no more
        assert method["flops"] <= plan["budget_flops"] < method["flops"] + method[
            "flops_per_step"], name
    # filter + JEST is charged the reference's pass over the kept shards (60 of 200 samples)
    split = plan["methods"]["filter+jest"]["flops_split"]["reference"]
    assert split == pytest.approx(m["reference_flops"] + 60 / 200 * m["reference_pass_flops"])
    assert 0 < plan["plan_share"] < 1 and "the plan itself cost" in text
    check_time(plan, text)
    print(f"plan FLOPs {plan['plan_flops']:.4g}, {plan['plan_share']:.2%} of the budget")
    for name, method in plan["methods"].items():
        for command in method["commands"]:
            assert command in text or name != plan["recommended"], command
    # the recommendation runs exactly as printed; the others too, at 2 steps (each command once:
    # filter + JEST starts with the filter's)
    ran = set()
    for name, method in plan["methods"].items():
        for command in method["commands"]:
            if command in ran:
                continue
            ran.add(command)
            argv = shlex.split(command)
            assert argv[0] == "jestkit", command
            short = [] if name == plan["recommended"] or argv[1] != "train" else [
                "--training.steps", "2"]  # fmt: skip
            assert cli_main([*argv[1:], *short, "--quiet"]) == 0, command
    result = json.loads((pool / "runs" / "filter" / "result.json").read_text())
    assert result["steps"] == plan["methods"]["filter"]["steps"]
    kept = json.loads((pool / "runs" / "kept" / "kept.json").read_text())
    assert kept["kept"] == 60 and kept["of"] == 200
    assert json.loads((pool / "runs" / "kept-score" / "reference.json").read_text())[
        "samples"] == 60  # fmt: skip


def test_plan_pilots_on_shards_resume_from_cache(pool, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(pool)
    out = tmp_path / "plan"
    # margin 0.99: the rules never decide, pilots do (of the filter on its kept shards too)
    argv = plan_argv(pool, out, "--budget_uniform_steps", "200", "--pilot_share", "0.02",
                     "--rules.margin", "0.99", "--rules.easy_revisits", "1e6")  # fmt: skip
    assert cli_main(argv) == 0, capsys.readouterr().err
    plan = json.loads((out / "plan.json").read_text())
    check_pilots(plan)
    runs = sorted((out / "pilots").iterdir())
    assert len(runs) == 2 * len(plan["pilots"])
    lost = runs[-1]  # interrupted before its last pilot finished
    (lost / "result.json").unlink()
    calls = []
    real = plan_shards.train_own

    def counted(*args, **kwargs):
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(plan_shards, "train_own", counted)
    assert cli_main(argv) == 0, capsys.readouterr().err
    assert [str(c) for c in calls] == [str(lost)]  # only the lost pilot ran again
    again = json.loads((out / "plan.json").read_text())
    assert again["recommended"] == plan["recommended"] and set(again["pilots"]) == set(
        plan["pilots"])  # fmt: skip


@pytest.mark.parametrize("change, message", [
    (("--eval.zeroshot", "", "--eval.retrieval", ""), "--eval.zeroshot is empty"),
    (("--eval.zeroshot", None, "--eval.retrieval", None), "the plan needs held-out sets"),
    (("--reference", "eval"), "holds no reference"),
    (("--reference_checkpoint", None), "give the checkpoint that made it too"),
    (("--reference_checkpoint", "runs/ref/result.json"), "cannot be loaded into the open_clip"),
    (("--budget_uniform_steps", "1"), "smaller than the plan's own measurements"),
    (("--pilot_share", "0.9", "--rules.margin", "0.99"), "the pilots"),
])  # fmt: skip
def test_plan_on_shards_refuses_bad_input(pool, tmp_path, monkeypatch, capsys, change, message):
    monkeypatch.chdir(pool)
    argv = plan_argv(pool, tmp_path / "p", "--budget_uniform_steps", "200")
    for flag, value in zip(change[::2], change[1::2], strict=True):
        i = argv.index(flag) if flag in argv else None
        if i is not None:
            del argv[i:i + 2]
        if value is not None:
            argv += [flag, value]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jestkit plan: error:") and message in err, err


def test_plan_on_fashion_refuses_shard_flags(tmp_path, capsys):
    argv = ["plan", "--open_clip", "tiny-sig.json", "--budget_uniform_steps", "5",
            "--out", str(tmp_path / "p")]  # fmt: skip
    assert cli_main(argv) == 2
    assert "for a plan on your own shards" in capsys.readouterr().err


def test_plan_scores_the_pool_with_a_reference_checkpoint(pool, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(pool)
    out = tmp_path / "plan"
    argv = plan_argv(pool, out, "--budget_uniform_steps", "150", "--pilot_share", "0")
    at = argv.index("--reference")
    argv[at + 1] = "runs/ref/checkpoint.pt"  # no score folder: the plan makes OUT/score
    del argv[argv.index("--reference_checkpoint"):argv.index("--reference_checkpoint") + 2]
    assert cli_main(argv) == 0, capsys.readouterr().err
    assert json.loads((out / "score" / "reference.json").read_text())["samples"] == 200
    plan = json.loads((out / "plan.json").read_text())
    assert f"--reference {out / 'score'}" in plan["methods"]["jest"]["commands"][0]


def test_score_refuses_a_subset_shards_folder_of_other_files(pool, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    argv = ["score", "--shards.pattern", str(pool / "pool" / "*.tar"), "--open_clip",
            str(pool / "tiny-sig.json"), "--reference",
            str(pool / "runs" / "ref" / "checkpoint.pt"), "--out", str(pool / "runs" / "score"),
            "--subset_shards", str(tmp_path / "mine")]  # fmt: skip
    assert cli_main(argv) == 2
    assert "holds notes.txt" in capsys.readouterr().err


def test_the_manuals_plan_on_shards_runs_as_typed(pool, monkeypatch, capsys):
    [block] = blocks(section(page("plan.md"), "## On your own shards"), "sh",
                     runs_as_written=True)  # fmt: skip
    [command] = commands([block])
    assert command[:2] == ["jestkit", "plan"]
    monkeypatch.chdir(pool)
    assert cli_main(command[1:]) == 0, capsys.readouterr().err
    plan = json.loads((pool / "runs" / "plan" / "plan.json").read_text())
    text = capsys.readouterr().out
    assert f"recommended: {plan['recommended']}" in text and plan["plan_share"] < 1


def test_score_commands_leave_out_the_loaders_workers(pool, tmp_path, monkeypatch):
    """`jestkit score` splits the shards itself and refuses --shards.workers: the plan's score
    commands drop them, its train commands keep them."""
    from jestkit.engine.config import TrainConfig, TrainingConfig
    from jestkit.models.factory import ModelConfig
    from jestkit.own.evaluate import EvalConfig
    from jestkit.plan.rules import method_config

    monkeypatch.chdir(pool)
    shards = plan_shards.ShardsConfig(pattern="pool/*.tar", workers=2)
    p = plan_shards.ShardsPool(shards, "tiny-sig.json", "runs/score", "runs/ref/checkpoint.pt",
                               EvalConfig(zeroshot="eval/shapes"), ModelConfig(), tmp_path)
    base = TrainConfig(training=TrainingConfig(batch_size=16))
    score, kept_score, train = p.commands("filter+jest", method_config(base, "filter+jest", 5))
    assert "--shards.workers" not in score + kept_score and "--shards.workers 2" in train
    assert cli_main([*shlex.split(score)[1:], "--quiet"]) == 0  # it runs as printed


def test_score_writes_kept_shards_into_a_folder_a_killed_export_left(pool, tmp_path, capsys):
    """A kill during the export leaves the tmp files atomic_file writes first (kept-NNNN.tar.tmp,
    kept.json.tmp): the next export takes that folder and replaces them; anything else in it is
    still refused (test above)."""
    folder = tmp_path / "kept"
    folder.mkdir()
    for name in ("kept-0000.tar.tmp", "kept.json.tmp"):
        (folder / name).write_bytes(b"cut short")
    argv = ["score", "--shards.pattern", str(pool / "pool" / "*.tar"), "--open_clip",
            str(pool / "tiny-sig.json"), "--reference",
            str(pool / "runs" / "ref" / "checkpoint.pt"), "--out", str(pool / "runs" / "score"),
            "--keep", "0.3", "--subset_shards", str(folder)]  # fmt: skip
    assert cli_main(argv) == 0, capsys.readouterr().err
    record = json.loads((folder / "kept.json").read_text())
    assert record["kept"] > 0 and not (folder / "kept.json.tmp").exists()
    assert sorted(p.name for p in folder.glob("kept-*.tar"))  # the kept shards are there
