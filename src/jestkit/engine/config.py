"""The training configuration, in sections: what a learner run is made of.

    TrainConfig
      selection  jestkit.SelectionConfig: policy, method, loss, filter ratio, chunks, temperature
      scoring    ScoringConfig: the learner's view when scoring (Flexi-JEST) and multi-res training
      training   TrainingConfig: batch size, steps, optimizer, seed, evaluation, checkpoints

The data and model sections (jestkit.fashion.captions.PoolConfig,
jestkit.models.factory.ModelConfig) sit next to these in the CLI's commands. Policies have one
name for humans (the CLI's `--policies` of the demo, the run folders, the tables): 'uniform',
'<policy>-<method>', and a 'flexi-' prefix for Flexi-JEST scoring. `parse_run_name` turns such
a name into the typed fields, once;
`TrainConfig.name()` spells it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from jestkit.core.losses import CONTRASTIVE_LOSSES
from jestkit.core.policies import METHODS, POLICIES, SelectionConfig, get_policy
from jestkit.models.view import View

FLEXI_PREFIX = "flexi-"
FLEXI_PATCH_SIZE = 14  # 4 tokens instead of 16 on 28 x 28 images
FLEXI_MULTIRES = 0.5  # the paper: half of each sub-batch at each resolution
# half of each caption's positions when scoring: kept because benchmarks/frontier.py measured it
# cutting FLOPs at equal accuracy on both pools (docs/benchmarks.md, "The payoff")
FLEXI_TEXT_DROP = 0.5
DEMO_POLICIES = ("learnability-independent", "learnability-joint", "flexi-learnability-joint")
UNIFORM_BUDGETS = (0.5, 1.0, 2.0, 4.0)  # the demo's uniform runs, in multiples of training.steps
# the offline filter's share (the demo's filter run, `jestkit score --subset`): DataComp's
# CLIP-score baseline keeps 30 %, and 30 % beat 10 % and 50 % in benchmarks/frontier.py
FILTER_KEEP = 0.3


DEFAULT_WARMUP = 20
# candidates scored at a time on a CPU: the tiny ViT's scoring of 1,280 candidates took 0.47 CPU-s
# in chunks of 128 against 0.64 at once (one pinned thread, 5 interleaved repeats; the
# timing benchmark's per-step rates show it in context)
CPU_SCORING_CHUNK = 128


@dataclass
class ScoringConfig:
    """How the learner looks at the super-batch when scoring it, and at the sub-batch when training.

    Attributes:
        patch_size: Flexi-JEST: score at this patch size (14: 4 tokens instead of 16); None: the
            model's own
        token_drop: Flexi-JEST: drop this share of image tokens when scoring
        text_token_drop: score with this share of each caption's positions dropped (pads
            first, then words at random): a cheaper view of the text tower
        multires_fraction: share of each sub-batch trained at patch_size (the paper: 0.5)
        bf16: score the learner under bfloat16 autocast (the selection still computes in fp32)
        chunk_size: score the super-batch this many candidates at a time; None: 128 on a CPU
            (chunks that stay in cache: less time for the same FLOPs), all at once on a GPU
    """

    patch_size: int | None = None
    token_drop: float = 0.0
    text_token_drop: float = 0.0
    multires_fraction: float = 0.0
    bf16: bool = False
    chunk_size: int | None = None

    def __post_init__(self):
        self.view()  # validates patch_size and the drop rates
        if self.multires_fraction and self.patch_size is None:
            raise ValueError(
                "scoring.multires_fraction needs scoring.patch_size (the coarse patch size)"
            )
        f = self.multires_fraction
        if not isinstance(f, int | float) or not 0.0 <= f <= 1.0:
            raise ValueError(f"scoring.multires_fraction must be in [0, 1], got {f!r}")
        c = self.chunk_size
        if c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 1):
            raise ValueError(f"scoring.chunk_size must be None or a positive int, got {c!r}")

    def chunk_rows(self, device: torch.device) -> int | None:
        """The candidates scored at a time on `device` (None: all at once)."""
        if self.chunk_size is not None:
            return self.chunk_size
        return CPU_SCORING_CHUNK if device.type == "cpu" else None

    def view(self) -> View:
        """The learner's scoring view (jestkit.models.view.View: the one value that
        DualEncoder.embeddings, OpenClipDual.embeddings and JESTTask take)."""
        return View(self.patch_size, self.token_drop, self.text_token_drop)

    @property
    def flexi(self) -> bool:
        """Whether scoring uses a cheaper view than training."""
        return not self.view().is_identity


@dataclass
class TrainingConfig:
    """How a model trains: uniform batches for the reference, selected ones for a learner.

    Attributes:
        batch_size: b, the examples trained on per step
        steps: optimizer steps
        lr: AdamW's peak learning rate (linear warm-up, then cosine decay to zero)
        weight_decay: AdamW's weight decay
        warmup_steps: steps of linear warm-up (at most steps; default: 20, or steps when the
            run is shorter)
        seed: the initial weights, the data order and the selection's noise
        eval_every: evaluate every this many steps (and at the end); None: at the end only
        checkpoint_every: write a checkpoint every this many steps (and at the end)
    """

    batch_size: int = 128
    steps: int = 200
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int | None = None
    seed: int = 0
    eval_every: int | None = 25
    checkpoint_every: int = 100

    def __post_init__(self):
        for name in ("batch_size", "steps", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if name == "eval_every" and value is None:
                continue
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("warmup_steps", "seed"):
            value = getattr(self, name)
            if name == "warmup_steps" and value is None:
                continue
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.warmup_steps is not None and self.warmup_steps > self.steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} is longer than the run (steps={self.steps}): "
                f"the peak learning rate would never be reached; use warmup_steps <= steps"
            )
        if not isinstance(self.lr, int | float) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        wd = self.weight_decay
        if not isinstance(wd, int | float) or not math.isfinite(wd) or wd < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {wd!r}")

    @property
    def warmup(self) -> int:
        """The warm-up steps the schedule uses: warmup_steps, or 20 capped at steps."""
        return min(DEFAULT_WARMUP, self.steps) if self.warmup_steps is None else self.warmup_steps

    @property
    def eval_interval(self) -> int:
        """Steps between evaluations (eval_every, or only at the end)."""
        return self.eval_every or self.steps


def reference_training() -> TrainingConfig:
    """The reference's defaults: 300 uniform steps on the curated set, evaluated at the end."""
    return TrainingConfig(steps=300, eval_every=None, checkpoint_every=300)


@dataclass
class TrainConfig:
    """One learner's run. Selection defaults are the paper's (filter ratio 0.8, 16 chunks)."""

    selection: SelectionConfig = field(default_factory=SelectionConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self):
        s = self.selection
        if s.loss not in CONTRASTIVE_LOSSES:
            raise ValueError(
                f"the image-caption job trains a dual encoder: selection.loss must be one of "
                f"{CONTRASTIVE_LOSSES}, got {s.loss!r}"
            )
        if not self.policy.uses_learner:
            c, unused = self.scoring, []
            if c.patch_size is not None and not c.multires_fraction:
                unused.append(f"patch_size={c.patch_size}")
            unused += [f"{name}={getattr(c, name)}" for name in ("token_drop", "text_token_drop",
                       "bf16", "chunk_size") if getattr(c, name)]  # fmt: skip
            if unused:
                raise ValueError(
                    f"policy {s.policy!r} never scores with the learner: scoring."
                    f"{', scoring.'.join(unused)} would be ignored; drop it"
                )
        joint = s.method == "joint" and self.policy.scored
        if joint and s.n_chunks > self.training.batch_size:
            raise ValueError(
                f"n_chunks={s.n_chunks} is more chunks than batch_size={self.training.batch_size}"
            )

    @property
    def policy(self):
        """The selection policy's row of jestkit.core.policies' table."""
        return get_policy(self.selection.policy)

    def name(self) -> str:
        """The run's name, as the CLI's --policies spells it."""
        if not self.policy.scored:
            return self.selection.policy
        prefix = FLEXI_PREFIX if self.scoring.flexi else ""
        return f"{prefix}{self.selection.policy}-{self.selection.method}"

    def super_batch_size(self) -> int:
        """B such that round((1 - filter_ratio) * B) == batch_size (b itself for uniform)."""
        b, ratio = self.training.batch_size, self.selection.filter_ratio
        if not self.policy.scored:
            return b
        size = math.ceil(b / (1.0 - ratio) - 1e-9)
        while round((1.0 - ratio) * size) > b:
            size -= 1
        while round((1.0 - ratio) * size) < b:
            size += 1
        return size

    def with_name(self, name: str) -> TrainConfig:
        """This config running the policy `name` (see parse_run_name)."""
        policy, method, flexi = parse_run_name(name)
        scoring = self.scoring
        if not get_policy(policy).uses_learner and not scoring.multires_fraction:
            scoring = ScoringConfig()  # it never scores with the learner
        if flexi:
            scoring = replace(
                scoring,
                patch_size=scoring.patch_size or FLEXI_PATCH_SIZE,
                multires_fraction=scoring.multires_fraction or FLEXI_MULTIRES,
                text_token_drop=scoring.text_token_drop or FLEXI_TEXT_DROP,
            )
        return replace(self, selection=replace(self.selection, policy=policy, method=method),
                       scoring=scoring)  # fmt: skip


def run_names() -> list[str]:
    """Every run name: 'uniform' or '<policy>-<method>', optionally with the 'flexi-' prefix
    (score at patch 14 with half of each caption's positions, train half of each sub-batch at
    patch 14)."""
    names, flexi = [], []
    for p in POLICIES:
        if not get_policy(p).scored:
            names.append(p)
            continue
        names += [f"{p}-{m}" for m in METHODS]
        flexi += [f"{FLEXI_PREFIX}{p}-{m}" for m in METHODS]
    return names + flexi


def parse_run_name(name: str) -> tuple[str, str, bool]:
    """'flexi-learnability-joint' -> ('learnability', 'joint', True); 'uniform' -> ('uniform',
    'joint', False). A ValueError lists the names for anything else."""
    if name not in run_names():
        raise ValueError(f"unknown policy {name!r}; choose one of {run_names()}")
    flexi = name.startswith(FLEXI_PREFIX)
    policy, _, method = name.removeprefix(FLEXI_PREFIX).partition("-")
    return policy, method or "joint", flexi
