"""Loader for the official Fashion-MNIST IDX files (gzipped or not), with clear errors.

Looked for, in order: the `root` argument, $JESTKIT_FASHION_MNIST, and the Debian package's
folder /usr/share/datasets/fashion-mnist (`apt-get install dataset-fashion-mnist`).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
HOW_TO_GET = (
    "install the Debian package (apt-get install dataset-fashion-mnist), or download the four "
    "official files (train-images-idx3-ubyte.gz, ...) into a folder and pass it with "
    "--data.data_dir (PoolConfig.data_dir, or the root argument, in Python), or set "
    "JESTKIT_FASHION_MNIST"
)


def find_root(root: str | os.PathLike | None = None) -> Path:
    """The Fashion-MNIST folder. An explicit `root` (or $JESTKIT_FASHION_MNIST) that is not a
    folder is an error, never a fall-back to the next place."""
    for given, name in ((root, "folder"), (os.environ.get("JESTKIT_FASHION_MNIST"),
                                           "$JESTKIT_FASHION_MNIST")):  # fmt: skip
        if given is not None and given != "":
            if not Path(given).is_dir():
                raise FileNotFoundError(
                    f"Fashion-MNIST {name} {given} does not exist or is not a folder; {HOW_TO_GET}"
                )
            return Path(given)
    if DEBIAN_DIR.is_dir():
        return DEBIAN_DIR
    raise FileNotFoundError(f"Fashion-MNIST files not found; {HOW_TO_GET}")


def _open(folder: Path, stem: str) -> bytes:
    for name, opener in ((stem + ".gz", gzip.open), (stem, open)):
        path = folder / name
        if path.exists():
            try:
                with opener(path, "rb") as f:
                    return f.read()
            except (OSError, EOFError) as e:
                raise ValueError(f"{path} is unreadable or truncated ({e}); {HOW_TO_GET}") from e
    raise FileNotFoundError(f"{folder / (stem + '.gz')} is missing; {HOW_TO_GET}")


def _parse_idx(data: bytes, path: str, ndim: int, count: int) -> np.ndarray:
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: file is truncated (only {len(data)} bytes)")
    zero, dtype_code, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or dims != ndim:
        raise ValueError(f"{path}: not a uint8 IDX file with {ndim} dimension(s)")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    expected = (count, 28, 28) if ndim == 3 else (count,)
    if shape != expected:
        raise ValueError(f"{path}: shape {shape}, expected {expected}")
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise ValueError(
            f"{path}: {len(body)} data bytes, expected {int(np.prod(shape))} (truncated?)"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the 'train' (60,000) or 'test' (10,000)
    split. Shapes, sizes and label range are checked; a bad file raises with how to fix it."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_root(root)
    img_stem, lbl_stem, count = _FILES[split]
    images = _parse_idx(_open(folder, img_stem), str(folder / img_stem), 3, count)
    labels = _parse_idx(_open(folder, lbl_stem), str(folder / lbl_stem), 1, count)
    if labels.max() >= len(CLASSES):
        raise ValueError(f"{folder / lbl_stem}: label {labels.max()} outside 0..9")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
