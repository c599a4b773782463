"""open_clip models for jestkit: made from a config and a checkpoint, their outputs as
jestkit.Embeddings, and the loss each trains with.

    create_model(model, checkpoint)       an open_clip model from a config (name, JSON file or
                                          dict) and a checkpoint file
    load_reference(model, checkpoint)     the same, frozen (requires_grad False), in eval mode
    embeddings(model_out)                 jestkit.Embeddings of an open_clip model's output
    selection_loss(model)                 'sigmoid' for a model with a logit_bias (SigLIP), else
                                          'softmax' (CLIP)
    make_loss(model, rank, world_size)    open_clip's own training loss for it: SigLipLoss or
                                          ClipLoss

The losses are the same functions (tests/openclip/test_openclip.py checks it on the same
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jestkit.core import Embeddings
from jestkit.dropin.distributed import unwrap
from jestkit.engine.files import read_json_record

try:
    import open_clip
    from open_clip.loss import ClipLoss, SigLipLoss
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "jestkit's open_clip support needs open_clip: pip install 'jestkit[open_clip]' "
        f"(importing it failed: {err})"
    ) from err

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")
_OUTPUT_KEYS = ("image_features", "text_features", "logit_scale", "logit_bias")


def as_dict(model_out: Any) -> dict[str, torch.Tensor]:
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
    out = as_dict(model_out)
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


def loss_kind(loss: nn.Module) -> str | None:
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


def read_config(model: str | os.PathLike | Mapping) -> dict | None:
    """A model config given as a dict or a JSON file (a bare config or open_clip_config.json's
    {"model_cfg": ...}); None when `model` is a config name."""
    if isinstance(model, Mapping):
        cfg = dict(model)
    elif isinstance(model, os.PathLike) or str(model).endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"no open_clip model config at {path}")
        cfg = read_json_record(path, "an open_clip model config (a JSON object)")
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
    cfg = read_config(model)
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
