"""The plan's measurements and costs on a Fashion-MNIST caption pool with a reference folder.

`measure_pool` reads the reference's cache of the pool (its pass over the pool, which the
filter and JEST need anyway) and runs the reference once over a sample of the held-out test
pairs and the class prompts; `step_costs` measures each method's FLOPs per step with one step
of it (torch.utils.flop_counter, as every run of jestkit counts them). Both report the FLOPs
they spent: they are the plan's own cost.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from jestkit.core.filter import keep_top, similarity
from jestkit.engine.config import TrainConfig
from jestkit.engine.flops import count_no_grad_flops
from jestkit.engine.loop import Trainer
from jestkit.engine.reference import read_reference_info
from jestkit.engine.step import train_step
from jestkit.fashion.prepare import CaptionData
from jestkit.fashion.reference import load_reference
from jestkit.fashion.source import pixels
from jestkit.models.factory import ModelConfig, build_model
from jestkit.plan import measure
from jestkit.plan.rules import METHODS, MethodCost

SAMPLE = 2000  # held-out pairs and pool images the near-duplicate and held-out passes read


def load_reference_model(ref_dir: str | os.PathLike, data: CaptionData):
    """The reference's model from ref_dir/model.pt (written by `jestkit reference`)."""
    path = Path(ref_dir) / "model.pt"
    if not path.is_file():
        raise ValueError(f"{path} is missing: --reference must be a folder written by "
                         "`jestkit reference` (the plan reads its model and cache)")
    saved = torch.load(path, weights_only=True)
    model = build_model(ModelConfig(**saved["model_config"]), len(data.vocab), saved["loss"])
    model.load_state_dict(saved["model"])
    return model.eval()


def pool_measurements(image: torch.Tensor, text: torch.Tensor, held: tuple, prompts: torch.Tensor,
                      keep: float = 0.3, sample: int = SAMPLE, seed: int = 0) -> dict:  # fmt: skip
    """The measurements (jestkit.plan.measure) from the reference's embeddings of the pool's
    pairs (all of them, or a random sample), of held-out pairs (image, text) and of the class
    prompts; with 'flops', what the near-duplicate search cost."""
    g = torch.Generator().manual_seed(seed)
    image, text = image.float(), text.float()
    pool_sim = similarity(image, text)
    held_sim = similarity(*held)
    classes = measure.zero_shot_classes(image, prompts)  # unmatched: a caption of another class
    unmatched = measure.shuffled_similarity(image, text, g, classes)
    share = measure.matched_share(pool_sim, held_sim, unmatched)
    kept = keep_top(pool_sim, keep)
    picks = torch.randperm(len(image), generator=g)[: min(sample, len(image))]
    pair = torch.cat([image, text], 1) / 2**0.5  # cosine of pairs: the mean of both cosines
    return {
        "matched_share": share,
        "kept_precision": measure.kept_precision(pool_sim, held_sim, share, keep),
        "keep": keep,
        "near_duplicate_share": measure.near_duplicate_share(pair[picks], pair, picks),
        "concepts_pool": measure.concentration(measure.concept_shares(image, prompts)),
        "concepts_kept": measure.concentration(measure.concept_shares(image[kept], prompts)),
        "flops": 2 * len(picks) * len(image) * pair.shape[1],
    }


def held_out_embeddings(model, data: CaptionData, sample: int = SAMPLE, seed: int = 0):
    """((image, text) of a random sample of the held-out test pairs, the class prompts' text
    embeddings, the FLOPs of those forward passes)."""
    g = torch.Generator().manual_seed(seed)
    held = torch.randperm(len(data.test), generator=g)[: min(sample, len(data.test))]
    pairs, flops = count_no_grad_flops(model, pixels(data.test.images[held]),
                                       data.test_tokens[held])  # fmt: skip
    prompts, prompt_flops = count_no_grad_flops(model.encode_text, data.prompt_tokens)
    return pairs, prompts, flops + prompt_flops


def measure_pool(data: CaptionData, ref_dir: str | os.PathLike, keep: float = 0.3,
                 sample: int = SAMPLE, seed: int = 0) -> dict:  # fmt: skip
    """The pool's measurements from the reference's pass over the whole pool (its cache) and
    a held-out sample, with the FLOPs they cost beyond that pass ('flops') and the reference's
    own cost ('reference_flops': its training and its pass over the pool)."""
    info = read_reference_info(Path(ref_dir), "sigmoid", f"`jestkit reference --out {ref_dir}`")
    rows = load_reference(ref_dir, data, info["loss"]).cache.lookup(data.pool.ids,
                                                                    ["image", "text"])  # fmt: skip
    model = load_reference_model(ref_dir, data)
    held, prompts, flops = held_out_embeddings(model, data, sample, seed)
    m = pool_measurements(rows["image"], rows["text"], held, prompts, keep, sample, seed)
    return {"pool_size": len(data.pool), "kept": max(1, round(keep * len(data.pool))), **m,
            "reference_flops": info["train_flops"] + info["cache_flops"],
            "flops": m["flops"] + flops}  # fmt: skip


def step_costs(data: CaptionData, model_config: ModelConfig, base: TrainConfig,
               ref_dir: str | os.PathLike) -> tuple[dict[str, MethodCost], float]:  # fmt: skip
    """Each method's FLOPs per step (METHODS), measured over one step of it, and the FLOPs those
    steps cost. base: the learners' training settings (batch size, loss)."""
    costs, spent = {}, 0.0
    for name, (policy, ratio, keep) in METHODS.items():
        config = base.with_name(policy)
        if ratio is not None:
            config = replace(config, selection=replace(config.selection, filter_ratio=ratio))
        torch.manual_seed(0)
        model = build_model(model_config, len(data.vocab), config.selection.loss)
        reference = None
        if config.policy.uses_reference:
            reference = load_reference(ref_dir, data, config.selection.loss)
        trainer = Trainer(model, config, data.pool_source(), reference, progress=False)
        train_step(trainer)
        per_step = {k: v or 0 for k, v in trainer.flops.per_step.items()}
        costs[name] = MethodCost(per_step["train"], per_step["learner_score"],
                                 config.policy.uses_reference or keep is not None)  # fmt: skip
        spent += sum(per_step.values())
    return costs, spent
