"""JEST in an open_clip training loop: one selecting step shaped like open_clip's training
tasks, and the reference read from a jestkit cache instead of a forward pass.

    CachedEmbeddings(cache, scale, bias)  the reference's embeddings read from a jestkit
                                          ReferenceCache by example id
    reference_cache_meta(reference, ids)  the CacheMeta of such a cache
    JESTTask(learner, reference, selector)  one JEST step, shaped like open_clip's training tasks
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from jestkit.core import Embeddings, Selector
from jestkit.dropin.cache import CacheMeta, ReferenceCache, fingerprint_ids, fingerprint_state_dict
from jestkit.dropin.distributed import GlobalSelector, redistribute, unwrap
from jestkit.models.dual import encode_multires
from jestkit.models.view import View
from jestkit.openclip.model import as_dict, embeddings, freeze, loss_kind, make_loss
from jestkit.openclip.views import OpenClipViews


@dataclass
class CachedEmbeddings:
    """The frozen reference's embeddings read from a jestkit ReferenceCache (columns 'image'
    and 'text') by example id, with its logit scale (the multiplier t) and bias."""

    cache: ReferenceCache
    logit_scale: float
    logit_bias: float = 0.0

    @classmethod
    def of(cls, cache: ReferenceCache, reference: nn.Module) -> CachedEmbeddings:
        """The cache of `reference`, with its scalars (logit_scale exponentiated, as open_clip's
        forward does; bias 0 without one)."""
        ref = unwrap(reference)
        bias = getattr(ref, "logit_bias", None)
        return cls(
            cache,
            float(ref.logit_scale.detach().exp()),
            0.0 if bias is None else float(bias.detach()),
        )

    def __call__(self, ids: torch.Tensor) -> Embeddings:
        rows = self.cache.lookup(ids, ["image", "text"])
        return Embeddings(rows["image"], rows["text"], self.logit_scale, self.logit_bias)


def reference_cache_meta(reference: nn.Module, ids: torch.Tensor, *extra: str) -> CacheMeta:
    """The CacheMeta of a reference cache: the reference's weights, the example ids (plus any
    extra strings that change the inputs: tokenizer, preprocessing) and two embedding columns."""
    ref = unwrap(reference)
    dim = getattr(getattr(ref, "visual", None), "output_dim", None)
    if not isinstance(dim, int):
        raise ValueError("cannot tell the reference's embedding width: build CacheMeta yourself")
    return CacheMeta(
        fingerprint_state_dict(ref.state_dict()),
        fingerprint_ids(ids, *extra),
        columns={"image": [dim], "text": [dim]},
    )


class StepOutput(dict):
    """The losses dict open_clip's training tasks return (scalar tensors only: 'loss', the
    loss module's '*_loss' terms and 'logit_scale', so open_clip_train's logging can call
    .item() on each), plus `.selected`: the (b,) positions of the super-batch trained on, in
    selection order (global positions under a GlobalSelector)."""

    def __init__(self, losses: Mapping[str, torch.Tensor], selected: torch.Tensor):
        super().__init__(losses)
        self.selected = selected


Reference = nn.Module | Callable[[torch.Tensor], Embeddings]


class JESTTask(nn.Module):
    """One JEST training step for an open_clip learner, shaped like open_clip's training tasks
    (CLIPTask, DistillCLIPTask: a module holding `trainable_module`, the frozen teacher and
    `loss`, whose forward(images, texts) returns the losses dict).

    learner: the open_clip model being trained (output_dict=True or not; wrapped in DDP or not).
    reference: a frozen open_clip model (load_reference; frozen here if it is not), run on the
        super-batch under no_grad, or a callable ids -> Embeddings such as CachedEmbeddings
        (forward then needs `ids`).
    selector: jestkit.Selector (one process) or jestkit.dropin.distributed.GlobalSelector (torchrun:
        each rank passes its shard of the super-batch and trains on b / world_size examples).
        Its config's loss must be the training loss's: 'sigmoid' for SigLipLoss, 'softmax' for
        ClipLoss.
    loss: an open_clip loss module; default make_loss(learner) with the selector's ranks.
    view: the learner's scoring view (jestkit.models.view.View, as `--scoring.*` makes it:
        Flexi-JEST's coarser patch size, image and text token drops; jestkit.openclip.views);
        None scores with the plain forward. Refused here if the learner cannot take it. Its
        token drops are drawn from `task.view_generator`, seeded with view_seed (checkpoint its
        get_state() beside the selector's to resume exactly).
    multires_fraction: multi-resolution training (Flexi-JEST): that share of each trained
        sub-batch (its first rows) runs at view.patch_size, the rest at the model's own, so
        that the learner stays good at the view it is scored with (the paper: 0.5); 0 trains
        at the model's own patch size. It calls the learner's towers, not its forward, so the
        learner must not be wrapped in DistributedDataParallel (under torchrun: the same
        weights on every rank with jestkit.dropin.distributed.broadcast_parameters, and the
        gradients averaged with average_gradients after backward, as `jestkit train` does).

    forward(images, texts, ids=None), in training mode: the learner (unless the policy does
    not need it) and the reference score the super-batch without gradients, the selector picks
    b of its B pairs, and the learner's loss on those b, with gradients, is returned as a
    StepOutput (its `.selected` says which). In eval mode forward is the learner's forward,
    so open_clip's evaluation can call the task like a model. The reference stays in eval mode
    whatever task.train() is given.
    """

    def __init__(
        self,
        learner: nn.Module,
        reference: Reference | None,
        selector: Selector | GlobalSelector,
        loss: nn.Module | None = None,
        view: View | None = None,
        view_seed: int = 0,
        multires_fraction: float = 0.0,
    ):
        super().__init__()
        if not isinstance(selector, Selector | GlobalSelector):
            raise TypeError(
                "selector must be a jestkit.Selector or jestkit.dropin.distributed.GlobalSelector, "
                f"got {type(selector).__name__}"
            )
        config = selector.config
        if config.loss not in ("sigmoid", "softmax"):
            raise ValueError(
                f"open_clip models are contrastive: the selector's loss must be 'sigmoid' or "
                f"'softmax', got {config.loss!r}"
            )
        self.trainable_module = learner
        self.selector = selector
        self.distributed = isinstance(selector, GlobalSelector)
        rank, world_size = self._ranks()
        self.loss = make_loss(learner, rank, world_size) if loss is None else loss
        kind = loss_kind(self.loss)
        if kind is not None and kind != config.loss:
            raise ValueError(
                f"the selector scores with loss={config.loss!r} but the task trains with "
                f"{type(self.loss).__name__} ({kind!r}): JEST selects by the training loss, "
                f"use SelectionConfig(loss={kind!r})"
            )
        needs_reference = config.policy in ("easy_reference", "learnability")
        if needs_reference and reference is None:
            raise ValueError(f"policy {config.policy!r} needs a reference; got None")
        if isinstance(reference, nn.Module):
            self.reference = freeze(reference)
            self.reference_lookup = None
        elif reference is None or callable(reference):
            self.reference = None
            self.reference_lookup = reference
        else:
            raise TypeError(
                "reference must be an open_clip model or a callable ids -> Embeddings, got "
                f"{type(reference).__name__}"
            )
        self.view = view or View()
        if not 0.0 <= multires_fraction <= 1.0:
            raise ValueError(f"multires_fraction must be in [0, 1], got {multires_fraction!r}")
        if multires_fraction > 0 and self.view.patch_size is None:
            raise ValueError("multires_fraction needs view.patch_size: the coarse patch size that "
                             "part of each sub-batch trains at")  # fmt: skip
        if multires_fraction > 0 and unwrap(learner) is not learner:
            raise ValueError(
                "multires_fraction calls the learner's towers, which DistributedDataParallel "
                "does not see: pass the bare model, start every rank from the same weights with "
                "jestkit.dropin.distributed.broadcast_parameters and average the gradients with "
                "average_gradients after backward"
            )
        self.multires_fraction = float(multires_fraction)
        self.views = OpenClipViews(unwrap(learner), "the learner")  # not a module
        self.views.check(self.view, self.multires_fraction)
        self.view_generator = torch.Generator().manual_seed(view_seed)
        if config.loss == "sigmoid":
            for name, model in (("learner", learner), ("reference", self.reference)):
                if model is not None and getattr(unwrap(model), "logit_bias", None) is None:
                    raise ValueError(
                        f"the sigmoid loss needs a logit_bias, and the {name} has none (a CLIP "
                        "config): use loss='softmax', or a SigLIP config (init_logit_bias)"
                    )

    def _ranks(self) -> tuple[int, int]:
        if not self.distributed:
            return 0, 1
        group = self.selector.group
        if not torch.distributed.is_initialized():
            return 0, 1
        return torch.distributed.get_rank(group), torch.distributed.get_world_size(group)

    def train(self, mode: bool = True) -> JESTTask:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    def forward(self, images: torch.Tensor, texts: torch.Tensor, ids: torch.Tensor | None = None):
        if not self.training:
            return self.trainable_module(images, texts)
        return self.training_forward(images, texts, ids)

    @torch.no_grad()
    def score(
        self, images: torch.Tensor, texts: torch.Tensor, ids: torch.Tensor | None = None
    ) -> tuple[Embeddings | None, Embeddings | None]:
        """The learner's and the reference's Embeddings of the super-batch, each None when the
        policy does not use it. The learner is scored in its current mode, without DDP."""
        n = len(images)
        if len(texts) != n or (ids is not None and len(ids) != n):
            sizes = f"images {len(images)}, texts {len(texts)}"
            raise ValueError(
                f"the super-batch's parts differ in size: {sizes}"
                + ("" if ids is None else f", ids {len(ids)}")
            )
        policy = self.selector.config.policy
        learner = reference = None
        if policy in ("hard_learner", "learnability"):
            learner = self.score_learner(images, texts)
        if policy in ("easy_reference", "learnability"):
            if self.reference is not None:
                reference = embeddings(self.reference(images, texts))
            else:
                if ids is None:
                    raise ValueError(
                        "the reference is read from a cache by example id: call the task with "
                        "task(images, texts, ids)"
                    )
                reference = self.reference_lookup(ids)
                if reference.image.device != images.device:
                    reference = Embeddings(
                        reference.image.to(images.device),
                        reference.text.to(images.device),
                        reference.logit_scale,
                        reference.logit_bias,
                    )
        return learner, reference

    def score_learner(self, images: torch.Tensor, texts: torch.Tensor) -> Embeddings:
        """The learner's Embeddings of the super-batch through the task's view (no view: its
        plain forward, as open_clip returns it)."""
        model = unwrap(self.trainable_module)
        if self.view.is_identity:
            return embeddings(model(images, texts))
        v, g = self.view, self.view_generator
        image = self.views.encode_image(images, v.patch_size, v.token_drop, g)
        text = self.views.encode_text(texts, v.text_token_drop, g)
        bias = getattr(model, "logit_bias", None)
        return Embeddings(
            F.normalize(image, dim=-1),
            F.normalize(text, dim=-1),
            model.logit_scale.exp(),
            0.0 if bias is None else bias,
        )

    def select(
        self, images: torch.Tensor, texts: torch.Tensor, ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The positions of the super-batch to train on (global ones under a GlobalSelector)."""
        learner, reference = self.score(images, texts, ids)
        if learner is None and reference is None:  # uniform
            _, world_size = self._ranks()
            return self.selector(batch_size=len(images) * world_size)
        return self.selector(learner, reference)

    def training_forward(
        self, images: torch.Tensor, texts: torch.Tensor, ids: torch.Tensor | None = None
    ) -> StepOutput:
        selected = self.select(images, texts, ids)
        if self.distributed:
            images_b, texts_b = redistribute((images, texts), selected, self.selector.group)
        else:
            images_b, texts_b = images[selected], texts[selected]
        if self.multires_fraction > 0:
            model_out = self.multires_forward(images_b, texts_b)
        else:
            model_out = as_dict(self.trainable_module(images_b, texts_b))
        losses = self.loss(**model_out, output_dict=True)
        losses["loss"] = sum(v for k, v in losses.items() if k.endswith("_loss"))
        losses["logit_scale"] = model_out["logit_scale"]
        return StepOutput(losses, selected)

    def multires_forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict:
        """The learner's output dict on a sub-batch, its first multires_split(N,
        multires_fraction) images at view.patch_size (gradients reach the base weights through
        the resized patch embedding), as open_clip's forward returns it."""
        model = self.trainable_module
        image = encode_multires(self.views.encode_image, images, self.view.patch_size,
                                self.multires_fraction)  # fmt: skip
        out = {
            "image_features": F.normalize(image, dim=-1),
            "text_features": F.normalize(model.encode_text(texts), dim=-1),
            "logit_scale": model.logit_scale.exp(),
        }
        bias = getattr(model, "logit_bias", None)
        if bias is not None:
            out["logit_bias"] = bias
        return out
