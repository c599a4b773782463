"""open_clip models as a jestkit model source: `pip install 'jestkit[open_clip]'`.

    embeddings(model_out)                 jestkit.Embeddings of an open_clip model's output
    selection_loss(model)                 'sigmoid' for a model with a logit_bias (SigLIP), else
                                          'softmax' (CLIP)
    make_loss(model, rank, world_size)    open_clip's own training loss for it: SigLipLoss or
                                          ClipLoss
    create_model(model, checkpoint)       an open_clip model from a config (name, JSON file or
                                          dict) and a checkpoint file
    load_reference(model, checkpoint)     the same, frozen (requires_grad False), in eval mode
    CachedEmbeddings(cache, scale, bias)  the reference's embeddings read from a jestkit
                                          ReferenceCache by example id, instead of a forward pass
    JESTTask(learner, reference, selector)  one JEST step, shaped like open_clip's training tasks

The losses are the same functions (tests/dropin/test_openclip.py checks it on the same
outputs): for a batch of n pairs, open_clip's SigLipLoss equals jestkit.core.losses.sigmoid_loss
and ClipLoss equals jestkit.core.losses.softmax_loss. jestkit's selection scores the same pair
losses *summed*, without the papers' normalisation: the batch score of the sigmoid loss is
n * SigLipLoss, that of the softmax loss 2n * ClipLoss (both directions summed, not averaged).
A constant factor per batch size does not change which sub-batch is selected.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jestkit.core import Embeddings, Selector
from jestkit.dropin.cache import CacheMeta, ReferenceCache, fingerprint_ids, fingerprint_state_dict
from jestkit.dropin.distributed import GlobalSelector, redistribute, unwrap

try:
    import open_clip
    from open_clip.loss import ClipLoss, SigLipLoss
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "jestkit.dropin.openclip needs open_clip: pip install 'jestkit[open_clip]' "
        f"(importing it failed: {err})"
    ) from err

__all__ = [
    "CachedEmbeddings",
    "JESTTask",
    "StepOutput",
    "create_model",
    "embeddings",
    "freeze",
    "load_reference",
    "make_loss",
    "reference_cache_meta",
    "selection_loss",
]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")
_OUTPUT_KEYS = ("image_features", "text_features", "logit_scale", "logit_bias")


def _as_dict(model_out: Any) -> dict[str, torch.Tensor]:
    """An open_clip model's output as a dict: the dict itself (output_dict=True) or the tuple
    (image_features, text_features, logit_scale[, logit_bias]) of output_dict=False."""
    if isinstance(model_out, Mapping):
        return dict(model_out)
    if isinstance(model_out, Sequence) and len(model_out) in (3, 4):
        return dict(zip(_OUTPUT_KEYS, model_out, strict=False))
    raise TypeError(
        "expected an open_clip model's output: a dict with image_features, text_features, "
        "logit_scale (and logit_bias), or the tuple (image_features, text_features, "
        f"logit_scale[, logit_bias]); got {type(model_out).__name__}"
    )


def embeddings(model_out: Any) -> Embeddings:
    """jestkit.Embeddings of an open_clip model's output on a batch of image-text pairs.

    model_out: what `model(images, texts)` returns, a dict or a tuple. open_clip's features are
    L2-normalised and its logit_scale is already exponentiated (the multiplier t), as
    Embeddings expects. A model without logit_bias (CLIP configs) gets logit_bias 0.0, what its
    logits carry; SigLIP configs (init_logit_bias) carry their learned bias.
    """
    out = _as_dict(model_out)
    for key in ("image_features", "text_features", "logit_scale"):
        if out.get(key) is None:
            raise ValueError(
                f"the model output has no {key!r}; score image-text pairs with "
                "model(images, texts), both given"
            )
    image, text = out["image_features"], out["text_features"]
    if image.dim() != 2 or image.shape != text.shape:
        raise ValueError(
            f"image_features {tuple(image.shape)} and text_features {tuple(text.shape)} must be "
            "(n, d) tensors of the same shape"
        )
    bias = out.get("logit_bias")
    return Embeddings(image, text, out["logit_scale"], 0.0 if bias is None else bias)


def selection_loss(model: nn.Module) -> str:
    """'sigmoid' for an open_clip model with a logit_bias (SigLIP configs), else 'softmax'."""
    return "sigmoid" if getattr(unwrap(model), "logit_bias", None) is not None else "softmax"


def make_loss(model: nn.Module, rank: int = 0, world_size: int = 1, **kwargs) -> nn.Module:
    """open_clip's training loss for `model`, as open_clip_train would create it: SigLipLoss for
    a model with a logit_bias, else ClipLoss (cache_labels=True, other options open_clip's
    defaults; keyword arguments are passed on, e.g. gather_with_grad=True)."""
    if selection_loss(model) == "sigmoid":
        return SigLipLoss(rank=rank, world_size=world_size, **kwargs)
    return ClipLoss(cache_labels=True, rank=rank, world_size=world_size, **kwargs)


def _loss_kind(loss: nn.Module) -> str | None:
    """The jestkit loss name an open_clip loss module trains with, None if unknown."""
    if isinstance(loss, SigLipLoss):
        return "sigmoid"
    if isinstance(loss, ClipLoss):
        return "softmax"
    return None


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and requires_grad False on every parameter; returns the model."""
    model.eval()
    model.requires_grad_(False)
    return model


def _read_config(model: str | os.PathLike | Mapping) -> dict | None:
    """A model config given as a dict or a JSON file (a bare config or open_clip_config.json's
    {"model_cfg": ...}); None when `model` is a config name."""
    if isinstance(model, Mapping):
        cfg = dict(model)
    elif isinstance(model, os.PathLike) or str(model).endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"no open_clip model config at {path}")
        cfg = json.loads(path.read_text())
    else:
        return None
    cfg = dict(cfg.get("model_cfg", cfg))
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ValueError(f"the open_clip model config lacks {missing}: not a model config")
    return cfg


def create_model(
    model: str | os.PathLike | Mapping,
    checkpoint: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    **create_kwargs,
) -> nn.Module:
    """An open_clip model returning dict outputs, from a config and optional weights.

    model: a config name open_clip knows (a built-in such as 'ViT-B-32', one registered with
        open_clip.add_model_config, or a 'local-dir:' / 'hf-hub:' source), a JSON config file
        (a bare model config or open_clip_config.json's {"model_cfg": ...}), or a config dict
        (embed_dim, vision_cfg, text_cfg, ...). A dict or file is not added to open_clip's
        registry.
    checkpoint: the weights: a checkpoint file (open_clip_train's epoch_N.pt with its
        'state_dict', DDP's 'module.' prefix included, a bare state dict, .safetensors,
        big_vision .npz), or, with a config name, a pretrained tag that open_clip downloads.
        None: random weights.
    Other keyword arguments go to open_clip.create_model.
    """
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.suffix in CHECKPOINT_SUFFIXES and not path.is_file():
            raise FileNotFoundError(f"no checkpoint file at {path}")
    cfg = _read_config(model)
    kwargs = dict(device=device, precision=precision, output_dict=True, **create_kwargs)
    if cfg is None:
        return open_clip.create_model(str(model), pretrained=checkpoint, **kwargs)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"no checkpoint file at {checkpoint} (a pretrained tag needs a config name)"
        )
    with tempfile.TemporaryDirectory() as tmp:  # open_clip's 'local-dir:' config source
        (Path(tmp) / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
        net = open_clip.create_model(f"local-dir:{tmp}", **kwargs)
    if checkpoint is not None:
        open_clip.load_checkpoint(net, str(checkpoint), strict=True)
    return net


def load_reference(
    model: str | os.PathLike | Mapping,
    checkpoint: str | os.PathLike | None = None,
    **kwargs,
) -> nn.Module:
    """create_model(model, checkpoint, **kwargs), frozen (requires_grad False) and in eval
    mode: JEST's reference. checkpoint None gives random weights (tests only)."""
    return freeze(create_model(model, checkpoint, **kwargs))


@dataclass
class CachedEmbeddings:
    """The frozen reference's embeddings read from a jestkit ReferenceCache (columns 'image'
    and 'text') by example id, with its logit scale (the multiplier t) and bias."""

    cache: ReferenceCache
    logit_scale: float
    logit_bias: float = 0.0

    @classmethod
    def of(cls, cache: ReferenceCache, reference: nn.Module) -> CachedEmbeddings:
        """The cache of `reference`, with its scalars (logit_scale exponentiated, as open_clip's
        forward does; bias 0 without one)."""
        ref = unwrap(reference)
        bias = getattr(ref, "logit_bias", None)
        return cls(
            cache,
            float(ref.logit_scale.detach().exp()),
            0.0 if bias is None else float(bias.detach()),
        )

    def __call__(self, ids: torch.Tensor) -> Embeddings:
        rows = self.cache.lookup(ids, ["image", "text"])
        return Embeddings(rows["image"], rows["text"], self.logit_scale, self.logit_bias)


def reference_cache_meta(reference: nn.Module, ids: torch.Tensor, *extra: str) -> CacheMeta:
    """The CacheMeta of a reference cache: the reference's weights, the example ids (plus any
    extra strings that change the inputs: tokenizer, preprocessing) and two embedding columns."""
    ref = unwrap(reference)
    dim = getattr(getattr(ref, "visual", None), "output_dim", None)
    if not isinstance(dim, int):
        raise ValueError("cannot tell the reference's embedding width: build CacheMeta yourself")
    return CacheMeta(
        fingerprint_state_dict(ref.state_dict()),
        fingerprint_ids(ids, *extra),
        columns={"image": [dim], "text": [dim]},
    )


class StepOutput(dict):
    """The losses dict open_clip's training tasks return (scalar tensors only: 'loss', the
    loss module's '*_loss' terms and 'logit_scale', so open_clip_train's logging can call
    .item() on each), plus `.selected`: the (b,) positions of the super-batch trained on, in
    selection order (global positions under a GlobalSelector)."""

    def __init__(self, losses: Mapping[str, torch.Tensor], selected: torch.Tensor):
        super().__init__(losses)
        self.selected = selected


Reference = nn.Module | Callable[[torch.Tensor], Embeddings]


class JESTTask(nn.Module):
    """One JEST training step for an open_clip learner, shaped like open_clip's training tasks
    (CLIPTask, DistillCLIPTask: a module holding `trainable_module`, the frozen teacher and
    `loss`, whose forward(images, texts) returns the losses dict).

    learner: the open_clip model being trained (output_dict=True or not; wrapped in DDP or not).
    reference: a frozen open_clip model (load_reference; frozen here if it is not), run on the
        super-batch under no_grad, or a callable ids -> Embeddings such as CachedEmbeddings
        (forward then needs `ids`).
    selector: jestkit.Selector (one process) or jestkit.dropin.distributed.GlobalSelector (torchrun:
        each rank passes its shard of the super-batch and trains on b / world_size examples).
        Its config's loss must be the training loss's: 'sigmoid' for SigLipLoss, 'softmax' for
        ClipLoss.
    loss: an open_clip loss module; default make_loss(learner) with the selector's ranks.

    forward(images, texts, ids=None), in training mode: the learner (unless the policy does
    not need it) and the reference score the super-batch without gradients, the selector picks
    b of its B pairs, and the learner's loss on those b, with gradients, is returned as a
    StepOutput (its `.selected` says which). In eval mode forward is the learner's forward,
    so open_clip's evaluation can call the task like a model. The reference stays in eval mode
    whatever task.train() is given.
    """

    def __init__(
        self,
        learner: nn.Module,
        reference: Reference | None,
        selector: Selector | GlobalSelector,
        loss: nn.Module | None = None,
    ):
        super().__init__()
        if not isinstance(selector, Selector | GlobalSelector):
            raise TypeError(
                "selector must be a jestkit.Selector or jestkit.dropin.distributed.GlobalSelector, "
                f"got {type(selector).__name__}"
            )
        config = selector.config
        if config.loss not in ("sigmoid", "softmax"):
            raise ValueError(
                f"open_clip models are contrastive: the selector's loss must be 'sigmoid' or "
                f"'softmax', got {config.loss!r}"
            )
        self.trainable_module = learner
        self.selector = selector
        self.distributed = isinstance(selector, GlobalSelector)
        rank, world_size = self._ranks()
        self.loss = make_loss(learner, rank, world_size) if loss is None else loss
        kind = _loss_kind(self.loss)
        if kind is not None and kind != config.loss:
            raise ValueError(
                f"the selector scores with loss={config.loss!r} but the task trains with "
                f"{type(self.loss).__name__} ({kind!r}): JEST selects by the training loss, "
                f"use SelectionConfig(loss={kind!r})"
            )
        needs_reference = config.policy in ("easy_reference", "learnability")
        if needs_reference and reference is None:
            raise ValueError(f"policy {config.policy!r} needs a reference; got None")
        if isinstance(reference, nn.Module):
            self.reference = freeze(reference)
            self.reference_lookup = None
        elif reference is None or callable(reference):
            self.reference = None
            self.reference_lookup = reference
        else:
            raise TypeError(
                "reference must be an open_clip model or a callable ids -> Embeddings, got "
                f"{type(reference).__name__}"
            )
        if config.loss == "sigmoid":
            for name, model in (("learner", learner), ("reference", self.reference)):
                if model is not None and getattr(unwrap(model), "logit_bias", None) is None:
                    raise ValueError(
                        f"the sigmoid loss needs a logit_bias, and the {name} has none (a CLIP "
                        "config): use loss='softmax', or a SigLIP config (init_logit_bias)"
                    )

    def _ranks(self) -> tuple[int, int]:
        if not self.distributed:
            return 0, 1
        group = self.selector.group
        if not torch.distributed.is_initialized():
            return 0, 1
        return torch.distributed.get_rank(group), torch.distributed.get_world_size(group)

    def train(self, mode: bool = True) -> JESTTask:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    def forward(self, images: torch.Tensor, texts: torch.Tensor, ids: torch.Tensor | None = None):
        if not self.training:
            return self.trainable_module(images, texts)
        return self.training_forward(images, texts, ids)

    @torch.no_grad()
    def score(
        self, images: torch.Tensor, texts: torch.Tensor, ids: torch.Tensor | None = None
    ) -> tuple[Embeddings | None, Embeddings | None]:
        """The learner's and the reference's Embeddings of the super-batch, each None when the
        policy does not use it. The learner is scored in its current mode, without DDP."""
        n = len(images)
        if len(texts) != n or (ids is not None and len(ids) != n):
            sizes = f"images {len(images)}, texts {len(texts)}"
            raise ValueError(
                f"the super-batch's parts differ in size: {sizes}"
                + ("" if ids is None else f", ids {len(ids)}")
            )
        policy = self.selector.config.policy
        learner = reference = None
        if policy in ("hard_learner", "learnability"):
            learner = embeddings(unwrap(self.trainable_module)(images, texts))
        if policy in ("easy_reference", "learnability"):
            if self.reference is not None:
                reference = embeddings(self.reference(images, texts))
            else:
                if ids is None:
                    raise ValueError(
                        "the reference is read from a cache by example id: call the task with "
                        "task(images, texts, ids)"
                    )
                reference = self.reference_lookup(ids)
                if reference.image.device != images.device:
                    reference = Embeddings(
                        reference.image.to(images.device),
                        reference.text.to(images.device),
                        reference.logit_scale,
                        reference.logit_bias,
                    )
        return learner, reference

    def select(
        self, images: torch.Tensor, texts: torch.Tensor, ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The positions of the super-batch to train on (global ones under a GlobalSelector)."""
        learner, reference = self.score(images, texts, ids)
        if learner is None and reference is None:  # uniform
            _, world_size = self._ranks()
            return self.selector(batch_size=len(images) * world_size)
        return self.selector(learner, reference)

    def training_forward(
        self, images: torch.Tensor, texts: torch.Tensor, ids: torch.Tensor | None = None
    ) -> StepOutput:
        selected = self.select(images, texts, ids)
        if self.distributed:
            images_b, texts_b = redistribute((images, texts), selected, self.selector.group)
        else:
            images_b, texts_b = images[selected], texts[selected]
        model_out = _as_dict(self.trainable_module(images_b, texts_b))
        losses = self.loss(**model_out, output_dict=True)
        losses["loss"] = sum(v for k, v in losses.items() if k.endswith("_loss"))
        losses["logit_scale"] = model_out["logit_scale"]
        return StepOutput(losses, selected)
