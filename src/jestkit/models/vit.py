"""A small Vision Transformer image tower with FlexiViT views (larger patches, token dropping).

The tower is trained at one patch size (the base, 7 on 28 x 28 Fashion-MNIST: a 4 x 4 grid of
16 tokens). At scoring time JEST can look at the same weights through a cheaper *view*
(docs/design.md, "Flexi-JEST"), without training a second model:

* a larger patch size p' (14: 4 tokens), with the patch embedding resized by FlexiViT's
  pseudo-inverse rule (PI-resize, Beyer et al., "FlexiViT: one model for all patch sizes",
  CVPR 2023) and the position embeddings resampled to the new grid;
* random token dropping: keep round((1 - r) * n) of the n patch tokens of each image.

PI-resize. Let R be the (p'^2 x p^2) matrix that resizes a p x p patch x to p' x p' (nearest
neighbour by default, or bilinear as in FlexiViT). The resized embedding w' of each output
unit solves <x, w> = <R x, w'> for all x, i.e. R^T w' = w, whose minimum-norm solution is
w' = pinv(R^T) w. For p' >= p (upsampling) R has full column rank and the identity is exact:
a p'-patch that is the resize of a p-patch gets exactly the token the p-patch gets at the base
size. For p' < p it is a least-squares fit. With nearest-neighbour R and an integer factor
k = p'/p this amounts to w' = w replicated k x k times and divided by k^2: the token of a large
patch is the base embedding of the patch average-pooled down to p x p.

This file also holds the pre-norm transformer block shared with the text tower.

Attention is F.scaled_dot_product_attention: the same result as the plain matmuls to float
rounding, and on a CPU a quarter less time for Flexi-JEST's scoring at patch 14, where sequences
of 4 tokens make the matmuls' batched products tiny (benchmarks/results/timing_ab.txt, with the
cheaper selection checks); training at the base patch takes the same time either way. A
forward pass counts the FLOPs the matmuls did, a backward pass 0.4 % more (torch's formula for
the fused kernel; jestkit.engine.flops adds the CPU's fused kernels to torch.utils.flop_counter,
which misses them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

RESIZE_MODES = ("nearest", "bilinear")


@dataclass
class ViTConfig:
    """Image tower shape. Defaults: Fashion-MNIST (28 x 28, one channel), patch 7."""

    image_size: int = 28
    channels: int = 1
    patch_size: int = 7
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    embed_dim: int = 128
    # Inputs are pixels in [0, 1] (uint8 / 255); the tower standardises them with these values
    # (Fashion-MNIST's training-set mean and standard deviation).
    pixel_mean: float = 0.2860
    pixel_std: float = 0.3530
    # How PI-resize models the resizing of a patch: "nearest" (exact for nearest-neighbour
    # upsampled patches) or "bilinear" (FlexiViT's choice).
    resize_mode: str = "nearest"

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size {self.patch_size} must divide image_size {self.image_size}"
            )
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")


# --- the transformer block, shared by the image and text towers ------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with an optional key padding mask."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, L, dim). key_mask: (N, L) bool, True where a token may be attended to."""
        n, length, dim = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, heads, L, head_dim)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


# --- FlexiViT resizing ------------------------------------------------------------------------


def resize_matrix(p: int, new_p: int, mode: str = "nearest") -> torch.Tensor:
    """The (new_p^2, p^2) matrix R with R @ x.flatten() = resize(x).flatten() for a p x p x.

    Built in float64 by resizing each basis patch with F.interpolate (bilinear uses
    align_corners=False and antialiasing when shrinking, like FlexiViT).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    basis = torch.eye(p * p, dtype=torch.float64).view(p * p, 1, p, p)
    if mode == "nearest":
        resized = F.interpolate(basis, size=(new_p, new_p), mode="nearest")
    else:
        resized = F.interpolate(
            basis,
            size=(new_p, new_p),
            mode="bilinear",
            align_corners=False,
            antialias=new_p < p,
        )
    return resized.view(p * p, new_p * new_p).T


def pi_resize_matrix(p: int, new_p: int, mode: str = "nearest") -> torch.Tensor:
    """pinv(R), (p^2, new_p^2) in float64: W' = W @ pinv(R) resizes flattened filters W."""
    return torch.linalg.pinv(resize_matrix(p, new_p, mode))


def pi_resize_weight(
    weight: torch.Tensor, new_p: int, mode: str = "nearest", pinv_r: torch.Tensor | None = None
) -> torch.Tensor:
    """Pseudo-inverse resize of a patch-embedding weight (D, C, p, p) -> (D, C, new_p, new_p).

    Each output unit's filter w (one per channel) becomes w' = pinv(R^T) w, so that
    <x, w> = <R x, w'> for every p x p patch x when R has full column rank (new_p >= p).
    Differentiable in `weight`: gradients through the resized view reach the base weights.
    pinv_r: pi_resize_matrix(p, new_p, mode), if the caller keeps it.
    """
    d, c, p, _ = weight.shape
    if new_p == p:
        return weight
    if pinv_r is None:
        pinv_r = pi_resize_matrix(p, new_p, mode)
    # R^T w' = w for every row w of W  <=>  W' = W @ pinv(R^T)^T = W @ pinv(R).
    pinv_r = pinv_r.to(dtype=weight.dtype, device=weight.device)
    return (weight.reshape(d * c, p * p) @ pinv_r).view(d, c, new_p, new_p)


def resample_pos_embed(
    pos: torch.Tensor, grid: tuple[int, int], from_grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Resample (1, h * w, D) position embeddings laid out on an h x w grid to `grid`.

    from_grid: (h, w); None: a square grid (h = w). Bilinear interpolation of the grid
    (align_corners=False, antialiased when shrinking, as in FlexiViT); the base grid is
    returned unchanged.
    """
    _, n, d = pos.shape
    if from_grid is None:
        side = math.isqrt(n)
        from_grid = (side, side)
    if tuple(from_grid) == tuple(grid):
        return pos
    image = pos.reshape(1, from_grid[0], from_grid[1], d).permute(0, 3, 1, 2)
    shrinking = grid[0] < from_grid[0] or grid[1] < from_grid[1]
    image = F.interpolate(
        image, size=tuple(grid), mode="bilinear", align_corners=False, antialias=shrinking
    )
    return image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], d)


class FlexiPatches:
    """A ViT's patch embedding at any patch size, for every tower that takes Flexi-JEST's views
    (jestkit's ImageTower, open_clip's VisionTransformer through jestkit.openclip.views): the
    weights PI-resized, the grid's position embeddings resampled to the new grid.

    It keeps pinv(R) per (base patch, patch size, device, dtype): fixed matrices, computed once
    in float64 rather than on every forward. Not a module: nothing of it is in a state dict.
    """

    def __init__(self, mode: str = "nearest"):
        if mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
        self.mode = mode
        self._pinv: dict[tuple, torch.Tensor] = {}

    def weight(self, weight: torch.Tensor, patch_size: int) -> torch.Tensor:
        """The (D, C, p, p) patch-embedding weight PI-resized to patch_size (itself at p)."""
        base = weight.shape[-1]
        if patch_size == base:
            return weight
        key = (base, patch_size, weight.device, weight.dtype)
        if key not in self._pinv:
            pinv_r = pi_resize_matrix(base, patch_size, self.mode)
            self._pinv[key] = pinv_r.to(device=weight.device, dtype=weight.dtype)
        return pi_resize_weight(weight, patch_size, pinv_r=self._pinv[key])

    def tokens(
        self,
        pixels: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        patch_size: int,
        grid_pos: torch.Tensor | None = None,
        pos_grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """(N, C, H, W) pixels -> (N, (H / p) * (W / p), D) patch tokens at patch size p, with
        grid_pos (1, h * w, D), the position embeddings of the base grid pos_grid (None:
        square), resampled to the new grid and added (None: no positions)."""
        x = F.conv2d(pixels, self.weight(weight, patch_size), bias, stride=patch_size)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        if grid_pos is None:
            return x
        return x + resample_pos_embed(grid_pos, grid, pos_grid).to(x.dtype)


def keep_count(n_tokens: int, token_drop: float) -> int:
    """Tokens kept per image at drop rate r: round((1 - r) * n), half up, at least one."""
    if not 0.0 <= token_drop < 1.0:
        raise ValueError(f"token_drop must be in [0, 1), got {token_drop}")
    return max(1, math.floor((1.0 - token_drop) * n_tokens + 0.5))


def uniform_noise(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """U[0, 1) noise of `shape` on `device`, drawn from `generator` on the generator's own device
    (the training loop's view generator lives on the CPU, the batch may be on a GPU)."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def drop_tokens(
    x: torch.Tensor,
    token_drop: float,
    generator: torch.Generator | None = None,
    prefix: int = 0,
) -> torch.Tensor:
    """Keep a random round((1 - r) * L) of the L tokens of each row of x (N, prefix + L, D),
    and its first `prefix` tokens (a class token) always.

    Every row keeps the same number of tokens (the batch stays one tensor), chosen
    independently per row and returned in their original order. Deterministic given
    `generator` (one on x's device); without one, torch's global RNG is used.
    """
    if prefix:
        return torch.cat([x[:, :prefix], drop_tokens(x[:, prefix:], token_drop, generator)], 1)
    n, length, d = x.shape
    keep = keep_count(length, token_drop)
    if keep == length:
        return x
    noise = uniform_noise((n, length), generator, x.device)
    idx = noise.topk(keep, dim=1).indices.sort(dim=1).values
    return x.gather(1, idx[:, :, None].expand(n, keep, d))


# --- the tower --------------------------------------------------------------------------------


class ImageTower(nn.Module):
    """ViT: patch embedding, learned position embeddings, pre-norm blocks, mean pool, projection.

    forward(images) returns (N, embed_dim) unnormalised embeddings; the dual encoder
    L2-normalises them.
    """

    def __init__(self, cfg: ViTConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ViTConfig()
        p = cfg.patch_size
        self.grid = cfg.image_size // p
        self.patch_weight = nn.Parameter(torch.empty(cfg.dim, cfg.channels, p, p))
        self.patch_bias = nn.Parameter(torch.zeros(cfg.dim))
        nn.init.trunc_normal_(self.patch_weight, std=1.0 / math.sqrt(cfg.channels * p * p))
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid * self.grid, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.embed_dim)
        self.patches = FlexiPatches(cfg.resize_mode)

    def check_patch_size(self, patch_size: int) -> None:
        size = self.cfg.image_size
        if patch_size < 1 or size % patch_size:
            divisors = [p for p in range(1, size + 1) if size % p == 0]
            raise ValueError(
                f"patch_size {patch_size} does not divide the image size {size}; "
                f"choose one of {divisors}"
            )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> standardised with the config's mean and std."""
        return (images - self.cfg.pixel_mean) / self.cfg.pixel_std

    def embed_patches(self, pixels: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
        """(N, C, H, W) pixels -> (N, (H / p') * (W / p'), dim) patch tokens, no positions.

        At p' != base the weights are PI-resized (see module docstring).
        """
        p = self.cfg.patch_size if patch_size is None else patch_size
        return self.patches.tokens(pixels, self.patch_weight, self.patch_bias, p)

    def forward(
        self,
        images: torch.Tensor,
        patch_size: int | None = None,
        token_drop: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """images: (N, C, H, W) floats in [0, 1] (uint8 / 255). Returns (N, embed_dim).

        patch_size: view the model at this patch size (must divide the image size);
        default the base size. token_drop: drop this share of patch tokens per image, after
        position embeddings, drawn from `generator`.
        """
        p = self.cfg.patch_size if patch_size is None else patch_size
        self.check_patch_size(p)
        keep_count(1, token_drop)  # validates the rate before any work
        x = self.patches.tokens(self.normalize(images), self.patch_weight, self.patch_bias, p,
                                self.pos_embed)  # fmt: skip
        if token_drop > 0:
            x = drop_tokens(x, token_drop, generator)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))
