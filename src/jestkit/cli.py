"""The `jestkit` command: demo, train and reference.

Every setting is a field of a dataclass section (jestkit.data.captions.PoolConfig as `data`,
jestkit.models.factory.ModelConfig as `model`, jestkit.SelectionConfig as `selection`,
jestkit.training.config.ScoringConfig and TrainingConfig as `scoring`, `training` and
`reference`), turned into flags by jsonargparse: `--selection.filter_ratio 0.9`, each with the
line of help its class documents. Every run writes its whole configuration to OUT/config.yaml;
`--config OUT/config.yaml` replays it (later flags override the file).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from jestkit.core.losses import CONTRASTIVE_LOSSES
from jestkit.core.policies import SelectionConfig
from jestkit.data.captions import PoolConfig
from jestkit.dropin.cache import CacheError
from jestkit.models.factory import ModelConfig
from jestkit.training.config import (
    DEMO_POLICIES,
    UNIFORM_BUDGETS,
    ScoringConfig,
    TrainConfig,
    TrainingConfig,
    reference_training,
)


@dataclass
class _DataAndModel:
    """The sections every command has.

    Attributes:
        data: the image-caption data
        model: the dual encoder (reference and learners alike)
    """

    data: PoolConfig = field(default_factory=PoolConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


@dataclass
class _Learner(_DataAndModel):
    """The sections of a learner's run.

    Attributes:
        selection: how the learners select (the demo's run names set policy and method)
        scoring: the learners' scoring view (Flexi-JEST: patch_size 14, multires_fraction 0.5;
            the demo's flexi- run names set them)
        training: how the learners train
    """

    selection: SelectionConfig = field(default_factory=SelectionConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def train_config(self) -> TrainConfig:
        return TrainConfig(self.selection, self.scoring, self.training)


@dataclass
class Demo(_Learner):
    """Trains the reference and its cache, uniform at several budgets (its frontier) and one
    learner per policy, reads each policy's speed-up off uniform's frontier, prints a table and
    writes results.json and curves.png.

    Attributes:
        reference: how the reference trains on the curated set
        out: output folder
        policies: the selecting policies to compare, as run names (<policy>-<method>, flexi-...),
            each trained for training.steps
        uniform_budgets: uniform's budgets as multiples of training.steps, each its own run and
            schedule (the frontier the speed-ups are read off; at least 4x for a fair baseline)
    """

    reference: TrainingConfig = field(default_factory=reference_training)
    out: str = "runs/demo"
    policies: list[str] = field(default_factory=lambda: list(DEMO_POLICIES))
    uniform_budgets: list[float] = field(default_factory=lambda: list(UNIFORM_BUDGETS))


@dataclass
class Reference(_DataAndModel):
    """Trains the reference on the curated set and caches its embeddings of the pool.

    Attributes:
        reference: how the reference trains on the curated set
        out: reference folder (model.pt, reference.json, cache/)
        loss: the contrastive loss (learners using this reference must use the same)
    """

    reference: TrainingConfig = field(default_factory=reference_training)
    out: str = "runs/reference"
    loss: Literal[CONTRASTIVE_LOSSES] = "sigmoid"


@dataclass
class Train(_Learner):
    """Trains one learner with one policy.

    Attributes:
        out: run folder (default: runs/train/NAME, NAME the policy's run name)
        reference_dir: reference folder built by `jestkit reference`
        resume: continue from OUT/checkpoint.pt
    """

    out: str | None = None
    reference_dir: str = "runs/reference"
    resume: bool = False


COMMANDS = {"demo": Demo, "reference": Reference, "train": Train}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="jestkit", description="JEST: joint example selection for PyTorch", exit_on_error=True
    )
    commands = parser.add_subcommands(dest="command")
    for name, cls in COMMANDS.items():
        sub = ArgumentParser(description=cls.__doc__.split("\n\n")[0])
        sub.add_argument("--config", action=ActionConfigFile, help="replay a run's config.yaml")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        sub.add_class_arguments(cls, None, fail_untyped=True)
        commands.add_subcommand(name, sub, help=cls.__doc__.split("\n")[0])
    return parser


def _command(parser: ArgumentParser, args: Namespace):
    """The chosen command's dataclass, built from the parsed flags, and its parser."""
    name = args.command
    sub = parser._subcommands_action._name_parser_map[name]
    init = sub.instantiate(args[name])
    cls = COMMANDS[name]
    return cls(**{f.name: init[f.name] for f in fields(cls)}), sub, init.quiet


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        command, sub, quiet = _command(parser, args)
        return _run(command, lambda out: _save_config(sub, args[args.command], out), not quiet)
    except (ValueError, FileNotFoundError, CacheError) as e:
        print(f"jestkit {args.command}: error: {e}", file=sys.stderr)
        return 2


def _save_config(sub: ArgumentParser, args: Namespace, out: Path) -> None:
    """OUT/config.yaml: every setting of this run, replayable with --config."""
    out.mkdir(parents=True, exist_ok=True)
    args = args.clone()
    args.pop("config", None)
    args.pop("quiet", None)
    (out / "config.yaml").write_text(sub.dump(args))


def _run(cmd, save_config, progress: bool) -> int:
    # imported here so that `jestkit --help` stays fast
    from jestkit.data.prepare import prepare_caption_data
    from jestkit.dropin.distributed import setup, teardown
    from jestkit.training.demo import demo_configs, run_demo
    from jestkit.training.evaluate import evaluator
    from jestkit.training.learner import train_learner
    from jestkit.training.reference import train_reference

    if isinstance(cmd, Demo):
        config = cmd.train_config()
        demo_configs(config, tuple(cmd.policies), tuple(cmd.uniform_budgets))  # fails before work
        save_config(Path(cmd.out))
        run_demo(cmd.out, cmd.data, cmd.model, cmd.reference, config, tuple(cmd.policies),
                 tuple(cmd.uniform_budgets), progress)  # fmt: skip
        return 0
    config = cmd.train_config() if isinstance(cmd, Train) else None
    data = prepare_caption_data(cmd.data)
    dist = setup(backend="gloo", device="cpu")  # under torchrun; else one process
    try:
        if isinstance(cmd, Reference):
            if dist.is_main:
                save_config(Path(cmd.out))
            info = train_reference(data, cmd.model, cmd.reference, cmd.loss, cmd.out,
                                   evaluator(data), progress, dist)  # fmt: skip
        else:
            out = cmd.out or f"runs/train/{config.name()}"
            if dist.is_main:
                save_config(Path(out))
            result = train_learner(data, cmd.model, config, cmd.reference_dir, out, cmd.resume,
                                   progress, dist)  # fmt: skip
    finally:
        teardown(dist)
    if not dist.is_main:
        return 0
    if isinstance(cmd, Reference):
        print(
            f"reference written to {cmd.out}: zero-shot {info['final']['zero_shot']:.4f}, "
            f"cache of {len(data.pool)} pool pairs"
        )
        return 0
    final = result["final"]
    print(
        f"{config.name()}: {result['steps']} steps, zero-shot {final['zero_shot']:.4f}, "
        f"i2t R@1 {final['i2t_r1']:.4f}, t2i R@1 {final['t2i_r1']:.4f}, "
        f"{sum(result['flops'].values()) / 1e12:.3f} TFLOPs; wrote {out}/result.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
