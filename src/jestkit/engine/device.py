"""Where a run computes: the CPU, or this process's GPU, and whether it trains under bfloat16."""

from __future__ import annotations

import os

import torch


def resolve_device(name: str) -> torch.device:
    """cpu, or this process's GPU (cuda:LOCAL_RANK under torchrun); a clear error without CUDA."""
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {name!r}")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise ValueError(
            f"--device cuda, but CUDA is not available (torch {torch.__version__} is {build}, "
            f"{torch.cuda.device_count()} GPUs visible); use --device cpu"
        )
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def bf16_autocast(device: torch.device) -> bool:
    """Whether training runs under bfloat16 autocast: on a GPU that supports bfloat16."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()
