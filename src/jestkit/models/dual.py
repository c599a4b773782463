"""A dual encoder (image tower + text tower) trained with SigLIP's sigmoid or CLIP's softmax loss.

The temperature is learned in log space, t = exp(log_scale), as both papers do, and clamped at
100 as CLIP does. Initialisation follows the papers:

* sigmoid (SigLIP): t = 10, bias b = -10 (learned, unconstrained);
* softmax (CLIP): t = 1 / 0.07, no bias (a constant 0, not trained; it would cancel anyway).

`embeddings(images, tokens, view, generator)` gives the selection core what it needs from the
learner on a super-batch (jestkit.Embeddings), computed without gradients, through a scoring
view (jestkit.models.view.View: a coarser patch size, image or text token dropping; see
jestkit.models.vit and jestkit.models.text) for cheap Flexi-JEST scoring. open_clip models take
the same View (jestkit.openclip.dual.OpenClipDual).

Multi-resolution training (the paper trains half of each sub-batch at the coarse patch size):

    h = multires_split(len(images), fraction_coarse=0.5)
    img = torch.cat([model.encode_image(images[:h], patch_size=14), model.encode_image(images[h:])])
    loss = model.loss(img, model.encode_text(tokens))

or `model.encode_image_multires(images, patch_size=14, fraction_coarse=0.5)`, which does this.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from jestkit.core.losses import CONTRASTIVE_LOSSES, contrastive_loss
from jestkit.core.outputs import Embeddings
from jestkit.models.text import TextTower
from jestkit.models.view import View
from jestkit.models.vit import ImageTower

MAX_LOGIT_SCALE = 100.0
INIT = {  # loss -> (initial temperature t, initial bias b)
    "sigmoid": (10.0, -10.0),
    "softmax": (1 / 0.07, 0.0),
}


def multires_split(n: int, fraction_coarse: float) -> int:
    """How many leading examples of a batch of n to train at the coarse patch size."""
    if not 0.0 <= fraction_coarse <= 1.0:
        raise ValueError(f"fraction_coarse must be in [0, 1], got {fraction_coarse}")
    return math.floor(n * fraction_coarse + 0.5)


def encode_multires(
    encode_image: Callable[..., torch.Tensor],
    images: torch.Tensor,
    patch_size: int,
    fraction_coarse: float,
) -> torch.Tensor:
    """encode_image(images[:h], patch_size=patch_size) and encode_image(images[h:]) in one
    tensor, rows in input order, h = multires_split(N, fraction_coarse): multi-resolution
    training for any model whose encode_image takes a patch_size (ours, open_clip's)."""
    h = multires_split(len(images), fraction_coarse)
    parts = []
    if h > 0:
        parts.append(encode_image(images[:h], patch_size=patch_size))
    if h < len(images):
        parts.append(encode_image(images[h:]))
    return torch.cat(parts)


class ContrastiveDual(nn.Module):
    """What the training loop and the selection use of a dual encoder, built once for jestkit's
    DualEncoder and open_clip's (jestkit.openclip.dual.OpenClipDual). A subclass gives its
    towers' unnormalised features at a view, as the properties image_features (a callable
    (images, patch_size, token_drop, generator)) and text_features ((tokens, token_drop,
    generator)), the properties logit_scale and logit_bias, and loss_name; this class adds the
    unit-norm encoders, multi-resolution training, the forward pass, the training loss and the
    selection's embeddings on them."""

    loss_name: str

    def encode_image(
        self,
        images: torch.Tensor,
        patch_size: int | None = None,
        token_drop: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(N, C, H, W) -> (N, D), unit norm, through an image view: the model's image tower at
        `patch_size` (None: its own) with `token_drop` of its patch tokens dropped, drawn from
        `generator` (nothing dropped, the own patch size: the plain forward)."""
        return F.normalize(self.image_features(images, patch_size, token_drop, generator), dim=-1)

    def encode_text(self, tokens: torch.Tensor, token_drop: float = 0.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
        """(N, L) token ids -> (N, D), unit norm, with `token_drop` of each caption's positions
        dropped (the tokens the tower pools are kept)."""
        return F.normalize(self.text_features(tokens, token_drop, generator), dim=-1)

    def encode_image_multires(
        self, images: torch.Tensor, patch_size: int, fraction_coarse: float = 0.5
    ) -> torch.Tensor:
        """Encode the first multires_split(N, fraction_coarse) images at `patch_size`, the rest
        at the base patch size; rows stay in input order."""
        return encode_multires(self.encode_image, images, patch_size, fraction_coarse)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, **view):
        """(image embeddings, text embeddings), both unit norm; view: encode_image's keywords."""
        return self.encode_image(images, **view), self.encode_text(tokens)

    def loss(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """The training loss of matched pairs (row i of each is a pair)."""
        return contrastive_loss(self.loss_name, img_emb, txt_emb, self.logit_scale, self.logit_bias)

    @torch.no_grad()
    def embeddings(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        view: View | None = None,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
    ) -> Embeddings:
        """The model's outputs on a super-batch for the selection core (no gradients), float32,
        seen through `view` (None: the plain forward); its random token drops are drawn from
        `generator` (the image's first, then the text's).

        chunk_size: encode this many rows at a time (None: all at once). The same embeddings
        (no drops: up to float rounding; drops: other draws of the same generator, chunk by
        chunk); on a CPU, chunks that stay in cache cost less time for the same FLOPs
        (ScoringConfig.chunk_size).
        """
        view = view or View()
        rows = len(images) if chunk_size is None else chunk_size
        if rows < 1:
            raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
        parts = []
        for start in range(0, len(images), rows):
            img = self.encode_image(images[start:start + rows], patch_size=view.patch_size,
                                    token_drop=view.token_drop, generator=generator)  # fmt: skip
            txt = self.encode_text(tokens[start:start + rows], view.text_token_drop, generator)
            parts.append((img.float(), txt.float()))
        return Embeddings(
            image=torch.cat([p[0] for p in parts]),
            text=torch.cat([p[1] for p in parts]),
            logit_scale=float(self.logit_scale),
            logit_bias=float(self.logit_bias),
        )


class DualEncoder(ContrastiveDual):
    def __init__(self, image_tower: ImageTower, text_tower: TextTower, loss: str = "sigmoid"):
        super().__init__()
        if loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {CONTRASTIVE_LOSSES}")
        self.loss_name = loss
        self.image_tower = image_tower
        self.text_tower = text_tower
        t, b = INIT[loss]
        self.log_scale = nn.Parameter(torch.tensor(math.log(t)))
        if loss == "sigmoid":
            self.bias = nn.Parameter(torch.tensor(b))
        else:
            self.register_buffer("bias", torch.tensor(0.0))

    @property
    def logit_scale(self) -> torch.Tensor:
        """The temperature t = exp(log_scale), at most 100."""
        return self.log_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    @property
    def logit_bias(self) -> torch.Tensor:
        return self.bias

    @property
    def image_features(self) -> ImageTower:
        """Pixels in [0, 1] -> unnormalised features, at a view (ImageTower.forward)."""
        return self.image_tower

    @property
    def text_features(self) -> TextTower:
        """Word ids, pad 0 -> unnormalised features, with a token drop (TextTower.forward)."""
        return self.text_tower

    def check_view(self, view: View, multires_fraction: float = 0.0) -> None:
        """Refuse, before any work, a view this model cannot take: a ValueError naming the
        flag. (multires_fraction: trains at view.patch_size too, checked with it.)"""
        if view.patch_size is not None:
            try:
                self.image_tower.check_patch_size(view.patch_size)
            except ValueError as err:
                raise ValueError(
                    f"--scoring.patch_size: jestkit's ViT image tower: {err}"
                ) from None
