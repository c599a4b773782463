"""What a run on your own data is made of, chosen by the CLI's flags (`jestkit train`,
`jestkit score`):

    data       --shards.pattern: WebDataset tar / Parquet shards, each rank reading its own
               streams in --shards.workers processes (jestkit.data.parallel.ParallelSource)
    model      --open_clip NAME|JSON: an open_clip config (jestkit.openclip.dual.OpenClipDual,
               its own image preprocessing and tokenizer); none: jestkit's dual encoder (--model.*:
               grayscale 28 x 28 images and hashed word ids)
    reference  --reference PATH: a reference folder (reference.json + cache/, by `jestkit
               score` for shards or `jestkit reference` for Fashion-MNIST), or an open_clip
               checkpoint file (the reference model then runs in the loop on every super-batch,
               its FLOPs counted as reference scoring; --reference_model names its config when it
               is not the learner's)
    device     --device cpu|cuda (jestkit.engine.device)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from jestkit.data.parallel import ParallelSource
from jestkit.data.shards import shard_digest
from jestkit.data.stream import HashedWords, ShardsConfig, StreamSource, grayscale
from jestkit.dropin.cache import CacheError, ReferenceCache, fingerprint_ids, fingerprint_state_dict
from jestkit.dropin.distributed import Distributed
from jestkit.engine.reference import ModelReference, ReferenceOutputs, read_reference_info
from jestkit.fashion.reference import load_reference as load_fashion_reference
from jestkit.models.factory import IMAGE_SIZE, MAX_LEN, ModelConfig, build_model


@dataclass
class OwnModel:
    """Your own model, reference and device (`jestkit train`).

    Attributes:
        open_clip: an open_clip model config: a name open_clip knows (built-in, or registered
            with open_clip.add_model_config) or a JSON config file; None: jestkit's dual encoder
            (--model.*)
        reference: a reference folder (reference.json + cache/) or a checkpoint file (open_clip's,
            or a `jestkit train` run's checkpoint.pt); None: no reference (policies that need
            one refuse)
        reference_model: the open_clip config of a reference checkpoint (default: --open_clip)
        device: where the model trains: cpu, or cuda (under torchrun: cuda:LOCAL_RANK, NCCL)
    """

    open_clip: str | None = None
    reference: str | None = None
    reference_model: str | None = None
    device: Literal["cpu", "cuda"] = "cpu"


@dataclass
class OwnRun:
    """The choices that make a run `own` (see the module docstring)."""

    shards: ShardsConfig = field(default_factory=ShardsConfig)
    own: OwnModel = field(default_factory=OwnModel)

    @property
    def is_own(self) -> bool:
        o = self.own
        reference_file = o.reference is not None and Path(o.reference).is_file()
        return bool(self.shards.pattern or o.open_clip or reference_file or o.device != "cpu")


def load_any_reference(run: OwnRun, loss: str, learner: nn.Module, data=None, source=None,
                       device: torch.device | None = None):  # fmt: skip
    """The reference of run.own.reference: cached embeddings by id (a folder), or a frozen
    open_clip model (a file). Its loss must be the run's."""
    if run.own.reference is None:
        raise ValueError("this policy needs a reference: give --reference (a folder or a file)")
    path = Path(run.own.reference)
    if path.is_file():
        spec = run.own.reference_model or run.own.open_clip
        if spec is None:  # jestkit's dual encoder: a `jestkit train` run's checkpoint.pt
            return ModelReference(jestkit_reference(path, learner, loss).to(device or "cpu"))
        from jestkit.openclip.dual import matching_reference  # open_clip is optional

        reference = matching_reference(spec, str(path), run.own.open_clip, learner)
        if reference.loss_name != loss:
            raise ValueError(
                f"the reference {spec!r} is a {reference.loss_name} model, this run selects with "
                f"loss={loss!r}"
            )
        return ModelReference(reference.to(device or "cpu"))
    if run.shards.pattern:
        return load_stream_reference(path, source, loss)
    return load_fashion_reference(path, data, loss)


def jestkit_reference(path: Path, learner: nn.Module, loss: str) -> nn.Module:
    """A `jestkit train` run's checkpoint.pt as a frozen reference of the learner's architecture
    (--model.*, --shards.vocab_size): the reference scores the same inputs as the learner."""
    import copy

    from jestkit.engine.checkpoint import CheckpointError, is_checkpoint, load_checkpoint

    try:
        ours = is_checkpoint(path)
    except CheckpointError:  # not a checkpoint jestkit can read: an open_clip one, or damaged
        ours = False
    if not ours:
        raise ValueError(
            f"--reference {path} is not a jestkit checkpoint.pt: for an open_clip checkpoint, "
            "name its config with --reference_model (or --open_clip for the learner's)"
        )
    state = load_checkpoint(path)
    model = copy.deepcopy(learner)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise ValueError(
            f"--reference {path} does not fit the learner's --model.* and --shards.vocab_size "
            f"with loss {loss!r} (a jestkit reference checkpoint must be of the learner's "
            f"architecture): {str(err).splitlines()[0]}"
        ) from None
    return model.eval().requires_grad_(False)


def reference_fingerprint(reference) -> str | None:
    """What identifies the reference a run selects with: its cache's model fingerprint, or the
    frozen model's weights (a checkpoint scoring in the loop); None without a reference."""
    if reference is None:
        return None
    if isinstance(reference, ModelReference):
        return fingerprint_state_dict(reference.model.state_dict())
    return reference.cache.meta.model_fingerprint


def build_learner(run: OwnRun, model_config: ModelConfig, loss: str, vocab_size: int | None,
                  seed: int):  # fmt: skip
    """The learner, from `seed`'s random weights: open_clip's config or jestkit's encoder."""
    torch.manual_seed(seed)
    if run.own.open_clip is None:
        return build_model(model_config, vocab_size or run.shards.vocab_size, loss)
    from jestkit.openclip.dual import open_clip_model  # open_clip is optional

    model = open_clip_model(run.own.open_clip)
    if model.loss_name != loss:
        raise ValueError(
            f"the open_clip model {run.own.open_clip!r} trains with the {model.loss_name} loss "
            f"(SigLIP configs have a logit_bias): set --selection.loss {model.loss_name}"
        )
    return model


def model_inputs(run: OwnRun, model: nn.Module):
    """The learner's image transform and tokenizer."""
    if run.own.open_clip is None:
        transform = grayscale(IMAGE_SIZE)
        tokenize = HashedWords(run.shards.vocab_size, MAX_LEN)
    else:
        from jestkit.openclip.dual import open_clip_inputs  # open_clip is optional

        transform, tokenize = open_clip_inputs(run.own.open_clip, model)
    return transform, tokenize


def image_geometry(run: OwnRun, model: nn.Module, model_config: ModelConfig
                   ) -> tuple[int, int] | None:  # fmt: skip
    """(image size, patch size) of the learner's image tower; None for an open_clip tower that
    is no ViT (a CNN, a timm tower: no patch)."""
    if run.own.open_clip is None:
        return IMAGE_SIZE, model_config.patch_size
    visual = model.model.visual
    size, patch = getattr(visual, "image_size", None), getattr(visual, "patch_size", None)
    if size is None or patch is None:
        return None
    size, patch = (v if isinstance(v, int) else v[0] for v in (size, patch))
    return int(size), int(patch)


def resolved_draft_side(run: OwnRun, model: nn.Module, model_config: ModelConfig,
                        config) -> int | None:  # fmt: skip
    """--shards.draft_side as pixels (None: every candidate decoded in full), given the run's
    TrainConfig. auto drafts only where it changes nothing but the learner's coarse view: the
    policy scores with the learner at a --scoring.patch_size coarser than the model's patch, and
    no reference model scores the candidates' images in the loop (a reference cache reads no
    image); the side is then image_size x patch / scoring patch (jestkit.data.draft.draft_side).
    A number drafts to it whatever the view; a policy that scores nothing is refused (every
    candidate is trained on: drafting would decode each twice)."""
    from jestkit.data.draft import draft_side

    side, policy = run.shards.draft_side, config.policy
    if side == "none":
        return None
    if side != "auto":
        if not policy.scored:
            raise ValueError(
                f"--shards.draft_side {side}: the policy {config.selection.policy} scores no "
                f"candidate (every one drawn is trained on), so drafting would only decode each "
                f"twice; use --shards.draft_side none"
            )
        return side
    model_reference = policy.uses_reference and run.own.reference is not None and \
        Path(run.own.reference).is_file()  # fmt: skip
    geometry = image_geometry(run, model, model_config)
    if not policy.uses_learner or model_reference or geometry is None:
        return None
    return draft_side(*geometry, config.scoring.patch_size)


def build_source(run: OwnRun, model: nn.Module, dist: Distributed | None = None,
                 snapshot_every: int = 1, draft_side: int | None = None
                 ) -> ParallelSource:  # fmt: skip
    """The shards read in parallel (each rank its own streams, --shards.workers processes),
    with the learner's image transform and tokenizer; draft_side: the candidates drafted
    (resolved_draft_side; None: decoded in full)."""
    dist = dist or Distributed()
    transform, tokenize = model_inputs(run, model)
    return run.shards.parallel(transform, tokenize, dist.rank, dist.world_size, dist.group,
                               pin_memory=dist.device.type == "cuda",
                               snapshot_every=snapshot_every,
                               draft_side=draft_side)  # fmt: skip


def shards_fingerprint(paths: list[str]) -> str:
    """The data fingerprint of a shard cache: the listed shard files' names, sizes and contents
    (jestkit.data.shards.shard_digest: member headers and caption bytes, or a Parquet footer and
    its caption and id columns; no image is decoded), in any order: the cache is keyed by id, so
    the same shards listed in another order share it."""
    files = sorted(f"{Path(p).name}:{os.path.getsize(p)}:{shard_digest(p)}" for p in paths)
    return fingerprint_ids(files, "jestkit shards v2")


def load_stream_reference(ref_dir: str | os.PathLike,
                          source: StreamSource | ParallelSource | None,
                          loss: str) -> ReferenceOutputs:  # fmt: skip
    """The cached reference of a shard folder built by score_shards; refuses a missing one, one
    of other shards or another loss."""
    ref = Path(ref_dir)
    build = f"`jestkit score --shards.pattern ... --reference CHECKPOINT --out {ref}`"
    info = read_reference_info(ref, loss, build)
    shards = list(source.shards) if source is not None else None
    data_fp = shards_fingerprint(shards) if shards is not None else info["data_fingerprint"]
    if data_fp != info.get("data_fingerprint"):
        listed = ", ".join(shards[:3]) + (", ..." if len(shards) > 3 else "")
        raise CacheError(
            f"the reference cache at {ref} was built for other shards ({info.get('shards')}): "
            f"these ({listed[:200]}) have other file names, sizes or contents; score "
            "them with `jestkit score` (into another --out)"
        )
    cache = ReferenceCache.open(ref / "cache", info["model_fingerprint"], data_fp)
    return ReferenceOutputs(cache, info["logit_scale"], info["logit_bias"])
