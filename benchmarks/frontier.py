"""The payoff of JEST on a budget-matched frontier, the way the paper measures it.

Every policy is trained at several budgets (steps), each run with its own warm-up + cosine
schedule that ends at its budget, and only each run's final zero-shot accuracy is kept. A
policy run's speed-up is uniform's cost (FLOPs, steps, training seconds) to reach the same
accuracy, read off uniform's frontier by interpolation in log cost (jestkit.frontier), over the
run's own. Where uniform's largest budget never gets there the speed-up is a lower bound
("> k×"), never an extrapolation.

The axes: the pool's clean share (`--pools`: default 50 %, quarter 25 %, web 15 % clean), the
filter ratio, the reference's strength, and the policy variant:

    uniform      b of the pool at random, no scoring
    jest         learnability-joint, scoring at full resolution
    flexi        Flexi-JEST's image view only: the image tower scores at patch 14 (4 tokens
                 instead of 16) and half of each sub-batch trains at patch 14
    flexi-text   flexi, and the text tower scores half of each caption's positions (pads
                 first): what the `flexi-` run names now mean, kept because it measured better
    easy         easy-reference, independent: the reference alone picks (no learner scoring)
    rho          learnability, independent (RHO-LOSS's rule)

and, what a user with a reference would do instead (issue 20), the **offline filter**: keep < 1
trains on the share `keep` of the pool that the reference scores highest by image-caption
similarity (DataComp's CLIP score; jestkit.core.filter, the rule of `jestkit score --keep`).
"uniform" there is the filter baseline, "jest" / "flexi" there are filter + JEST.

Learning rate: each family (uniform, jest: every learnability variant, easy, and the filtered
uniform and jest) has a grid run at one budget per pool (FAMILIES). It starts at {1e-3, 2e-3,
4e-3} and grows along LADDER, round by round, until the best value has both neighbours run; that
value is then used for every budget of the family. KEPT_LR names the frontiers kept at an
earlier rate although a later probe did a little better (re-running them did not fit); the
tables mark them with †. Costs: FLOPs are measured with torch.utils.flop_counter (training +
learner scoring; the reference reads its cache). The reference's own training and its pass over
the pool are a column of their own (jestkit.payoff.costs), charged in full in the "total".

Every run is cached as one JSON file under benchmarks/results/frontier/ and read back, so the
grid resumes where it stopped (a run killed midway resumes from its checkpoint under --work).
Runs are taken by --workers processes (one thread each) that claim tasks with lock files.

    python benchmarks/frontier.py run --plan decisive --workers 2   # the goal cells first
    python benchmarks/frontier.py run --plan seeds --workers 2      # seeds 1, 2 of headlines
    python benchmarks/frontier.py run --plan ratios --workers 2     # filter ratios 0.5 to 0.9
    python benchmarks/frontier.py run --plan axes --workers 2       # a 25 %-clean pool, a
                                                                    # stronger reference
    python benchmarks/frontier.py run --plan payoff --workers 2     # issue 20: easy-reference,
                                                                    # the filter, filter + JEST
    python benchmarks/frontier.py run --plan filters --workers 2    # the filter's K = 10, 50 %
    python benchmarks/frontier.py run --plan redundant --workers 2  # web data's redundancy
    python benchmarks/frontier.py run --plan pools --workers 2      # the filter, easy-reference
                                                                    # on the default and quarter
    python benchmarks/frontier.py run --plan rest --workers 2       # what issue 20 left over
    python benchmarks/frontier.py run --plan tails --workers 2      # a long tail of classes,
                                                                    # vague captions
    python benchmarks/frontier.py run --plan tails-seeds --workers 2  # their seeds 1, 2
    python benchmarks/frontier.py run --plan cause-seeds --workers 2  # issue 27's cause
                 # experiment without JEST at 800 steps ("cause": with it); "cause-8k": half size
    python benchmarks/frontier.py summary                           # tables, JSON, plots

`summary` (also run at the end of `run`) writes benchmarks/results/frontier.json, frontier.txt,
frontier.png and payoff.png from whatever runs exist.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from jestkit.engine.config import TrainConfig, reference_training
from jestkit.engine.rundir import RunDirError
from jestkit.fashion.captions import PoolConfig
from jestkit.fashion.evaluate import evaluator
from jestkit.fashion.learner import train_learner
from jestkit.fashion.prepare import CaptionData, prepare_caption_data
from jestkit.fashion.reference import filter_pool, train_reference
from jestkit.models.factory import ModelConfig
from jestkit.payoff.costs import COLUMNS, cost_columns
from jestkit.payoff.frontier import Speedup, cost_to_reach, speedup
from jestkit.payoff.report import COSTS, run_cost, uniform_frontier

RESULTS = Path("benchmarks/results")
RUNS = RESULTS / "frontier"
# learning rates: each family's grid starts at START and grows along LADDER until the best value
# has both neighbours run (jestkit never reports a tuned value that sits at the grid's edge)
LADDER = (1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2)
START = (1e-3, 2e-3, 4e-3)
TUNE_RATIO = {"default": 0.8, "quarter": 0.8, "web": 0.9, "redundant": 0.9, "longtail": 0.9,
              "vague": 0.9}  # jest's grid  # fmt: skip
EASY_RATIO = 0.7  # easy-reference's filter ratio (the issue's cell)
FILTER_JEST_RATIO = 0.5  # JEST on the offline-filtered pool: the filter has removed the junk
TUNE_KEEP = 0.3  # the filtered families tune at DataComp's 30 %
# (pool, family) -> the pool whose tuned learning rate it borrows (not tuned itself); "*": every
# family. Every family of the six frontier pools is tuned on its own pool (plans tails and
# grids); only the cause experiment's pools borrow (SIZE_POOLS).
TUNE_POOL: dict[tuple[str, str], str] = {("web17k", "*"): "web", ("web8k", "*"): "web"}


def tune_pool(pool: str, family: str) -> str:
    """The pool whose learning-rate grid the family uses on `pool` (TUNE_POOL)."""
    return TUNE_POOL.get((pool, family), TUNE_POOL.get((pool, "*"), pool))
# frontiers kept at the learning rate they were run with when a later probe of the grid (issue
# 20) did better by less than the seed spread: re-running them did not fit the compute at hand.
# The probes are in the results, and the tables mark these rates (†).
KEPT_LR = {("web", "uniform"): 1e-3, ("web", "jest"): 4e-3}
# family -> (the variant its grid runs, the budget, the filter ratio (None: the pool's), keep)
FAMILIES = {
    "uniform": ("uniform", 400, None, 1.0),
    "jest": ("jest", 100, None, 1.0),
    "easy": ("easy", 200, EASY_RATIO, 1.0),
    "uniform-filtered": ("uniform", 200, None, TUNE_KEEP),
    "jest-filtered": ("jest", 100, FILTER_JEST_RATIO, TUNE_KEEP),
}

POOLS = {  # name -> (pool config, clean share)
    "default": PoolConfig(),  # 25 % mismatched, 15 % junk, 10 % near-duplicates
    "quarter": PoolConfig(mismatched_rate=0.40, junk_rate=0.25, duplicate_rate=0.10),
    "web": PoolConfig(mismatched_rate=0.50, junk_rate=0.30, duplicate_rate=0.05),
    # web's clean share, with a third of the pool near-copies of 300 clean pairs (~80 copies
    # each): LAION-2B is ~30 % near-duplicates (Webster et al. 2023), and SemDeDup removes
    # ~50 % of LAION-440M as semantic duplicates (Abbas et al. 2023)
    "redundant": PoolConfig(
        mismatched_rate=0.35, junk_rate=0.20, duplicate_rate=0.30, duplicate_sources=300
    ),
    # web's noise on a long tail of classes: concept frequencies in web image-text data fall off
    # as a power law, and zero-shot accuracy on a concept follows its frequency (Udandarao et al.
    # 2024, "No zero-shot without exponential data"); here Zipf's law, exponent 1: the k-th most
    # frequent class keeps 1/k of its images (the pool is ~1/3 of web's, every class still in it)
    "longtail": PoolConfig(
        mismatched_rate=0.50, junk_rate=0.30, duplicate_rate=0.05, class_zipf=1.0
    ),
    # web's mix with 15 of its 50 mismatched points turned into correct but vague alt-text
    # ("my new shoes": the coarse kind only), which web captions often are (Nguyen et al. 2023,
    # "Improving multimodal datasets with image captioning"); 15 % clean and detailed as web
    "vague": PoolConfig(
        mismatched_rate=0.35, junk_rate=0.30, duplicate_rate=0.05, vague_rate=0.15
    ),
    # the cause experiment (plan "cause"): web's noise on balanced classes at the long-tail
    # pool's size (17,568 pairs), and at half that, to separate the two things the long-tail
    # pool changes at once (its class distribution and its size)
    "web17k": PoolConfig(
        mismatched_rate=0.50, junk_rate=0.30, duplicate_rate=0.05, pool_size=17568
    ),
    "web8k": PoolConfig(
        mismatched_rate=0.50, junk_rate=0.30, duplicate_rate=0.05, pool_size=8784
    ),
}
# the pools of the cause experiment: no uniform frontier and no grids of their own; they borrow
# the web pool's tuned learning rates (same noise, balanced classes) through TUNE_POOL
SIZE_POOLS = ("web17k", "web8k")
# the pools that differ only in how much of them is noise: the "when JEST pays" panel plots them
# against their clean share (the others share web's 15 % and differ in kind)
NOISE_POOLS = ("default", "quarter", "web")
REFERENCES = {"default": {"steps": 300}, "strong": {"steps": 1200}}
VARIANTS = {  # name -> (the run name, ScoringConfig fields)
    "uniform": ("uniform", {}),
    "jest": ("learnability-joint", {}),
    "flexi": ("flexi-learnability-joint", {"text_token_drop": 0.0}),  # the image view only
    "flexi-text": ("flexi-learnability-joint", {"text_token_drop": 0.5}),
    "easy": ("easy_reference-independent", {}),  # the reference alone, no learner scoring
    "rho": ("learnability-independent", {}),  # RHO-LOSS's rule: learnability, independent
}
# keep < 1 runs on the pool's offline-filtered share: "uniform" there is the filter baseline,
# "jest" there is filter + JEST
UNIFORM_BUDGETS = (100, 200, 400, 800, 1600, 3200)
JEST_BUDGETS = (50, 100, 200, 400)
PLOT_BUDGET = 100  # the JEST budget run in every cell: the pool-quality plot reads it


def clean_share(pool: PoolConfig) -> float:
    """The share of the pool whose caption is right and detailed (vague captions not counted)."""
    return 1.0 - pool.mismatched_rate - pool.junk_rate - pool.duplicate_rate - pool.vague_rate


@dataclass(frozen=True)
class Run:
    """One learner run (or, with variant 'reference', one reference build)."""

    pool: str
    variant: str
    budget: int
    ratio: float = 0.8
    reference: str = "default"
    lr: float | None = None  # None: the tuned learning rate of the variant's family
    seed: int = 0
    keep: float = 1.0  # the share of the pool kept by the reference's offline filter

    @property
    def family(self) -> str:
        """Whose tuned learning rate the run uses: uniform, jest (every learnability variant),
        easy; '-filtered' on a filtered pool."""
        base = {"uniform": "uniform", "easy": "easy"}.get(self.variant, "jest")
        return base + ("-filtered" if self.keep < 1 else "")

    @property
    def method(self) -> str:
        """The method as the tables name it: 'filter 30 %', 'filter 30 % + jest', 'easy'..."""
        if self.keep == 1:
            return self.variant
        kept = f"filter {100 * self.keep:g} %"
        return kept if self.variant == "uniform" else f"{kept} + {self.variant}"

    def key(self) -> str:
        if self.variant == "reference":
            return f"reference_{self.pool}_{self.reference}"
        ratio = "-" if self.variant == "uniform" else f"{self.ratio:g}"
        keep = "" if self.keep == 1 else f"_keep{self.keep:g}"
        return (
            f"{self.pool}_{self.reference}_{ratio}_{self.variant}_{self.budget}_"
            f"lr{self.lr:g}_s{self.seed}{keep}"
        )


def ref_task(pool: str, reference: str = "default") -> Run:
    return Run(pool, "reference", REFERENCES[reference]["steps"], reference=reference)


def cells(
    pool,
    ratio,
    variants,
    reference="default",
    seeds=(0,),
    uniform_budgets=UNIFORM_BUDGETS,
    jest_budgets=JEST_BUDGETS,
    keep=1.0,
) -> list[Run]:
    """Every budget of every variant of one (pool, filter ratio, reference, keep) cell."""
    out = []
    for seed in seeds:
        for v in variants:
            budgets = uniform_budgets if v == "uniform" else jest_budgets
            out += [Run(pool, v, n, ratio, reference, None, seed, keep) for n in budgets]
    return out


def probe(pool: str, family: str, lr: float) -> Run:
    """The run of `family`'s learning-rate grid on `pool` at `lr`."""
    variant, budget, ratio, keep = FAMILIES[family]
    return Run(pool, variant, budget, ratio or TUNE_RATIO[pool], "default", lr, 0, keep)


def grid_scores(pool: str, family: str, results: dict[str, dict]) -> dict[float, float]:
    """{learning rate: final zero-shot} of the grid runs done so far."""
    pool = tune_pool(pool, family)
    done = {}
    for lr in LADDER:
        got = results.get(probe(pool, family, lr).key())
        if got is not None:
            done[lr] = got["final"]["zero_shot"]
    return done


def lr_grid(pool: str, family: str, results: dict[str, dict]) -> tuple[list[float], float | None]:
    """(the learning rates to run next, the best one once the grid is done): START first, then
    the best value's untried neighbours on LADDER, until the best has both neighbours run."""
    done = grid_scores(pool, family, results)
    missing = [lr for lr in START if lr not in done]
    if missing:
        return missing, None
    best = max(done, key=done.get)
    i = LADDER.index(best)
    todo = [LADDER[j] for j in (i - 1, i + 1) if 0 <= j < len(LADDER) and LADDER[j] not in done]
    return todo, (None if todo else best)


def tuning(pool: str, families=("uniform", "jest")) -> list[tuple[str, str]]:
    """The learning-rate grids of a pool: (pool, family) pairs, run round by round."""
    return [(pool, f) for f in families]


# the cause experiment's JEST at 800 steps, seeds 0-2, on its three pools
CAUSE_JEST_800 = [run for pool in ("web17k", "longtail", "web") for run in
                  cells(pool, 0.9, ("jest",), seeds=(0, 1, 2), jest_budgets=(800,))]  # fmt: skip
PLANS = {
    # the goals: web-like pool at filter ratio 0.9, default pool at 0.8
    "decisive": [
        [ref_task("web"), ref_task("default")],
        tuning("web") + tuning("default"),
        cells("web", 0.9, ("uniform", "flexi", "jest"))
        + cells("default", 0.8, ("uniform", "flexi", "jest"), uniform_budgets=UNIFORM_BUDGETS[:-1],
                jest_budgets=JEST_BUDGETS[:-1])
        + cells("web", 0.9, ("flexi-text",), jest_budgets=(100, 200))
        + cells("default", 0.8, ("flexi-text",), jest_budgets=(100, 200)),
    ],
    # seeds 1 and 2 of the headline cells (read against the seed-averaged uniform frontier)
    "seeds": [
        [],
        [],
        cells("web", 0.9, ("jest",), seeds=(1, 2), jest_budgets=(200,))
        + cells("web", 0.9, ("flexi",), seeds=(1, 2), jest_budgets=(100,))
        + cells("default", 0.8, ("jest", "flexi"), seeds=(1, 2), jest_budgets=(100,))
        + cells("web", 0.9, ("uniform",), seeds=(1, 2), uniform_budgets=(400,))
        + cells("default", 0.8, ("uniform",), seeds=(1, 2), uniform_budgets=(400,)),
    ],
    # the filter-ratio axis on the two pools above, at 100 steps
    "ratios": [
        [],
        [],
        cells("web", 0.8, ("flexi", "jest"), jest_budgets=(100,))
        + cells("default", 0.9, ("flexi", "jest"), jest_budgets=(100,))
        + cells("web", 0.5, ("flexi", "jest"), jest_budgets=(100,))
        + cells("default", 0.5, ("flexi", "jest"), jest_budgets=(100,)),
    ],
    # a third pool quality (25 % clean), and a reference trained 4x longer
    "axes": [
        [ref_task("quarter"), ref_task("web", "strong")],
        tuning("quarter"),
        cells("quarter", 0.8, ("uniform",), uniform_budgets=(100, 200, 800, 1600))
        + cells("quarter", 0.8, ("flexi", "jest"), jest_budgets=(100,))
        + cells("web", 0.9, ("flexi", "jest"), reference="strong", jest_budgets=(100,))
        + cells("quarter", 0.9, ("flexi",), jest_budgets=(100,))
        + cells("quarter", 0.5, ("flexi",), jest_budgets=(100,)),
    ],
    # issue 20, the web-like pool: what a user would pick instead of JEST (the reference alone,
    # its offline filter) and filter + JEST, each family's learning rate tuned off the grid's
    # edge; then 3 seeds at the issue's cells
    "payoff": [
        [ref_task("web")],
        tuning("web", ("easy", "uniform-filtered", "jest-filtered")),
        cells("web", EASY_RATIO, ("easy",), jest_budgets=(400,))
        + cells("web", 0.9, ("uniform",), uniform_budgets=(400,), keep=TUNE_KEEP)
        + cells("web", FILTER_JEST_RATIO, ("jest",), jest_budgets=(200,), keep=TUNE_KEEP)
        + cells("web", 0.9, ("flexi-text",), jest_budgets=(400,))
        + cells("web", EASY_RATIO, ("easy",), seeds=(1, 2), jest_budgets=(400,))
        + cells("web", 0.9, ("uniform",), uniform_budgets=(400,), keep=0.1)
        + cells("web", 0.9, ("uniform",), uniform_budgets=(400,), keep=0.5)
        + cells("web", 0.9, ("uniform",), uniform_budgets=(800,), keep=TUNE_KEEP)
        + cells("web", EASY_RATIO, ("easy",), jest_budgets=(100,))
        + cells("web", 0.9, ("uniform",), uniform_budgets=(100,), keep=TUNE_KEEP)
        + cells("web", FILTER_JEST_RATIO, ("jest",), jest_budgets=(400,), keep=TUNE_KEEP)
        + cells("web", EASY_RATIO, ("easy",), jest_budgets=(800,))
        + cells("web", 0.9, ("flexi-text",), seeds=(1, 2), jest_budgets=(400,)),
    ],
    # the filter's share K in {10, 50} % beside 30 %
    "filters": [
        [],
        [],
        cells("web", 0.9, ("uniform",), uniform_budgets=(400,), keep=0.1)
        + cells("web", 0.9, ("uniform",), uniform_budgets=(400,), keep=0.5)
        + cells("web", 0.9, ("uniform",), uniform_budgets=(800,), keep=0.1)
        + cells("web", 0.9, ("uniform",), uniform_budgets=(800,), keep=0.5),
    ],
    # web data's redundancy: a third of the pool is near-copies of 300 clean pairs (learning
    # rates borrowed from the web pool: TUNE_POOL)
    "redundant": [
        [ref_task("redundant")],
        [],
        cells("redundant", 0.9, ("uniform",), uniform_budgets=(400,))
        + cells("redundant", EASY_RATIO, ("easy",), jest_budgets=(200,))
        + cells("redundant", 0.9, ("flexi",), jest_budgets=(100,))
        + cells("redundant", 0.9, ("uniform",), uniform_budgets=(400,), keep=TUNE_KEEP)
        + cells("redundant", 0.9, ("uniform",), uniform_budgets=(800, 200))
        + cells("redundant", EASY_RATIO, ("easy",), jest_budgets=(400, 100))
        + cells("redundant", 0.9, ("flexi",), jest_budgets=(200, 400))
        + cells("redundant", 0.9, ("uniform",), uniform_budgets=(200, 800), keep=TUNE_KEEP)
        + cells("redundant", 0.9, ("uniform",), uniform_budgets=(100, 1600)),
    ],
    # what is left: uniform's 1600-step seeds, Flexi-JEST on the filtered pool, RHO's rule,
    # filter + JEST at the easy-reference's largest budget
    "rest": [
        [],
        [],
        cells("web", 0.9, ("uniform",), seeds=(1, 2), uniform_budgets=(1600,))
        + cells("web", FILTER_JEST_RATIO, ("jest",), jest_budgets=(800,), keep=TUNE_KEEP)
        + cells("web", 0.9, ("rho",), jest_budgets=(100, 200))
        + cells("web", FILTER_JEST_RATIO, ("flexi",), jest_budgets=(100, 200), keep=TUNE_KEEP),
    ],
    # web data's other structure: a long tail of classes and vague captions. Every method on
    # both, the decisive budgets first (each pool: its own reference, uniform's and JEST's grids)
    "tails": [
        [ref_task("longtail"), ref_task("vague")],
        tuning("longtail", tuple(FAMILIES)) + tuning("vague", tuple(FAMILIES)),
        [run for pool in ("longtail", "vague") for run in (
            cells(pool, 0.9, ("uniform",), uniform_budgets=(400, 800, 1600))
            + cells(pool, 0.9, ("uniform",), uniform_budgets=(400,), keep=TUNE_KEEP)
            + cells(pool, EASY_RATIO, ("easy",), jest_budgets=(400,))
            + cells(pool, FILTER_JEST_RATIO, ("jest",), jest_budgets=(400,), keep=TUNE_KEEP)
            + cells(pool, 0.9, ("flexi-text",), jest_budgets=(200, 400))
            + cells(pool, 0.9, ("jest",), jest_budgets=(100, 200))
        )]
        + [run for pool in ("longtail", "vague") for run in (
            cells(pool, 0.9, ("uniform",), uniform_budgets=(100, 200))
            + cells(pool, 0.9, ("uniform",), uniform_budgets=(200, 800), keep=TUNE_KEEP)
            + cells(pool, EASY_RATIO, ("easy",), jest_budgets=(200, 800))
            + cells(pool, FILTER_JEST_RATIO, ("jest",), jest_budgets=(200,), keep=TUNE_KEEP)
            + cells(pool, 0.9, ("flexi-text",), jest_budgets=(100,))
        )],
    ],
    # the long-tail and vague pools' decisive cells with seeds 1 and 2; on the long tail, where
    # the reference-only methods stop gaining past 400 steps, the learnability methods further
    "tails-seeds": [
        [],
        [],
        cells("longtail", FILTER_JEST_RATIO, ("jest",), jest_budgets=(800,), keep=TUNE_KEEP)
        + cells("longtail", 0.9, ("jest",), jest_budgets=(400,))
        + [run for pool in ("longtail", "vague") for run in (
            cells(pool, EASY_RATIO, ("easy",), seeds=(1, 2), jest_budgets=(400,))
            + cells(pool, 0.9, ("uniform",), seeds=(1, 2), uniform_budgets=(400,), keep=TUNE_KEEP)
            + cells(pool, FILTER_JEST_RATIO, ("jest",), seeds=(1, 2), jest_budgets=(400,),
                    keep=TUNE_KEEP)
        )]
        + cells("longtail", 0.9, ("jest",), seeds=(1, 2), jest_budgets=(200,))
        + cells("longtail", 0.9, ("jest",), seeds=(1, 2), jest_budgets=(400,)),
    ],
    # the reference-only families' learning rates tuned on the redundant, default and quarter
    # pools too, uniform's and JEST's on the redundant pool (each borrowed the web pool's), and
    # their cells run again at those rates
    "grids": [
        [],
        [(pool, family) for pool in ("redundant", "default", "quarter")
         for family in ("easy", "uniform-filtered")]
        + tuning("redundant"),
        [run for pool, ratio in (("default", 0.8), ("quarter", 0.8)) for run in (
            cells(pool, ratio, ("uniform",), uniform_budgets=(200, 400), keep=TUNE_KEEP)
            + cells(pool, EASY_RATIO, ("easy",), jest_budgets=(200,))
        )]
        + cells("redundant", 0.9, ("uniform",), uniform_budgets=(200, 400, 800), keep=TUNE_KEEP)
        + cells("redundant", EASY_RATIO, ("easy",), jest_budgets=(100, 200, 400))
        + cells("redundant", 0.9, ("uniform",), uniform_budgets=(200, 400, 800, 1600, 100))
        + cells("redundant", 0.9, ("flexi",), jest_budgets=(100, 200, 400)),
    ],
    # issue 27's cause experiment: is the reference-only methods' plateau on the long-tail pool
    # its long tail or its size (a 30 % filter of 17,568 pairs is revisited ~19 times in 800
    # steps, against ~6 times on the web pool)? The filter, easy-reference and JEST at 400 and
    # 800 steps, seeds 0-2, on a balanced pool of the long-tail pool's size beside the long-tail
    # and web pools; the reference-only cells first (they carry the question), JEST-800 last
    "cause": [
        [ref_task("web17k")],  # the others' folders are rebuilt when first needed
        [],
        [run for seeds in ((0,), (1, 2)) for run in (
            cells("web17k", 0.9, ("uniform",), seeds=seeds, uniform_budgets=(400, 800),
                    keep=TUNE_KEEP)
            + cells("web17k", EASY_RATIO, ("easy",), seeds=seeds, jest_budgets=(800, 400))
            + cells("web17k", 0.9, ("jest",), seeds=seeds, jest_budgets=(400,))
        )]
        + [run for pool in ("longtail", "web") for run in (
            cells(pool, EASY_RATIO, ("easy",), seeds=(1, 2), jest_budgets=(800,))
            + cells(pool, 0.9, ("uniform",), seeds=(1, 2), uniform_budgets=(800,),
                    keep=TUNE_KEEP)
        )]
        + cells("web", 0.9, ("uniform",), seeds=(1, 2), uniform_budgets=(400,), keep=TUNE_KEEP)
        + cells("web", 0.9, ("jest",), seeds=(1, 2), jest_budgets=(400,))
        + CAUSE_JEST_800,
    ],
    # the cause experiment's second size: half the long-tail pool's, the reference-only cells
    "cause-8k": [
        [ref_task("web8k")],
        [],
        cells("web8k", EASY_RATIO, ("easy",), seeds=(0, 1, 2), jest_budgets=(400, 800))
        + cells("web8k", 0.9, ("uniform",), seeds=(0, 1, 2), uniform_budgets=(400, 800),
                keep=TUNE_KEEP)
        + cells("web8k", 0.9, ("jest",), seeds=(0,), jest_budgets=(400,)),
    ],
    # the last grids left open: JEST's on the default pool, uniform's on the quarter pool
    "close": [
        [],
        [("default", "jest"), ("quarter", "uniform")],
        cells("quarter", 0.8, ("uniform",), uniform_budgets=(100, 200, 800, 1600)),
    ],
    # the reference-only baselines on the default (50 % clean) and quarter pools, at the web
    # pool's tuned rates (TUNE_POOL)
    "pools": [
        [ref_task("default"), ref_task("quarter")],
        [],
        cells("default", 0.8, ("uniform",), uniform_budgets=(200,), keep=TUNE_KEEP)
        + cells("quarter", 0.8, ("uniform",), uniform_budgets=(200,), keep=TUNE_KEEP)
        + cells("default", EASY_RATIO, ("easy",), jest_budgets=(200,))
        + cells("quarter", EASY_RATIO, ("easy",), jest_budgets=(200,))
        + cells("default", 0.8, ("uniform",), uniform_budgets=(400,), keep=TUNE_KEEP)
        + cells("quarter", 0.8, ("uniform",), uniform_budgets=(400,), keep=TUNE_KEEP),
    ],
}
# the cause experiment without its JEST-800 cells (the costliest, last in "cause")
PLANS["cause-seeds"] = [PLANS["cause"][0], [],
                        [r for r in PLANS["cause"][2] if r not in CAUSE_JEST_800]]  # fmt: skip


# -- the run cache ----------------------------------------------------------------------------
def result_path(run: Run) -> Path:
    return RUNS / f"{run.key()}.json"


def load_results() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))}


def reported_lr(run: Run, results: dict[str, dict]) -> tuple[float | None, bool]:
    """(the learning rate whose runs the summary reports, whether its grid is done): the best
    so far where the grid is not done (the table marks it), None before START is run."""
    best = lr_grid(run.pool, run.family, results)[1]
    kept = KEPT_LR.get((tune_pool(run.pool, run.family), run.family))
    if kept is not None:
        return kept, best == kept
    if best is not None:
        return best, True
    done = grid_scores(run.pool, run.family, results)
    if any(lr not in done for lr in START):
        return None, False
    return max(done, key=done.get), False


def tuned_lr(run: Run, results: dict[str, dict]) -> float | None:
    """The best learning rate of the grid of this run's pool and family (FAMILIES: each grid is
    run at one budget, filter ratio and keep with the default reference), or None while the
    grid is not done; KEPT_LR where it names the family."""
    kept = KEPT_LR.get((tune_pool(run.pool, run.family), run.family))
    return kept if kept is not None else lr_grid(run.pool, run.family, results)[1]


def _claim(path: Path) -> bool:
    """Take the lock file of a run (stale locks of dead processes are taken over)."""
    lock = path.with_suffix(".lock")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(lock.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):
            lock.unlink(missing_ok=True)
            return _claim(path)
        except PermissionError:
            return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


# -- running one task ---------------------------------------------------------------------------
def learner_config(run: Run) -> TrainConfig:
    """The training configuration of a learner run (benchmarks/timing.py times the same)."""
    name, scoring = VARIANTS[run.variant]
    base = TrainConfig().with_name(name)
    return replace(
        base,
        selection=replace(base.selection, filter_ratio=run.ratio),
        scoring=replace(base.scoring, **scoring),
        training=replace(
            base.training,
            steps=run.budget,
            lr=run.lr,
            seed=run.seed,
            warmup_steps=min(20, run.budget // 5),
            eval_every=None,  # each budget is one final point of the frontier
            checkpoint_every=200,
        ),
    )


class Worker:
    """Runs tasks in one process, keeping each pool's data in memory."""

    def __init__(self, work: Path, limit: int | None):
        self.work, self.limit = work, limit
        self.data: dict[tuple, CaptionData] = {}

    def pool_data(self, pool: str, keep: float = 1.0, ref_dir: Path | None = None) -> CaptionData:
        """The pool's data; keep < 1: only the share keep that the reference at ref_dir scores
        highest (the offline filter)."""
        if (pool, 1.0, None) not in self.data:
            self.data[pool, 1.0, None] = prepare_caption_data(
                replace(POOLS[pool], limit=self.limit)
            )
        if (pool, keep, ref_dir) not in self.data:
            whole = self.data[pool, 1.0, None]
            self.data[pool, keep, ref_dir] = filter_pool(whole, ref_dir, keep, "sigmoid")
        return self.data[pool, keep, ref_dir]

    def ref_dir(self, run: Run) -> Path:
        return self.work / f"reference_{run.pool}_{run.reference}"

    def reference(self, run: Run) -> dict:
        data = self.pool_data(run.pool)
        start = time.perf_counter()
        config = replace(reference_training(), **REFERENCES[run.reference])
        info = train_reference(data, ModelConfig(), config, "sigmoid", self.ref_dir(run),
                               evaluate=evaluator(data), progress=False,
                               overwrite=True)  # fmt: skip
        return {"run": asdict(run), **info, "wall_seconds": time.perf_counter() - start}

    def learner(self, run: Run) -> dict:
        config = learner_config(run)
        uses_reference = config.policy.uses_reference or run.keep < 1
        ref_dir = self.ref_dir(run) if uses_reference else None
        if ref_dir is not None and not (ref_dir / "reference.json").exists():
            try:  # a cached result whose folder is not here: rebuilt
                self.reference(ref_task(run.pool, run.reference))
            except RunDirError:  # another worker is rebuilding it: wait for its folder
                deadline = time.monotonic() + 1800
                while not (ref_dir / "reference.json").exists():
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(5)
        data = self.pool_data(run.pool, run.keep, ref_dir if run.keep < 1 else None)
        out = self.work / run.key()  # a killed run resumes from its checkpoint
        result = train_learner(data, ModelConfig(), config, ref_dir, out,
                               resume=(out / "checkpoint.pt").exists(), progress=False)  # fmt: skip
        result.pop("config")
        return {"run": asdict(run), "config": asdict(config), **result,
                "kept": None if data.kept is None else len(data.kept),
                "total_flops": sum(result["flops"].values())}  # fmt: skip


def phase_tasks(plan: str, phase: int) -> list[Run]:
    """The runs of a phase; for the tuning phase, the next round of every grid not done."""
    if phase != 1:
        return PLANS[plan][phase]
    results = load_results()
    return [probe(pool, family, lr) for pool, family in PLANS[plan][1]
            for lr in lr_grid(pool, family, results)[0]]  # fmt: skip


def _done(run: Run, path: Path, worker: Worker) -> bool:
    """Whether the run's result is cached; a reference's also needs its folder under --work (a
    fresh checkout has the results but not the folders, which its learners read): a missing
    one is rebuilt (training is seeded) and the cached result kept."""
    if not path.exists():
        return False
    return run.variant != "reference" or (worker.ref_dir(run) / "reference.json").exists()


def work(plan: str, phase: int, worker_id: int, args) -> None:
    torch.set_num_threads(1)
    worker = Worker(Path(args.work), args.limit)
    for run in phase_tasks(plan, phase):
        results = load_results()
        if run.variant != "reference" and run.lr is None:
            lr = tuned_lr(run, results)
            if lr is None:
                print(f"[{worker_id}] skip {run.key()}: its learning-rate grid is not done")
                continue
            run = replace(run, lr=lr)
        path = result_path(run)
        if _done(run, path, worker) or not _claim(path):
            continue
        try:
            start = time.perf_counter()
            print(f"[{worker_id}] {run.key()} ...", flush=True)
            out = worker.reference(run) if run.variant == "reference" else worker.learner(run)
            if path.exists():  # a cached reference rebuilt for its folder: the result is kept
                cached = json.loads(path.read_text())["model_fingerprint"]
                if cached != out["model_fingerprint"]:
                    print(f"[{worker_id}] warning: {run.key()} rebuilt with other weights than "
                          "its cached result's (its learners use the rebuilt one)", flush=True)
                continue
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(out, indent=1))
            os.replace(tmp, path)
            acc = out["final"].get("zero_shot", float("nan"))
            print(f"[{worker_id}] {run.key()}: zero-shot {acc:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
        finally:
            path.with_suffix(".lock").unlink(missing_ok=True)


def run_plan(args) -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    for phase in range(len(PLANS[args.plan])):
        for round_ in range(len(LADDER)):  # the tuning phase runs until every grid is done
            tasks = phase_tasks(args.plan, phase)
            if not tasks:
                break
            print(
                f"plan {args.plan}, phase {phase}, round {round_}: {len(tasks)} tasks", flush=True
            )
            cmd = [
                sys.executable,
                __file__,
                "work",
                "--plan",
                args.plan,
                "--phase",
                str(phase),
                "--work",
                args.work,
            ] + (["--limit", str(args.limit)] if args.limit else [])
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            procs = [
                subprocess.Popen([*cmd, "--worker", str(i)], env=env) for i in range(args.workers)
            ]
            codes = [p.wait() for p in procs]
            if any(codes):
                sys.exit(f"a worker failed in phase {phase}: exit codes {codes}")
            if phase != 1:
                break
    summary(args)


# -- the summary --------------------------------------------------------------------------------
def _spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def _combine(speedups: list[Speedup]) -> dict:
    """Mean and spread over seeds; the bound is kept when any seed's value is a bound."""
    bounds = {s.bound for s in speedups}
    bound = ">" if ">" in bounds else "<" if "<" in bounds else "="
    return {**_spread([s.value for s in speedups]), "bound": bound}


def _text(s: dict) -> str:
    prefix = "" if s["bound"] == "=" else s["bound"] + " "
    spread = f" ± {s['std']:.2f}" if s["n"] > 1 else ""
    return f"{prefix}{s['mean']:.2f}×{spread}"


def summarise(results: dict[str, dict]) -> dict:
    refs = {k: v for k, v in results.items() if v["run"]["variant"] == "reference"}
    learners = [v for v in results.values() if v["run"]["variant"] != "reference"]
    chosen: dict[tuple, list[dict]] = {}
    for r in learners:
        run = Run(**r["run"])
        lr, tuned = reported_lr(run, results)
        if run.lr != lr:
            continue  # a learning-rate probe that lost
        r = {**r, "lr_tuned": tuned}
        cell = (run.pool, run.reference, run.ratio if run.variant != "uniform" else None, run.keep)
        chosen.setdefault(cell, []).append(r)
    rows = []
    for (pool, reference, ratio, keep), rs in sorted(chosen.items(), key=str):
        if ratio is None and keep == 1:
            continue  # uniform on the raw pool: the frontier itself
        uniform = chosen.get((pool, "default", None, 1.0), [])
        if not uniform:
            continue
        ref = refs.get(f"reference_{pool}_{reference}")
        ref_flops = ref["train_flops"] + ref["cache_flops"] if ref else 0
        frontiers = {c: uniform_frontier(uniform, c) for c in COSTS}
        by_variant_budget: dict[tuple, list[dict]] = {}
        for r in rs:
            by_variant_budget.setdefault((r["run"]["variant"], r["run"]["budget"]), []).append(r)
        for (variant, budget), group in sorted(by_variant_budget.items()):
            acc = [r["final"]["zero_shot"] for r in group]

            def ups(cost, extra=0.0, group=group, frontiers=frontiers):
                return _combine([
                    speedup(frontiers[cost], r["final"]["zero_shot"], run_cost(r, cost) + extra)
                    for r in group
                ])

            total = statistics.fmean(r["total_flops"] for r in group)
            scoring = statistics.fmean(r["flops"]["learner_score"] for r in group)
            rows.append(
                {
                    "pool": pool,
                    "clean_share": clean_share(POOLS[pool]),
                    "reference": reference,
                    "ratio": ratio,
                    "keep": keep,
                    "variant": variant,
                    "method": Run(pool, variant, budget, ratio or 0.9, keep=keep).method,
                    "budget": budget,
                    "lr": group[0]["run"]["lr"],
                    "lr_tuned": group[0]["lr_tuned"],
                    "zero_shot": _spread(acc),
                    "speedup_flops": ups("flops"),
                    "speedup_steps": ups("steps"),
                    "speedup_seconds": ups("seconds"),
                    "speedup_flops_with_reference": ups("flops", extra=ref_flops),
                    "scoring_share": scoring / total,
                    "total_tflops": total / 1e12,
                    "reference_tflops": ref_flops / 1e12,
                }
            )
    frontier_rows = []
    for (pool, _, ratio, keep), rs in sorted(chosen.items(), key=str):
        if ratio is None and keep == 1:
            for budget, acc, tflops in (
                (int(s), a, f / 1e12)
                for (s, a), (f, _) in zip(uniform_frontier(rs, "steps"),
                                          uniform_frontier(rs, "flops"), strict=True)
            ):
                frontier_rows.append(
                    {
                        "pool": pool,
                        "budget": budget,
                        "zero_shot": acc,
                        "total_tflops": tflops,
                        "lr": rs[0]["run"]["lr"],
                        "lr_tuned": rs[0]["lr_tuned"],
                    }
                )
    return {
        "rows": rows,
        "uniform": frontier_rows,
        "references": {
            k: {f: v[f] for f in ("train_flops", "cache_flops", "final")} for k, v in refs.items()
        },
    }


def _method_text(r: dict) -> str:
    strong = "*" if r["reference"] != "default" else ""
    return r["method"] + strong + ("" if r["lr_tuned"] else " †")


def _ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:g}"


def table(summary: dict) -> str:
    lines = ["uniform's frontier (final zero-shot per budget, each its own schedule):"]
    for u in summary["uniform"]:
        lines.append(
            f"  {u['pool']:<8} {u['budget']:>5} steps  {u['zero_shot']:.4f}  "
            f"{u['total_tflops']:7.2f} TFLOPs  (lr {u['lr']:g}{'' if u['lr_tuned'] else ' †'})"
        )
    head = (
        f"{'pool':<10}{'clean':>6} {'ratio':>5} {'method':<20}{'steps':>6} {'zero-shot':>16} "
        f"{'× FLOPs':>16} {'× steps':>16} {'× wall':>16} {'× FLOPs+ref':>14} {'score%':>7}"
    )
    lines += ["", head, "-" * len(head)]
    for r in summary["rows"]:
        z = r["zero_shot"]
        acc = f"{z['mean']:.4f}" + (f" ± {z['std']:.3f}" if z["n"] > 1 else "")
        lines.append(
            f"{r['pool']:<10}{r['clean_share']:>6.0%} {_ratio(r['ratio']):>5} "
            f"{_method_text(r):<20}"
            f"{r['budget']:>6} {acc:>16} {_text(r['speedup_flops']):>16} "
            f"{_text(r['speedup_steps']):>16} {_text(r['speedup_seconds']):>16} "
            f"{_text(r['speedup_flops_with_reference']):>14} {100 * r['scoring_share']:>6.1f}%"
        )
    lines.append(
        "× = uniform's cost to reach the same final accuracy on its frontier / the run's "
        "own; '>' uniform never got there (a lower bound), '<' its smallest budget "
        "already did. ± = spread over seeds. * = strong reference. +ref: the "
        "reference's training and cache charged in full to this one run. † = the learning "
        "rate's grid is not done (its best value so far sits at the grid's edge)."
    )
    return "\n".join(lines)


def _panels(n: int, max_cols: int, width: float, height: float):
    """(figure, its first n axes) on a grid of at most max_cols columns, the unused axes hidden;
    each panel width x height inches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(max_cols, n)
    rows = -(-n // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _pool_panel(ax, pool: str, xlabel: str, legend_size: float) -> None:
    """One pool's panel: accuracy against log cost, titled with the pool's clean share."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final zero-shot top-1 (test)")
    ax.set_title(f"{pool} pool ({clean_share(POOLS[pool]):.0%} clean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(summary: dict, path: Path) -> None:
    import matplotlib.ticker

    pools = sorted({u["pool"] for u in summary["uniform"]})
    fig, axes = _panels(len(pools) + 1, 4, 5, 4.2)  # a panel per pool, then "when JEST pays"
    for ax, pool in zip(axes, pools, strict=False):
        u = [x for x in summary["uniform"] if x["pool"] == pool]
        ax.plot([x["total_tflops"] for x in u], [x["zero_shot"] for x in u], "k-o", ms=3,
                label="uniform")
        for variant in ("jest", "flexi", "flexi-text"):
            ratios = {r["ratio"] for r in summary["rows"] if r["pool"] == pool and r["keep"] == 1}
            for ratio in sorted(ratios):
                rs = [
                    r
                    for r in summary["rows"]
                    if r["pool"] == pool
                    and r["variant"] == variant
                    and r["ratio"] == ratio and r["keep"] == 1
                    and r["reference"] == "default"
                ]
                if rs:
                    ax.plot([r["total_tflops"] for r in rs], [r["zero_shot"]["mean"] for r in rs],
                            "-o", ms=3, label=f"{variant} f={ratio:g}")
        _pool_panel(ax, pool, "total TFLOPs (training + scoring), log", 7)
    ax = axes[-1]
    for variant in ("flexi", "jest"):
        for ratio in (0.5, 0.8, 0.9):
            pts = {
                r["clean_share"]: r["speedup_flops"]
                for r in summary["rows"]
                if r["variant"] == variant
                and r["ratio"] == ratio and r["keep"] == 1
                and r["reference"] == "default"
                and r["budget"] == PLOT_BUDGET
                and r["pool"] in NOISE_POOLS  # one pool per clean share
            }
            if pts:
                xs = sorted(pts)
                line = ax.plot([100 * x for x in xs], [pts[x]["mean"] for x in xs],
                               "-" if variant == "flexi" else "--", label=f"{variant} f={ratio:g}")
                for x in xs:  # a triangle: uniform never got there, the value is a lower bound
                    ax.plot(100 * x, pts[x]["mean"], "^" if pts[x]["bound"] == ">" else "o",
                            color=line[0].get_color(), ms=5)
    ax.axhline(1.0, color="grey", lw=1)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g×"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g×"))
    ax.set_xlabel("clean share of the pool (%)")
    ax.set_ylabel(f"× fewer total FLOPs than uniform, {PLOT_BUDGET}-step runs")
    ax.set_title("when JEST pays, noise-only pools (▲: lower bound)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


# -- what a user would pick instead: every method on total cost, the reference included -------
LEARNABILITY = ("jest", "flexi", "flexi-text", "rho")  # the learner scores; the rest don't


def method_name(run: Run) -> str:
    return run.method + ("" if run.variant == "uniform" else f" f={run.ratio:g}")


def method_kind(run: Run) -> str:
    """'uniform' (raw pool), 'reference only' (easy-reference, the offline filter) or
    'learnability' (the learner scores: JEST, Flexi-JEST, RHO, and filter + any of them)."""
    if run.variant in LEARNABILITY:
        return "learnability"
    return "uniform" if run.keep == 1 and run.variant == "uniform" else "reference only"


def payoff(results: dict[str, dict]) -> dict:
    """Per pool, every method's frontier with its cost columns (jestkit.payoff.costs: training,
    learner scoring, the reference's training and pass over the pool, total), the total FLOPs
    each method needs to reach each method's largest-budget accuracy, and the issue's goal: the
    best learnability method's cost to reach the best reference-only accuracy."""
    refs = {k: v for k, v in results.items() if v["run"]["variant"] == "reference"}
    groups: dict[tuple, dict[int, list[dict]]] = {}
    info: dict[tuple, dict] = {}
    for r in results.values():
        run = Run(**r["run"])
        if run.variant == "reference" or run.reference != "default":
            continue
        lr, tuned = reported_lr(run, results)
        if run.lr != lr:
            continue
        uses_reference = run.variant != "uniform" or run.keep < 1
        ref = refs.get(ref_task(run.pool).key()) if uses_reference else None
        if uses_reference and ref is None:
            continue  # its reference's costs are not in the results
        key = (run.pool, method_name(run))
        groups.setdefault(key, {}).setdefault(run.budget, []).append(
            {"zero_shot": r["final"]["zero_shot"], **cost_columns(r, ref)})
        info[key] = {"kind": method_kind(run), "lr": lr, "lr_tuned": tuned, "keep": run.keep}
    pools: dict[str, dict] = {}
    for (pool, name), budgets in sorted(groups.items()):
        points = []
        for budget, rs in sorted(budgets.items()):
            point = {"budget": budget, "zero_shot": _spread([x["zero_shot"] for x in rs])}
            point |= {c: statistics.fmean(x[c] for x in rs) / 1e12 for c in (*COLUMNS, "total")}
            points.append(point)
        pools.setdefault(pool, {})[name] = {**info[pool, name], "points": points}
    for pool, methods in pools.items():
        finals = {n: m["points"][-1]["zero_shot"]["mean"] for n, m in methods.items()}
        targets = sorted({round(a, 3) for a in finals.values()})
        for m in methods.values():
            for cost, reach in (("total", "reach"), ("learner", "reach_amortised")):
                front = [(_cost(p, cost), p["zero_shot"]["mean"]) for p in m["points"]]
                m[reach] = {f"{t:.3f}": cost_to_reach(front, t) for t in targets}
        pools[pool] = {"methods": methods, "targets": targets,
                       "goal": _goal(methods, finals, "total"),
                       "goal_amortised": _goal(methods, finals, "learner")}  # fmt: skip
    return pools


def _cost(point: dict, cost: str) -> float:
    """A frontier point's total TFLOPs, or the learner's alone (training + scoring: the
    reference amortised over many runs)."""
    return point["total"] if cost == "total" else point["train"] + point["learner_score"]


def _goal(methods: dict, finals: dict, cost: str) -> dict | None:
    """The best reference-only method's largest-budget accuracy, its cost to reach it, and each
    learnability method's cost to reach it (None: no reference-only method in the pool)."""
    ref_only = [n for n, m in methods.items() if m["kind"] == "reference only"]
    if not ref_only:
        return None
    best = max(ref_only, key=finals.get)
    target = finals[best]

    def reach(m):
        return cost_to_reach([(_cost(p, cost), p["zero_shot"]["mean"]) for p in m["points"]],
                             target)  # fmt: skip

    spent, _ = reach(methods[best])
    learners = {}
    for n, m in methods.items():
        if m["kind"] == "learnability":
            c, bound = reach(m)
            learners[n] = {"tflops": c, "bound": bound,
                           "saving": spent / c if bound != ">" else None}  # fmt: skip
    return {"reference_only": best, "accuracy": target, "tflops": spent, "learnability": learners}


def _reach_text(cost: float, bound: str) -> str:
    return {"=": f"{cost:.2f}", "<": f"≤{cost:.2f}", ">": "–"}[bound]


def payoff_table(pools: dict) -> str:
    lines = ["", "What a user would pick instead (issue 20): each method's frontier, total "
             "TFLOPs = training + learner scoring + the reference (its training and its pass "
             "over the pool, charged in full)."]  # fmt: skip
    for pool, p in pools.items():
        head = (f"{'method':<28}{'kind':<15}{'lr':>8}{'steps':>6}{'zero-shot':>17}{'train':>8}"
                f"{'score':>8}{'ref':>7}{'total':>8}")  # fmt: skip
        lines += ["", f"{pool} pool ({clean_share(POOLS[pool]):.0%} clean)", head, "-" * len(head)]
        for name, m in sorted(p["methods"].items(), key=lambda x: (x[1]["kind"], x[0])):
            lr = f"{m['lr']:g}" + ("" if m["lr_tuned"] else "†")
            for q in m["points"]:
                z = q["zero_shot"]
                acc = f"{z['mean']:.4f}" + (f" ± {z['std']:.3f}" if z["n"] > 1 else "")
                lines.append(f"{name:<28}{m['kind']:<15}{lr:>8}{q['budget']:>6}{acc:>17}"
                             f"{q['train']:>8.2f}{q['learner_score']:>8.2f}{q['reference']:>7.2f}"
                             f"{q['total']:>8.2f}")  # fmt: skip
        for reach, title in (("reach", "total TFLOPs to reach"),
                             ("reach_amortised", "learner TFLOPs to reach")):  # fmt: skip
            head = f"{title:<28}" + "".join(f"{t:>8.3f}" for t in p["targets"])
            lines += ["", head, "-" * len(head)]
            for name, m in sorted(p["methods"].items(), key=lambda x: (x[1]["kind"], x[0])):
                cells = "".join(f"{_reach_text(*m[reach][f'{t:.3f}']):>8}" for t in p["targets"])
                lines.append(f"{name:<28}{cells}")
        for key, what in (("goal", "total"), ("goal_amortised", "learner")):
            goal = p[key]
            if not goal:
                continue
            best = [(n, g) for n, g in goal["learnability"].items() if g["saving"] is not None]
            line = (f"goal ({what} TFLOPs): the best reference-only run, "
                    f"{goal['reference_only']}, reaches {goal['accuracy']:.4f} with "
                    f"{goal['tflops']:.2f}; ")
            if best:
                n, g = max(best, key=lambda x: x[1]["saving"])
                line += (f"the cheapest learnability method to reach it, {n}, spends "
                         f"{_reach_text(g['tflops'], g['bound'])}: ratio {g['saving']:.2f} "
                         f"(the issue's goal: >= 2)")
            else:
                line += "no learnability method reached it"
            lines.append(line)
    lines.append("'–': never reached on that method's frontier; '≤': its smallest budget already "
                 "did. learner TFLOPs: training + learner scoring, the reference amortised away. "
                 "† = learning rate kept although its grid is not done (KEPT_LR).")
    return "\n".join(lines)


def plot_payoff(pools: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = _panels(len(pools), 3, 6.5, 5)
    styles = {"uniform": "-o", "reference only": "--s", "learnability": "-o"}
    colours = plt.get_cmap("tab20").colors
    for ax, (pool, p) in zip(axes, pools.items(), strict=True):
        methods = sorted(p["methods"].items(), key=lambda x: (x[1]["kind"], x[0]))
        for i, (name, m) in enumerate(methods):
            xs = [q["total"] for q in m["points"]]
            ys = [q["zero_shot"]["mean"] for q in m["points"]]
            colour = "k" if m["kind"] == "uniform" else colours[i % len(colours)]
            ax.plot(xs, ys, styles[m["kind"]], ms=3, color=colour, label=name)
        _pool_panel(ax, pool,
                    "total TFLOPs incl. the reference's training and pass over the pool, log", 6)
    _save(fig, path)


def summary(args) -> None:
    results = load_results()
    s = summarise(results)
    s["payoff"] = payoff(results)
    text = table(s) + "\n" + payoff_table(s["payoff"])
    if s["payoff"]:
        plot_payoff(s["payoff"], RESULTS / "payoff.png")
    (RESULTS / "frontier.json").write_text(json.dumps({"summary": s, "runs": results}, indent=1))
    (RESULTS / "frontier.txt").write_text(text + "\n")
    if s["rows"]:
        plot(s, RESULTS / "frontier.png")
    print(text)
    print(f"\n{len(results)} runs; wrote {RESULTS / 'frontier.json'}, frontier.txt, frontier.png, "
          "payoff.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("command", choices=("run", "work", "summary"))
    p.add_argument("--plan", choices=sorted(PLANS), default="decisive")
    p.add_argument("--workers", type=int, default=2, help="processes, one thread each")
    p.add_argument("--work", default="runs/frontier", help="references and checkpoints")
    p.add_argument("--limit", type=int, default=None, help="first LIMIT images only (tests)")
    p.add_argument("--phase", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.command == "run":
        run_plan(args)
    elif args.command == "work":
        work(args.plan, args.phase, args.worker, args)
    else:
        summary(args)


if __name__ == "__main__":
    main()
