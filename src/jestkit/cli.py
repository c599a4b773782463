"""The `jestkit` command: demo, train and reference.

Every field of the configs (jestkit.data.captions.PoolConfig, jestkit.models.factory.ModelConfig,
jestkit.reference.ReferenceConfig, jestkit.train.TrainConfig) is a flag with its default shown
by --help; reference fields carry the prefix --reference-, and the pool's seed is --data-seed.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from dataclasses import MISSING, fields

from jestkit.cache import CacheError
from jestkit.data.captions import PoolConfig
from jestkit.models.factory import ModelConfig
from jestkit.reference import ReferenceConfig
from jestkit.train import TrainConfig, policy_names

_GROUPS = (
    # (dataclass, flag prefix, renamed fields)
    (PoolConfig, "", {"seed": "data-seed"}),
    (ModelConfig, "", {}),
    (ReferenceConfig, "reference-", {}),
    (TrainConfig, "", {}),
)


def _parser_for(tp):
    """A function parsing one command-line string into the field's type."""
    optional = isinstance(tp, types.UnionType) and type(None) in tp.__args__
    base = next(a for a in tp.__args__ if a is not type(None)) if optional else tp

    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        if base is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
            return text.lower() in ("true", "1")
        return base(text)

    parse.__name__ = getattr(base, "__name__", str(base))
    return parse


def _dest(cls, name: str) -> str:
    return f"{cls.__name__}.{name}"


def add_config_flags(parser: argparse.ArgumentParser, classes: tuple[type, ...]) -> None:
    for cls, prefix, renamed in _GROUPS:
        if cls not in classes:
            continue
        group = parser.add_argument_group(cls.__name__)
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            flag = "--" + prefix + renamed.get(f.name, f.name).replace("_", "-")
            default = f.default if f.default is not MISSING else None
            is_policy = cls is TrainConfig and f.name == "policy"
            kwargs = {"choices": policy_names()} if is_policy else {}
            group.add_argument(
                flag,
                dest=_dest(cls, f.name),
                type=_parser_for(hints[f.name]),
                default=argparse.SUPPRESS,
                help=f"default: {default}",
                metavar=hints[f.name].__name__ if isinstance(hints[f.name], type) else "VALUE",
                **kwargs,
            )


def config_from_args(cls, args: argparse.Namespace):
    given = {
        f.name: getattr(args, _dest(cls, f.name))
        for f in fields(cls)
        if hasattr(args, _dest(cls, f.name))
    }
    return cls(**given)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder with the Fashion-MNIST IDX files (default: $JESTKIT_FASHION_MNIST or the "
        "Debian package's /usr/share/datasets/fashion-mnist)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only the first LIMIT train and test images (quick runs)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jestkit", description="JEST: joint example selection for PyTorch"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="reference + cache + uniform and JEST learners on Fashion-MNIST, compared",
        description="Trains the reference, builds its cache, trains one learner per policy "
        "for the same steps, prints a table and writes results.json and curves.png.",
    )
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument(
        "--policies",
        nargs="+",
        choices=policy_names(),
        default=None,
        help="policies to compare (default: uniform learnability-independent "
        "learnability-joint flexi-learnability-joint)",
    )
    _common(demo)
    add_config_flags(demo, (PoolConfig, ModelConfig, ReferenceConfig, TrainConfig))

    ref = sub.add_parser(
        "reference",
        help="train the reference on the curated set and cache its embeddings of the pool",
    )
    ref.add_argument("--out", default="runs/reference", help="reference folder")
    ref.add_argument(
        "--loss", choices=("sigmoid", "softmax"), default="sigmoid", help="contrastive loss"
    )
    _common(ref)
    add_config_flags(ref, (PoolConfig, ModelConfig, ReferenceConfig))

    train = sub.add_parser("train", help="train one learner with one policy")
    train.add_argument("--out", default=None, help="run folder (default: runs/train/POLICY)")
    train.add_argument(
        "--reference",
        default="runs/reference",
        help="reference folder built by `jestkit reference` (default: runs/reference)",
    )
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    _common(train)
    add_config_flags(train, (PoolConfig, ModelConfig, TrainConfig))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, CacheError) as e:
        print(f"jestkit {args.command}: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    # imported here so that `jestkit --help` stays fast
    from jestkit.data.prepare import prepare_caption_data
    from jestkit.demo import DEMO_POLICIES, evaluator, run_demo, train_learner
    from jestkit.reference import train_reference

    pool = config_from_args(PoolConfig, args)
    model = config_from_args(ModelConfig, args)
    progress = not args.quiet
    if args.command == "demo":
        run_demo(
            args.out,
            pool,
            model,
            config_from_args(ReferenceConfig, args),
            config_from_args(TrainConfig, args),
            policies=tuple(args.policies or DEMO_POLICIES),
            data_dir=args.data_dir,
            limit=args.limit,
            progress=progress,
        )
    elif args.command == "reference":
        from jestkit.distributed import setup, teardown

        data = prepare_caption_data(pool, args.data_dir, args.limit)
        dist = setup(backend="gloo", device="cpu")  # under torchrun; else one process
        try:
            info = train_reference(
                data,
                model,
                config_from_args(ReferenceConfig, args),
                args.loss,
                args.out,
                evaluate=evaluator(data),
                progress=progress,
                dist=dist,
            )
        finally:
            teardown(dist)
        if not dist.is_main:
            return 0
        print(
            f"reference written to {args.out}: zero-shot {info['final']['zero_shot']:.4f}, "
            f"cache of {len(data.pool)} pool pairs"
        )
    else:
        from jestkit.distributed import setup, teardown

        config = config_from_args(TrainConfig, args)
        data = prepare_caption_data(pool, args.data_dir, args.limit)
        out = args.out or f"runs/train/{config.name()}"
        dist = setup(backend="gloo", device="cpu")  # under torchrun; else one process
        try:
            result = train_learner(
                data, model, config, args.reference, out, args.resume, progress, dist
            )
        finally:
            teardown(dist)
        if not dist.is_main:
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
