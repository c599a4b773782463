"""Input checks shared by the samplers: every message names the argument and what was expected."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from jestkit.core.outputs import Embeddings

if TYPE_CHECKING:  # the loss table imports the gains, which import these checks
    from jestkit.core.losses import Loss


def check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.is_tensor(t):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s); expected finite values")


def as_scalar(name: str, value: float | torch.Tensor) -> float:
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        value = float(value.detach())
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """bf16/fp16 (and fp32) are computed in fp32; fp64 stays fp64."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def check_outputs(name: str, outputs: object, loss: Loss) -> int:
    """Check one model's outputs for `loss` (a row of jestkit.core.losses: contrastive losses
    take Embeddings, the others (B,) losses); return the super-batch size B."""
    if not loss.contrastive:
        if not torch.is_tensor(outputs):
            raise TypeError(
                f"{name} must be a (B,) tensor of per-example losses for loss='per_example', "
                f"got {type(outputs).__name__}"
            )
        if outputs.dim() != 1:
            raise ValueError(
                f"{name} must be a 1-d (B,) tensor of per-example losses, "
                f"got shape {tuple(outputs.shape)}"
            )
        check_finite(name, outputs)
        return outputs.shape[0]
    if not isinstance(outputs, Embeddings):
        raise TypeError(
            f"{name} must be jestkit.Embeddings(image, text, logit_scale, logit_bias) for "
            f"loss={loss.name!r}, got {type(outputs).__name__}"
        )
    img, txt = outputs.image, outputs.text
    for part, t in (("image", img), ("text", txt)):
        if not torch.is_tensor(t):
            raise TypeError(f"{name}.{part} must be a torch.Tensor, got {type(t).__name__}")
    if img.device != txt.device:
        raise ValueError(
            f"{name}.image and {name}.text must be on the same device, got {img.device} "
            f"and {txt.device}"
        )
    check_finite(f"{name}.image", img)
    check_finite(f"{name}.text", txt)
    if img.dim() != 2 or txt.dim() != 2:
        raise ValueError(
            f"{name}.image and {name}.text must be 2-d (B, d), got shapes "
            f"{tuple(img.shape)} and {tuple(txt.shape)}"
        )
    if img.shape[0] != txt.shape[0]:
        raise ValueError(
            f"{name}.image and {name}.text must have the same batch size, got "
            f"{img.shape[0]} and {txt.shape[0]}"
        )
    if img.shape[1] != txt.shape[1]:
        raise ValueError(
            f"{name}.image and {name}.text must have the same embedding dimension, got "
            f"{img.shape[1]} and {txt.shape[1]}"
        )
    if img.shape[1] == 0:
        raise ValueError(
            f"{name}.image and {name}.text have embedding dimension 0; expected d >= 1"
        )
    scale = as_scalar(f"{name}.logit_scale", outputs.logit_scale)
    bias = as_scalar(f"{name}.logit_bias", outputs.logit_bias)
    check_logit_range(name, img, txt, scale, bias)
    return img.shape[0]


# the largest |logit| admitted: a sum of B^2 pair terms of this size stays far inside float32
MAX_LOGIT = 1e15


def check_logit_range(name: str, img: torch.Tensor, txt: torch.Tensor, scale: float,
                      bias: float) -> None:  # fmt: skip
    """Refuse embeddings whose logits could overflow the gains: the bound
    |scale| * max ||u_i|| * max ||v_j|| + |bias| >= every |logit| (Cauchy-Schwarz), in float64."""
    if img.shape[0] == 0:
        return
    u = float(torch.linalg.vector_norm(img.double(), dim=1).max())
    v = float(torch.linalg.vector_norm(txt.double(), dim=1).max())
    bound = abs(scale) * u * v + abs(bias)
    if not bound <= MAX_LOGIT:
        raise ValueError(
            f"{name}'s logits reach up to {bound:.3g} (logit_scale {scale:g}, embedding norms up "
            f"to {u:.3g} and {v:.3g}); beyond {MAX_LOGIT:g} the gains overflow: normalise the "
            f"embeddings (open_clip's embeddings are unit vectors)"
        )


def device_of(outputs: object) -> torch.device | None:
    if isinstance(outputs, Embeddings):
        return getattr(outputs.image, "device", None)
    return getattr(outputs, "device", None)


def check_pair(learner: object | None, reference: object | None, loss: Loss) -> int:
    """Check learner and reference outputs (either may be None) for `loss`; return B."""
    if learner is not None and reference is not None:
        dl, dr = device_of(learner), device_of(reference)
        if dl != dr:
            raise ValueError(
                f"learner and reference outputs must be on the same device, got {dl} and {dr}"
            )
    sizes = {}
    for name, out in (("learner", learner), ("reference", reference)):
        if out is not None:
            sizes[name] = check_outputs(name, out, loss)
    if not sizes:
        raise ValueError("learner and reference are both None; a scored policy needs one")
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"learner and reference must score the same super-batch, got batch sizes "
            f"{sizes['learner']} (learner) and {sizes['reference']} (reference)"
        )
    size = next(iter(sizes.values()))
    if size == 0:
        raise ValueError("the super-batch is empty (B = 0); expected at least one candidate")
    return size


def check_filter_ratio(filter_ratio: float) -> float:
    if not isinstance(filter_ratio, int | float) or not 0.0 <= filter_ratio < 1.0:
        raise ValueError(f"filter_ratio must be in [0, 1), got {filter_ratio!r}")
    return filter_ratio


def selected_size(batch_size: int, filter_ratio: float) -> int:
    """b = round((1 - filter_ratio) * B), checked."""
    check_filter_ratio(filter_ratio)
    if batch_size <= 0:
        raise ValueError(f"the super-batch is empty (B = {batch_size}); expected B >= 1")
    b = round((1.0 - filter_ratio) * batch_size)
    if b < 1:
        raise ValueError(
            f"filter_ratio={filter_ratio} keeps no example of a super-batch of {batch_size}; "
            f"lower filter_ratio or enlarge the super-batch"
        )
    return b


def check_counts(b: int, batch_size: int, n_chunks: int) -> None:
    if batch_size <= 0:
        raise ValueError(f"the super-batch is empty (B = {batch_size}); expected B >= 1")
    if not isinstance(b, int) or b < 1:
        raise ValueError(f"the number of selected examples b must be a positive int, got {b!r}")
    if b > batch_size:
        raise ValueError(f"cannot select b = {b} of a super-batch of B = {batch_size}")
    if not isinstance(n_chunks, int) or n_chunks < 1:
        raise ValueError(f"n_chunks must be a positive int, got {n_chunks!r}")
    if n_chunks > b:
        raise ValueError(
            f"n_chunks = {n_chunks} is more chunks than selected examples (b = {b}); "
            f"use n_chunks <= b"
        )


# temperatures the sampler computes exactly: gains / temperature stays finite for any gain the
# embedding check admits (MAX_LOGIT), in float64; 0 is greedy, a huge one is all but uniform
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-30, 1e30


def check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
        temperature == 0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE
    ):
        raise ValueError(
            f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got "
            f"{temperature!r}: beyond them gain / temperature overflows (for all but uniform "
            f"draws use policy='uniform'; for greedy ones temperature 0)"
        )
    return float(temperature)
