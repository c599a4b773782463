"""The plan's pool on your own shards (`ShardsPool`): img2dataset / WebDataset shards, an
open_clip config (or jestkit's dual encoder), a `jestkit score` folder (the reference's pass over
the pool, which the filter and JEST need anyway) with the reference checkpoint that made it, and
held-out sets in clip_benchmark's layout; behind the pool interface jestkit.plan.run plans with.

Measurements: the pool's embeddings are read from the score folder's cache; the reference runs
over the held-out sets (a sample of at most measure.SAMPLE images each): retrieval sets give
matched pairs (each caption with its image), zero-shot sets the class prompts (and, without a
retrieval set, the matched pairs: each image with its class). The reference's cost is its pass
over the pool (its forward FLOPs on one sample, measured, times the samples cached) plus its
training where the checkpoint is a `jestkit train` run's (its result.json's FLOPs; otherwise 0,
recorded as unknown); in seconds, its training as that result.json's timing says and its pass
as the held-out forward (decoding included) took per image and caption, times the samples.
Step costs: real steps of each method on the shards, their FLOPs counted as every run counts
them (jestkit.engine.flops), their seconds timed (jestkit.plan.costs).

The methods run from the CLI as the plan prints them: `jestkit train --shards.pattern ...`
with --selection.* and --reference SCOREFOLDER; the offline filter writes the kept samples as
shards (`jestkit score --keep 0.3 --subset_shards DIR`) and trains on them; filter + JEST also
scores the kept shards with the reference (`jestkit score`), a pass over the kept share that is
charged to it.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from jestkit.data.shards import list_shards
from jestkit.data.stream import ShardsConfig
from jestkit.dropin.cache import ReferenceCache, fingerprint_state_dict
from jestkit.engine.config import TrainConfig, TrainingConfig
from jestkit.engine.files import read_json_record
from jestkit.engine.flops import count_no_grad_flops
from jestkit.engine.loop import Trainer
from jestkit.engine.reference import REFERENCE_FIELDS
from jestkit.models.factory import ModelConfig
from jestkit.own.evaluate import (
    EvalConfig,
    _decode,
    _encode_images,
    _encode_texts,
    check_held_out,
    headline,
    load_sets,
)
from jestkit.own.metrics import class_weights
from jestkit.own.run import (
    OwnModel,
    OwnRun,
    build_learner,
    build_source,
    load_stream_reference,
    model_inputs,
    shards_fingerprint,
)
from jestkit.own.score import _reference_model, export_subset_shards, score_shards
from jestkit.own.train import train_own
from jestkit.plan.costs import measure_method, reference_seconds, timed
from jestkit.plan.fashion import changed_flags, selection_flags
from jestkit.plan.measure import SAMPLE, pool_measurements
from jestkit.plan.rules import METHODS, MethodCost, method_config

KEEP = METHODS["filter"][2]


@dataclass
class ShardsPool:
    """Your shards with a reference (see the module docstring).

    reference: a `jestkit score` folder of these shards, or the reference checkpoint (the plan
    then scores the shards into OUT/score first, resumable); checkpoint: the reference checkpoint
    that made a score folder (the plan runs it over the held-out sets; its fingerprint must be
    the folder's). out: the plan's folder (the score, the kept shards and their score for the
    filter's pilots)."""

    shards: ShardsConfig
    open_clip: str | None
    reference: str
    checkpoint: str | None
    eval: EvalConfig
    model_config: ModelConfig
    out: Path
    progress: bool = False
    _ready: dict = field(default_factory=dict, repr=False)

    # -- the checks, before any costly work ---------------------------------------------------

    def check(self) -> None:
        """Refuse missing shards, held-out sets or reference; build the score folder from a
        reference checkpoint; check the folder is of these shards and of the checkpoint."""
        if self._ready:
            return
        if not self.shards.pattern:
            raise ValueError("give the pool: --shards.pattern")
        sets = load_sets(self.eval)
        if not sets:
            raise ValueError("the plan needs held-out sets to measure the pool against: give "
                             "--eval.retrieval NAME=FOLDER (matched image-caption pairs) and/or "
                             "--eval.zeroshot NAME=FOLDER (clip_benchmark's layout)")  # fmt: skip
        ref = Path(self.reference)
        if ref.is_file():
            checkpoint, score_dir = str(ref), self.out / "score"
        elif (ref / "reference.json").is_file():
            checkpoint, score_dir = self.checkpoint, ref
            if checkpoint is None:
                raise ValueError(f"--reference {ref} is a score folder: give the checkpoint that "
                                 "made it too, --reference_checkpoint FILE (the plan runs it "
                                 "over the held-out sets)")  # fmt: skip
        else:
            raise ValueError(f"--reference {ref} holds no reference: give a `jestkit score` "
                             "folder of the pool (reference.json, cache/) or the reference's "
                             "checkpoint file (the plan then scores the pool with it)")
        if not Path(checkpoint).is_file():
            raise ValueError(f"--reference_checkpoint {checkpoint} is not a file")
        check_held_out(sets, self.shards.shards(), self.eval.overlap, self.progress)
        own = OwnRun(self.shards, OwnModel(self.open_clip, checkpoint))
        if score_dir != ref and not (score_dir / "reference.json").is_file():
            # a checkpoint: its pass over the pool (resumable), as `jestkit score` makes it
            own_score = OwnRun(for_score(self.shards), own.own)
            score_shards(own_score, self.model_config, _loss_of(own), score_dir,
                         progress=self.progress)  # fmt: skip
        info = read_json_record(score_dir / "reference.json", "a reference's reference.json",
                                REFERENCE_FIELDS, f"score the shards again into {score_dir}")
        if shards_fingerprint(list_shards(self.shards.shards())) != info["data_fingerprint"]:
            raise ValueError(f"the score folder {score_dir} was built for other shards "
                             f"({info.get('shards')}), not --shards.pattern "
                             f"{self.shards.pattern}")  # fmt: skip
        model, _ = _reference_model(own, self.model_config, info["loss"])
        if fingerprint_state_dict(model.state_dict()) != info["model_fingerprint"]:
            raise ValueError(f"--reference_checkpoint {checkpoint} is not the reference that "
                             f"scored {score_dir} (their weights' fingerprints differ)")
        self._ready.update(sets=sets, info=info, score_dir=score_dir, checkpoint=checkpoint,
                           model=model)  # fmt: skip

    @property
    def loss(self) -> str:
        """The reference's loss: the learners' too."""
        self.check()
        return self._ready["info"]["loss"]

    @property
    def score_dir(self) -> Path:
        self.check()
        return self._ready["score_dir"]

    def _run(self, shards: ShardsConfig | None = None, reference: str | None = None) -> OwnRun:
        return OwnRun(shards or self.shards, OwnModel(self.open_clip, reference))

    # -- measurements and costs ----------------------------------------------------------------

    def _held_out(self, model, sample: int = SAMPLE, seed: int = 0):
        """((image, text) matched pairs, class prompts or None, FLOPs, seconds per pair) from
        the held-out sets; seconds {"cpu", "wall"}: an image's decoding and forward plus a
        caption's (or a prompt's) forward, as the reference's pass over the pool takes them."""
        transform, tokenize = model_inputs(self._run(), model)
        g = torch.Generator().manual_seed(seed)
        bs, retrieval, zeroshot, prompts, flops = self.eval.batch_size, [], [], None, 0
        seconds, encoded = Counter(), Counter()  # (kind, clock) -> seconds; kind -> items

        def encode(kind: str, fn, *args):
            (out, f), took = timed(count_no_grad_flops, fn, model, *args, bs, "cpu")
            seconds.update({(kind, clock): t for clock, t in took.items()})
            encoded[kind] += len(args[0])
            return out, f

        for s in self._ready["sets"]:
            rows = torch.randperm(len(s), generator=g)[:sample].tolist()
            img, f = encode("image", _encode_images, [s.images[i] for i in rows], transform)
            flops += f
            if s.kind == "retrieval":
                texts = [s.captions[i][0] for i in rows]  # each image with its first caption
                txt, f = encode("text", _encode_texts, tokenize(texts))
                retrieval.append((img, txt))
            else:
                txt, f = encode("text", _encode_texts, tokenize(s.prompts()))
                classes = class_weights(txt.view(len(s.classnames), len(s.templates), -1))
                prompts = classes if prompts is None else prompts
                zeroshot.append((img, classes[torch.tensor([s.labels[i] for i in rows])]))
            flops += f
        pairs = retrieval or zeroshot
        held = tuple(torch.cat([p[k] for p in pairs]) for k in (0, 1))
        per_pair = {clock: sum(seconds[kind, clock] / max(1, encoded[kind]) for kind in encoded)
                    for clock in ("cpu", "wall")}  # fmt: skip
        return held, prompts, flops, per_pair

    def _pass_per_sample(self) -> int:
        """The reference's forward FLOPs on one sample (its pass over the pool: this times the
        samples), measured on a held-out image and caption of the pool's input shapes."""
        if "pass" not in self._ready:
            model = self._ready["model"]
            transform, tokenize = model_inputs(self._run(), model)
            s = self._ready["sets"][0]
            image = _decode(s.images[0], transform)[None]
            tokens = tokenize([s.captions[0][0] if s.kind == "retrieval" else s.prompts()[0]])
            _, self._ready["pass"] = count_no_grad_flops(model.embeddings, image, tokens)
        return self._ready["pass"]

    def _reference_training(self) -> tuple[float | None, dict[str, float] | None]:
        """The reference's training FLOPs and seconds {"cpu", "wall"}: its `jestkit train` run's
        result.json beside the checkpoint; None when it is not one (a downloaded or foreign
        checkpoint) or, for the seconds, when it has no timing."""
        result = Path(self._ready["checkpoint"]).parent / "result.json"
        try:
            run = read_json_record(result, "a `jestkit train` run's result.json", {"flops": dict})
            flops = float(sum(run["flops"].values()))
        except (OSError, ValueError, TypeError):  # no such run, or not one: its cost unknown
            return None, None
        try:
            seconds = {c: float(run["timing"]["total"][c]["run"]) for c in ("cpu", "wall")}
        except (KeyError, TypeError, ValueError):
            seconds = None
        return flops, seconds

    def measure(self) -> dict:
        self.check()
        info, score_dir = self._ready["info"], self._ready["score_dir"]
        cache = ReferenceCache.open(score_dir / "cache", info["model_fingerprint"],
                                    info["data_fingerprint"])  # fmt: skip
        ids = list(cache.ids())
        rows = cache.lookup(ids, ["image", "text"])
        image, text = F.normalize(rows["image"].float(), dim=1), F.normalize(rows["text"].float(),
                                                                             dim=1)  # fmt: skip
        held, prompts, flops, per_pair = self._held_out(self._ready["model"])
        m = pool_measurements(image, text, held, prompts, KEEP)
        passed = self._pass_per_sample() * len(ids)
        trained, train_seconds = self._reference_training()
        self._ready.setdefault("left_out", {})
        return {"pool_size": len(ids), "kept": max(1, round(KEEP * len(ids))), **m,
                "left_out": self._ready["left_out"],
                "reference_flops": passed + (trained or 0.0), "reference_pass_flops": passed,
                "reference_train_flops": trained,
                "reference_seconds": reference_seconds(train_seconds, per_pair, len(ids)),
                "flops": m["flops"] + flops}  # fmt: skip

    def step_costs(self, base: TrainConfig) -> tuple[dict[str, MethodCost], float]:
        """Each method's FLOPs and seconds per step, measured over real steps of it on the
        shards (jestkit.plan.costs), and the FLOPs those steps cost."""
        self.check()
        costs, spent = {}, 0.0
        kept = max(1, round(KEEP * self._ready["info"]["samples"]))
        left_out = self._ready.setdefault("left_out", {})
        for name, (_, _, keep) in METHODS.items():
            config = method_config(base, name)
            size = kept if keep is not None else self._ready["info"]["samples"]
            if name != "uniform" and config.super_batch_size() > size:
                left_out[name] = (f"its super-batch ({config.super_batch_size()}) is larger than "
                                  f"the {size} samples it would draw from")  # fmt: skip
                continue
            run = self._run()
            model = build_learner(run, self.model_config, config.selection.loss, None,
                                  config.training.seed)  # fmt: skip
            source = build_source(run, model)
            try:
                reference = None
                if config.policy.uses_reference:
                    reference = load_stream_reference(self.score_dir, source,
                                                      config.selection.loss)  # fmt: skip
                trainer = Trainer(model, config, source, reference, progress=False)
                rescore = kept * self._pass_per_sample() if keep and reference is not None else 0.0
                costs[name], flops = measure_method(
                    trainer, config.policy.uses_reference or keep is not None, rescore)
            finally:
                source.close()
            spent += flops
        return costs, spent

    # -- the methods' runs and commands --------------------------------------------------------

    def train(self, name: str, config: TrainConfig, run_dir: Path, resume: bool,
              progress: bool) -> dict:  # fmt: skip
        """Method `name` with `config` in run_dir (jestkit.own.train; result.json's contents):
        the filter's methods on the kept shards (written into OUT/kept once), filter + JEST
        with the kept shards' own score (OUT/kept-score, scored once)."""
        self.check()
        shards, reference = self.shards, str(self.score_dir)
        keep = METHODS[name][2]
        if keep is not None:
            kept = self.out / "kept"
            export_subset_shards(self.score_dir, keep, self.shards, kept)
            shards = replace(self.shards, pattern=str(kept / "kept-*.tar"))
            if config.policy.uses_reference:
                reference = str(self.out / "kept-score")
                if not (Path(reference) / "reference.json").is_file():
                    score_shards(self._run(for_score(shards), self._ready["checkpoint"]),
                                 self.model_config, config.selection.loss, reference,
                                 progress=progress)  # fmt: skip
        run = self._run(shards, reference if config.policy.uses_reference else None)
        return train_own(run, self.model_config, config, run_dir, resume=resume,
                         progress=progress, eval_config=self.eval)  # fmt: skip

    @staticmethod
    def accuracy(result: dict) -> float:
        """A run's held-out headline: the first zero-shot acc1 or retrieval mean_recall@1."""
        found = headline(result["final"])
        if found is None:
            raise ValueError("the pilot run recorded no held-out metric")
        return found[1]

    def commands(self, name: str, config: TrainConfig) -> list[str]:
        """The commands that run method `name` with `config`, as typed."""
        self.check()
        model = (["--open_clip", self.open_clip] if self.open_clip
                 else changed_flags("model", self.model_config, ModelConfig()))  # fmt: skip
        score = ["--reference", self._ready["checkpoint"]]
        slug = name.replace("+", "-")
        keep = METHODS[name][2]
        out, shards = [], self.shards
        reference = str(self.score_dir)
        if keep is not None:
            out.append(["jestkit", "score",
                        *changed_flags("shards", for_score(self.shards), ShardsConfig()),
                        *model, *score, "--out", reference, "--keep", f"{keep:g}",
                        "--subset_shards", "runs/kept"])  # fmt: skip
            shards = replace(self.shards, pattern="runs/kept/kept-*.tar")
            if config.policy.uses_reference:
                reference = "runs/kept-score"
                out.append(["jestkit", "score",
                            *changed_flags("shards", for_score(shards), ShardsConfig()),
                            *model, *score, "--out", reference])  # fmt: skip
        out.append(["jestkit", "train", *changed_flags("shards", shards, ShardsConfig()), *model,
                    *(["--reference", reference] if config.policy.uses_reference else []),
                    *selection_flags(config),
                    *changed_flags("training", config.training, TrainingConfig()),
                    *changed_flags("eval", self.eval, EvalConfig()),
                    "--out", f"runs/{slug}"])  # fmt: skip
        return [shlex.join(argv) for argv in out]


def for_score(shards: ShardsConfig) -> ShardsConfig:
    """The shards' settings as `jestkit score` takes them: it splits the shards over ranks
    itself (no --shards.workers or --shards.streams)."""
    return replace(shards, workers=0, streams=None)


def _loss_of(run: OwnRun) -> str:
    """The loss an open_clip reference trains with (SigLIP: sigmoid; CLIP: softmax); jestkit's
    encoder: sigmoid, the default."""
    if run.own.open_clip is None:
        return "sigmoid"
    from jestkit.openclip.dual import open_clip_model

    return open_clip_model(run.own.open_clip).loss_name
