"""The training loop of the image-caption job: draw a super-batch, score it, select, step.

One step: draw B = b / (1 - filter_ratio) candidates from the pool; score them with the learner
(no gradients; optionally a cheaper Flexi-JEST view) and read the reference's embeddings from its
cache; select b with the chosen policy (jestkit.core); take one optimizer step on those b.
Uniform draws b directly and scores nothing. FLOPs are measured with torch.utils.flop_counter on
the first step of each kind (shapes never change, so every later step costs the same) and split
into training, learner scoring and reference scoring (zero: the reference comes from its cache).

Under torchrun (jestkit.distributed, gloo on CPU) every rank draws the same super-batch, scores
its shard of B / world_size candidates, joins the global selection (the same b as one process),
and trains on its b / world_size of them; the contrastive loss is taken over the whole b (every
rank's embeddings gathered) and gradients are averaged, so a step is the one-process step.
FLOPs are those of all ranks together.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from jestkit.core import Embeddings, SelectionConfig, Selector
from jestkit.data.captions import NOISE_TYPES, CaptionSet
from jestkit.data.prepare import pixels
from jestkit.distributed import (
    Distributed,
    GlobalSelector,
    all_gather_with_grad,
    average_gradients,
    broadcast_parameters,
    per_rank_batch,
    rank_positions,
)
from jestkit.flops import count_no_grad_flops, count_train_flops
from jestkit.models.dual import DualEncoder

SELECTION_POLICIES = ("hard_learner", "easy_reference", "learnability")
FLEXI_PREFIX = "flexi-"
FLEXI_PATCH_SIZE = 14  # 4 tokens instead of 16 on 28 x 28 images
FLEXI_MULTIRES = 0.5  # the paper: half of each sub-batch at each resolution


def policy_names() -> list[str]:
    """Every policy name the CLI accepts: 'uniform' or '<policy>-<method>', optionally with the
    'flexi-' prefix (score at patch 14, train half of each sub-batch at patch 14)."""
    names = ["uniform"] + [f"{p}-{m}" for p in SELECTION_POLICIES for m in ("joint", "independent")]
    return names + [FLEXI_PREFIX + n for n in names[1:]]


@dataclass
class TrainConfig:
    """One learner's run. Selection defaults are the paper's (filter ratio 0.8, 16 chunks)."""

    policy: str = "learnability-joint"
    loss: str = "sigmoid"
    filter_ratio: float = 0.8
    n_chunks: int = 16
    temperature: float = 1.0
    batch_size: int = 128  # b: examples trained on per step
    steps: int = 200
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    seed: int = 0
    eval_every: int = 25
    checkpoint_every: int = 100
    score_patch_size: int | None = None  # Flexi-JEST: score at this patch size (e.g. 14)
    score_token_drop: float = 0.0  # Flexi-JEST: drop this share of tokens when scoring
    multires_fraction: float = 0.0  # share of each sub-batch trained at score_patch_size

    def __post_init__(self):
        if self.policy.startswith(FLEXI_PREFIX):
            self.policy = self.policy[len(FLEXI_PREFIX) :]
            if self.score_patch_size is None:
                self.score_patch_size = FLEXI_PATCH_SIZE
            if self.multires_fraction == 0.0:
                self.multires_fraction = FLEXI_MULTIRES
        if self.policy not in policy_names():
            raise ValueError(f"unknown policy {self.policy!r}; choose one of {policy_names()}")
        if self.loss not in ("sigmoid", "softmax"):
            raise ValueError(f"loss must be 'sigmoid' or 'softmax', got {self.loss!r}")
        for name in ("batch_size", "steps", "eval_every", "checkpoint_every", "n_chunks"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.multires_fraction and self.score_patch_size is None:
            raise ValueError("multires_fraction needs score_patch_size (the coarse patch size)")
        if not 0.0 <= self.multires_fraction <= 1.0:
            raise ValueError(f"multires_fraction must be in [0, 1], got {self.multires_fraction}")
        if not 0.0 <= self.score_token_drop < 1.0:
            raise ValueError(f"score_token_drop must be in [0, 1), got {self.score_token_drop}")
        self.selection()  # checks filter_ratio, n_chunks and temperature
        if self.policy.endswith("-joint") and self.n_chunks > self.batch_size:
            raise ValueError(
                f"n_chunks={self.n_chunks} is more chunks than batch_size={self.batch_size}"
            )

    @property
    def flexi(self) -> bool:
        return self.score_patch_size is not None or self.score_token_drop > 0

    @property
    def uses_learner(self) -> bool:
        """Whether a step scores the super-batch with the learner."""
        return self.policy.split("-")[0] in ("hard_learner", "learnability")

    @property
    def uses_reference(self) -> bool:
        """Whether a step reads the reference (its cache)."""
        return self.policy.split("-")[0] in ("easy_reference", "learnability")

    def name(self) -> str:
        """The policy as the CLI spells it (with 'flexi-' for a cheaper scoring view)."""
        return (FLEXI_PREFIX if self.flexi else "") + self.policy

    def selection(self) -> SelectionConfig:
        policy, _, method = self.policy.partition("-")
        return SelectionConfig(
            filter_ratio=self.filter_ratio,
            policy=policy,
            method=method or "joint",
            loss=self.loss,
            n_chunks=self.n_chunks,
            temperature=self.temperature,
        )

    def super_batch_size(self) -> int:
        """B such that round((1 - filter_ratio) * B) == batch_size (b itself for uniform)."""
        if self.policy == "uniform":
            return self.batch_size
        size = math.ceil(self.batch_size / (1.0 - self.filter_ratio) - 1e-9)
        while round((1.0 - self.filter_ratio) * size) > self.batch_size:
            size -= 1
        while round((1.0 - self.filter_ratio) * size) < self.batch_size:
            size += 1
        return size


@dataclass
class ReferenceOutputs:
    """The frozen reference's cached embeddings and its two scalars: never a forward pass."""

    cache: object  # jestkit.cache.ReferenceCache
    logit_scale: float
    logit_bias: float

    def __call__(self, ids: torch.Tensor) -> Embeddings:
        rows = self.cache.lookup(ids, ["image", "text"])
        return Embeddings(rows["image"], rows["text"], self.logit_scale, self.logit_bias)


def lr_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to zero at `total` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json_atomic(obj, path: Path) -> None:
    """JSON to a temporary file, then rename, creating the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


class Trainer:
    """Trains `model` on `data` (a CaptionSet and its tokens) with the config's policy.

    reference: the cached reference (None for uniform and hard_learner).
    evaluate: model -> dict of metrics, called every eval_every steps and at the end.
    out_dir: where checkpoint.pt is written; None keeps nothing on disk.
    dist: this process's place under torchrun (jestkit.distributed.setup()); default one process.
    """

    def __init__(
        self,
        model: DualEncoder,
        config: TrainConfig,
        data: CaptionSet,
        tokens: torch.Tensor,
        reference: ReferenceOutputs | None = None,
        evaluate: Callable[[DualEncoder], dict] | None = None,
        out_dir: str | os.PathLike | None = None,
        progress: bool = True,
        desc: str | None = None,
        dist: Distributed | None = None,
    ):
        if config.uses_reference and reference is None:
            raise ValueError(f"policy {config.policy!r} needs the reference (its cache)")
        if len(data) < config.super_batch_size():
            raise ValueError(
                f"the super-batch ({config.super_batch_size()}) is larger than the data "
                f"({len(data)} examples); lower batch_size or filter_ratio"
            )
        self.dist = dist or Distributed()
        per_rank_batch(config.super_batch_size(), self.dist.world_size)  # B and b split evenly
        per_rank_batch(config.batch_size, self.dist.world_size)
        if self.dist.world_size > 1:
            broadcast_parameters(model, self.dist.group)
        self.model, self.config, self.data, self.tokens = model, config, data, tokens
        self.reference, self.evaluate = reference, evaluate
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress, self.desc = progress, desc or config.name()
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(config.warmup_steps, config.steps)
        )
        if self.dist.world_size == 1:
            self.selector = Selector(config.selection(), seed=config.seed + 1)
        else:
            self.selector = GlobalSelector(
                config.selection(), seed=config.seed + 1, group=self.dist.group
            )
        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.view_generator = torch.Generator().manual_seed(config.seed + 2)
        self.step = 0
        self.history: list[dict] = []
        self.flops = {"train": 0, "learner_score": 0, "reference_score": 0}
        self.step_flops: dict[str, int | None] = {"train": None, "learner_score": None}
        self.noise_counts = torch.zeros(len(NOISE_TYPES), dtype=torch.long)
        self.selected_ids: list[torch.Tensor] = []

    # -- one step -------------------------------------------------------------------------
    def _score(self, candidates: torch.Tensor) -> torch.Tensor:
        """Indices into `candidates` of the selected sub-batch (this rank scores its shard)."""
        n = len(candidates) // self.dist.world_size
        candidates = candidates[self.dist.rank * n : (self.dist.rank + 1) * n]
        learner = reference = None
        if self.config.uses_learner:
            cfg = self.config
            view = {
                "patch_size": cfg.score_patch_size,
                "token_drop": cfg.score_token_drop,
                "generator": self.view_generator,
            }
            images, tokens = pixels(self.data.images[candidates]), self.tokens[candidates]
            if self.step_flops["learner_score"] is None:
                learner, f = count_no_grad_flops(self.model.embeddings, images, tokens, **view)
                self.step_flops["learner_score"] = f
            else:
                learner = self.model.embeddings(images, tokens, **view)
            self.flops["learner_score"] += self.step_flops["learner_score"] * self.dist.world_size
        if self.config.uses_reference:
            reference = self.reference(self.data.ids[candidates])
        return self.selector(learner, reference)

    def _loss(self, chosen: torch.Tensor) -> torch.Tensor:
        images, tokens = pixels(self.data.images[chosen]), self.tokens[chosen]
        cfg = self.config
        if cfg.multires_fraction > 0:
            img = self.model.encode_image_multires(
                images, cfg.score_patch_size, cfg.multires_fraction
            )
        else:
            img = self.model.encode_image(images)
        txt = self.model.encode_text(tokens)
        if self.dist.world_size > 1:  # the loss over the whole b: every rank's pairs as negatives
            img = all_gather_with_grad(img, self.dist.group)
            txt = all_gather_with_grad(txt, self.dist.group)
        return self.model.loss(img, txt)

    def train_step(self) -> float:
        cfg = self.config
        candidates = torch.randperm(len(self.data), generator=self.data_generator)
        candidates = candidates[: cfg.super_batch_size()]
        if cfg.policy == "uniform":
            positions = torch.arange(len(candidates))
        else:
            positions = self._score(candidates)
        chosen = candidates[positions]
        mine = chosen
        if self.dist.world_size > 1:  # this rank's b / world_size of the selected examples
            n = len(candidates) // self.dist.world_size
            mine = chosen[rank_positions(positions, n, self.dist.rank, self.dist.world_size)]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.step_flops["train"] is None:
            loss, self.step_flops["train"] = count_train_flops(self._loss, mine)
        else:
            loss = self._loss(mine)
            loss.backward()
        if self.dist.world_size > 1:
            average_gradients(self.model, self.dist.group)
        self.flops["train"] += self.step_flops["train"] * self.dist.world_size
        self.optimizer.step()
        self.scheduler.step()
        self.noise_counts += torch.bincount(self.data.noise[chosen], minlength=len(NOISE_TYPES))
        self.selected_ids.append(self.data.ids[chosen])
        self.step += 1
        return loss.item()

    # -- the loop -------------------------------------------------------------------------
    def total_flops(self) -> int:
        return sum(self.flops.values())

    def _record_eval(self) -> None:
        if self.evaluate is None or not self.dist.is_main:  # rank 0 evaluates and records
            return
        if self.history and self.history[-1]["step"] == self.step:
            return
        record = {"step": self.step, "flops": self.total_flops(), **self.flops}
        record.update(self.evaluate(self.model))
        self.history.append(record)

    def selected_noise_fraction(self) -> dict[str, float]:
        total = max(1, int(self.noise_counts.sum()))
        counts = self.noise_counts.tolist()
        return {name: n / total for name, n in zip(NOISE_TYPES, counts, strict=True)}

    def run(self, stop_at: int | None = None) -> dict:
        """Train to config.steps (or stop after `stop_at` steps, checkpointed, to resume)."""
        last = self.config.steps if stop_at is None else min(stop_at, self.config.steps)
        if self.step == 0:
            self._record_eval()
        bar = tqdm(
            total=last,
            initial=self.step,
            desc=self.desc,
            disable=not self.progress or not self.dist.is_main,
            dynamic_ncols=True,
            leave=False,
        )
        while self.step < last:
            loss = self.train_step()
            bar.update(1)
            postfix = {"loss": f"{loss:.3f}"}
            if self.step % self.config.eval_every == 0 or self.step == self.config.steps:
                self._record_eval()
                if self.history:
                    postfix["zero_shot"] = f"{self.history[-1]['zero_shot']:.3f}"
            bar.set_postfix(postfix)
            if self.step % self.config.checkpoint_every == 0 or self.step == last:
                self.save()
        bar.close()
        return self.summary()

    def summary(self) -> dict:
        final = self.history[-1] if self.history else {}
        return {
            "policy": self.config.name(),
            "config": asdict(self.config),
            "steps": self.step,
            "flops": dict(self.flops),
            "flops_per_step": dict(self.step_flops),
            "final": {k: final[k] for k in ("zero_shot", "i2t_r1", "t2i_r1") if k in final},
            "selected_noise_fraction": self.selected_noise_fraction(),
            "history": self.history,
        }

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "selector": self.selector.state_dict(),
            "data_generator": self.data_generator.get_state(),
            "view_generator": self.view_generator.get_state(),
            "history": self.history,
            "flops": self.flops,
            "step_flops": self.step_flops,
            "noise_counts": self.noise_counts,
            "selected_ids": self.selected_ids,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = asdict(self.config)
        differ = [k for k in mine if k != "steps" and state["config"].get(k) != mine[k]]
        if differ:
            k = differ[0]
            raise ValueError(
                f"the checkpoint was written with {k}={state['config'].get(k)!r}, this run has "
                f"{k}={mine[k]!r}; resume with the same config or use another --out"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.selector.load_state_dict(state["selector"])
        self.data_generator.set_state(state["data_generator"])
        self.view_generator.set_state(state["view_generator"])
        self.step, self.history = state["step"], state["history"]
        self.flops, self.step_flops = state["flops"], state["step_flops"]
        self.noise_counts, self.selected_ids = state["noise_counts"], state["selected_ids"]

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoint.pt"

    def save(self) -> None:
        if self.checkpoint_path is not None and self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_atomic(self.state_dict(), self.checkpoint_path)

    def resume(self) -> bool:
        """Load out_dir/checkpoint.pt if it exists; True if it did."""
        path = self.checkpoint_path
        if path is None or not path.exists():
            return False
        self.load_state_dict(torch.load(path, weights_only=False))
        return True
