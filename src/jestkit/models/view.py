"""A scoring view: the cheaper look at a dual encoder that Flexi-JEST scores with.

One value for both model families (jestkit's own DualEncoder and an open_clip model behind
jestkit.openclip.dual.OpenClipDual), so that the training step, the CLI's `--scoring.*` flags
(jestkit.engine.config.ScoringConfig.view) and the drop-in's JESTTask all say the same thing:

    emb = model.embeddings(images, tokens, View(patch_size=14, text_token_drop=0.5), generator)
    model.check_view(view, multires_fraction)   # before any work: can this model take it?

View() is the identity: the model's own patch size, nothing dropped, the plain forward.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class View:
    """How the learner looks at the super-batch when scoring it.

    Attributes:
        patch_size: score the image tower at this patch size (FlexiViT: the patch embedding
            PI-resized, the position embeddings resampled); None: the model's own
        token_drop: drop this share of each image's patch tokens (seeded)
        text_token_drop: drop this share of each caption's positions (pads first; the tokens a
            text tower pools are kept)
    """

    patch_size: int | None = None
    token_drop: float = 0.0
    text_token_drop: float = 0.0

    def __post_init__(self):
        p = self.patch_size
        if p is not None and (not isinstance(p, int) or isinstance(p, bool) or p < 1):
            raise ValueError(f"scoring.patch_size must be None or a positive int, got {p!r}")
        for name in ("token_drop", "text_token_drop"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ValueError(f"scoring.{name} must be in [0, 1), got {value!r}")

    @property
    def is_identity(self) -> bool:
        """Whether this is the plain forward (nothing to change)."""
        return self.patch_size is None and self.token_drop == 0 and self.text_token_drop == 0

    @property
    def changes_image(self) -> bool:
        return self.patch_size is not None or self.token_drop > 0
