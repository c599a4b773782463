"""`jestkit train` with drafted candidates (--shards.draft_side, jestkit.data.draft): on 64-px
JPEG shards with a learner scoring at patch 14 (the model's is 7), the candidates are decoded at
1/4 scale (16 px >= 28 x 7 / 14) and scored so, the selected b are decoded again in full and
trained on exactly the tensors an undrafted run gives them; the stream, exact resume and the
agreement of 0 and 2 workers do not change; bad values are clear errors."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import MODEL
from PIL import Image
from shard_files import TINY_SIG, add_sample, sample, write_shards

from jestkit import SelectionConfig
from jestkit.cli import main as cli_main
from jestkit.data.shards import ShardPool, ShardPoolConfig
from jestkit.data.stream import HashedWords, ShardsConfig, grayscale
from jestkit.engine.config import ScoringConfig, TrainConfig, TrainingConfig
from jestkit.engine.loop import Trainer
from jestkit.own.run import OwnModel, OwnRun, build_learner, build_source, resolved_draft_side
from jestkit.own.train import train_own

# b = 12 of B = 60 over 2 streams (30 each); the learner scores at patch 14 (4 tokens, not 16)
CONFIG = TrainConfig(
    selection=SelectionConfig(policy="hard_learner", method="joint", n_chunks=3,
                              filter_ratio=0.8),  # fmt: skip
    scoring=ScoringConfig(patch_size=14),
    training=TrainingConfig(batch_size=12, steps=4, eval_every=4, checkpoint_every=2),
)
SIDE = 14  # 28 x 7 / 14


def write_jpeg_shards(folder, shards: int = 2, per_shard: int = 60, size: int = 64) -> str:
    """tests/shard_files.py's samples at `size` px, stored as JPEGs (quality 90)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for s in range(shards):
        with tarfile.open(folder / f"shards-{s:04d}.tar", "w") as tar:
            for i in range(per_shard):
                n = s * per_shard + i
                png, caption = sample(n, rng, size)
                jpg = io.BytesIO()
                Image.open(io.BytesIO(png)).save(jpg, "JPEG", quality=90)
                files = {"jpg": jpg.getvalue(), "txt": caption.encode(),
                         "json": json.dumps({"uid": f"{n:032x}"}).encode()}  # fmt: skip
                add_sample(tar, f"{n:08d}", files)
    return str(folder / f"shards-{{0000..{shards - 1:04d}}}.tar")


@pytest.fixture(scope="module")
def pattern(tmp_path_factory):
    return write_jpeg_shards(tmp_path_factory.mktemp("jpeg"))


class Sizes:
    """grayscale(28), recording the size of every image it is given (in this process)."""

    def __init__(self):
        self.sizes, self.inner = [], grayscale(28)

    def __call__(self, image):
        self.sizes.append(image.size)
        return self.inner(image)


def _shards(pattern, workers=0, draft="none"):
    return ShardsConfig(pattern=pattern, buffer_size=16, streams=2, workers=workers,
                        vocab_size=512, draft_side=draft)  # fmt: skip


def _trainer(pattern, out, workers=0, draft="none", transform=None):
    run = OwnRun(_shards(pattern, workers, draft))
    model = build_learner(run, MODEL, "sigmoid", None, CONFIG.training.seed)
    side = resolved_draft_side(run, model, MODEL, CONFIG)
    if transform is None:
        source = build_source(run, model, None, CONFIG.training.checkpoint_every, side)
    else:
        source = run.shards.parallel(transform, HashedWords(512, 12), draft_side=side,
                                     snapshot_every=CONFIG.training.checkpoint_every)
    return Trainer(model, CONFIG, source, out_dir=out, progress=False), source


def _full_images(pattern) -> dict[str, torch.Tensor]:
    """Every sample's image as the undrafted pool gives it (grayscale(28) of the full decode)."""
    config = ShardPoolConfig(buffer_size=0, rank=0, world_size=1)
    return {s["id"]: s["image"] for s in ShardPool(pattern, config, transform=grayscale(28))}


def _drafted_images(pattern) -> dict[str, torch.Tensor]:
    config = ShardPoolConfig(buffer_size=0, rank=0, world_size=1, draft_side=SIDE)
    return {s["id"]: s["image"] for s in ShardPool(pattern, config, transform=grayscale(28))}


def test_candidates_are_scored_drafted_and_the_selected_trained_in_full(pattern, tmp_path):
    transform = Sizes()
    trainer, source = _trainer(pattern, tmp_path / "run", draft="auto", transform=transform)
    assert source.config.draft_side == SIDE
    scored, trained = [], []

    def record(module, args):
        (scored if not torch.is_grad_enabled() else trained).append(args[0].clone())

    trainer.model.image_tower.register_forward_pre_hook(record)
    trainer.run()
    source.close()
    steps, b, B = CONFIG.training.steps, CONFIG.training.batch_size, CONFIG.super_batch_size()
    # every candidate decoded at 1/4 scale (16 px), and only the selected b again in full
    assert transform.sizes.count((16, 16)) == steps * B
    assert transform.sizes.count((64, 64)) == steps * b == source.full_decodes
    assert len(transform.sizes) == steps * (B + b)
    full, drafted = _full_images(pattern), _drafted_images(pattern)
    ids = trainer.selected_ids
    assert len(trained) == steps and len(scored) == steps
    for step in range(steps):
        step_ids = [str(i) for i in ids[step]]
        # the trained sub-batch: exactly the undrafted decode of the selected examples
        assert torch.equal(trained[step], torch.stack([full[i] for i in step_ids]))
    # what was scored: drafted decodes, not the full ones
    some = scored[0]
    assert not any(torch.equal(some[0], img) for img in full.values())
    assert any(torch.equal(some[0], img) for img in drafted.values())


def test_the_selected_rows_equal_an_undrafted_draw_given_the_same_selection(pattern):
    from jestkit.engine.step import full_decode

    plain = _shards(pattern).parallel(grayscale(28), HashedWords(512, 12))
    drafted = _shards(pattern).parallel(grayscale(28), HashedWords(512, 12), draft_side=SIDE)
    a, d = plain.draw(60), drafted.draw(60)
    assert a.ids == d.ids and torch.equal(a.tokens, d.tokens)  # the same stream
    positions = torch.randperm(60, generator=torch.Generator().manual_seed(0))[:12]
    full_decode(drafted, d, 0, positions)
    assert torch.equal(d.images[positions], a.images[positions])
    rest = torch.ones(60, dtype=torch.bool)
    rest[positions] = False
    assert not torch.equal(d.images[rest], a.images[rest])  # the others stay drafted
    assert drafted.full_decodes == 12
    plain.close(), drafted.close()


def _train(pattern, out, workers, stop_at=None):
    trainer, source = _trainer(pattern, out, workers, "auto")
    trainer.run(stop_at=stop_at)
    source.close()
    if stop_at is not None:
        trainer, source = _trainer(pattern, out, workers, "auto")
        assert trainer.resume() and trainer.step == stop_at
        trainer.run()
        source.close()
    return trainer


def test_drafted_runs_resume_exactly_and_workers_agree(pattern, tmp_path):
    whole = _train(pattern, tmp_path / "whole", 0)
    cut = _train(pattern, tmp_path / "cut", 2, stop_at=2)  # 2 workers, killed and resumed
    assert [list(i) for i in cut.selected_ids] == [list(i) for i in whole.selected_ids]
    assert cut.losses == whole.losses
    for name, p in whole.model.state_dict().items():
        assert torch.equal(cut.model.state_dict()[name], p), name


def _on_2_ranks(ctx, pattern, out):
    """A drafted run on 2 gloo ranks (a worker each): each rank decodes in full the selected
    candidates it drew, which then move to the rank that trains on them."""
    import multiprocessing

    multiprocessing.set_start_method("fork", force=True)  # as under torchrun
    run = OwnRun(_shards(pattern, workers=1, draft="auto"))
    model = build_learner(run, MODEL, "sigmoid", None, CONFIG.training.seed)
    side = resolved_draft_side(run, model, MODEL, CONFIG)
    source = build_source(run, model, ctx, CONFIG.training.checkpoint_every, side)
    trained = []
    model.image_tower.register_forward_pre_hook(
        lambda module, args: trained.append(args[0].clone()) if torch.is_grad_enabled() else None)
    trainer = Trainer(model, CONFIG, source, out_dir=out, progress=False, dist=ctx)
    trainer.run()
    source.close()
    return trainer.selected_ids, trainer.losses, trained, source.full_decodes


def test_ranks_decode_their_selected_candidates_in_full(pattern, tmp_path):
    from dropin.test_distributed import spawn, values_of

    one = _train(pattern, tmp_path / "one", 0)
    two = values_of(spawn(_on_2_ranks, 2, tmp_path, pattern, tmp_path / "two", deadline_s=150))
    full = _full_images(pattern)
    b, steps = CONFIG.training.batch_size, CONFIG.training.steps
    for ids, losses, _, _ in two:
        assert [list(i) for i in ids] == [list(i) for i in one.selected_ids]
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(one.losses), atol=1e-4,
                                   rtol=1e-4)  # fmt: skip
    for step in range(steps):  # the ranks' halves of the sub-batch: the selected, in full
        selected = [str(i) for i in one.selected_ids[step]]
        got = [next(i for i in selected if torch.equal(row, full[i]))
               for _, _, trained, _ in two for row in trained[step]]  # fmt: skip
        assert sorted(got) == sorted(selected)
    assert sum(r[3] for r in two) == steps * b  # each selected example decoded in full once


def test_draft_side_resolves_and_refuses_bad_values(pattern, tmp_path, capsys):
    run = OwnRun(_shards(pattern, draft="auto"))
    model = build_learner(run, MODEL, "sigmoid", None, 0)
    assert resolved_draft_side(run, model, MODEL, CONFIG) == SIDE
    plain_view = replace(CONFIG, scoring=ScoringConfig())
    assert resolved_draft_side(run, model, MODEL, plain_view) is None  # no coarser view
    uniform = replace(CONFIG, selection=SelectionConfig(policy="uniform"),
                      scoring=ScoringConfig())  # fmt: skip
    assert resolved_draft_side(run, model, MODEL, uniform) is None
    assert resolved_draft_side(OwnRun(_shards(pattern)), model, MODEL, CONFIG) is None
    assert resolved_draft_side(OwnRun(_shards(pattern, draft=20)), model, MODEL, CONFIG) == 20
    with pytest.raises(ValueError, match="scores no candidate"):
        resolved_draft_side(OwnRun(_shards(pattern, draft=20)), model, MODEL, uniform)
    for bad in (0, -3, True, "x", 2.5):
        with pytest.raises(ValueError, match="--shards.draft_side must be auto, none or"):
            ShardsConfig(pattern=pattern, draft_side=bad)
    base = ["train", "--shards.pattern", pattern, "--quiet", "--training.steps", "1"]
    code = cli_main([*base, "--out", str(tmp_path / "a"), "--shards.draft_side", "0"])
    assert code == 2 and "--shards.draft_side must be auto, none or" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the parser: neither a number nor auto / none
        cli_main([*base, "--out", str(tmp_path / "b"), "--shards.draft_side", "huge"])
    assert "shards.draft_side" in capsys.readouterr().err
    code = cli_main([*base, "--out", str(tmp_path / "c"), "--shards.draft_side", "16",
                     "--selection.policy", "uniform"])  # fmt: skip
    assert code == 2 and "scores no candidate" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Fashion-MNIST is held decoded"):
        train_own(OwnRun(ShardsConfig(draft_side="auto")), MODEL, CONFIG, tmp_path / "d")
    code = cli_main(["score", "--shards.pattern", pattern, "--reference", str(tmp_path / "r"),
                     "--out", str(tmp_path / "s"), "--shards.draft_side", "auto"])  # fmt: skip
    assert code == 2 and "decodes every sample in full" in capsys.readouterr().err


def test_png_candidates_are_decoded_in_full(tmp_path):
    png = write_shards(tmp_path / "png", shards=2, per_shard=40, size=64)
    plain = _shards(png).parallel(grayscale(28), HashedWords(512, 12))
    drafted = _shards(png).parallel(grayscale(28), HashedWords(512, 12), draft_side=SIDE)
    from jestkit.engine.step import full_decode

    drawn = drafted.draw(60)
    assert torch.equal(plain.draw(60).images, drawn.images)
    full_decode(drafted, drawn, 0, torch.arange(12))
    assert drafted.full_decodes == 0  # exact as drawn: nothing decoded twice
    plain.close(), drafted.close()


def test_open_clip_learner_on_64px_jpegs_drafts_with_auto(tmp_path):
    """The own-data benchmark's layout: a 32-px open_clip model (patch 8) on 64-px JPEGs,
    scoring at patch 16: auto drafts to 16 px (1/4 scale) and the run trains."""
    pytest.importorskip("open_clip")
    pattern = write_jpeg_shards(tmp_path / "jpeg", per_shard=40)
    spec = tmp_path / "tiny-sig.json"
    spec.write_text(json.dumps(TINY_SIG))
    config = replace(CONFIG, scoring=ScoringConfig(patch_size=16),
                     training=TrainingConfig(batch_size=12, steps=2, eval_every=2,
                                             checkpoint_every=2))  # fmt: skip
    run = OwnRun(replace(_shards(pattern, draft="auto"), vocab_size=8192),
                 OwnModel(open_clip=str(spec)))  # fmt: skip
    result = train_own(run, MODEL, config, tmp_path / "run", progress=False)
    assert result["draft_side"] == 16 and result["steps"] == 2
