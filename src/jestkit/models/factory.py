"""The dual encoder of the image-caption job, from one small config."""

from __future__ import annotations

from dataclasses import dataclass

from jestkit.models.dual import DualEncoder
from jestkit.models.text import TextConfig, TextTower
from jestkit.models.vit import ImageTower, ViTConfig

MAX_LEN = 16  # the text tower's context: tokens per caption (the longest Fashion caption has 16)

IMAGE_SIZE = ViTConfig.image_size  # Fashion-MNIST's 28 x 28


@dataclass(frozen=True)
class ModelConfig:
    """The dual encoder's shape (a ViT image tower and a text transformer).

    Attributes:
        dim: width of both towers' transformer blocks
        depth: transformer blocks of the image tower
        text_depth: transformer blocks of the text tower
        heads: attention heads in every block
        embed_dim: dimension of the shared image-text embedding space
        patch_size: the image tower's patch size (7: 16 tokens of a 28 x 28 image)
    """

    dim: int = 96
    depth: int = 3
    text_depth: int = 1
    heads: int = 4
    embed_dim: int = 96
    patch_size: int = 7

    def __post_init__(self):
        for name in ("dim", "depth", "text_depth", "heads", "embed_dim", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{name} must be a positive int, got {value!r}")
        if self.dim % self.heads:
            raise ValueError(f"model.dim={self.dim} must be divisible by model.heads={self.heads}")
        self.check_patch_size(self.patch_size, "model.patch_size")

    def check_patch_size(self, patch_size: int | None, name: str = "scoring.patch_size") -> None:
        """Refuse a patch size (the model's, or a scoring view's) that does not divide the
        28 x 28 images."""
        if patch_size is None:
            return
        if not isinstance(patch_size, int) or patch_size < 1 or IMAGE_SIZE % patch_size:
            raise ValueError(
                f"{name}={patch_size!r} must divide the image size {IMAGE_SIZE} (1, 2, 4, 7, 14 "
                f"or 28)"
            )


def build_model(config: ModelConfig, vocab_size: int, loss: str) -> DualEncoder:
    """The dual encoder for `loss` (sigmoid or softmax); both towers share width and heads."""
    shared = {"dim": config.dim, "heads": config.heads, "embed_dim": config.embed_dim}
    vit = ViTConfig(patch_size=config.patch_size, depth=config.depth, **shared)
    text = TextConfig(vocab_size=vocab_size, max_len=MAX_LEN, depth=config.text_depth, **shared)
    return DualEncoder(ImageTower(vit), TextTower(text), loss=loss)
