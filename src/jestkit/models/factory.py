"""The dual encoder of the image-caption job, from one small config."""

from __future__ import annotations

from dataclasses import dataclass

from jestkit.data.prepare import MAX_LEN
from jestkit.models.dual import DualEncoder
from jestkit.models.text import TextConfig, TextTower
from jestkit.models.vit import ImageTower, ViTConfig


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 96
    depth: int = 3
    text_depth: int = 1
    heads: int = 4
    embed_dim: int = 96
    patch_size: int = 7


def build_model(config: ModelConfig, vocab_size: int, loss: str) -> DualEncoder:
    vit = ViTConfig(
        patch_size=config.patch_size,
        dim=config.dim,
        depth=config.depth,
        heads=config.heads,
        embed_dim=config.embed_dim,
    )
    text = TextConfig(
        vocab_size=vocab_size,
        max_len=MAX_LEN,
        dim=config.dim,
        depth=config.text_depth,
        heads=config.heads,
        embed_dim=config.embed_dim,
    )
    return DualEncoder(ImageTower(vit), TextTower(text), loss=loss)
