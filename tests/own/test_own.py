"""`jestkit train` on your own data: shards streamed through StreamSource into the same loop,
our dual encoder on them (hashed words, grayscale 28 x 28), exact resume at a sample boundary,
Fashion-MNIST as one source among others, and the errors for bad input."""

from __future__ import annotations

import pytest
import torch
from helpers import MODEL, TINY
from shard_files import write_shards

from jestkit.cli import main as cli_main
from jestkit.data.shards import ShardPool
from jestkit.data.stream import HashedWords, ShardsConfig, StreamSource, grayscale
from jestkit.engine.checkpoint import load_checkpoint
from jestkit.engine.loop import Trainer
from jestkit.fashion.learner import train_learner
from jestkit.fashion.prepare import MAX_LEN
from jestkit.own.run import OwnModel, OwnRun, build_learner, build_source
from jestkit.own.train import train_own

HARD = TINY.with_name("hard_learner-joint")  # b = 16, B = 80, 4 chunks: no reference needed


@pytest.fixture(scope="module")
def pattern(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), shards=2, per_shard=100)


def _run(pattern, buffer_size=50):
    return OwnRun(ShardsConfig(pattern=pattern, buffer_size=buffer_size, vocab_size=512))


def test_stream_draws_the_stream_in_order_across_epochs(pattern):
    """No shuffle buffer: draw(B) is the next B samples of the shards, in file order, into the
    next epoch when one ends (200 samples: 2 draws of 80, then the next epoch's first 80)."""
    run = _run(pattern, buffer_size=0)
    source = StreamSource(run.shards.pool(grayscale(28)), HashedWords(512, 12))
    expected = [f"{n:032x}" for n in range(200)]
    draws = [source.draw(80) for _ in range(3)]
    assert draws[0].ids == expected[:80] and draws[1].ids == expected[80:160]
    assert draws[2].ids == expected[:80]  # the short rest (40) is dropped, as drop_last does
    assert draws[0].images.shape == (80, 1, 28, 28) and draws[0].tokens.shape == (80, 12)
    assert float(draws[0].images.min()) >= 0.0 and float(draws[0].images.max()) <= 1.0
    # the same samples held in memory: decoded by hand from a plain pass over the pool
    plain = list(ShardPool(run.shards.shards(), buffer_size=0, mode=None))[:80]
    by_hand = torch.stack([grayscale(28)(_pil(s["image"])) for s in plain])
    torch.testing.assert_close(draws[0].images, by_hand)
    assert torch.equal(draws[0].tokens, HashedWords(512, 12)([s["caption"] for s in plain]))


def _pil(chw):
    from PIL import Image

    return Image.fromarray(chw.permute(1, 2, 0).numpy())


def test_hashed_words_are_stable_and_padded():
    tok = HashedWords(100, 6)
    out = tok(["a red dot", "a red dot number 1 2 3 4 5"])
    assert out.shape == (2, 6) and out[0, 3:].eq(0).all() and out[1].ne(0).all()
    assert torch.equal(out[0, :3], out[1, :3])  # the same words, the same ids
    assert int(out.max()) < 100 and int(out[out > 0].min()) >= 2


def _trainer(run, out_dir):
    model = build_learner(run, MODEL, "sigmoid", None, HARD.training.seed)
    return Trainer(model, HARD, build_source(run, model), out_dir=out_dir, progress=False)


def test_a_run_on_shards_resumes_exactly(pattern, tmp_path):
    """Stopped after 3 steps (mid-epoch, the shuffle buffer half full) and resumed from its
    checkpoint, a run draws, selects and trains exactly as the uninterrupted run."""
    run = _run(pattern)
    whole = _trainer(run, tmp_path / "whole")
    whole.run()
    first = _trainer(run, tmp_path / "cut")
    first.run(stop_at=3)
    resumed = _trainer(run, tmp_path / "cut")
    assert resumed.resume() and resumed.step == 3
    resumed.run()
    assert resumed.selected_ids == whole.selected_ids
    assert len({i for ids in whole.selected_ids for i in ids}) > 16  # the stream moved on
    assert resumed.losses == whole.losses
    for name, p in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], p, msg=name)


def test_bad_samples_are_skipped_and_counted(tmp_path):
    pattern = write_shards(tmp_path / "bad", shards=1, per_shard=500, bad=(3, 50))  # one epoch
    result = train_own(_run(pattern), MODEL, HARD, tmp_path / "run", progress=False)
    assert result["skipped"] == {"undecodable image": 2}
    assert result["steps"] == HARD.training.steps and len(result["losses"]) == 6
    assert all(len(ids) == 16 for ids in _selected(tmp_path / "run"))  # b never changes


def _selected(run_dir):
    return load_checkpoint(run_dir / "checkpoint.pt")["stats"]["selected_ids"]


def test_fashion_mnist_is_one_source_among_others(data, reference_dir, tmp_path):
    """The own-data path on the Fashion-MNIST source is train_learner's run, number for number."""
    config = TINY.with_name("learnability-joint")
    run = OwnRun(own=OwnModel(reference=str(reference_dir)))
    own = train_own(run, MODEL, config, tmp_path / "own", data, progress=False)
    plain = train_learner(data, MODEL, config, reference_dir, tmp_path / "plain", progress=False)
    assert own["history"] == plain["history"] and own["losses"] == plain["losses"]
    own_ids, plain_ids = _selected(tmp_path / "own"), _selected(tmp_path / "plain")
    assert [i.tolist() for i in own_ids] == [i.tolist() for i in plain_ids]


def test_bad_choices_are_clear_errors(pattern, tmp_path, capsys):
    base = ["train", "--out", str(tmp_path / "run"), "--quiet", "--training.steps", "1"]
    if not torch.cuda.is_available():
        assert cli_main([*base, "--device", "cuda", "--shards.pattern", pattern]) == 2
        assert "--device cuda, but CUDA is not available" in capsys.readouterr().err
    code = cli_main([*base, "--shards.pattern", str(tmp_path / "none-*.tar")])
    assert code == 2 and "none-*.tar" in capsys.readouterr().err
    code = cli_main([*base, "--shards.pattern", pattern, "--reference", str(tmp_path / "nope")])
    assert code == 2 and "jestkit score" in capsys.readouterr().err
    twice = f"{pattern},{write_shards(tmp_path / 'again', shards=1, per_shard=100)}"
    code = cli_main([*base, "--shards.pattern", twice, "--selection.policy", "uniform"])
    err = capsys.readouterr().err
    assert code == 2 and f"id '{0:032x}'" in err and "appears twice" in err
    with pytest.raises(ValueError, match="--reference_model"):
        f = tmp_path / "weights.pt"
        f.write_bytes(b"")
        train_own(OwnRun(_run(pattern).shards, OwnModel(reference=str(f))), MODEL,
                  TINY, tmp_path / "r", progress=False)  # fmt: skip


def test_score_with_our_checkpoint_then_train_with_its_cache(pattern, tmp_path):
    """A uniform run on (curated) shards is a reference: `score` caches its embeddings, which
    equal the checkpoint's model's own on the same samples, and a learnability run reads them."""
    from jestkit.own.score import score_shards

    run = _run(pattern)
    uniform = _trainer(run, tmp_path / "uniform")
    uniform.config = TINY.with_name("uniform")  # a few uniform steps: the reference
    uniform.run()
    checkpoint = str(tmp_path / "uniform" / "checkpoint.pt")
    scoring = OwnRun(run.shards, OwnModel(reference=checkpoint))
    info = score_shards(scoring, MODEL, "sigmoid", tmp_path / "ref", progress=False)
    assert info["samples"] == 200
    learnability = OwnRun(run.shards, OwnModel(reference=str(tmp_path / "ref")))
    config = TINY.with_name("learnability-joint")
    result = train_own(learnability, MODEL, config, tmp_path / "jest", progress=False)
    assert result["steps"] == 6 and result["flops"]["reference_score"] == 0
    # the cache against the reference model run directly on the first samples of the stream
    from jestkit.own.run import load_stream_reference

    source = StreamSource(run.shards.pool(grayscale(28)), HashedWords(512, MAX_LEN))
    ref = load_stream_reference(tmp_path / "ref", source, "sigmoid")
    batch = StreamSource(_run(pattern, 0).shards.pool(grayscale(28)),
                         HashedWords(512, MAX_LEN)).draw(20)  # fmt: skip
    uniform.model.eval()
    direct = uniform.model.embeddings(batch.images, batch.tokens)
    torch.testing.assert_close(ref(batch).image, direct.image)
    torch.testing.assert_close(ref(batch).text, direct.text)


def test_a_run_on_parquet_tables(tmp_path):
    """Parquet tables (image bytes, caption, uid: DataComp's layout) train the same way."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from shard_files import sample

    rng = np.random.default_rng(0)
    for t in range(2):
        rows = [sample(t * 60 + i, rng) for i in range(60)]
        table = pa.table({"image": [png for png, _ in rows], "caption": [c for _, c in rows],
                          "uid": [f"{t * 60 + i:032x}" for i in range(60)]})  # fmt: skip
        pq.write_table(table, tmp_path / f"part-{t}.parquet", row_group_size=16)
    run = _run(str(tmp_path / "part-*.parquet"), buffer_size=0)
    config = TINY.with_name("hard_learner-joint")
    result = train_own(run, MODEL, config, tmp_path / "run", progress=False)
    assert result["steps"] == 6 and result["skipped"] == {}
    selected = _selected(tmp_path / "run")
    first_draw = {f"{n:032x}" for n in range(80)}  # no shuffle buffer: the first 80 rows
    assert set(selected[0]) <= first_draw and len(set(selected[0])) == 16
