"""Argument checks shared by every public entry point (select, Selector, the samplers,
SelectiveLoader, ShardPool, the reference cache): one check per kind of argument, each message
naming the argument and what was expected; the wrong type is a TypeError, a value out of range
a ValueError."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from jestkit.core.outputs import Embeddings

if TYPE_CHECKING:  # the loss table imports the gains, which import these checks
    from jestkit.core.losses import Loss


def check_tensor(name: str, t: object) -> torch.Tensor:
    """A dense tensor that holds values: not sparse, not on the meta device."""
    if not torch.is_tensor(t):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {t.layout}: call .to_dense()")
    if t.is_meta:
        raise ValueError(f"{name} is on the meta device, which holds no values")
    return t


def check_finite(name: str, t: torch.Tensor) -> None:
    check_tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    # a finite sum means every value is finite (a NaN or an Inf makes the sum NaN or Inf); one
    # reduction instead of a mask as large as t, 20x less time on a super-batch's embeddings.
    # Only a sum that overflowed, or a real NaN or Inf, pays for the elementwise check.
    if t.numel() and bool(torch.isfinite(t.sum())):
        return
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s); expected finite values")


def real_number(name: str, value: object) -> float:
    """A real number of any kind (int, float, numpy's, Fraction, a one-element real tensor) as
    a float; bools, strings, complex numbers and the rest are a TypeError naming `name`."""
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        check_tensor(name, value)
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be a real number, got a {value.dtype} tensor")
        return float(value.detach())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r:.40}")
    return float(value)


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """An int (numpy's too, never a bool) of at least `minimum`, as an int."""
    what = {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r:.40}")
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_bool(name: str, value: object) -> bool:
    """True or False: a string such as "no", or 1, would be taken as true."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r:.40}")
    return bool(value)


def check_seed(name: str, value: object) -> int:
    """A seed torch.Generator.manual_seed and numpy's SeedSequence both take: [0, 2**64 - 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or \
            not 0 <= value <= 2**64 - 1:  # fmt: skip
        integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        error = ValueError if integer else TypeError
        raise error(f"{name} must be an int in [0, 2**64 - 1], got {value!r:.40}")
    return int(value)


def check_generator(name: str, generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{name} must be a torch.Generator or None, got {type(generator).__name__} "
            f"(for a seeded one: Selector(seed=...), or torch.Generator().manual_seed(...))"
        )
    return generator


def check_device(name: str, device: object) -> torch.device:
    """A device this process can put tensors on (cpu; cuda when there is a GPU)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"{name}={device!r} is not a torch device ('cpu', 'cuda', 'cuda:1', ...)"
        ) from e
    if dev.type == "meta":
        raise ValueError(f"{name}={device!r} holds no values: selection needs real ones")
    if dev.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise ValueError(
            f"{name}={device!r} cannot be used: CUDA is not available (torch {torch.__version__}"
            f" is {build}, {torch.cuda.device_count()} GPUs visible)"
        )
    try:
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{name}={device!r} cannot be used: {reason}") from e
    return dev


def check_state(name: str, state: object, keys: Sequence[str], owner: str) -> Mapping:
    """A state as `owner`.state_dict() returns it: a mapping holding `keys`."""
    if not isinstance(state, Mapping):
        raise TypeError(
            f"{name} must be the dict that {owner}.state_dict() returned, got "
            f"{type(state).__name__}"
        )
    missing = [k for k in keys if k not in state]
    if missing:
        found = sorted(map(str, state))[:8]
        raise ValueError(
            f"{name} has no {missing[0]!r} entry (its keys: {found}): not a {owner}.state_dict()"
        )
    return state


def check_generator_state(name: str, state: object, generator: torch.Generator) -> torch.Tensor:
    """A state that `generator` takes: a uint8 tensor of its own state's size (that of another
    device's generator is another size)."""
    size = generator.get_state().numel()
    if not torch.is_tensor(state) or state.dtype != torch.uint8 or state.dim() != 1 or \
            state.numel() != size:  # fmt: skip
        got = (f"a {state.dtype} tensor of shape {tuple(state.shape)}" if torch.is_tensor(state)
               else type(state).__name__)  # fmt: skip
        raise ValueError(
            f"{name} is not a state of a {generator.device} torch.Generator (a uint8 tensor of "
            f"{size} bytes), got {got}: a state of another device's generator, or not this "
            f"object's state_dict()"
        )
    return state


def as_scalar(name: str, value: float | torch.Tensor) -> float:
    value = real_number(name, value)
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
        check_loss_range(name, outputs)
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
    u, v = _max_norm(img), _max_norm(txt)
    bound = abs(scale) * u * v + abs(bias)
    if not bound <= MAX_LOGIT:
        raise ValueError(
            f"{name}'s logits reach up to {bound:.3g} (logit_scale {scale:g}, embedding norms up "
            f"to {u:.3g} and {v:.3g}); beyond {MAX_LOGIT:g} the gains overflow: normalise the "
            f"embeddings (open_clip's embeddings are unit vectors)"
        )


def _max_norm(t: torch.Tensor) -> float:
    """The largest row norm of a (B, d) tensor: in its compute dtype (no float64 copy of a
    super-batch), and again in float64 only if the squares overflowed that dtype."""
    top = float(torch.linalg.vector_norm(t, dim=1, dtype=compute_dtype(t)).max())
    if math.isfinite(top):
        return top
    return float(torch.linalg.vector_norm(t, dim=1, dtype=torch.float64).max())


# the largest |per-example loss| admitted: the weighted sum of two models' losses (the gain)
# stays far inside float32, and divided by the smallest temperature inside float64
MAX_LOSS = 1e30


def check_loss_range(name: str, losses: torch.Tensor) -> None:
    """Refuse finite losses whose gains overflow: 3e38 - (-3e38) is inf in float32."""
    top = float(losses.abs().max()) if losses.numel() else 0.0
    if not top <= MAX_LOSS:
        raise ValueError(
            f"{name} holds per-example losses up to {top:.3g} in magnitude; beyond {MAX_LOSS:g} "
            f"the gains (learner - reference) overflow: rescale the losses"
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
    """filter_ratio as a float in [0, 1): a real number of any kind (numpy's, a 0-d tensor)."""
    value = real_number("filter_ratio", filter_ratio)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"filter_ratio must be in [0, 1), got {value!r}")
    return value


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
    b = check_int("b", b)
    if b > batch_size:
        raise ValueError(f"cannot select b = {b} of a super-batch of B = {batch_size}")
    n_chunks = check_int("n_chunks", n_chunks)
    if n_chunks > b:
        raise ValueError(
            f"n_chunks = {n_chunks} is more chunks than selected examples (b = {b}); "
            f"use n_chunks <= b"
        )


# temperatures the sampler computes exactly: gains / temperature stays finite for any gain the
# embedding check admits (MAX_LOGIT), in float64; 0 is greedy, a huge one is all but uniform
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-30, 1e30


def check_temperature(temperature: float) -> float:
    value = real_number("temperature", temperature)
    if not (value == 0 or MIN_TEMPERATURE <= value <= MAX_TEMPERATURE):
        raise ValueError(
            f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got "
            f"{value!r}: beyond them gain / temperature overflows (for all but uniform "
            f"draws use policy='uniform'; for greedy ones temperature 0)"
        )
    return value
