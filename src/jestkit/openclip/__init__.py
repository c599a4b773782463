"""open_clip models in jestkit (`pip install 'jestkit[open_clip]'`), in one place:

    jestkit.openclip.model   create_model / load_reference from a config and a checkpoint,
                             their outputs as jestkit.Embeddings, the loss each trains with
    jestkit.openclip.task    JEST in an open_clip training loop: JESTTask (one selecting step,
                             shaped like open_clip's training tasks), CachedEmbeddings
    jestkit.openclip.dual    OpenClipDual: an open_clip model as `jestkit train`'s learner or
                             reference, its preprocessing and tokenizer (open_clip_inputs)
    jestkit.openclip.views   OpenClipViews: Flexi-JEST's scoring views (a coarser patch size,
                             image and text token drops) computed with the model's own modules

The drop-in names (with View, jestkit.models.view's scoring view that JESTTask takes) are
re-exported here and from jestkit.dropin.openclip.
"""

from jestkit.models.view import View
from jestkit.openclip.model import (
    create_model,
    embeddings,
    freeze,
    load_reference,
    make_loss,
    selection_loss,
)
from jestkit.openclip.task import CachedEmbeddings, JESTTask, StepOutput, reference_cache_meta

__all__ = [
    "CachedEmbeddings",
    "JESTTask",
    "StepOutput",
    "View",
    "create_model",
    "embeddings",
    "freeze",
    "load_reference",
    "make_loss",
    "reference_cache_meta",
    "selection_loss",
]
