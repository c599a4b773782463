"""An open_clip model as the training loop's learner or reference (`pip install
'jestkit[open_clip]'`): `OpenClipDual` gives the loop what it uses from jestkit's DualEncoder.

    encode_image(images)      (N, 3, H, W), open_clip's preprocessing -> (N, D), unit norm
    encode_text(tokens)       (N, L), open_clip's tokenizer -> (N, D), unit norm
    logit_scale, logit_bias   t = exp(open_clip's logit_scale), clamped at 100 as open_clip_train
                              clamps it; the bias of SigLIP configs, else 0
    loss(img, txt)            jestkit's contrastive loss (sigmoid for a model with a logit_bias,
                              else softmax): the same function as open_clip's SigLipLoss / ClipLoss
                              (tests/dropin/test_openclip.py checks it)
    embeddings(images, tokens, view, generator)  jestkit.Embeddings for the selection, no
                              gradients, float32, through a scoring view (jestkit.models.view.View)
    encode_image_multires(images, patch_size, fraction)  multi-resolution training
    check_view(view, multires_fraction)  refuses a view the model cannot take, before any work

The views (Flexi-JEST's patch sizes, image and text token drops) are computed with the model's
own submodules by jestkit.openclip.views.OpenClipViews: open_clip's VisionTransformer and text
transformer take them; a CNN or timm image tower refuses an image view with an error.
`open_clip_inputs(spec, model)` gives the image transform and the tokenizer the model was made
for.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import open_clip
import torch
from torch import nn

from jestkit.engine.checkpoint import is_checkpoint, load_checkpoint
from jestkit.models.dual import MAX_LOGIT_SCALE, ContrastiveDual
from jestkit.models.view import View
from jestkit.openclip.model import create_model, freeze, load_reference, read_config, selection_loss
from jestkit.openclip.views import OpenClipViews


class OpenClipDual(ContrastiveDual):
    """An open_clip CLIP/SigLIP model behind the interface of jestkit.models.dual.DualEncoder:
    its encoders, scalars and view check here, the rest from ContrastiveDual, as DualEncoder's.
    name: how errors call the model (its config name or file)."""

    def __init__(self, model: nn.Module, name: str = "the open_clip model"):
        super().__init__()
        self.model = model
        self.loss_name = selection_loss(model)
        self.views = OpenClipViews(model, name)  # not a module: holds the same model

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    @property
    def logit_bias(self) -> torch.Tensor:
        bias = getattr(self.model, "logit_bias", None)
        return torch.zeros((), device=self.model.logit_scale.device) if bias is None else bias

    def check_view(self, view: View, multires_fraction: float = 0.0) -> None:
        """Refuse, before any work, a view (or multi-resolution training at view.patch_size)
        this model cannot take: a ValueError naming the model and the flag."""
        self.views.check(view, multires_fraction)

    @property
    def image_features(self) -> Callable[..., torch.Tensor]:
        """open_clip's preprocessed images -> features at a view (OpenClipViews.encode_image)."""
        return self.views.encode_image

    @property
    def text_features(self) -> Callable[..., torch.Tensor]:
        """open_clip's token ids -> features with a token drop (OpenClipViews.encode_text)."""
        return self.views.encode_text


@contextlib.contextmanager
def _clear(spec: str, checkpoint: str | os.PathLike | None = None) -> Iterator[None]:
    """Whatever open_clip or torch.load raise on a config name it does not know, a file that is
    no checkpoint, or weights that do not fit the config: a ValueError naming what was given.
    Errors that already say so (a missing file, a ValueError) pass as they are."""
    try:
        yield
    except (FileNotFoundError, ValueError):
        raise
    except Exception as e:  # noqa: BLE001 - turned into one message naming the inputs
        reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
        if checkpoint is None:
            raise ValueError(
                f"--open_clip {spec!r}: open_clip cannot build it ({reason}); give a config name "
                f"open_clip knows (open_clip.list_models()) or a JSON model config file"
            ) from None
        raise ValueError(
            f"{checkpoint} cannot be loaded into the open_clip model {spec!r} ({reason}): is it "
            f"an open_clip checkpoint of this config? (--open_clip / --reference_model name the "
            f"config; a Fashion-MNIST jestkit checkpoint is not one)"
        ) from None


def _known(spec: str) -> None:
    """Refuse a config name open_clip does not know (a JSON file is read by create_model)."""
    source = str(spec).startswith(("hf-hub:", "local-dir:"))
    if read_config(spec) is None and not source and spec not in open_clip.list_models():
        raise ValueError(
            f"--open_clip {spec!r}: open_clip knows no such model config; give a name from "
            f"open_clip.list_models() (or one registered with open_clip.add_model_config) or a "
            f"JSON model config file"
        )


def open_clip_model(spec: str, checkpoint: str | os.PathLike | None = None) -> OpenClipDual:
    """The open_clip model `spec` (a config name open_clip knows, or a JSON config file) with
    the weights of `checkpoint` (None: random, from torch's current seed)."""
    _known(spec)
    with _clear(spec, checkpoint):
        return OpenClipDual(create_model(spec, checkpoint), str(spec))


def open_clip_reference(
    spec: str, checkpoint: str | os.PathLike | None = None, state_dict: dict | None = None
) -> OpenClipDual:
    """A frozen reference (eval mode, no gradients) from an open_clip checkpoint (epoch_N.pt, a
    state dict, .safetensors), or from `state_dict`, the weights of an OpenClipDual (e.g. the
    'model' of a `jestkit train` checkpoint of an open_clip learner)."""
    if state_dict is not None:
        model = OpenClipDual(create_model(spec), str(spec))
        model.load_state_dict(state_dict)
        return freeze(model)
    return OpenClipDual(load_reference(spec, checkpoint), str(spec))


def open_clip_inputs(spec: str, model: OpenClipDual) -> tuple[Callable, Callable]:
    """(image transform: PIL image -> (3, H, W) tensor, tokenizer: captions -> (n, L) ids), as
    open_clip makes them for the model: its preprocessing config, its config's tokenizer."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = open_clip.get_model_preprocess_cfg(model.model)
    transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    config = read_config(spec) if str(spec).endswith(".json") else None
    if config is None:
        return transform, open_clip.get_tokenizer(spec)
    with tempfile.TemporaryDirectory() as tmp:  # open_clip reads a JSON config from a folder
        (Path(tmp) / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
        return transform, open_clip.get_tokenizer(f"local-dir:{tmp}")


def open_clip_reference_file(spec: str, checkpoint: str | os.PathLike):
    """A frozen open_clip reference from an open_clip checkpoint file or from the checkpoint.pt
    of a `jestkit train` run of an open_clip learner (e.g. uniform on your curated shards)."""
    path = Path(checkpoint)
    _known(spec)  # an unknown name is not the checkpoint's fault
    with _clear(spec, checkpoint):
        if path.suffix == ".pt" and path.is_file() and is_checkpoint(path):  # jestkit's
            return open_clip_reference(spec, state_dict=load_checkpoint(path)["model"])
        return open_clip_reference(spec, checkpoint)


def matching_reference(spec: str, checkpoint: str, learner_spec: str | None, learner):
    reference = open_clip_reference_file(spec, checkpoint)
    if learner_spec is not None and spec != learner_spec:
        mine = open_clip.get_model_preprocess_cfg(learner.model)
        theirs = open_clip.get_model_preprocess_cfg(reference.model)
        ctx = [getattr(m.model, "context_length", None) for m in (learner, reference)]
        if mine != theirs or ctx[0] != ctx[1]:
            raise ValueError(
                f"the reference {spec!r} takes other inputs than the learner {learner_spec!r} "
                f"(preprocessing {theirs} vs {mine}, context length {ctx[1]} vs {ctx[0]}): both "
                "score the same tensors, so their image preprocessing and tokenizer must match"
            )
    return reference
