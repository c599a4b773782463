"""The plan's Fashion-MNIST pool (`FashionPool`): a caption pool with a `jestkit reference`
folder, behind the pool interface jestkit.plan.run plans with (measure, step costs, a method's
run, the commands that run it).

`measure_pool` reads the reference's cache of the pool (its pass over the pool, which the
filter and JEST need anyway) and runs the reference once over a sample of the held-out test
pairs and the class prompts (timing that forward: the reference's pass in seconds); `step_costs`
measures each method's FLOPs per step (torch.utils.flop_counter, as every run of jestkit counts
them) and seconds per step over a few real steps of it (jestkit.plan.costs). Both report the
FLOPs they spent: they are the plan's own cost.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from jestkit.engine.config import TrainConfig
from jestkit.engine.flops import count_no_grad_flops
from jestkit.engine.loop import Trainer
from jestkit.engine.reference import read_reference_info
from jestkit.fashion.captions import PoolConfig
from jestkit.fashion.learner import train_learner
from jestkit.fashion.prepare import CaptionData
from jestkit.fashion.reference import filter_pool, load_reference
from jestkit.fashion.source import pixels
from jestkit.models.factory import ModelConfig, build_model
from jestkit.plan.costs import measure_method, reference_seconds, timed
from jestkit.plan.measure import SAMPLE, pool_measurements
from jestkit.plan.rules import METHODS, MethodCost, method_config


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


def held_out_embeddings(model, data: CaptionData, sample: int = SAMPLE, seed: int = 0):
    """((image, text) of a random sample of the held-out test pairs, the class prompts' text
    embeddings, the FLOPs of those forward passes, and the pairs' forward seconds per pair
    {"cpu", "wall"}: what the reference's pass over the pool takes a pair)."""
    g = torch.Generator().manual_seed(seed)
    held = torch.randperm(len(data.test), generator=g)[: min(sample, len(data.test))]
    (pairs, flops), seconds = timed(count_no_grad_flops, model, pixels(data.test.images[held]),
                                    data.test_tokens[held])  # fmt: skip
    prompts, prompt_flops = count_no_grad_flops(model.encode_text, data.prompt_tokens)
    per_pair = {k: v / len(held) for k, v in seconds.items()}
    return pairs, prompts, flops + prompt_flops, per_pair


def measure_pool(data: CaptionData, ref_dir: str | os.PathLike, keep: float = 0.3,
                 sample: int = SAMPLE, seed: int = 0) -> dict:  # fmt: skip
    """The pool's measurements from the reference's pass over the whole pool (its cache) and
    a held-out sample, with the FLOPs they cost beyond that pass ('flops') and the reference's
    own cost ('reference_flops': its training and its pass over the pool; 'reference_seconds':
    the same in seconds, jestkit.plan.costs.reference_seconds)."""
    info = read_reference_info(Path(ref_dir), "sigmoid", f"`jestkit reference --out {ref_dir}`")
    rows = load_reference(ref_dir, data, info["loss"]).cache.lookup(data.pool.ids,
                                                                    ["image", "text"])  # fmt: skip
    model = load_reference_model(ref_dir, data)
    held, prompts, flops, per_pair = held_out_embeddings(model, data, sample, seed)
    m = pool_measurements(rows["image"], rows["text"], held, prompts, keep, sample, seed)
    return {"pool_size": len(data.pool), "kept": max(1, round(keep * len(data.pool))), **m,
            "reference_flops": info["train_flops"] + info["cache_flops"],
            "reference_pass_flops": info["cache_flops"],
            "reference_seconds": reference_seconds(info.get("train_seconds"), per_pair,
                                                   len(data.pool)),
            "flops": m["flops"] + flops}  # fmt: skip


def step_costs(data: CaptionData, model_config: ModelConfig, base: TrainConfig,
               ref_dir: str | os.PathLike) -> tuple[dict[str, MethodCost], float]:  # fmt: skip
    """Each method's FLOPs and seconds per step (METHODS), measured over real steps of it
    (jestkit.plan.costs), and the FLOPs those steps cost. base: the learners' training settings
    (batch size, loss)."""
    costs, spent = {}, 0.0
    for name, (_, _, keep) in METHODS.items():
        config = method_config(base, name)
        torch.manual_seed(0)
        model = build_model(model_config, len(data.vocab), config.selection.loss)
        reference = None
        if config.policy.uses_reference:
            reference = load_reference(ref_dir, data, config.selection.loss)
        trainer = Trainer(model, config, data.pool_source(), reference, progress=False)
        costs[name], flops = measure_method(trainer, config.policy.uses_reference or
                                            keep is not None)  # fmt: skip
        spent += flops
    return costs, spent


def check_plan_reference(ref_dir: str | os.PathLike) -> None:
    """Refuse a reference folder without a reference (a pool without a reference)."""
    if not (Path(ref_dir) / "reference.json").is_file():
        raise ValueError(f"--reference {ref_dir} holds no reference (reference.json): the plan "
                         "measures the pool with it; build one with `jestkit reference`")


def changed_flags(section: str, value, default) -> list[str]:
    """`--section.field VALUE` for each field of the dataclass `value` that differs from
    `default`'s (what a command must say to reproduce it)."""
    out = []
    for f in fields(value):
        v = getattr(value, f.name)
        if v != getattr(default, f.name):
            text = "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
            out += [f"--{section}.{f.name}", text]
    return out


@dataclass
class FashionPool:
    """The Fashion-MNIST caption pool of `data` with the reference folder `ref_dir`, its
    learners jestkit's dual encoder of `model_config` (jestkit.plan.run's pool interface)."""

    data: CaptionData
    model_config: ModelConfig
    ref_dir: str
    data_config: PoolConfig | None = None  # the --data.* flags the commands repeat

    def check(self) -> None:
        check_plan_reference(self.ref_dir)
        if len(self.data.test) == 0:
            raise ValueError("the held-out test set is empty: the plan needs held-out pairs")

    def measure(self) -> dict:
        return measure_pool(self.data, self.ref_dir)

    def step_costs(self, base: TrainConfig) -> tuple[dict[str, MethodCost], float]:
        return step_costs(self.data, self.model_config, base, self.ref_dir)

    def train(self, name: str, config: TrainConfig, run_dir: Path, resume: bool,
              progress: bool) -> dict:  # fmt: skip
        """Method `name` with `config`, in run_dir (its result.json's contents)."""
        keep = METHODS[name][2]
        data = self.data if keep is None else filter_pool(self.data, self.ref_dir, keep,
                                                          config.selection.loss)  # fmt: skip
        return train_learner(data, self.model_config, config, self.ref_dir, run_dir,
                             resume=resume, progress=progress)  # fmt: skip

    @staticmethod
    def accuracy(result: dict) -> float:
        """A run's held-out accuracy: zero-shot on the test set."""
        return result["final"]["zero_shot"]

    def commands(self, name: str, config: TrainConfig) -> list[str]:
        """The command that runs method `name` with `config`."""
        keep = METHODS[name][2]
        argv = ["jestkit", "train",
                *changed_flags("data", self.data_config or PoolConfig(), PoolConfig()),
                *changed_flags("model", self.model_config, ModelConfig()),
                "--reference", self.ref_dir, *selection_flags(config),
                *changed_flags("training", config.training, type(config.training)()),
                *([] if keep is None else ["--filter_keep", f"{keep:g}"]),
                "--out", f"runs/{name.replace('+', '-')}"]  # fmt: skip
        return [shlex.join(argv)]


def selection_flags(config: TrainConfig) -> list[str]:
    """The --selection.* flags of a method's config (policy, method, filter ratio)."""
    s = config.selection
    if not config.policy.scored:
        return ["--selection.policy", s.policy]
    return ["--selection.policy", s.policy, "--selection.method", s.method,
            "--selection.filter_ratio", f"{s.filter_ratio:g}"]  # fmt: skip
