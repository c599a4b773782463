"""A reference, as the training step sees it: one interface, `Examples -> Embeddings`.

    ReferenceOutputs   the frozen reference's embeddings read from its cache by example id
                       (jestkit.dropin.cache), never a forward pass: its scoring FLOPs are 0
    ModelReference     a frozen reference model run on every super-batch (no cache): the
                       loop counts its FLOPs as reference scoring
    read_reference_info   a reference folder's reference.json, refusing a missing one or one
                       made with another loss

A reference folder, whoever built it (`jestkit reference` for Fashion-MNIST, `jestkit score` for
your shards), holds reference.json (fingerprints, loss, logit scale and bias) and cache/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jestkit.core import Embeddings
from jestkit.data.source import Examples
from jestkit.dropin.cache import CacheError, ReferenceCache
from jestkit.engine.files import read_json_record

# what every reference.json holds (jestkit reference, jestkit score), checked when it is read
REFERENCE_FIELDS = {"model_fingerprint": str, "data_fingerprint": str, "loss": str,
                    "logit_scale": float, "logit_bias": float}  # fmt: skip


@dataclass
class ReferenceOutputs:
    """The frozen reference's cached embeddings and its two scalars: never a forward pass."""

    cache: ReferenceCache
    logit_scale: float
    logit_bias: float

    def __call__(self, batch: Examples) -> Embeddings:
        """The cached embeddings of the batch's examples (looked up by id), on its device."""
        rows = self.cache.lookup(batch.ids, ["image", "text"])
        image, text = (rows[k].to(batch.images.device) for k in ("image", "text"))
        return Embeddings(image, text, self.logit_scale, self.logit_bias)


class ModelReference:
    """A frozen reference model that scores every super-batch itself (no cache): the loop
    counts its FLOPs as reference scoring."""

    def __init__(self, model):
        self.model = model

    def __call__(self, batch: Examples) -> Embeddings:
        return self.model.embeddings(batch.images, batch.tokens)


def read_reference_info(ref: Path, loss: str, build: str) -> dict:
    """reference.json of the reference folder `ref`, refusing a missing one or one made with
    another loss; `build` is the command that makes one (for the message)."""
    info_path = ref / "reference.json"
    if not info_path.exists():
        raise CacheError(f"no reference at {ref} (missing reference.json); build it with {build}")
    info = read_json_record(info_path, "a reference's reference.json", REFERENCE_FIELDS,
                            f"build the reference again with {build}")  # fmt: skip
    if info["loss"] != loss:
        raise CacheError(
            f"the reference at {ref} scores with loss={info['loss']!r}, this run uses "
            f"loss={loss!r}; build a reference with the same loss"
        )
    return info
