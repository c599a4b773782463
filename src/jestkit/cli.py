"""The `jestkit` command: demo, train and reference.

Every setting is a field of a dataclass section (jestkit.data.captions.PoolConfig as `data`,
jestkit.models.factory.ModelConfig as `model`, jestkit.SelectionConfig as `selection`,
jestkit.training.config.ScoringConfig and TrainingConfig as `scoring`, `training` and
`reference`), turned into flags by jsonargparse: `--selection.filter_ratio 0.9`, each with the
line of help its class documents. Every run writes its whole configuration to OUT/config.yaml;
`--config OUT/config.yaml` replays it (later flags override the file).

Every value is checked, and the output folder too (jestkit.training.rundir: not a file, not a
finished run unless --resume or --overwrite, locked while a run uses it), before any work.
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
    """Trains the reference, builds its cache, trains one learner per policy for the same steps,
    prints a table and writes results.json and curves.png.

    Attributes:
        reference: how the reference trains on the curated set
        out: output folder
        policies: the policies to compare, as run names (uniform, <policy>-<method>, flexi-...)
        overwrite: replace a demo already in OUT (its reference and runs) instead of refusing
    """

    reference: TrainingConfig = field(default_factory=reference_training)
    out: str = "runs/demo"
    policies: list[str] = field(default_factory=lambda: list(DEMO_POLICIES))
    overwrite: bool = False


@dataclass
class Reference(_DataAndModel):
    """Trains the reference on the curated set and caches its embeddings of the pool.

    Attributes:
        reference: how the reference trains on the curated set
        out: reference folder (model.pt, reference.json, cache/)
        loss: the contrastive loss (learners using this reference must use the same)
        overwrite: replace a reference already in OUT (built beside it in OUT.partial, then
            swapped in whole) instead of refusing
    """

    reference: TrainingConfig = field(default_factory=reference_training)
    out: str = "runs/reference"
    loss: Literal[CONTRASTIVE_LOSSES] = "sigmoid"
    overwrite: bool = False


@dataclass
class Train(_Learner):
    """Trains one learner with one policy.

    Attributes:
        out: run folder (default: runs/train/NAME, NAME the policy's run name)
        reference_dir: reference folder built by `jestkit reference`
        resume: continue exactly from OUT/checkpoint.pt (every setting must be the same; no
            checkpoint is an error)
        overwrite: delete the run already in OUT (checkpoint.pt, result.json) and start afresh
    """

    out: str | None = None
    reference_dir: str = "runs/reference"
    resume: bool = False
    overwrite: bool = False


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
    except (ValueError, OSError, CacheError) as e:
        print(f"jestkit {args.command}: error: {e}", file=sys.stderr)
        return 2


def _save_config(sub: ArgumentParser, args: Namespace, out: Path) -> None:
    """OUT/config.yaml: every setting of this run, replayable with --config."""
    out.mkdir(parents=True, exist_ok=True)
    args = args.clone()
    args.pop("config", None)
    args.pop("quiet", None)
    (out / "config.yaml").write_text(sub.dump(args))


def _check_demo_selection(selection: SelectionConfig) -> None:
    """The demo's --policies chooses policy and method: refuse a --selection.policy or
    --selection.method that it would ignore."""
    default = SelectionConfig()
    for name in ("policy", "method"):
        if getattr(selection, name) != getattr(default, name):
            raise ValueError(
                f"the demo runs the policies of --policies (run names such as "
                f"{', '.join(DEMO_POLICIES)}); --selection.{name} would be ignored: drop it"
            )


def _run(cmd, save_config, progress: bool) -> int:
    # imported here so that `jestkit --help` stays fast
    from jestkit.data.prepare import prepare_caption_data
    from jestkit.dropin.distributed import setup, teardown
    from jestkit.training.demo import run_demo
    from jestkit.training.evaluate import evaluator
    from jestkit.training.learner import train_learner
    from jestkit.training.reference import train_reference
    from jestkit.training.rundir import check_reference_dir, check_run_dir

    if isinstance(cmd, Demo):
        config = cmd.train_config()
        _check_demo_selection(cmd.selection)
        for name in cmd.policies:
            config.with_name(name)  # unknown names fail before any work
        run_demo(cmd.out, cmd.data, cmd.model, cmd.reference, config, tuple(cmd.policies),
                 progress, overwrite=cmd.overwrite, write_config=save_config)  # fmt: skip
        return 0
    config = cmd.train_config() if isinstance(cmd, Train) else None
    if isinstance(cmd, Train):
        cmd.model.check_patch_size(config.scoring.patch_size)
        out = cmd.out or f"runs/train/{config.name()}"
        check_run_dir(out, cmd.resume, cmd.overwrite)  # before any work
    else:
        check_reference_dir(cmd.out, cmd.overwrite)
    data = prepare_caption_data(cmd.data)
    dist = setup(backend="gloo", device="cpu")  # under torchrun; else one process
    try:
        if isinstance(cmd, Reference):
            info = train_reference(data, cmd.model, cmd.reference, cmd.loss, cmd.out,
                                   evaluator(data), progress, dist, overwrite=cmd.overwrite,
                                   write_config=save_config)  # fmt: skip
        else:
            result = train_learner(data, cmd.model, config, cmd.reference_dir, out, cmd.resume,
                                   progress, dist, overwrite=cmd.overwrite,
                                   write_config=save_config)  # fmt: skip
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
