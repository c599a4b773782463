"""Test-only workaround: import open_clip where torchvision's compiled ops do not load.

Why it exists. open_clip and timm import torchvision. `pip install -c pins.txt open_clip_torch`
with the CPU torch pinned (this repository's `make setup`) brings a torchvision wheel built for
CUDA; its compiled extension (torchvision/_C.so) does not load next to the CPU torch, and
torchvision then fails at import time with "operator torchvision::nms does not exist": its
`_meta_registrations` module registers fake kernels for `torchvision::nms` and
`torchvision::qnms` unconditionally, and those operators are only defined by the extension.
A user whose torchvision matches their torch never sees this.

When it acts. Only when importing torchvision fails with exactly that error. It then defines the
two missing operator *schemas* (no kernels: calling them still fails, and nothing in jestkit or
in these tests calls them) with `torch.library.define`, drops the half-imported torchvision
modules and imports torchvision again. Whenever torchvision imports on its own (a matching
build, or already imported), it does nothing at all.

It lives in tests/ and only the open_clip tests use it: jestkit's code never imports it and
never touches torchvision.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch

# The operators torchvision._meta_registrations registers fake kernels for unconditionally, with
# the signature of its fake kernels (dets, scores, iou_threshold). Only the schemas matter here:
# they exist so that the registration succeeds; no kernel is ever attached or called.
_MISSING_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _is_missing_op_error(err: BaseException) -> bool:
    msg = str(err)
    return "does not exist" in msg and any(f"operator {op}" in msg for op in _MISSING_SCHEMAS)


def import_torchvision() -> ModuleType:
    """torchvision, imported; with the missing schemas defined first only if it needs them."""
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if not _is_missing_op_error(err):
            raise
    for qualname, schema in _MISSING_SCHEMAS.items():
        torch.library.define(qualname, schema)  # kept alive by torch.library for the process
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    return importlib.import_module("torchvision")


def import_open_clip() -> ModuleType:
    """open_clip, importable here whether or not torchvision's compiled ops load."""
    import_torchvision()
    return importlib.import_module("open_clip")
