"""JEST with open_clip_train's data pipeline: its arguments, its WebDataset loader (`get_data`)
and its cosine schedule, with jestkit's JESTTask in place of its training loop.

    pip install -c pins.txt 'jestkit[open_clip_train]'
    python examples/jest_open_clip_train.py --model ViT-B-16-SigLIP --siglip \
        --train-data '/data/shards/{00000..01023}.tar' --train-num-samples 10000000 \
        --batch-size 1280 --lr 1e-3 --warmup 500 --epochs 1 --workers 8 \
        --reference runs/ref/open_clip_model.pt --filter-ratio 0.8 --out runs/oc-jest

--batch-size is the super-batch B that open_clip_train's loader gives; the learner trains on
b = (1 - filter_ratio) * B of it. --reference is an open_clip checkpoint of the same config
(`jestkit export` writes one from a `jestkit train` run). A JSON config file for --model is
registered with open_clip.add_model_config first (its name is the file's stem). Writes
OUT/epoch_N.pt in open_clip_train's layout at the end of every epoch.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import open_clip
import torch
from open_clip_train.data import get_data
from open_clip_train.params import parse_args
from open_clip_train.scheduler import cosine_lr

from jestkit import SelectionConfig, Selector
from jestkit.openclip import JESTTask, load_reference


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """(jestkit's arguments, open_clip_train's arguments as its own parser reads them)."""
    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument("--reference", required=True, help="the reference's open_clip checkpoint")
    ours.add_argument("--filter-ratio", type=float, default=0.8)
    ours.add_argument("--n-chunks", type=int, default=16)
    ours.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    ours.add_argument("--out", default="runs/open_clip_train-jest")
    jest, rest = ours.parse_known_args(argv)
    args = parse_args(rest)
    if args.model.endswith(".json"):  # a JSON config: registered under its file's stem
        open_clip.add_model_config(args.model)
        args.model = Path(args.model).stem
    # what open_clip_train's main() sets before get_data: one process here (under torchrun,
    # set these from jestkit.dropin.distributed.setup() and use a GlobalSelector)
    args.distributed, args.world_size, args.rank, args.local_rank = False, 1, 0, 0
    return jest, args


def main(argv: list[str] | None = None) -> list[float]:
    jest, args = parse(argv)
    torch.manual_seed(args.seed)
    learner, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        args.model, output_dict=True)
    reference = load_reference(args.model, jest.reference)
    data = get_data(args, (preprocess_train, preprocess_val), epoch=0,
                    tokenizer=open_clip.get_tokenizer(args.model))
    loss = "sigmoid" if args.siglip else "softmax"
    selector = Selector(SelectionConfig(loss=loss, filter_ratio=jest.filter_ratio,
                                        n_chunks=jest.n_chunks), seed=args.seed)
    task = JESTTask(learner, reference, selector)  # open_clip's SigLipLoss / ClipLoss
    optimizer = torch.optim.AdamW(learner.parameters(), lr=args.lr, weight_decay=args.wd)
    steps_per_epoch = data["train"].dataloader.num_batches
    total_steps = steps_per_epoch * args.epochs
    scheduler = cosine_lr(optimizer, args.lr, args.warmup, total_steps)
    out = Path(jest.out)
    out.mkdir(parents=True, exist_ok=True)
    losses, step = [], 0
    task.train()
    for epoch in range(args.epochs):
        data["train"].set_epoch(epoch)
        for images, texts in data["train"].dataloader:  # B pairs: the super-batch
            scheduler(step)
            result = task(images, texts)  # scores the B, trains on the b selected
            optimizer.zero_grad()
            result["loss"].backward()
            optimizer.step()
            losses.append(result["loss"].item())
            step += 1
            if jest.max_steps is not None and step >= jest.max_steps:
                break
        torch.save({"epoch": epoch + 1, "name": out.name, "state_dict": learner.state_dict(),
                    "optimizer": optimizer.state_dict()}, out / f"epoch_{epoch + 1}.pt")
        if jest.max_steps is not None and step >= jest.max_steps:
            break
    print(f"{step} steps of {total_steps}, last loss {losses[-1]:.4f}; wrote {out}")
    assert all(math.isfinite(x) for x in losses)
    return losses


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
