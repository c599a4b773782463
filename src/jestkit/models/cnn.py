"""A small CNN classifier for 28 x 28 grey images (Fashion-MNIST), in plain torch.

Two 3 x 3 conv blocks (32 and 64 channels, each ReLU + 2 x 2 max-pool), a 136-unit hidden
layer and a linear head: about 446k parameters. No batch norm and no dropout, so train and
eval mode compute the same function and scoring a batch under `torch.no_grad()` never changes
the model. Inputs are uint8 or float images of shape (N, 28, 28) or (N, 1, 28, 28); uint8 is
scaled to [0, 1] and every input is standardised with Fashion-MNIST's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST train-set pixel statistics (of [0, 1] pixels)


@dataclass(frozen=True)
class CNNConfig:
    n_classes: int = 10
    channels: tuple[int, int] = (32, 64)
    hidden: int = 136
    image_size: int = 28


class SmallCNN(nn.Module):
    def __init__(self, config: CNNConfig | None = None):
        super().__init__()
        self.config = config = config or CNNConfig()
        c1, c2 = config.channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        side = config.image_size // 4
        self.fc = nn.Linear(c2 * side * side, config.hidden)
        self.head = nn.Linear(config.hidden, config.n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes) of images (N, H, W) or (N, 1, H, W), uint8 or float."""
        x = images.unsqueeze(1) if images.dim() == 3 else images
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(
                f"images must have shape (N, H, W) or (N, 1, H, W), got {tuple(images.shape)}"
            )
        x = x.float() / 255.0 if images.dtype == torch.uint8 else x.float()
        x = (x - MEAN) / STD
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc(x.flatten(1)))
        return self.head(x)
