"""Held-out evaluation on your own shards (jestkit.own.evaluate, evalsets): the same figures as
clip_benchmark's evaluation of the same tiny open_clip model on the same set files; evaluation
during `jestkit train` recorded in result.json's history and drawn; `jestkit eval` through the
CLI; and bad sets refused before any training."""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import replace

import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification as cb_zs
from clip_benchmark.metrics import zeroshot_retrieval as cb_ret
from helpers import MODEL, TINY
from PIL import Image
from shard_files import CLASSES, TINY_SIG, write_eval_set, write_shards
from sklearn.metrics import balanced_accuracy_score
from test_metrics import _clip_benchmark_accuracy

from jestkit.cli import main as cli_main
from jestkit.data.stream import ShardsConfig
from jestkit.own.evalsets import EvalSetError, load_eval_set
from jestkit.own.evaluate import EvalConfig, Evaluator, load_sets
from jestkit.own.run import OwnModel, OwnRun
from jestkit.own.train import train_own


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_eval")
    config = root / "tiny-sig.json"
    config.write_text(json.dumps(TINY_SIG))
    return {
        "root": root,
        "config": str(config),
        "pool": write_shards(root / "pool", shards=2, per_shard=100),
        "zeroshot": write_eval_set(root / "shapes", "zeroshot", shards=2, per_shard=30),
        "retrieval": write_eval_set(root / "captions", "retrieval", per_shard=40, first=2 * 10**7),
    }


def test_same_figures_as_clip_benchmark(files):
    """One tiny open_clip model (random weights, seeded), one zero-shot and one retrieval set:
    jestkit's Evaluator and clip_benchmark's evaluation of the same files find the same
    numbers."""
    from jestkit.openclip.dual import open_clip_inputs, open_clip_model

    torch.manual_seed(3)
    model = open_clip_model(files["config"]).eval()
    transform, tokenize = open_clip_inputs(files["config"], model)
    sets = load_sets(EvalConfig(zeroshot=files["zeroshot"], retrieval=files["retrieval"]))
    ours = Evaluator(sets, transform, tokenize, batch_size=16)(model)
    zs, ret = sets

    def images(s):
        return [transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in s.images]

    # zero-shot: clip_benchmark's classifier and classification loop, its top-k and sklearn's
    # balanced accuracy (what clip_benchmark's evaluate() returns)
    loader = torch.utils.data.DataLoader(list(zip(images(zs), zs.labels, strict=True)),
                                         batch_size=16)  # fmt: skip
    weights = cb_zs.zero_shot_classifier(model.model, tokenize, zs.classnames, zs.templates, "cpu",
                                         amp=False)  # fmt: skip
    logits, target = cb_zs.run_classification(model.model, weights, loader, "cpu", amp=False)
    acc1, acc5 = _clip_benchmark_accuracy(logits, target, (1, 5))
    assert ours["shapes/acc1"] == pytest.approx(acc1, abs=1e-6)
    assert ours["shapes/acc5"] == pytest.approx(acc5, abs=1e-6)
    balanced = balanced_accuracy_score(target, logits.argmax(1))
    assert ours["shapes/mean_per_class_recall"] == pytest.approx(balanced, abs=1e-6)
    # retrieval: clip_benchmark's evaluate() on (image, [captions]) batches, as its loader gives
    pairs = list(zip(images(ret), ret.captions, strict=True))
    loader = torch.utils.data.DataLoader(pairs, batch_size=16, collate_fn=lambda b: (
        torch.stack([x for x, _ in b]), [c for _, c in b]))  # fmt: skip
    theirs = cb_ret.evaluate(model.model, loader, tokenize, "cpu", amp=False,
                             recall_k_list=[1, 5, 10])  # fmt: skip
    for key, value in theirs.items():
        assert ours[f"captions/{key}"] == pytest.approx(value, abs=1e-6), key
    assert ours["captions/mean_recall@1"] == pytest.approx(
        (theirs["image_retrieval_recall@1"] + theirs["text_retrieval_recall@1"]) / 2)


def _run(files, reference=None):
    return OwnRun(ShardsConfig(pattern=files["pool"], buffer_size=50), OwnModel(None, reference))


def test_evaluation_during_training_and_jestkit_eval(files, tmp_path, capsys):
    """jestkit's own dual encoder on shards, evaluated at steps 0, 3, 6 (eval_every 3): the
    history holds every set's metrics; the final ones are what `jestkit eval` finds on the
    run's checkpoint; curves.png is drawn."""
    uniform = TINY.with_name("uniform")
    evals = EvalConfig(zeroshot=f"zs={files['zeroshot']}", retrieval=files["retrieval"])
    out = tmp_path / "run"
    result = train_own(_run(files), MODEL, uniform, out, progress=False,
                       eval_config=evals)  # fmt: skip
    history = result["history"]
    assert [h["step"] for h in history] == [0, 3, 6]
    keys = {"zs/acc1", "zs/acc5", "zs/mean_per_class_recall", "captions/mean_recall@1",
            *(f"captions/{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10))}
    assert set(result["final"]) == keys and all(keys <= set(h) for h in history)
    assert history[-1]["flops"] == sum(result["flops"].values()) > 0
    assert result["eval_sets"] == {"zs": {"kind": "zeroshot", "samples": 60},
                                   "captions": {"kind": "retrieval", "samples": 40}}
    assert (out / "curves.png").stat().st_size > 10_000
    saved = json.loads((out / "result.json").read_text())
    assert saved["final"] == result["final"]

    code = cli_main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--eval.zeroshot",
                     f"zs={files['zeroshot']}", "--eval.retrieval", files["retrieval"],
                     "--out", str(tmp_path / "eval.json")])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and re.search(r"\nzs +acc1 0\.\d{4}  acc5", printed)
    assert re.search(r"\ncaptions +image_retrieval_recall@1 0\.\d{4}", printed)
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["model"] == "jestkit"
    for key, value in result["final"].items():
        assert evaluated["metrics"][key] == pytest.approx(value, abs=1e-6), key


def test_jestkit_eval_of_an_open_clip_checkpoint(files, tmp_path, capsys):
    """An open_clip checkpoint file with --open_clip: the Evaluator's numbers on that model."""
    from jestkit.openclip import create_model
    from jestkit.openclip.dual import open_clip_inputs, open_clip_reference_file

    torch.manual_seed(5)
    torch.save({"state_dict": create_model(files["config"]).state_dict()}, tmp_path / "m.pt")
    code = cli_main(["eval", "--checkpoint", str(tmp_path / "m.pt"), "--open_clip",
                     files["config"], "--eval.zeroshot", files["zeroshot"]])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    written = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    model = open_clip_reference_file(files["config"], tmp_path / "m.pt")
    transform, tokenize = open_clip_inputs(files["config"], model)
    expected = Evaluator(load_sets(EvalConfig(zeroshot=files["zeroshot"])), transform, tokenize)
    assert written == pytest.approx(expected(model))
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "m.pt"), "--eval.zeroshot",
                     files["zeroshot"]]) == 2  # which model: no result.json, no --open_clip
    assert "--open_clip" in capsys.readouterr().err


# -- bad input, refused before training ------------------------------------------------------


def _tar(path, members: dict[str, bytes]):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_overlap_with_the_training_pool_is_refused_or_warned(files, tmp_path, capsys):
    """An eval set whose uids are the pool's first 30: refused with the count (the default),
    trained with a warning naming the count (overlap warn)."""
    leaky = write_eval_set(tmp_path / "leaky", "zeroshot", per_shard=30, first=0)
    uniform = TINY.with_name("uniform")
    with pytest.raises(EvalSetError, match="shares 30 of its ids with the training shards"):
        train_own(_run(files), MODEL, uniform, tmp_path / "a", progress=False,
                  eval_config=EvalConfig(zeroshot=leaky))  # fmt: skip
    assert not (tmp_path / "a").exists()  # nothing trained
    train_own(_run(files), MODEL, uniform, tmp_path / "b", progress=False,
              eval_config=EvalConfig(zeroshot=leaky, overlap="warn"))  # fmt: skip
    assert "shares 30 of its ids" in capsys.readouterr().err
    code = cli_main(["train", "--shards.pattern", files["pool"], "--eval.zeroshot", leaky,
                     "--out", str(tmp_path / "c"), "--quiet"])  # fmt: skip
    assert code == 2 and "a held-out set must be held out" in capsys.readouterr().err


def test_bad_sets_are_refused(files, tmp_path):
    good = load_eval_set(files["zeroshot"], "zeroshot")
    assert len(good) == 60 and good.classnames == CLASSES
    assert good.prompts()[:2] == ["a red square", "a photo of a red square"]

    def broken(name, kind="zeroshot"):
        folder = tmp_path / name
        write_eval_set(folder, kind, per_shard=8)
        return folder

    few = broken("few")  # 5 class names for labels 0..11
    (few / "classnames.txt").write_text("\n".join(CLASSES[:5]) + "\n")
    with pytest.raises(EvalSetError, match="names 5 classes .* do not match the labels"):
        load_eval_set(str(few), "zeroshot")
    brace = broken("brace")
    (brace / "zeroshot_classification_templates.txt").write_text("a {c}\na photo of a thing\n")
    with pytest.raises(EvalSetError, match="line 2: template 'a photo of a thing' must name"):
        load_eval_set(str(brace), "zeroshot")
    other = broken("other")
    (other / "zeroshot_classification_templates.txt").write_text("a {c} {n}\n")
    with pytest.raises(EvalSetError, match="no other braces"):
        load_eval_set(str(other), "zeroshot")
    empty = broken("empty")
    _tar(empty / "test" / "0.tar", {})
    with pytest.raises(EvalSetError, match="hold no samples"):
        load_eval_set(str(empty), "zeroshot")
    garbage = broken("garbage")
    (garbage / "test" / "0.tar").write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(EvalSetError, match="0.tar cannot be read"):
        load_eval_set(str(garbage), "zeroshot")
    cut = broken("cut")
    data = (cut / "test" / "0.tar").read_bytes()
    (cut / "test" / "0.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(EvalSetError, match="cannot be read"):
        load_eval_set(str(cut), "zeroshot")
    bad_png = broken("bad_png")
    _tar(bad_png / "test" / "0.tar", {"a.png": b"not a png", "a.cls": b"0"})
    with pytest.raises(EvalSetError, match=r"key a\): the image does not decode"):
        load_eval_set(str(bad_png), "zeroshot")
    no_label = broken("no_label")
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    _tar(no_label / "test" / "0.tar", {"a.png": png.getvalue(), "a.txt": b"a caption"})
    with pytest.raises(EvalSetError, match=r"no a.cls, the class index"):
        load_eval_set(str(no_label), "zeroshot")
    with pytest.raises(EvalSetError, match="without test/nshards.txt"):
        load_eval_set(str(tmp_path), "zeroshot")
    with pytest.raises(EvalSetError, match="dataset_type.txt says 'retrieval'"):
        load_eval_set(files["retrieval"], "zeroshot")
    with pytest.raises(EvalSetError, match="does not exist"):
        load_eval_set(str(tmp_path / "nowhere-{0..3}.tar"), "retrieval")
    with pytest.raises(EvalSetError, match="give both the name 'x': give each its own NAME"):
        load_sets(EvalConfig(zeroshot=f"x={files['zeroshot']}",
                             retrieval=f"x={files['retrieval']}"))  # (before: "name them
    # NAME=PATH", which they were)


def test_a_retrieval_set_as_a_shard_pattern(files):
    """img2dataset-style training shards can serve as a retrieval set (one caption each)."""
    s = load_eval_set(f"held={files['pool']}", "retrieval")
    assert s.name == "held" and len(s) == 200 and s.flat_captions()[1][:3] == [0, 1, 2]


def test_eval_flags_on_fashion_mnist_are_refused(files, tmp_path, capsys):
    code = cli_main(["train", "--eval.zeroshot", files["zeroshot"], "--out", str(tmp_path / "f"),
                     "--quiet"])  # fmt: skip
    assert code == 2 and "evaluate a run on your own shards" in capsys.readouterr().err


# -- issue 28, round three: sets that measure nothing, records that are not what they say -----


def test_zero_shot_sets_that_measure_nothing_are_refused(tmp_path):
    """A template {{c}} (it renders "{c}" for every class), the same class name twice (identical
    classifiers), one class (acc1 = 1.0 whatever the model), class names in Latin-1: refused,
    naming the file (before: exit 0 with metrics; Latin-1: "'utf-8' codec can't decode")."""

    def zero_shot(name):
        folder = tmp_path / name
        write_eval_set(folder, "zeroshot", per_shard=8)
        return folder

    literal = zero_shot("literal")
    (literal / "zeroshot_classification_templates.txt").write_text("a photo of a {{c}}\n")
    with pytest.raises(EvalSetError, match="template 'a photo of a {{c}}' must name the class"):
        load_eval_set(str(literal), "zeroshot")
    same = zero_shot("same")
    (same / "classnames.txt").write_text("\n".join(["red square"] * len(CLASSES)) + "\n")
    with pytest.raises(EvalSetError, match="classnames.txt: line 2 .* names the class of line 1"):
        load_eval_set(str(same), "zeroshot")
    one = tmp_path / "one"
    write_eval_set(one, "zeroshot", per_shard=1)
    _tar(one / "test" / "0.tar", {"a.png": _png(8), "a.cls": b"0"})
    (one / "classnames.txt").write_text(f"{CLASSES[0]}\n")
    with pytest.raises(EvalSetError, match="names one class"):
        load_eval_set(str(one), "zeroshot")
    latin = zero_shot("latin")
    (latin / "classnames.txt").write_bytes("\n".join(["café"] + CLASSES[1:]).encode("latin-1"))
    with pytest.raises(EvalSetError, match="classnames.txt is not UTF-8 text"):
        load_eval_set(str(latin), "zeroshot")


def _png(side, mode="RGB"):
    png = io.BytesIO()
    Image.new(mode, (side, side)).save(png, "PNG")
    return png.getvalue()


def test_eval_images_past_the_shards_pixel_bound_are_refused_undecoded(tmp_path):
    """A 9000 x 9000 PNG of a few KB in an eval set: refused from its header, as the training
    shards do (before: decoded at every evaluation)."""
    big = tmp_path / "big"
    write_eval_set(big, "zeroshot", per_shard=2)
    _tar(big / "test" / "0.tar", {"a.png": _png(9000, "1"), "a.cls": b"0"})
    with pytest.raises(EvalSetError, match="9000 x 9000 pixels, more than"):
        load_eval_set(str(big), "zeroshot")


@pytest.fixture(scope="module")
def shard_run(files, tmp_path_factory):
    """A finished uniform run of jestkit's dual encoder on the shards (2 steps)."""
    out = tmp_path_factory.mktemp("shard_run") / "run"
    config = TINY.with_name("uniform")
    config = replace(config, training=replace(config.training, steps=2, eval_every=None,
                                              checkpoint_every=2))  # fmt: skip
    train_own(_run(files), MODEL, config, out, progress=False)
    return out


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_eval_out_never_replaces_a_record_or_a_file_of_yours(files, shard_run, tmp_path, capsys):
    """`jestkit eval --out RUN/checkpoint.pt` or `RUN/result.json` (before: the 41 MB checkpoint
    replaced by 371 bytes of JSON), an existing file that is not an eval.json, a folder that is
    a file: refused before the pass, every file unchanged. An earlier eval.json is replaced."""
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "notes"}')
    before, mine_before = _snapshot(shard_run), mine.read_bytes()
    (tmp_path / "file").write_text("a file")
    evaluate = ["eval", "--checkpoint", str(shard_run / "checkpoint.pt"), "--eval.zeroshot",
                files["zeroshot"]]  # fmt: skip
    for out, says in [(shard_run / "checkpoint.pt", "jestkit record"),
                      (shard_run / "result.json", "jestkit record"),
                      (shard_run / "config.yaml", "jestkit record"),
                      (mine, "not an earlier `jestkit eval` output"),
                      (tmp_path / "file" / "eval.json", "is not a folder")]:  # fmt: skip
        refused = cli_main([*evaluate, "--out", str(out)])
        err = capsys.readouterr().err
        assert refused == 2 and says in err and "Traceback" not in err, err
    assert _snapshot(shard_run) == before and mine.read_bytes() == mine_before
    earlier = tmp_path / "eval.json"
    assert cli_main([*evaluate, "--out", str(earlier)]) == 0
    assert cli_main([*evaluate, "--out", str(earlier)]) == 0  # an earlier eval.json: replaced


def _copy_run(run, to, result=None, result_text=None):
    to.mkdir()
    (to / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes())
    if result_text is None:
        result_text = json.dumps(result if result is not None else
                                 json.loads((run / "result.json").read_text()))  # fmt: skip
    (to / "result.json").write_text(result_text)
    return to


@pytest.mark.parametrize("damage, says", [
    ("list", "holds a JSON list, not a `jestkit train` run's result.json"),
    ("truncated", "result.json is not valid JSON"),
    ("no model_config", "result.json has no 'model_config'"),
    ("vocab_size ten", "'vocab_size' is \"ten\", it must be an integer"),
    ("other dim", "does not fit the model"),
    ("fashion", "is of a run on Fashion-MNIST"),
])  # fmt: skip
def test_jestkit_eval_of_a_run_whose_result_json_does_not_fit(files, shard_run, tmp_path, capsys,
                                                             damage, says):  # fmt: skip
    """result.json a list, truncated, a field missing or of the wrong type, naming another
    model than the checkpoint holds, or a Fashion-MNIST run's (before: AttributeError, raw JSON
    errors, a size-mismatch RuntimeError traceback, and "no result.json beside it" when there
    was one): one line naming result.json and what is wrong."""
    result = json.loads((shard_run / "result.json").read_text())
    text = None
    if damage == "list":
        text = "[1, 2, 3]"
    elif damage == "truncated":
        text = json.dumps(result)[:200]
    elif damage == "no model_config":
        del result["model_config"]
    elif damage == "vocab_size ten":
        result["vocab_size"] = "ten"
    elif damage == "other dim":
        result["model_config"]["dim"] = 2 * result["model_config"]["dim"]
    else:
        del result["model"], result["vocab_size"]
    run = _copy_run(shard_run, tmp_path / "run", result, text)
    code = cli_main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--eval.zeroshot",
                     files["zeroshot"]])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert says in err and "\n" not in err.strip(), err
