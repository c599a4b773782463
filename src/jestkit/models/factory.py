"""The dual encoder of the image-caption job, from one small config."""

from __future__ import annotations

from dataclasses import dataclass

from jestkit.data.prepare import MAX_LEN
from jestkit.models.dual import DualEncoder
from jestkit.models.text import TextConfig, TextTower
from jestkit.models.vit import ImageTower, ViTConfig


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


def build_model(config: ModelConfig, vocab_size: int, loss: str) -> DualEncoder:
    """The dual encoder for `loss` (sigmoid or softmax); both towers share width and heads."""
    shared = {"dim": config.dim, "heads": config.heads, "embed_dim": config.embed_dim}
    vit = ViTConfig(patch_size=config.patch_size, depth=config.depth, **shared)
    text = TextConfig(vocab_size=vocab_size, max_len=MAX_LEN, depth=config.text_depth, **shared)
    return DualEncoder(ImageTower(vit), TextTower(text), loss=loss)
