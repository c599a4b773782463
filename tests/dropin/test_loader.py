"""The drop-in wrapper: plain loops, dict and iterable data, fixed steps, clear errors."""

import re
from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from jestkit import Embeddings, SelectionConfig
from jestkit.dropin.loader import CachedReference, SelectiveLoader, index_batch

PER_EXAMPLE = SelectionConfig(
    loss="per_example", policy="learnability", method="independent", temperature=0.0,
    filter_ratio=0.75,
)  # fmt: skip


def toy(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def test_plain_loop_selects_top_b_learnability_and_keeps_len():
    x, y = toy(96)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, drop_last=True)
    model = torch.nn.Linear(5, 3)
    ref_loss = x[:, 0].abs()  # any fixed per-example score works as a reference
    rows = {tuple(r.tolist()): i for i, r in enumerate(x)}

    def learner(xb, yb):
        return F.cross_entropy(model(xb), yb, reduction="none")

    def reference(xb, yb):
        return ref_loss[[rows[tuple(r.tolist())] for r in xb]]

    selected = SelectiveLoader(loader, learner, reference, PER_EXAMPLE, seed=0)
    assert len(selected) == len(loader) == 6 and selected.b == 4
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = 0
    for xb, yb in selected:
        assert xb.shape == (4, 5) and yb.shape == (4,)
        steps += 1
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert steps == len(loader)


def test_selection_is_the_top_b_of_the_super_batch():
    x, y = toy(16)
    learner_loss, ref_loss = torch.rand(16), torch.rand(16)
    loader = [(x, y, torch.arange(16))]
    selected = SelectiveLoader(
        loader,
        lambda xb, yb, i: learner_loss[i],
        lambda xb, yb, i: ref_loss[i],
        PER_EXAMPLE,
    )
    (xb, yb, ids), = list(selected)  # fmt: skip
    expected = torch.topk(learner_loss - ref_loss, 4).indices
    assert sorted(ids.tolist()) == sorted(expected.tolist())
    assert torch.equal(xb, x[ids]) and torch.equal(yb, y[ids])


def test_dict_batch_nested_and_strings_keep_their_structure():
    n = 12
    Pair = namedtuple("Pair", "a b")
    batch = {
        "image": torch.arange(n * 2).reshape(n, 2),
        "meta": {"id": torch.arange(n), "pair": Pair(torch.arange(n), np.arange(n))},
        "caption": [f"caption {i}" for i in range(n)],
        "tokens": [torch.arange(n), torch.arange(n) * 10],
        "epoch": 3,
        "scale": torch.tensor(2.0),
        "raw_id": list(range(100, 100 + n)),  # per-example ints from a custom collate_fn
        "shape": [28, 28],
    }
    selected = SelectiveLoader(
        [batch],
        learner=lambda image, meta, **_: meta["id"].float(),  # dict batches arrive as kwargs
        config=PER_EXAMPLE,
        policy="hard_learner",
    )
    (out,) = list(selected)
    ids = out["meta"]["id"]
    assert sorted(ids.tolist()) == [9, 10, 11]
    assert torch.equal(out["image"], batch["image"][ids])
    assert isinstance(out["meta"]["pair"], Pair)
    assert out["meta"]["pair"].b.tolist() == ids.tolist()
    assert out["caption"] == [f"caption {i}" for i in ids.tolist()]
    assert torch.equal(out["tokens"][1], ids * 10)
    assert out["epoch"] == 3 and float(out["scale"]) == 2.0
    assert out["raw_id"] == [100 + i for i in ids.tolist()] and out["shape"] == [28, 28]


class Stream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        for i in range(self.n):
            yield {"x": torch.full((3,), float(i)), "id": i}


def test_iterable_dataset():
    loader = DataLoader(Stream(50), batch_size=10)
    selected = SelectiveLoader(
        loader, learner=lambda x, id: x[:, 0], config=PER_EXAMPLE, policy="hard_learner"
    )
    batches = list(selected)
    assert len(batches) == 5
    for k, batch in enumerate(batches):
        # hard learner on loss = id: the 2 (of 10) highest ids of each super-batch
        assert sorted(batch["id"].tolist()) == [10 * k + 8, 10 * k + 9]
        assert torch.equal(batch["x"][:, 0], batch["id"].float())


def test_steps_per_epoch_fixed_under_an_lr_schedule_with_a_short_last_batch():
    x, y = toy(90)  # 90 = 5 * 16 + 10: the last super-batch holds 10 >= b = 4
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = torch.nn.Linear(5, 3)
    selected = SelectiveLoader(
        loader, lambda xb, yb: F.cross_entropy(model(xb), yb, reduction="none"),
        config=PER_EXAMPLE, policy="hard_learner", seed=0,
    )  # fmt: skip
    epochs = 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=epochs * len(selected))
    sizes = []
    for _ in range(epochs):
        for xb, yb in selected:
            sizes.append(len(xb))
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()  # OneCycleLR raises if stepped more than total_steps
    assert len(selected) == len(loader) == 6
    assert sizes == [4] * (epochs * 6)


def test_short_last_batch_smaller_than_b_fails_early():
    x, y = toy(66)  # 4 * 16 + 2: the last super-batch holds 2 < b = 4
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    with pytest.raises(ValueError, match="drop_last=True"):
        SelectiveLoader(loader, config=PER_EXAMPLE, policy="uniform")
    x, y = toy(200)  # a sampler drawing 66 of 200: the epoch is what the sampler yields
    sampler = torch.utils.data.SubsetRandomSampler(range(66))
    with pytest.raises(ValueError, match="holds 2 examples"):
        SelectiveLoader(DataLoader(TensorDataset(x, y), batch_size=16, sampler=sampler),
                        config=PER_EXAMPLE, policy="uniform")  # fmt: skip
    SelectiveLoader(DataLoader(TensorDataset(x, y), batch_size=16, drop_last=True),
                    config=PER_EXAMPLE, policy="uniform")  # fmt: skip


def test_uniform_needs_no_callables_and_seeded_selection_is_reproducible():
    x, y = toy(64)
    loader = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    a = [xb for xb, _ in SelectiveLoader(loader, config=PER_EXAMPLE, policy="uniform", seed=3)]
    b = [xb for xb, _ in SelectiveLoader(loader, config=PER_EXAMPLE, policy="uniform", seed=3)]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    s = SelectiveLoader(loader, config=PER_EXAMPLE, policy="uniform", seed=3)
    it = iter(s)
    next(it)
    state = s.state_dict()
    second = next(it)[0]
    assert torch.equal(second, x[16:32][s.last_indices])
    s2 = SelectiveLoader(loader[1:], config=PER_EXAMPLE, policy="uniform", seed=99)
    s2.load_state_dict(state)
    assert torch.equal(next(iter(s2))[0], second)


def test_no_global_state_is_touched():
    before = (DataLoader.__iter__, DataLoader.__len__, torch.utils.data.default_collate)
    x, y = toy(32)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    list(SelectiveLoader(loader, config=PER_EXAMPLE, policy="uniform"))
    assert (DataLoader.__iter__, DataLoader.__len__, torch.utils.data.default_collate) == before
    assert len(loader) == 2 and len(next(iter(loader))[0]) == 16


def test_contrastive_embeddings_use_the_same_path():
    g = torch.Generator().manual_seed(0)
    n, d = 32, 8
    img, txt = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    ref_img, ref_txt = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    batch = {"image": img, "text": txt, "id": torch.arange(n)}

    def learner(image, text, id):
        return Embeddings(image, text, 10.0, -10.0)

    def reference(image, text, id):
        return Embeddings(ref_img[id], ref_txt[id], 10.0, -10.0)

    for loss in ("sigmoid", "softmax"):
        cfg = SelectionConfig(loss=loss, filter_ratio=0.75, n_chunks=4)
        (out,) = list(SelectiveLoader([batch], learner, reference, cfg, seed=0))
        assert out["image"].shape == (8, d) and len(set(out["id"].tolist())) == 8
        assert torch.equal(out["text"], txt[out["id"]])
    with pytest.raises(TypeError, match="Embeddings.*per_example"):
        list(SelectiveLoader([batch], learner, reference, PER_EXAMPLE))
    with pytest.raises(TypeError, match="loss='per_example'"):
        list(
            SelectiveLoader(
                [batch],
                lambda **_: torch.zeros(n),
                reference,
                SelectionConfig(loss="sigmoid", filter_ratio=0.75, n_chunks=4),
            )
        )


# --- bad input -------------------------------------------------------------------------------


def one_batch_loader(learner, batch=None):
    x, y = toy(16)
    return SelectiveLoader([batch if batch is not None else (x, y)], learner, config=PER_EXAMPLE,
                           policy="hard_learner")  # fmt: skip


def test_scalar_loss_names_reduction_none():
    with pytest.raises(ValueError, match=re.escape("reduction='none'")):
        list(one_batch_loader(lambda x, y: torch.tensor(1.0)))


def test_wrong_shape_names_expected_shape():
    with pytest.raises(ValueError, match=re.escape("shape (15,); expected (16,)")):
        list(one_batch_loader(lambda x, y: torch.zeros(15)))
    with pytest.raises(ValueError, match=re.escape("shape (16, 3)")):
        list(one_batch_loader(lambda x, y: torch.zeros(16, 3)))
    with pytest.raises(TypeError, match="tensor of per-example losses, got list"):
        list(one_batch_loader(lambda x, y: [0.0] * 16))


def test_nan_losses():
    def nan_loss(x, y):
        out = torch.zeros(16)
        out[3] = float("nan")
        return out

    with pytest.raises(ValueError, match="1 NaN or Inf loss"):
        list(one_batch_loader(nan_loss))


def test_batch_that_cannot_be_indexed_names_its_type():
    class Opaque:
        pass

    x, y = toy(16)
    with pytest.raises(TypeError, match=r"batch\[2\] of type .*Opaque"):
        list(one_batch_loader(lambda *a: torch.rand(16), (x, y, Opaque())))
    with pytest.raises(ValueError, match=r"batch\['mask'\] is a tensor of shape \(3,\)"):
        list(one_batch_loader(lambda **k: torch.rand(16), {"x": x, "mask": torch.ones(3)}))
    with pytest.raises(TypeError, match="cannot find the super-batch size"):
        list(one_batch_loader(lambda *a: torch.rand(16), (Opaque(),)))
    with pytest.raises(TypeError, match="cannot select examples from batch of type"):
        index_batch(Opaque(), torch.tensor([0]), 1)


def test_policy_without_its_callable():
    with pytest.raises(ValueError, match="needs a reference callable"):
        SelectiveLoader([], lambda x: x, config=PER_EXAMPLE)


# --- reference losses from the cache ---------------------------------------------------------


def test_cached_reference_by_id_and_missing_ids(tmp_path):
    cache_mod = pytest.importorskip("jestkit.dropin.cache")
    ids = torch.arange(100, 140)
    ref = torch.linspace(0, 1, 40)
    meta = cache_mod.CacheMeta("model", cache_mod.fingerprint_ids(ids), {"loss": []})
    cache_mod.build_cache(tmp_path / "c", ids, lambda i: {"loss": ref[i - 100]}, meta,
                          progress=False)  # fmt: skip
    cache = cache_mod.ReferenceCache.open(tmp_path / "c")
    x = torch.randn(40, 3)
    batch = {"x": x, "id": ids}
    sel = SelectiveLoader([batch], lambda x, id: torch.zeros(40), CachedReference(cache, "id"),
                          PER_EXAMPLE)  # fmt: skip
    (out,) = list(sel)
    # learner loss 0 everywhere: learnability keeps the 10 lowest reference losses
    assert sorted(out["id"].tolist()) == list(range(100, 110))
    bad = {"x": x, "id": torch.arange(120, 160)}
    sel = SelectiveLoader([bad], lambda x, id: torch.zeros(40), CachedReference(cache, "id"),
                          PER_EXAMPLE)  # fmt: skip
    with pytest.raises(KeyError, match=r"20 id\(s\) not in the reference cache.*140"):
        list(sel)
    with pytest.raises(KeyError, match="no entry 'idx'"):
        CachedReference(cache, "idx")(batch)


# --- the README section runs as written ------------------------------------------------------


# -- issue 16, item 9 and 11: loaders and scorers that would give wrong results ---------------


class _Batches:
    """An iterable of super-batches without a batch_size attribute."""

    def __init__(self, sizes):
        self.sizes = sizes

    def __iter__(self):
        for n in self.sizes:
            x, y = toy(n)
            yield x, y


def _losses(x, y):
    return (x**2).sum(1)


def test_a_short_first_batch_does_not_fix_b_for_the_run():
    loader = SelectiveLoader(_Batches([8, 32]), _losses, _losses, PER_EXAMPLE, seed=0)
    with pytest.raises(ValueError, match="first super-batch"):
        list(loader)


def test_a_complex_scorer_is_refused():
    x, y = toy(16)
    loader = SelectiveLoader([(x, y)], lambda x, y: _losses(x, y).to(torch.complex64),
                             _losses, PER_EXAMPLE, seed=0)  # fmt: skip
    with pytest.raises(TypeError, match="complex"):
        list(loader)


def test_a_foreign_state_is_refused():
    x, y = toy(64)
    loader = SelectiveLoader(DataLoader(TensorDataset(x, y), batch_size=16), _losses, _losses,
                             PER_EXAMPLE, seed=0)  # fmt: skip
    state = loader.state_dict()
    for b in (1, 0, "4"):
        with pytest.raises(ValueError, match="b ="):
            loader.load_state_dict({**state, "b": b})
    loader.load_state_dict(state)


def test_embeddings_of_scalars_are_a_message():
    x, y = toy(16)
    scalar = torch.tensor(1.0)
    loader = SelectiveLoader([(x, y)], lambda x, y: Embeddings(scalar, scalar, 1.0, 0.0),
                             config=SelectionConfig(policy="hard_learner", n_chunks=2),
                             seed=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        list(loader)


# --- issue 28, round three: arguments of the wrong kind ------------------------------------------


def _loader(**kw):
    x, y = toy(16)
    return SelectiveLoader([(x, y)], _losses, _losses, PER_EXAMPLE, seed=0, **kw)


def test_a_device_that_cannot_be_used_is_refused_when_the_loader_is_made():
    # without CUDA, "cuda" itself; with it, an ordinal past the last GPU
    unusable = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    for device, match in [("nonsense", "device='nonsense' is not a torch device"),
                          (3.5, "device=3.5 is not a torch device"),
                          ("meta", "device='meta' holds no values"),
                          (unusable, f"device={unusable!r} cannot be used")]:  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(match)):
            _loader(device=device)
    assert len(list(_loader(device="cpu"))) == 1
    assert len(list(_loader(device=torch.device("cpu")))) == 1


def test_load_state_dict_of_something_else_is_refused():
    loader = _loader()
    with pytest.raises(
        TypeError,
        match=re.escape("state must be the dict that SelectiveLoader.state_dict() returned"),
    ):
        loader.load_state_dict(None)
    with pytest.raises(ValueError, match="state has no 'selector' entry"):
        loader.load_state_dict({"b": 4})
    with pytest.raises(TypeError, match="Selector.state_dict"):
        loader.load_state_dict({"selector": None, "b": 4})
    loader.load_state_dict(loader.state_dict())


def test_a_scorer_returning_meta_or_sparse_tensors_is_named():
    x, y = toy(16)
    for returned, error, match in [
        (lambda x, y: torch.ones(16, device="meta"), ValueError, "learner callable.*meta device"),
        (lambda x, y: torch.ones(16).to_sparse(), TypeError, "learner callable.*dense tensor"),
    ]:  # fmt: skip
        with pytest.raises(error, match=match):
            list(one_batch_loader(returned))
    meta = torch.ones(16, 4, device="meta")
    loader = SelectiveLoader([(x, y)], lambda x, y: Embeddings(meta, meta), policy="hard_learner",
                             n_chunks=2, seed=0)  # fmt: skip
    with pytest.raises(ValueError, match="learner callable.*image.*meta device"):
        list(loader)


def test_a_config_dict_and_a_bad_seed_name_the_argument():
    x, y = toy(16)
    with pytest.raises(TypeError, match="config must be a jestkit.SelectionConfig.*got dict"):
        SelectiveLoader([(x, y)], _losses, _losses, config={"loss": "per_example"})
    with pytest.raises(ValueError, match=re.escape("seed must be an int in [0, 2**64 - 1]")):
        SelectiveLoader([(x, y)], _losses, _losses, PER_EXAMPLE, seed=2**64)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        SelectiveLoader([(x, y)], _losses, _losses, PER_EXAMPLE, generator="seed")


def test_a_loader_that_is_not_iterable_and_a_non_bool_unpack_are_named():
    for bad in (None, 123):
        with pytest.raises(TypeError, match="loader must be an iterable of super-batches"):
            SelectiveLoader(bad, policy="uniform")
    with pytest.raises(TypeError, match="unpack must be True or False"):
        SelectiveLoader([], policy="uniform", unpack="no")
