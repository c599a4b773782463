"""JEST in a PyTorch Lightning module: `train_dataloader()` returns jestkit's SelectiveLoader
around your DataLoader of super-batches, its scoring callables closing over the learner (self)
and a frozen reference; Lightning sees b pairs per step and len(loader) steps per epoch.

    pip install -c pins.txt 'jestkit[lightning]'
    python examples/jest_lightning.py --model ViT-B-16-SigLIP --shards '/data/shards/*.tar' \
        --reference runs/ref/open_clip_model.pt --batch-size 1280 --max-steps 1000

On one device. With several, Lightning's distributed sampler goes on the inner DataLoader and
selection happens per device (jestkit's global selection across ranks, GlobalSelector, is not
wired into Lightning here). The pairs are read into memory (fine for this example's shards; a
large pool streams with webdataset or jestkit.data.shards.ShardPool).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import open_clip
import torch
from torch.utils.data import DataLoader

from jestkit import SelectionConfig
from jestkit.data.shards import ShardPool
from jestkit.dropin import SelectiveLoader
from jestkit.openclip import create_model, embeddings, load_reference, make_loss, selection_loss
from jestkit.openclip.dual import OpenClipDual, open_clip_inputs


class JESTModule(L.LightningModule):
    """An open_clip learner trained with JEST: learnability against a frozen reference."""

    def __init__(self, model: str, reference: str, shards: str, batch_size: int = 1280,
                 filter_ratio: float = 0.8, n_chunks: int = 16, lr: float = 1e-3):  # fmt: skip
        super().__init__()
        self.learner = create_model(model)  # dict outputs
        self.reference = load_reference(model, reference)  # frozen, eval mode
        self.loss = make_loss(self.learner)  # open_clip's SigLipLoss / ClipLoss
        self.preprocess, self.tokenize = open_clip_inputs(model, OpenClipDual(self.learner))
        self.shards, self.batch_size, self.lr = shards, batch_size, lr
        self.selection = SelectionConfig(loss=selection_loss(self.learner),
                                         filter_ratio=filter_ratio, n_chunks=n_chunks)

    def train_dataloader(self):
        pool = ShardPool(self.shards, transform=self.preprocess)  # img2dataset's layout
        pairs = [(s["image"], self.tokenize([s["caption"]])[0]) for s in pool]
        loader = DataLoader(pairs, batch_size=self.batch_size, shuffle=True, drop_last=True)
        return SelectiveLoader(
            loader,  # B pairs a batch: the super-batch
            learner=lambda images, texts: embeddings(self.learner(images, texts)),
            reference=lambda images, texts: embeddings(self.reference(images, texts)),
            config=self.selection,
            seed=0,
        )

    def training_step(self, batch, batch_idx):
        images, texts = batch  # the b selected pairs
        loss = self.loss(**self.learner(images, texts))
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.learner.parameters(), lr=self.lr)

    def train(self, mode: bool = True):
        super().train(mode)
        self.reference.eval()  # the reference stays frozen in eval mode
        return self


def main(argv: list[str] | None = None) -> L.Trainer:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="open_clip config name or JSON file")
    parser.add_argument("--reference", required=True, help="the reference's checkpoint file")
    parser.add_argument("--shards", required=True, help="img2dataset tar shards")
    parser.add_argument("--batch-size", type=int, default=1280, help="the super-batch B")
    parser.add_argument("--filter-ratio", type=float, default=0.8)
    parser.add_argument("--n-chunks", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--log-every", type=int, default=50, help="log the loss every N steps")
    parser.add_argument("--out", default="runs/lightning-jest")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    module = JESTModule(args.model, args.reference, args.shards, args.batch_size,
                        args.filter_ratio, args.n_chunks, args.lr)  # fmt: skip
    trainer = L.Trainer(max_steps=args.max_steps, accelerator="auto", devices=1,
                        default_root_dir=args.out, logger=L.pytorch.loggers.CSVLogger(args.out),
                        log_every_n_steps=args.log_every, enable_progress_bar=False)  # fmt: skip
    trainer.fit(module)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": trainer.current_epoch, "name": "lightning-jest",
                "state_dict": module.learner.state_dict()}, Path(args.out) / "open_clip_model.pt")
    return trainer


if __name__ == "__main__":
    open_clip  # noqa: B018 - imported so that a missing open_clip fails here, not mid-run
    main()
