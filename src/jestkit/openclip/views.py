"""Flexi-JEST's scoring views of an open_clip model, computed with the model's own submodules.

`OpenClipViews(model)` holds an open_clip CLIP or CustomTextCLIP (not a copy, nothing patched)
and runs its towers' forward passes step by step, so that a view can change what the plain
forward cannot:

    encode_image(images, patch_size, token_drop, generator)
        open_clip's VisionTransformer at another patch size: the patch embedding (conv1) resized
        by FlexiViT's pseudo-inverse rule (jestkit.models.vit.pi_resize_weight, bilinear as in
        FlexiViT), the grid part of the position embedding resampled to the new grid (the class
        token keeps its own); then a seeded share of the patch tokens dropped (the class token
        is kept; open_clip's own PatchDropout is inactive in eval mode and draws from torch's
        global RNG), then ln_pre, the transformer, the tower's own pooling and projection.
    encode_text(tokens, token_drop, generator)
        the text transformer on a seeded subset of each caption's positions (in order, each
        with its own position embedding): the pooled token (argmax: the EOT token; eos; last;
        first) and the first token (CLIP's start-of-text) are always kept, then the caption's
        tokens, pads last. Under a causal mask, positions after the pooled token cannot reach
        it and count as pads: a caption that fits keeps its exact embedding.
    check(view, multires_fraction)
        refuse, before any work, a view the model cannot take (a CNN or timm image tower, a
        patch size that does not divide the image, a text tower of unknown layout)

With patch_size None (or the model's own) and nothing dropped both equal the plain forward.
Gradients flow through the resized weights, so multi-resolution training uses encode_image too.
"""

from __future__ import annotations

import torch
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn

from jestkit.models.view import View
from jestkit.models.vit import FlexiPatches, drop_tokens, keep_count, uniform_noise

RESIZE_MODE = "bilinear"  # FlexiViT's; any patch size p' >= p keeps the identity exact
POOLS = ("argmax", "eos", "last", "first")


class OpenClipViews:
    """The scoring views of one open_clip model (see the module docstring). name: how errors
    call the model (its config name or file)."""

    def __init__(self, model: nn.Module, name: str = "the open_clip model"):
        self.model = model
        self.name = name
        self.patches = FlexiPatches(RESIZE_MODE)  # the patch embedding at any patch size

    # --- checks -------------------------------------------------------------------------------

    def check(self, view: View, multires_fraction: float = 0.0) -> None:
        """A ValueError naming the model and the flag when `view` (or multi-resolution
        training at view.patch_size) is impossible for this model."""
        if view.changes_image or multires_fraction > 0:
            coarse = view.patch_size is not None or multires_fraction > 0
            visual = self._vision_transformer(
                "--scoring.patch_size" if coarse else "--scoring.token_drop"
            )
            if view.patch_size is not None:
                self._check_patch_size(visual, view.patch_size)
        if view.text_token_drop > 0:
            self._text_layout("--scoring.text_token_drop")

    def _vision_transformer(self, flag: str) -> VisionTransformer:
        visual = getattr(self.model, "visual", None)
        if not isinstance(visual, VisionTransformer):
            kind = type(visual).__name__
            raise ValueError(
                f"{flag}: {self.name}'s image tower is a {kind}, not open_clip's "
                "VisionTransformer: its patch embedding and tokens are not reachable, so it has "
                "no scoring view (CNN and timm towers score at full cost); drop the flag"
            )
        if visual.patch_size[0] != visual.patch_size[1]:
            raise ValueError(
                f"{flag}: {self.name} has non-square patches {visual.patch_size}; views need "
                "square ones"
            )
        return visual

    def _check_patch_size(self, visual: VisionTransformer, patch_size: int) -> None:
        h, w = visual.image_size
        if h % patch_size or w % patch_size:
            fits = [p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0]
            raise ValueError(
                f"--scoring.patch_size {patch_size} does not divide {self.name}'s image size "
                f"{h} x {w} (its own patch size is {visual.patch_size[0]}); choose one of {fits}"
            )

    def _text_layout(self, flag: str) -> tuple[nn.Module, str, int | None, int]:
        """(the module holding the text tower's parts, pool type, eos id, pad id): CLIP keeps
        them on the model, CustomTextCLIP in model.text."""
        m = self.model
        tower = getattr(m, "text", None)
        if tower is None and isinstance(getattr(m, "token_embedding", None), nn.Embedding):
            layout = (m, m.text_pool_type, getattr(m, "text_eos_id", None), 0)
        elif (
            isinstance(tower, TextTransformer) and tower.cls_emb is None and not tower.use_pad_mask
        ):
            layout = (tower, tower.pool_type, tower.eos_id, tower.pad_id)
        else:
            kind = type(tower).__name__ if tower is not None else type(m).__name__
            raise ValueError(
                f"{flag}: {self.name}'s text tower ({kind}) is not open_clip's own "
                "TextTransformer without a class token or pad mask, so it has no text view; "
                "drop the flag"
            )
        if layout[1] not in POOLS:
            raise ValueError(
                f"{flag}: {self.name}'s text tower pools with {layout[1]!r}: a text view needs "
                f"one of {POOLS}"
            )
        return layout

    # --- the image tower ----------------------------------------------------------------------

    def encode_image(
        self,
        images: torch.Tensor,
        patch_size: int | None = None,
        token_drop: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(N, 3, H, W) -> (N, D) image features, unnormalised, seen through the view (none:
        the model's own encode_image)."""
        if patch_size is None and token_drop == 0:
            return self.model.encode_image(images)
        flag = "--scoring.patch_size" if patch_size is not None else "--scoring.token_drop"
        return self.vision_forward(self._vision_transformer(flag), images, patch_size,
                                   token_drop, generator)  # fmt: skip

    def vision_forward(
        self,
        visual: VisionTransformer,
        images: torch.Tensor,
        patch_size: int | None = None,
        token_drop: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """VisionTransformer.forward, step by step, at `patch_size`, with `token_drop`."""
        base = visual.patch_size[0]
        p = base if patch_size is None else patch_size
        keep_count(1, token_drop)  # validates the rate before any work
        h, w = images.shape[-2:]
        if h % p or w % p:
            raise ValueError(f"patch size {p} does not divide the images' size {h} x {w}")
        pos = visual.positional_embedding  # the class token's, then the grid's
        x = self.patches.tokens(images, visual.conv1.weight, visual.conv1.bias, p, pos[None, 1:],
                                visual.grid_size)  # fmt: skip
        cls = visual.class_embedding.to(x.dtype) + pos[0].to(x.dtype)  # as open_clip adds them
        x = torch.cat([cls.view(1, 1, -1).expand(len(x), -1, -1), x], dim=1)
        x = visual.patch_dropout(x)  # as the plain forward: active in training mode only
        if token_drop > 0:  # the class token stays
            x = drop_tokens(x, token_drop, generator, prefix=1)
        x = visual.ln_pre(x)
        x = visual.transformer(x)
        pooled, _ = visual._pool(x)  # the tower's own pooling (class token, average, attention)
        return pooled @ visual.proj if visual.proj is not None else pooled

    # --- the text tower -----------------------------------------------------------------------

    def encode_text(
        self,
        tokens: torch.Tensor,
        token_drop: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(N, L) token ids -> (N, D) text features, unnormalised, with `token_drop` of each
        caption's positions dropped (0: the model's own encode_text)."""
        if token_drop == 0:
            return self.model.encode_text(tokens)
        keep = keep_count(tokens.shape[1], token_drop)
        tower, pool_type, eos_id, pad_id = self._text_layout("--scoring.text_token_drop")
        cast = tower.transformer.get_cast_dtype()
        n, length = tokens.shape
        x = tower.token_embedding(tokens).to(cast) + tower.positional_embedding[:length].to(cast)
        pooled_at = pool_positions(tokens, pool_type, eos_id)
        causal = tower.attn_mask is not None
        idx = kept_positions(tokens, pooled_at, keep, causal, pad_id, generator)
        x = x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[-1]))
        mask = tower.attn_mask[:keep, :keep] if causal else None  # order kept: still causal
        x = tower.ln_final(tower.transformer(x, attn_mask=mask))
        at = (idx == pooled_at[:, None]).int().argmax(dim=1)  # where the pooled token went
        pooled = x[torch.arange(n, device=x.device), at]
        projection = tower.text_projection
        if projection is None:
            return pooled
        return projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection


def pool_positions(tokens: torch.Tensor, pool_type: str, eos_id: int | None) -> torch.Tensor:
    """(N,) the position each caption's embedding is read from, as open_clip's
    text_global_pool reads it."""
    n, length = tokens.shape
    if pool_type == "argmax":  # the EOT token: the highest id
        return tokens.argmax(dim=-1)
    if pool_type == "eos":
        return (tokens == eos_id).int().argmax(dim=-1)
    position = 0 if pool_type == "first" else length - 1
    return torch.full((n,), position, dtype=torch.long, device=tokens.device)


def kept_positions(
    tokens: torch.Tensor,
    pooled_at: torch.Tensor,
    keep: int,
    causal: bool,
    pad_id: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(N, keep) positions to keep of each caption, in order: the pooled one, then the first,
    then the caption's tokens at random, then pads at random. A caption's tokens are those
    before the pooled one under a causal mask (what comes after cannot reach it), else the
    non-pad ids."""
    n, length = tokens.shape
    positions = torch.arange(length, device=tokens.device).expand(n, length)
    if causal:
        word = positions < pooled_at[:, None]
    else:
        word = tokens != pad_id
    priority = word.float() + uniform_noise((n, length), generator, tokens.device)
    priority[:, 0] = 3.0
    priority[positions == pooled_at[:, None]] = 4.0
    return priority.topk(keep, dim=1).indices.sort(dim=1).values
