"""Drop-in selection for any PyTorch training loop.

Wrap the DataLoader that yields super-batches of B examples; iterate the wrapper instead and
train on the b = round((1 - filter_ratio) * B) examples it selects from each::

    loader = DataLoader(dataset, batch_size=B, shuffle=True, drop_last=True)
    selected = SelectiveLoader(
        loader,
        learner=lambda x, y: F.cross_entropy(model(x), y, reduction="none"),
        reference=lambda x, y: F.cross_entropy(reference_model(x), y, reduction="none"),
        config=SelectionConfig(loss="per_example", filter_ratio=0.9, policy="learnability"),
        seed=0,
    )
    for x, y in selected:            # x, y: the b selected examples
        ...

* The scoring callables get the super-batch the way the loop would: a tuple or list is
  unpacked as positional arguments, a dict as keyword arguments, anything else is passed as
  one argument (`unpack=False` always passes the batch as one argument). They return a (B,)
  tensor of per-example losses (loss='per_example') or jestkit.Embeddings (loss='sigmoid' /
  'softmax'); they run under torch.no_grad(). A ReferenceCache is wrapped by `CachedReference`.
* The selected sub-batch has the structure of the super-batch (tensors, tuples, lists, dicts,
  nested; lists of B strings or numbers are selected too; ints, floats and None pass through).
* len(wrapper) == len(loader) and every step yields exactly b examples, so an LR schedule sized
  on the loader stays right. Nothing global is touched: the wrapper only iterates the loader.
* Selection runs in this process on the super-batch it sees (one process, or per rank).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import torch

from jestkit.core.losses import get_loss
from jestkit.core.outputs import Embeddings
from jestkit.core.policies import SelectionConfig, Selector, get_policy, select
from jestkit.core.validate import (
    check_bool,
    check_device,
    check_state,
    check_tensor,
    selected_size,
)

Batch = Any
Scorer = Callable[..., Any]
_PASS_THROUGH = (int, float, bool, complex, type(None))


# --- batch structure -------------------------------------------------------------------------


def batch_size_of(batch: Batch) -> int:
    """B: the leading size of the first tensor (or per-example list) found in the batch."""
    size = _find_size(batch)
    if size is None:
        raise TypeError(
            f"cannot find the super-batch size: the batch (a {type(batch).__name__}) holds no "
            f"tensor, numpy array or list of strings"
        )
    return size


def _find_size(batch: Batch) -> int | None:
    if torch.is_tensor(batch) or _is_numpy(batch):
        return batch.shape[0] if batch.ndim > 0 else None
    if isinstance(batch, Mapping):
        values = batch.values()
    elif isinstance(batch, list | tuple):
        if batch and all(isinstance(v, str | bytes) for v in batch):
            return len(batch)
        values = batch
    else:
        return None
    for v in values:
        size = _find_size(v)
        if size is not None:
            return size
    return None


def index_batch(batch: Batch, index: torch.Tensor, size: int, path: str = "batch") -> Batch:
    """The examples `index` of a super-batch of `size` examples, keeping the batch's structure.

    Tensors and numpy arrays with a leading dimension of `size` are indexed; lists and tuples of
    `size` strings or numbers are indexed; tuples, lists (namedtuples too) and mappings are
    walked; ints, floats, bools, None and other lists of numbers pass through. Anything else
    raises TypeError naming its type and path.
    """
    if torch.is_tensor(batch):
        if batch.dim() == 0:
            return batch
        if batch.shape[0] != size:
            raise ValueError(
                f"{path} is a tensor of shape {tuple(batch.shape)} but the super-batch has "
                f"{size} examples: every batched tensor needs a leading dimension of {size}"
            )
        return batch[index.to(batch.device)]
    if _is_numpy(batch):
        if batch.ndim == 0:
            return batch
        if batch.shape[0] != size:
            raise ValueError(
                f"{path} is an array of shape {batch.shape} but the super-batch has {size} examples"
            )
        return batch[index.cpu().numpy()]
    if isinstance(batch, Mapping):
        items = {k: index_batch(v, index, size, f"{path}[{k!r}]") for k, v in batch.items()}
        try:
            return type(batch)(items)
        except TypeError:
            return items
    if isinstance(batch, list | tuple):
        if batch and all(isinstance(v, (*_PASS_THROUGH, str, bytes)) for v in batch):
            # a list of per-example values (captions, ids from a custom collate_fn)
            if len(batch) == size:
                picked = [batch[i] for i in index.tolist()]
                return picked if isinstance(batch, list) else tuple(picked)
            if all(isinstance(v, str | bytes) for v in batch):
                raise ValueError(
                    f"{path} is a list of {len(batch)} strings but the super-batch has {size} "
                    f"examples"
                )
            return batch  # a short list of numbers that is not per-example (e.g. a shape)
        picked = [index_batch(v, index, size, f"{path}[{i}]") for i, v in enumerate(batch)]
        if isinstance(batch, list):
            return picked
        return type(batch)(*picked) if hasattr(batch, "_fields") else type(batch)(picked)
    if isinstance(batch, (*_PASS_THROUGH, str, bytes)):
        return batch
    raise TypeError(
        f"cannot select examples from {path} of type {type(batch).__module__}."
        f"{type(batch).__qualname__}: batches must be tensors, numpy arrays, lists of strings, "
        f"or tuples/lists/dicts of these (collate it into tensors, or pass a collate_fn)"
    )


def move_batch(batch: Batch, device: torch.device | str) -> Batch:
    """The batch with every tensor moved to `device` (structure kept)."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        items = {k: move_batch(v, device) for k, v in batch.items()}
        try:
            return type(batch)(items)
        except TypeError:
            return items
    if isinstance(batch, list | tuple):
        moved = [move_batch(v, device) for v in batch]
        if isinstance(batch, list):
            return moved
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def _is_numpy(x: object) -> bool:
    return type(x).__module__ == "numpy" and hasattr(x, "shape") and hasattr(x, "ndim")


def call_scorer(fn: Scorer, batch: Batch, unpack: bool = True) -> Any:
    """fn(*batch) for a tuple/list, fn(**batch) for a dict with string keys, else fn(batch)."""
    if unpack and isinstance(batch, list | tuple) and not hasattr(batch, "_fields"):
        return fn(*batch)
    if unpack and isinstance(batch, Mapping) and all(isinstance(k, str) for k in batch):
        return fn(**batch)
    return fn(batch)


# --- reference outputs from a cache ----------------------------------------------------------


class CachedReference:
    """Reference outputs looked up by example id in a jestkit ReferenceCache.

    ids: where a super-batch keeps its example ids: a dict key ('id'), a tuple position (2), or
    a callable batch -> ids. The ids are of the cache's kind: an integer tensor (int64 caches),
    a list of str (str caches: e.g. WebDataset keys, which a DataLoader collates into a list),
    or a list of 32-digit hex strings or a jestkit.dropin.cache.UID_DTYPE array (uid128 caches).
    column: the cached column holding the per-example loss.
    Called with the super-batch (as a single argument; SelectiveLoader knows this), returns the
    (B,) float tensor of cached losses, on the device of the batch's first tensor. Missing ids
    raise KeyError naming them; ids of another kind raise TypeError.
    """

    unpack = False

    def __init__(self, cache: Any, ids: str | int | Callable[[Batch], Any] = "id",
                 column: str = "loss"):  # fmt: skip
        if not hasattr(cache, "lookup"):
            raise TypeError(
                f"cache must be a jestkit.dropin.cache.ReferenceCache (with .lookup), got "
                f"{type(cache).__name__}"
            )
        self.cache, self.ids, self.column = cache, ids, column

    def batch_ids(self, batch: Batch) -> Any:
        if callable(self.ids):
            return self.ids(batch)
        try:
            return batch[self.ids]
        except (KeyError, IndexError, TypeError) as e:
            raise KeyError(
                f"CachedReference(ids={self.ids!r}): the batch (a {type(batch).__name__}) has no "
                f"entry {self.ids!r} holding the example ids"
            ) from e

    def __call__(self, batch: Batch) -> torch.Tensor:
        ids = self.batch_ids(batch)
        try:
            found = self.cache.lookup(ids, columns=[self.column])
        except KeyError as e:
            msg = e.args[0] if e.args else repr(e)
            raise KeyError(f"CachedReference could not look up this super-batch: {msg}") from e
        out = torch.as_tensor(found[self.column])
        device = _first_device(batch)  # string ids carry no device; the batch's tensors do
        if device is not None:
            out = out.to(device)
        return out.reshape(out.shape[0]) if out.dim() == 2 and out.shape[1] == 1 else out


def _first_device(batch: Batch) -> torch.device | None:
    if torch.is_tensor(batch):
        return batch.device
    values = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(batch, Mapping | list | tuple):
        for v in values:
            device = _first_device(v)
            if device is not None:
                return device
    return None


# --- the wrapper -----------------------------------------------------------------------------


class SelectiveLoader:
    """Iterate a loader of super-batches, yielding the selected sub-batch of each.

    loader: any iterable of batches (a DataLoader over a map-style or iterable dataset) whose
        batches hold B examples: set its batch_size to B. Use drop_last=True, or make sure the
        last super-batch still holds at least b examples (b of it are then selected).
    learner, reference: callables scoring a super-batch (see the module docstring); a policy
        that does not use one may leave it None (uniform needs neither).
    config: SelectionConfig; keyword overrides replace its fields. Its default loss is the
        paper's 'sigmoid'; per-example tasks set loss='per_example'.
    seed / generator: the selection's randomness (state_dict() saves it).
    device: move each super-batch there before scoring (the sub-batch stays there).
    unpack: pass tuples/dicts to the callables unpacked (default) or as one argument.
    """

    def __init__(
        self,
        loader: Iterable[Batch],
        learner: Scorer | None = None,
        reference: Scorer | None = None,
        config: SelectionConfig | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        unpack: bool = True,
        **overrides,
    ):
        if not isinstance(loader, Iterable) and not hasattr(loader, "__getitem__"):
            raise TypeError(
                f"loader must be an iterable of super-batches (a DataLoader), got "
                f"{type(loader).__name__}"
            )
        self.loader = loader
        self.learner, self.reference = learner, reference
        self.selector = Selector(config, seed=seed, generator=generator, **overrides)
        self.config = self.selector.config
        self.device = None if device is None else check_device("device", device)
        self.unpack = check_bool("unpack", unpack)
        self.b: int | None = None  # fixed from the first super-batch (or the loader's batch_size)
        self.batch_size: int | None = None  # B: the loader's batch_size, or the first super-batch's
        self.last_indices: torch.Tensor | None = None
        for name, fn in (("learner", learner), ("reference", reference)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a callable scoring a super-batch, got "
                                f"{type(fn).__name__}")  # fmt: skip
        for name in self._uses():
            if getattr(self, name) is None:
                raise ValueError(f"policy {self.config.policy!r} needs a {name} callable")
        size = getattr(loader, "batch_size", None)
        if isinstance(size, int) and size > 0:
            self.batch_size = size
            self.b = selected_size(size, self.config.filter_ratio)
            self._check_last_batch(size)

    def _uses(self) -> tuple[str, ...]:
        """The callables the config's policy scores with (jestkit.core.policies' table)."""
        policy = get_policy(self.config.policy)
        return ("learner",) * policy.uses_learner + ("reference",) * policy.uses_reference

    def _check_last_batch(self, size: int) -> None:
        """A DataLoader whose last super-batch would be smaller than b: fail now, not at the end."""
        if getattr(self.loader, "drop_last", True):
            return
        try:
            n = len(self.loader.sampler)  # the examples of one epoch (a sampler may subsample)
        except (TypeError, AttributeError):
            return  # iterable dataset or no sampler: checked when the batch comes
        rest = n % size
        if 0 < rest < self.b:
            raise ValueError(
                f"the loader's last super-batch holds {rest} examples, fewer than the b = {self.b} "
                f"selected each step; pass drop_last=True to the DataLoader"
            )

    def __len__(self) -> int:
        """The wrapped loader's len: one selected sub-batch per super-batch."""
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            yield self.select(batch)

    def select(self, batch: Batch) -> Batch:
        """The selected sub-batch of one super-batch (indices kept in self.last_indices)."""
        if self.device is not None:
            batch = move_batch(batch, self.device)
        size = batch_size_of(batch)
        if self.b is None:
            self.batch_size, self.b = size, selected_size(size, self.config.filter_ratio)
        if self.batch_size is not None and size > self.batch_size:
            raise ValueError(
                f"a super-batch of {size} examples, larger than the first super-batch's "
                f"{self.batch_size}: b = {self.b} was fixed from it for the whole run (a short "
                f"first batch?); give the loader a batch_size attribute, or make the first "
                f"super-batch a full one"
            )
        if size < self.b:
            raise ValueError(
                f"a super-batch of {size} examples is smaller than the b = {self.b} selected each "
                f"step (the loader's last, short batch?); use drop_last=True"
            )
        config = self.config
        if selected_size(size, config.filter_ratio) != self.b:
            # a short last super-batch: still select exactly b of it
            config = replace(config, filter_ratio=1.0 - self.b / size)
        learner = self._score("learner", batch, size)
        reference = self._score("reference", batch, size)
        index = select(learner, reference, config, generator=self.selector.generator,
                       batch_size=size)  # fmt: skip
        self.last_indices = index
        return index_batch(batch, index, size)

    def _score(self, name: str, batch: Batch, size: int) -> Any:
        fn = getattr(self, name)
        if fn is None or name not in self._uses():
            return None
        unpack = self.unpack and getattr(fn, "unpack", True)
        with torch.no_grad():
            out = call_scorer(fn, batch, unpack)
        return check_scores(name, out, size, self.config.loss)

    def state_dict(self) -> dict:
        return {"selector": self.selector.state_dict(), "b": self.b}

    def load_state_dict(self, state: dict) -> None:
        """Continue from state_dict(); a state of a loader selecting another b is refused."""
        state = check_state("state", state, ("selector",), "SelectiveLoader")
        b = state.get("b", self.b)
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"this state holds b = {b!r}; expected a positive int")
        if b is not None and self.b is not None and b != self.b:
            raise ValueError(
                f"this state was saved by a loader selecting b = {b} per step, this one selects "
                f"b = {self.b} (B = {self.batch_size}, filter_ratio = {self.config.filter_ratio})"
                f": resume with the same loader and config"
            )
        self.selector.load_state_dict(state["selector"])
        self.b = b


def check_scores(name: str, out: Any, size: int, loss: str) -> Any:
    """A scoring callable's output, checked against the super-batch: clear errors, not deep ones."""
    if not get_loss(loss).contrastive:
        if isinstance(out, Embeddings):
            raise TypeError(
                f"the {name} callable returned jestkit.Embeddings but the config's loss is "
                f"'per_example'; set loss='sigmoid' or 'softmax' for contrastive outputs"
            )
        if not torch.is_tensor(out):
            raise TypeError(
                f"the {name} callable must return a (B,) tensor of per-example losses, got "
                f"{type(out).__name__}"
            )
        check_tensor(f"the {name} callable's output", out)
        if out.dim() == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.dim() == 0:
            raise ValueError(
                f"the {name} callable returned a scalar loss; selection needs one loss per "
                f"example, shape ({size},): use reduction='none' (e.g. "
                f"F.cross_entropy(logits, y, reduction='none'))"
            )
        if out.dim() != 1 or out.shape[0] != size:
            raise ValueError(
                f"the {name} callable returned shape {tuple(out.shape)}; expected ({size},), one "
                f"loss per example of the super-batch (sum token losses per sequence first)"
            )
        out = out.detach()
        if out.is_complex():
            raise TypeError(
                f"the {name} callable returned complex losses ({out.dtype}); selection needs "
                f"real ones"
            )
        if not out.is_floating_point():
            out = out.float()
        if not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out)).sum())
            raise ValueError(
                f"the {name} callable returned {bad} NaN or Inf loss(es) of {size}; selection "
                f"needs finite losses (a diverged model, or a bad example?)"
            )
        return out
    if not isinstance(out, Embeddings):
        raise TypeError(
            f"the {name} callable must return jestkit.Embeddings for loss={loss!r}, got "
            f"{type(out).__name__} (per-example losses need loss='per_example')"
        )
    for part in ("image", "text"):
        t = getattr(out, part)
        if not torch.is_tensor(t) or t.dim() != 2:
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(
                f"the {name} callable returned {part} embeddings of shape {shape}; expected "
                f"(B, d) = ({size}, d)"
            )
        check_tensor(f"the {name} callable's {part} embeddings", t)
        if t.is_complex():
            raise TypeError(f"the {name} callable returned complex {part} embeddings ({t.dtype})")
    if len(out) != size:
        raise ValueError(
            f"the {name} callable returned embeddings of {len(out)} examples; the super-batch "
            f"has {size}"
        )
    for part in ("image", "text"):
        t = getattr(out, part)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"the {name} callable returned NaN or Inf in its {part} embeddings")
    return out
