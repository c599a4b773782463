"""The `jestkit` command: demo, reference, train, score, eval and plan.

Every setting is a field of a dataclass section (jestkit.fashion.captions.PoolConfig as `data`,
jestkit.models.factory.ModelConfig as `model`, jestkit.SelectionConfig as `selection`,
jestkit.engine.config.ScoringConfig and TrainingConfig as `scoring`, `training` and
`reference`), turned into flags by jsonargparse: `--selection.filter_ratio 0.9`, each with the
line of help its class documents. Every run writes its whole configuration to OUT/config.yaml;
`--config OUT/config.yaml` replays it (later flags override the file).

Every value is checked, and the output folder too (jestkit.engine.rundir: not a file, not a
finished run unless --resume or --overwrite, locked while a run uses it), before any work. An
error names the flag to change (`--shards.max_bad_fraction`), not the config field.

--resume and --overwrite are switches, not settings: they say what to do with the output
folder, so they are not written to config.yaml (replaying a run never overwrites by itself).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, Namespace

from jestkit.core.losses import CONTRASTIVE_LOSSES
from jestkit.core.policies import SelectionConfig
from jestkit.data.parallel import StreamStopped
from jestkit.data.shards import DuplicateIdError, TooManyBadSamples
from jestkit.data.stream import ShardsConfig
from jestkit.dropin.cache import CacheError
from jestkit.engine.config import (
    DEMO_POLICIES,
    FILTER_KEEP,
    UNIFORM_BUDGETS,
    ScoringConfig,
    TrainConfig,
    TrainingConfig,
    reference_training,
)
from jestkit.engine.reports import parse_report_to
from jestkit.fashion.captions import PoolConfig
from jestkit.models.factory import ModelConfig
from jestkit.own.evaluate import EvalConfig
from jestkit.plan.rules import PlanRules


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
        scoring: the learners' scoring view (Flexi-JEST: patch_size 14, text_token_drop 0.5,
            multires_fraction 0.5; the demo's flexi- run names set them)
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
        filter_keep: the offline filter's share of the pool: a run 'filter-K' trains uniformly
            for training.steps on the share the reference scores highest (DataComp's CLIP-score
            filter keeps 0.3); null: no filter run
    """

    reference: TrainingConfig = field(default_factory=reference_training)
    out: str = "runs/demo"
    policies: list[str] = field(default_factory=lambda: list(DEMO_POLICIES))
    uniform_budgets: list[float] = field(default_factory=lambda: list(UNIFORM_BUDGETS))
    filter_keep: float | None = FILTER_KEEP


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
        reference: the reference: a folder (`jestkit reference` for Fashion-MNIST, `jestkit
            score` for shards: its embeddings read from the cache) or a checkpoint file
            (open_clip's, or a `jestkit train` run's checkpoint.pt: scored in the loop)
        shards: your own data: WebDataset tar or Parquet shards (--shards.pattern); without a
            pattern, the Fashion-MNIST captions (--data.*)
        open_clip: an open_clip model config (a name open_clip knows, or a JSON file) instead of
            jestkit's dual encoder; it trains on shards
        reference_model: the open_clip config of a reference checkpoint (default: open_clip)
        device: cpu, or cuda (NCCL under torchrun; bfloat16 autocast where the GPU has it)
        eval: held-out sets on your own data (zero-shot, retrieval), evaluated every
            training.eval_every steps and at the end
        report_to: where the metrics go while the run goes, comma-separated: jsonl
            (OUT/metrics.jsonl), tensorboard (OUT/tensorboard/), wandb (OUT/wandb/; offline
            with WANDB_MODE=offline), or none
        filter_keep: the reference's offline filter: train on the share of the Fashion-MNIST
            pool that the reference (a folder) scores highest by image-caption similarity
            (DataComp's CLIP score keeps 0.3); with --selection.policy uniform it is the filter
            baseline, with a selecting policy filter + that policy (own shards: `jestkit score
            --subset`); null: the whole pool
    """

    out: str | None = None
    reference: str = "runs/reference"
    filter_keep: float | None = None
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    open_clip: str | None = None
    reference_model: str | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    eval: EvalConfig = field(default_factory=EvalConfig)
    report_to: str = "jsonl"

    def own_run(self):
        """The data, model, reference and device choices (jestkit.own.train)."""
        from jestkit.own.run import OwnModel, OwnRun

        own = OwnModel(self.open_clip, self.reference, self.reference_model, self.device)
        return OwnRun(self.shards, own)


@dataclass
class Score:
    """Builds the reference cache of your shards with a reference checkpoint (resumable, sharded
    over torchrun's ranks), and optionally exports a DataComp subset of the best-matching uids.

    Attributes:
        shards: the shards to score (--shards.pattern)
        model: jestkit's dual encoder, when the reference is a jestkit checkpoint.pt
        open_clip: the reference's open_clip config (a name open_clip knows or a JSON file)
        reference: the reference's checkpoint file (open_clip's, or a jestkit checkpoint.pt)
        loss: the contrastive loss of the learners that will read this cache
        out: reference folder (reference.json, cache/); `jestkit train --reference OUT` reads it
        device: cpu or cuda
        batch_size: samples scored at once
        keep: with subset: the share of the cached samples to keep, those with the highest
            reference image-text similarity (default with subset: 0.3, DataComp's CLIP-score
            filter and the best of 10, 30 and 50 % in jestkit's benchmark)
        subset: write the kept samples there: FILE.npy, a DataComp subset (its uids: the
            samples need 32-hex-digit uids in KEY.json), or FILE.txt, their ids one a line
            (plain img2dataset shards: their keys); checked before any sample is scored
        subset_shards: write the kept samples (--keep) as WebDataset shards in this folder
            (DIR/kept-NNNN.tar, ids unchanged): the offline filter, ready for `jestkit train
            --shards.pattern 'DIR/*.tar'`
    """

    shards: ShardsConfig = field(default_factory=ShardsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    open_clip: str | None = None
    reference: str | None = None
    loss: Literal[CONTRASTIVE_LOSSES] = "sigmoid"
    out: str = "runs/score"
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = 256
    keep: float | None = None
    subset: str | None = None
    subset_shards: str | None = None


@dataclass
class Eval:
    """Evaluates a checkpoint on held-out sets (zero-shot, retrieval): prints a table, writes
    its JSON and, beside it in clip_benchmark/, one result file per set in clip_benchmark's
    layout (`clip_benchmark build` makes its CSV of them).

    Attributes:
        checkpoint: a `jestkit train` run's checkpoint.pt (its model read from the run's
            result.json), or an open_clip checkpoint file (with --open_clip)
        open_clip: the checkpoint's open_clip config (a name open_clip knows or a JSON file)
        eval: the held-out sets (--eval.overlap does not apply: there is no training pool)
        out: the JSON file written (default: eval.json beside the checkpoint)
        device: cpu or cuda
    """

    checkpoint: str | None = None
    open_clip: str | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str | None = None
    device: Literal["cpu", "cuda"] = "cpu"


@dataclass
class Export:
    """Writes a `jestkit train` run's open_clip model in open_clip's checkpoint layout
    ({"epoch", "name", "state_dict"}), which open_clip.create_model_and_transforms(CONFIG,
    pretrained=FILE) and clip_benchmark load as they are.

    Attributes:
        run: a run folder (its checkpoint.pt) or one of its checkpoint files (a numbered
            checkpoints/step_N.pt)
        out: the file written (default: RUN/open_clip_model.pt)
        name: the name recorded in the file (default: the run folder's)
    """

    run: str | None = None
    out: str | None = None
    name: str | None = None


@dataclass
class Plan(_DataAndModel):
    """Which method to run on the pool for a compute budget: measures the pool with the
    reference, applies the plan's rules, runs short pilots where they cannot decide, prints a
    table and the commands that run its recommendation, and writes OUT/plan.json and
    OUT/plan.png.

    Attributes:
        reference: the reference: on Fashion-MNIST its folder (`jestkit reference`); on your
            shards a `jestkit score` folder of them (with --reference_checkpoint), or the
            reference's checkpoint file (the plan scores the shards with it into OUT/score)
        reference_checkpoint: on your shards, the checkpoint that made the --reference score
            folder: the plan runs it over the held-out sets
        out: output folder (plan.json, plan.png, pilots/)
        budget_flops: the budget as total FLOPs (the reference's training and pass included)
        budget_uniform_steps: the budget as what a uniform run of this many steps costs
        budget_hours: the budget as machine-hours: wall time on this machine, each method's
            step timed here (the reference's training and pass included)
        pilot_share: where the measurements cannot decide, pilot the undecided methods at this
            share of their steps (twice: s and 2s steps); 0: no pilots
        training: the learners' training settings (batch size, learning rate)
        rules: the plan's constants (jestkit.plan.rules)
        shards: your own pool: WebDataset tar or Parquet shards (--shards.pattern); without a
            pattern, the Fashion-MNIST captions (--data.*)
        open_clip: on your shards, the learners' and the reference's open_clip config (a name
            open_clip knows or a JSON file); without it jestkit's dual encoder (--model.*)
        eval: on your shards, the held-out sets the pool is measured against and the pilots
            are evaluated on (retrieval sets give matched pairs, zero-shot sets the classes)
    """

    reference: str = "runs/reference"
    reference_checkpoint: str | None = None
    out: str = "runs/plan"
    budget_flops: float | None = None
    budget_uniform_steps: int | None = None
    budget_hours: float | None = None
    pilot_share: float = 0.03
    training: TrainingConfig = field(default_factory=TrainingConfig)
    rules: PlanRules = field(default_factory=PlanRules)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    open_clip: str | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)


COMMANDS = {"demo": Demo, "reference": Reference, "train": Train, "score": Score, "eval": Eval,
            "export": Export, "plan": Plan}  # fmt: skip
# Arguments given by position (`jestkit export RUN`) rather than as flags.
POSITIONAL = {"export": "run"}

# What to do with the output folder: switches of the command line, never written to config.yaml.
SWITCHES = {
    "demo": {"overwrite": "replace a demo already in OUT (its reference and runs)"},
    "reference": {"overwrite": "replace a reference already in OUT (built beside it in "
                               "OUT.partial, then swapped in whole)"},
    "train": {"resume": "continue exactly from OUT/checkpoint.pt (every setting must be the "
                        "same); `--resume latest` says the same, as open_clip_train's; "
                        "`--resume OUT/checkpoints/step_N.pt` continues from a numbered one",
              "overwrite": "delete the run already in OUT (checkpoint.pt, metrics, results) and "
                           "start afresh"},
}

# One example per command, ending its --help (tests/test_cli.py runs them).
EXAMPLES = {
    "demo": "jestkit demo --data.limit 3000 --data.curated_size 500 --reference.steps 20 \\\n"
            "    --training.steps 10 --out runs/demo-small",
    "reference": "jestkit reference --data.limit 3000 --data.curated_size 500 "
                 "--reference.steps 20 \\\n    --out runs/reference-small",
    "train": "jestkit train --data.limit 3000 --data.curated_size 500 \\\n"
             "    --reference runs/reference-small --training.steps 10 --out runs/jest-small",
    "score": "jestkit score --shards.pattern 'pool/*.tar' --open_clip tiny-sig.json \\\n"
             "    --reference runs/ref-train/checkpoint.pt --out runs/score-pool\n"
             "(the files of the manual's \"Your own data and model\")",
    "plan": "jestkit plan --data.limit 3000 --data.curated_size 500 \\\n"
            "    --reference runs/reference-small --budget_uniform_steps 400 --out runs/plan-small",
    "eval": "jestkit eval --checkpoint runs/uniform/checkpoint.pt --eval.zeroshot eval/shapes \\\n"
            "    --eval.retrieval eval/captions\n"
            "(the files of the manual's \"Held-out evaluation on your own data\")",
    "export": "jestkit export runs/jest  # writes runs/jest/open_clip_model.pt",
}


@dataclass(frozen=True)
class Switches:
    """--resume and --overwrite, as given: resume is None, 'latest' (OUT/checkpoint.pt) or a
    checkpoint file of the run."""

    resume: str | None = None
    overwrite: bool = False


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with the example kept as written."""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="jestkit", description="JEST: joint example selection for PyTorch",
        exit_on_error=True, formatter_class=_HelpFormatter,  # the commands' parsers inherit it
    )
    parser.add_argument("--version", action="version", version=f"jestkit {version('jestkit')}")
    commands = parser.add_subcommands(dest="command")
    for name, cls in COMMANDS.items():
        sub = ArgumentParser(description=cls.__doc__.split("\n\n")[0],
                             epilog=f"example:\n  {EXAMPLES[name]}\n")
        sub.add_argument("--config", action=ActionConfigFile, help="replay a run's config.yaml")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        for switch, text in SWITCHES.get(name, {}).items():
            if switch == "resume":  # open_clip_train's `--resume latest` too
                sub.add_argument("--resume", nargs="?", const="latest", default=None, type=str,
                                 metavar="latest|CHECKPOINT", help=text)  # fmt: skip
            else:
                sub.add_argument(f"--{switch}", action="store_true", help=text)
        positional = POSITIONAL.get(name)
        if positional is not None:
            sub.add_argument(positional, nargs="?", default=None, type=str,
                             help=_attribute_help(cls, positional))  # fmt: skip
        sub.add_class_arguments(cls, None, fail_untyped=True,
                                skip={positional} if positional else None)  # fmt: skip
        commands.add_subcommand(name, sub, help=summary(cls))
    return parser


def summary(cls) -> str:
    """A command's one-paragraph summary (its docstring's first paragraph, on one line)."""
    return " ".join(cls.__doc__.split("\n\n")[0].split())


def _attribute_help(cls, name: str) -> str:
    """The `Attributes:` line of `name` in the class's docstring, on one line."""
    from docstring_parser import parse

    doc = next((p.description for p in parse(cls.__doc__).params if p.arg_name == name), "")
    return " ".join((doc or "").split())


def _sections(cls) -> dict[str, set[str]]:
    """The command's dataclass sections: name -> its field names (e.g. shards -> pattern, ...)."""
    default = cls()
    return {
        f.name: {g.name for g in fields(getattr(default, f.name))}
        for f in fields(cls)
        if is_dataclass(getattr(default, f.name))
    }


def flag_message(message: str, sections: dict[str, set[str]], failed: str | None = None) -> str:
    """`message` with config names turned into the flags that set them: 'section.field' ->
    '--section.field' wherever field is one of that section's, and, when the error came from
    building section `failed`, its bare field names too ('max_bad_fraction must be ...' ->
    '--shards.max_bad_fraction must be ...')."""

    def dotted(m: re.Match) -> str:
        section, name = m.group(1), m.group(2)
        return f"--{section}.{name}" if name in sections.get(section, ()) else m.group(0)

    message = re.sub(r"(?<![\w.-])(\w+)\.(\w+)", dotted, message)
    if failed is not None:
        names = "|".join(sorted(sections[failed], key=len, reverse=True))
        message = re.sub(rf"(?<![\w.-])({names})(?![\w.])", rf"--{failed}.\1", message)
    return message


def _failing_section(cls, args: Namespace) -> str | None:
    """Which section's values raise when built on their own (None: none of them alone)."""
    default = cls()
    for name in _sections(cls):
        try:
            type(getattr(default, name))(**args[name].as_dict())
        except (ValueError, TypeError):
            return name
    return None


def _command(parser: ArgumentParser, args: Namespace):
    """The chosen command's dataclass, built from the parsed flags, its parser and switches."""
    name = args.command
    sub = parser._subcommands_action._name_parser_map[name]
    cls = COMMANDS[name]
    try:
        init = sub.instantiate(args[name])
    except ValueError as e:
        failed = _failing_section(cls, args[name])
        raise ValueError(flag_message(str(e), _sections(cls), failed)) from e
    switches = Switches(**{k: init[k] for k in SWITCHES.get(name, {})})
    command = cls(**{f.name: init[f.name] for f in fields(cls)})
    check_no_empty_values(command)
    return command, sub, init.quiet, switches


def check_no_empty_values(config, prefix: str = "--") -> None:
    """Refuse an empty or blank string anywhere in the command's settings (`--out ''`,
    `--shards.pattern "$UNSET"`): never read as 'not given', which would train on Fashion-MNIST
    or write to a default folder."""
    for f in fields(config):
        value, flag = getattr(config, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            check_no_empty_values(value, f"{flag}.")
        values = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, str) and not v.strip() for v in values):
            raise ValueError(f"{flag} is empty ({value!r}): give a value, or leave the flag out")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    replayed = _replayed_config_error(sys.argv[1:] if argv is None else list(argv))
    if replayed:
        print(replayed, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    sections = _sections(COMMANDS[args.command])
    try:
        command, sub, quiet, switches = _command(parser, args)
        save = lambda out: _save_config(sub, args[args.command], out, command)  # noqa: E731
        return _run(command, switches, save, not quiet, _settings(args[args.command].as_dict()))
    except (ValueError, OSError, CacheError, KeyError, TooManyBadSamples, StreamStopped) as e:
        if isinstance(e, KeyError | DuplicateIdError):  # a KeyError's message is quoted
            e = e.args[0] if e.args else e
        print(f"jestkit {args.command}: error: {flag_message(str(e), sections)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if not _out_of_memory(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"jestkit {args.command}: error: not enough memory for the model or the batch "
              f"({first[:300]}): use a smaller model (--model.*, the --open_clip config), "
              f"batch (--training.batch_size) or --shards.buffer_size",
              file=sys.stderr)  # fmt: skip
        return 2


def _out_of_memory(error: BaseException) -> bool:
    """Whether `error` says an allocation failed (Python's, torch's CPU allocator, CUDA's)."""
    text = str(error)
    return (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "out of memory" in text.lower())  # fmt: skip


def _settings(values: dict, prefix: str = "--") -> dict:
    """The command's settings as {flag: value} ('--training.seed': 0), --resume and --overwrite
    included; not --config or --quiet (how they were given, or shown): what every rank of one
    run must share (jestkit.dropin.distributed.agree)."""
    out = {}
    for name, value in values.items():
        if name in ("config", "quiet", "__path__"):
            continue
        if isinstance(value, dict):
            out.update(_settings(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


CONFIG_HEADER = "# jestkit {command}: every setting of this run; replay it with --config\n"


def _save_config(sub: ArgumentParser, args: Namespace, out: Path, command=None) -> None:
    """OUT/config.yaml: every setting of this run that it used (not the sections it never
    read, unused_sections), replayable with --config; its first line says which command wrote
    it (the last word of the command parser's prog)."""
    from jestkit.engine.files import write_bytes_atomic

    out.mkdir(parents=True, exist_ok=True)
    args = args.clone()
    for name in ("config", "quiet", "resume", "overwrite", *unused_sections(command)):
        args.pop(name, None)  # how to run, not what; sections this run never read
    text = CONFIG_HEADER.format(command=sub.prog.split()[-1]) + sub.dump(args)
    write_bytes_atomic(text.encode(), out / "config.yaml")


def config_command(path: str | Path) -> str | None:
    """The command that wrote the config.yaml at `path`: named by its first line, or, for one
    written before that line was, the one command whose settings it holds (no other; an older
    jestkit's file may lack a setting added since); None for a file jestkit did not write. A
    RecordError for a file that cannot be read (a FIFO, a symlink, not UTF-8)."""
    import yaml

    from jestkit.engine.files import read_text

    text = read_text(path, max_bytes=2**20)
    first = re.match(r"# jestkit (\w+): ", text)
    if first:
        return first.group(1) if first.group(1) in COMMANDS else None
    try:
        settings = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(settings, dict):
        return None
    fits = [name for name, cls in COMMANDS.items()
            if settings and settings.keys() <= {f.name for f in fields(cls)}]  # fmt: skip
    if len(fits) > 1:  # a few settings only: those without a value are not written
        fits = [name for name in fits if {f.name for f in fields(COMMANDS[name])
                                          if getattr(COMMANDS[name](), f.name) is not None}
                <= settings.keys()]  # fmt: skip
    return fits[0] if len(fits) == 1 else None


def check_out_config(out: str | Path, command: str) -> None:
    """Refuse, before any work, an OUT whose config.yaml this command did not write (your file,
    or another command's: a run never replaces another's record)."""
    from jestkit.engine.files import RecordError
    from jestkit.engine.rundir import RunDirError

    path = Path(out) / "config.yaml"
    if not path.exists() and not path.is_symlink():
        return
    try:
        wrote = config_command(path)
    except RecordError as e:
        raise RunDirError(f"{e}; choose another --out") from None
    if wrote != command:
        whose = f"`jestkit {wrote}`'s" if wrote else "not one jestkit wrote"
        raise RunDirError(
            f"{path} is {whose} config.yaml, and `jestkit {command}` never replaces another "
            f"command's record or your file; choose another --out"
        )


def _replayed_config_error(argv: list[str]) -> str | None:
    """`jestkit CMD --config FILE` where FILE is another command's config.yaml: the message
    that says which (the parser would only say it cannot load it)."""
    if not argv or argv[0] not in COMMANDS:
        return None
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else (
            arg.partition("=")[2] if arg.startswith("--config=") else None)  # fmt: skip
        if not path or not Path(path).is_file():
            continue
        try:
            wrote = config_command(path)
        except ValueError:
            continue  # the parser says what is wrong with it
        if wrote is not None and wrote != argv[0]:
            return (f"jestkit {argv[0]}: error: --config {path} is the config.yaml of `jestkit "
                    f"{wrote}`, not of `jestkit {argv[0]}`; replay it with `jestkit {wrote} "
                    f"--config {path}`")  # fmt: skip
    return None


def unused_sections(command) -> list[str]:
    """The sections of `command` that its run does not read: on your shards, the Fashion-MNIST
    data (--data.*); with --open_clip, jestkit's own model (--model.*); on Fashion-MNIST, the
    shards and held-out sets."""
    unused = []
    if isinstance(command, Train | Score | Plan) and command.open_clip is not None:
        unused.append("model")
    if isinstance(command, Train | Plan):
        unused += ["data"] if command.shards.pattern else ["shards", "eval"]
    return unused


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


def run_name(config: TrainConfig, filter_keep: float | None) -> str:
    """A learner's run name: the policy's ('learnability-joint'), after 'filter-30-' when it
    trains on the offline filter's share (filter-30-uniform: the filter baseline)."""
    return config.name() if filter_keep is None else f"filter-{100 * filter_keep:g}-{config.name()}"


def _check_filter_keep(cmd: Train) -> None:
    """--filter_keep: a share in (0, 1) of the Fashion-MNIST pool, read off a reference folder."""
    if cmd.filter_keep is None:
        return
    if not 0.0 < cmd.filter_keep < 1.0:
        raise ValueError(f"--filter_keep must be in (0, 1), or null for the whole pool, got "
                         f"{cmd.filter_keep:g}")  # fmt: skip
    if cmd.shards.pattern:
        raise ValueError("--filter_keep filters the Fashion-MNIST pool; on your own shards "
                         "write the kept uids with `jestkit score --keep K --subset FILE` and "
                         "train on those shards")  # fmt: skip
    if not Path(cmd.reference).is_dir():
        raise ValueError(f"--filter_keep reads the reference's cache: --reference {cmd.reference}"
                         f" must be a folder written by `jestkit reference`")  # fmt: skip
    if cmd.own_run().is_own:
        raise ValueError("--filter_keep trains jestkit's dual encoder on the CPU; drop "
                         "--open_clip / --device cuda")  # fmt: skip


def _run(cmd, switches: Switches, save_config, progress: bool, settings: dict) -> int:
    # imported here so that `jestkit --help` stays fast
    from jestkit.dropin.distributed import agree, setup, teardown
    from jestkit.engine.rundir import check_reference_dir, check_run_dir
    from jestkit.fashion.demo import run_demo
    from jestkit.fashion.evaluate import evaluator
    from jestkit.fashion.learner import train_learner
    from jestkit.fashion.prepare import prepare_caption_data
    from jestkit.fashion.reference import filter_pool, train_reference

    if isinstance(cmd, Demo):
        config = cmd.train_config()
        _check_demo_selection(cmd.selection)
        if not cmd.policies:
            raise ValueError(f"--policies is empty: the demo compares selecting policies with "
                             f"uniform; name at least one (e.g. {DEMO_POLICIES[0]})")
        check_out_config(cmd.out, "demo")
        if cmd.filter_keep is not None and not 0.0 < cmd.filter_keep < 1.0:
            raise ValueError(f"--filter_keep must be in (0, 1), or null for no filter run, got "
                             f"{cmd.filter_keep:g}")  # fmt: skip
        run_demo(cmd.out, cmd.data, cmd.model, cmd.reference, config, tuple(cmd.policies),
                 tuple(cmd.uniform_budgets), progress, overwrite=switches.overwrite,
                 write_config=save_config, filter_keep=cmd.filter_keep)  # fmt: skip
        return 0
    if isinstance(cmd, Score):
        return _score(cmd, save_config, progress, settings)
    if isinstance(cmd, Eval):
        return _eval(cmd)
    if isinstance(cmd, Export):
        return _export(cmd)
    if isinstance(cmd, Plan):
        return _plan(cmd, save_config, progress)
    if isinstance(cmd, Train):
        _check_filter_keep(cmd)
    if isinstance(cmd, Train) and cmd.own_run().is_own:
        return _train_own(cmd, switches, save_config, progress, settings)
    if isinstance(cmd, Train) and cmd.eval.any:
        raise ValueError("--eval.zeroshot / --eval.retrieval evaluate a run on your own shards "
                         "(--shards.pattern); Fashion-MNIST runs evaluate on its test set")
    config = cmd.train_config() if isinstance(cmd, Train) else None
    if isinstance(cmd, Train):
        report_to = parse_report_to(cmd.report_to)
        cmd.model.check_patch_size(config.scoring.patch_size)
        out = cmd.out or f"runs/train/{run_name(config, cmd.filter_keep)}"
        check_run_dir(out, switches.resume, switches.overwrite)  # before any work
        check_out_config(out, "train")
    else:
        check_reference_dir(cmd.out, switches.overwrite)
        check_out_config(cmd.out, "reference")
    data = prepare_caption_data(cmd.data)
    if isinstance(cmd, Train) and cmd.filter_keep is not None:
        data = filter_pool(data, cmd.reference, cmd.filter_keep, config.selection.loss)
    dist = setup(backend="gloo", device="cpu")  # under torchrun; else one process
    try:
        agree(dist, {**settings, "the data (its fingerprint)": data.fingerprint})
        if isinstance(cmd, Reference):
            info = train_reference(data, cmd.model, cmd.reference, cmd.loss, cmd.out,
                                   evaluator(data), progress, dist, overwrite=switches.overwrite,
                                   write_config=save_config)  # fmt: skip
        else:
            result = train_learner(data, cmd.model, config, cmd.reference, out, switches.resume,
                                   progress, dist, overwrite=switches.overwrite,
                                   write_config=save_config, report_to=report_to)  # fmt: skip
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
    kept = "" if data.kept is None else f" on the {len(data.kept)} pairs the filter kept"
    print(
        f"{run_name(config, cmd.filter_keep)}{kept}: {result['steps']} steps, "
        f"zero-shot {final['zero_shot']:.4f}, "
        f"i2t R@1 {final['i2t_r1']:.4f}, t2i R@1 {final['t2i_r1']:.4f}, "
        f"{sum(result['flops'].values()) / 1e12:.3f} TFLOPs; result in {out}/result.json"
    )
    return 0


def _train_own(cmd: Train, switches: Switches, save_config, progress: bool, settings: dict
               ) -> int:  # fmt: skip
    """`jestkit train` on your own data, model, reference or device (jestkit.own.train)."""
    from jestkit.dropin.distributed import setup, teardown
    from jestkit.engine.device import resolve_device
    from jestkit.engine.rundir import check_run_dir, claimed_run
    from jestkit.fashion.prepare import prepare_caption_data
    from jestkit.own.train import train_own

    run, config = cmd.own_run(), cmd.train_config()
    report_to = parse_report_to(cmd.report_to)
    device = resolve_device(run.own.device)  # a clear error before any work
    data = None if run.shards.pattern else prepare_caption_data(cmd.data)
    out = cmd.out or f"runs/train/{config.name()}"
    check_run_dir(out, switches.resume, switches.overwrite)  # before any work
    check_out_config(out, "train")
    dist = setup(backend="nccl" if device.type == "cuda" else "gloo", device=device)
    try:
        with claimed_run(out, switches.resume, switches.overwrite, dist.is_main):
            result = train_own(run, cmd.model, config, out, data, switches.resume, progress, dist,
                               save_config, cmd.eval, settings, report_to)  # fmt: skip
    finally:
        teardown(dist)
    if not dist.is_main:
        return 0
    final = result["final"]
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in final.items())
    losses = result["losses"]
    print(
        f"{config.name()} on {result['data']} ({result['model']}, {result['device']}): "
        f"{result['steps']} steps, last loss {losses[-1] if losses else float('nan'):.4f}"
        f"{', ' + metrics if metrics else ''}, skipped {sum(result['skipped'].values())} bad "
        f"samples, {sum(result['flops'].values()) / 1e9:.2f} GFLOPs; result in {out}/result.json"
    )
    return 0


def _plan(cmd: Plan, save_config, progress: bool) -> int:
    """`jestkit plan` (jestkit.plan.run) on Fashion-MNIST (jestkit.plan.fashion) or on your
    shards (jestkit.plan.shards)."""
    from jestkit.plan.run import check_budget, plan, table

    check_budget(cmd.budget_flops, cmd.budget_uniform_steps, cmd.budget_hours)  # before any work
    check_out_config(cmd.out, "plan")  # a plan's folder only: never another command's record
    if cmd.shards.pattern:
        from jestkit.plan.shards import ShardsPool

        pool = ShardsPool(cmd.shards, cmd.open_clip, cmd.reference, cmd.reference_checkpoint,
                          cmd.eval, cmd.model, Path(cmd.out), progress)  # fmt: skip
        pool.check()  # before any measurement
        base = TrainConfig(selection=SelectionConfig(loss=pool.loss), training=cmd.training)
    else:
        from jestkit.fashion.prepare import prepare_caption_data
        from jestkit.plan.fashion import FashionPool, check_plan_reference

        given = [flag for flag, value in (("--open_clip", cmd.open_clip),
                                          ("--reference_checkpoint", cmd.reference_checkpoint),
                                          ("--eval.*", cmd.eval.any)) if value]  # fmt: skip
        if given:
            raise ValueError(f"{', '.join(given)}: for a plan on your own shards; give "
                             "--shards.pattern, or leave them out for Fashion-MNIST")
        check_plan_reference(cmd.reference)
        pool = FashionPool(prepare_caption_data(cmd.data), cmd.model, cmd.reference, cmd.data)
        base = TrainConfig(training=cmd.training)
    save_config(Path(cmd.out))
    result = plan(pool, base, cmd.out, cmd.budget_flops, cmd.budget_uniform_steps, cmd.rules,
                  cmd.pilot_share, progress, cmd.budget_hours)  # fmt: skip
    print(table(result))
    print(f"wrote {Path(cmd.out) / 'plan.json'} and plan.png")
    return 0


def _eval(cmd: Eval) -> int:
    """`jestkit eval` (jestkit.own.evaluate)."""
    from jestkit.engine.device import resolve_device
    from jestkit.engine.files import write_json_atomic
    from jestkit.own.evaluate import (
        check_eval_out,
        clip_benchmark_results,
        evaluate_checkpoint,
        metrics_table,
    )

    if cmd.checkpoint is None:
        raise ValueError("--checkpoint is required: the checkpoint file to evaluate")
    device = resolve_device(cmd.device)
    out = Path(cmd.out) if cmd.out else Path(cmd.checkpoint).parent / "eval.json"
    check_eval_out(out)  # before the pass
    result = evaluate_checkpoint(cmd.checkpoint, cmd.eval, cmd.open_clip, str(device))
    folder = out.parent / "clip_benchmark"
    files = clip_benchmark_results(result)
    result["clip_benchmark"] = [str(folder / name) for name in files]
    for name, dump in files.items():
        write_json_atomic(dump, folder / name)
    write_json_atomic(result, out)
    sizes = ", ".join(f"{n} ({s['kind']}, {s['samples']} samples)"
                      for n, s in result["sets"].items())  # fmt: skip
    print(f"{cmd.checkpoint} ({result['model']}) on {sizes}:")
    print(metrics_table(result["metrics"]))
    print(f"wrote {out}, and {len(files)} clip_benchmark result file(s) in {folder}")
    return 0


def _export(cmd: Export) -> int:
    """`jestkit export` (jestkit.openclip.export)."""
    if cmd.run is None:
        raise ValueError("give the run to export: `jestkit export RUN` (a run folder or one of "
                         "its checkpoint files)")  # fmt: skip
    from jestkit.openclip.export import export_open_clip

    info = export_open_clip(cmd.run, cmd.out, cmd.name)
    register = (f"open_clip.add_model_config({info['config_file']!r}); "
                if info["config_file"] else "")  # fmt: skip
    print(f"wrote {info['path']} (step {info['step']}); load it with {register}"
          f"open_clip.create_model_and_transforms({info['config']!r}, "
          f"pretrained={info['path']!r})")  # fmt: skip
    return 0


def _score(cmd: Score, save_config, progress: bool, settings: dict) -> int:
    """`jestkit score` (jestkit.own.score)."""
    from jestkit.dropin.distributed import agree, setup, teardown
    from jestkit.engine.device import resolve_device
    from jestkit.engine.rundir import check_output_file, check_score_dir, run_lock
    from jestkit.own.run import OwnModel, OwnRun
    from jestkit.own.score import (
        check_subset_shards_dir,
        export_subset,
        export_subset_shards,
        score_shards,
    )

    if cmd.keep is not None and cmd.subset is None and cmd.subset_shards is None:
        raise ValueError("--keep needs --subset or --subset_shards: where to write the kept "
                         "uids or samples")  # fmt: skip
    keep = FILTER_KEEP if cmd.keep is None else cmd.keep
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"--keep must be in (0, 1], got {keep}")
    if cmd.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {cmd.batch_size}")
    if cmd.shards.draft_side != "none":
        raise ValueError(f"--shards.draft_side {cmd.shards.draft_side}: `jestkit score` decodes "
                         f"every sample in full for the reference cache; drafting is for the "
                         f"candidates of `jestkit train`")  # fmt: skip
    check_score_dir(cmd.out)  # before any work
    check_out_config(cmd.out, "score")
    if cmd.subset is not None:  # a DataComp subset (.npy) or a keys file (.txt)
        suffix = ".txt" if Path(cmd.subset).suffix == ".txt" else ".npy"
        check_output_file(cmd.subset, "--subset", suffix)
    if cmd.subset_shards is not None:
        check_subset_shards_dir(cmd.subset_shards)
    run = OwnRun(cmd.shards, OwnModel(cmd.open_clip, cmd.reference, None, cmd.device))
    device = resolve_device(cmd.device)
    dist = setup(backend="nccl" if device.type == "cuda" else "gloo", device=device)
    try:
        agree(dist, settings)  # every rank scores the same shards with the same reference
        with run_lock(cmd.out) if dist.is_main else contextlib.nullcontext():  # one scorer
            info = score_shards(run, cmd.model, cmd.loss, cmd.out, cmd.batch_size, progress,
                                dist, write_config=save_config, subset=cmd.subset)  # fmt: skip
    finally:
        teardown(dist)
    if not dist.is_main:
        return 0
    skipped = sum(info["skipped"].values())
    print(f"reference cache of {info['samples']} samples written to {cmd.out} "
          f"({skipped} bad samples skipped)")  # fmt: skip
    if cmd.subset is not None:
        sub = export_subset(cmd.out, keep, cmd.subset)
        print(f"kept {sub['kept']} of {sub['of']} samples (image-text similarity >= "
              f"{sub['min_similarity']:.4f}): wrote {sub['path']}")  # fmt: skip
    if cmd.subset_shards is not None:
        sub = export_subset_shards(cmd.out, keep, cmd.shards, cmd.subset_shards)
        print(f"kept {sub['kept']} of {sub['of']} samples (image-text similarity >= "
              f"{sub['min_similarity']:.4f}): wrote their shards to {cmd.subset_shards}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
