"""Which method to run on a pool for a compute budget: the plan's rules (pure, no I/O).

Every method is set to spend the budget: its steps are what is left of the budget, after the
reference (its training and its pass over the pool, for every method that uses it), over its
FLOPs per step. Then, in order:

1. Uniform or a reference? Uniform spends all of the budget on training but wastes the share
   of its steps that lands on noise (1 - the pool's matched share); the other methods waste
   none of theirs on noise (nearly) but spend the reference's share of the budget (R / C) on it.
   Uniform when 1 - matched < R / C. No constant: both sides are measured.
2. Which reference method? A static filter keeps a fixed share of the pool; a run that revisits
   it many times stops gaining (the frontier: the reference-only methods' gain from 400 to 800
   steps stops where the kept share is revisited ~10-20 times; see docs/plan.md), while a
   method that selects online from the whole pool keeps finding new examples. So by how many
   times the budget-spending filter run would revisit the share it keeps:
   below `easy_revisits`: the filter (cheapest, and best while its share is fresh);
   below `past_plateau` x `stop_revisits`: easy-reference (the reference alone picks online,
   nothing per step), which gains until about `stop_revisits`;
   above: JEST (the learner's learnability keeps changing as it learns): the reference-only
   methods would spend more than half of the budget (past_plateau 2) past where they stop.
   easy_revisits and stop_revisits are fitted on frontier runs (`fit_threshold`); the
   benchmark refits them leaving out the pool it judges. past_plateau is set, not fitted.
3. Where a measured quantity is within `margin` of its threshold, the measurements cannot
   decide: the two methods either side are named for pilots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from jestkit.engine.config import TrainConfig

# the methods the plan can recommend, with what they run: (policy run name, filter ratio, keep)
METHODS = {
    "uniform": ("uniform", None, None),
    "filter": ("uniform", None, 0.3),
    "easy": ("easy_reference-independent", 0.7, None),
    "jest": ("learnability-joint", 0.9, None),
    "filter+jest": ("learnability-joint", 0.5, 0.3),
}


def method_config(base: TrainConfig, name: str, steps: int | None = None) -> TrainConfig:
    """The training settings of method `name` (METHODS): base's, with its policy, method and
    filter ratio, and `steps` when given."""
    policy, ratio, _ = METHODS[name]
    config = base.with_name(policy)
    if ratio is not None:
        config = replace(config, selection=replace(config.selection, filter_ratio=ratio))
    if steps is not None:
        config = replace(config, training=replace(config.training, steps=steps))
    return config


@dataclass(frozen=True)
class PlanRules:
    """The plan's constants.

    Attributes:
        easy_revisits: filter revisits above which easy-reference beats the filter
        stop_revisits: filter revisits where the reference-only methods stop gaining
        past_plateau: JEST when the budget-spending filter run would revisit its share more
            than this many times stop_revisits
        margin: within this relative distance of a threshold the measurements cannot decide
            (rule 1: |R/C - (1 - matched)| < margin; rule 2: revisits within a factor
            1 + margin of a threshold)
    """

    easy_revisits: float = 5.3
    stop_revisits: float = 10.5
    past_plateau: float = 2.0
    margin: float = 0.05

    def __post_init__(self):
        if min(self.easy_revisits, self.stop_revisits) <= 0 or self.past_plateau < 1:
            raise ValueError(f"need easy_revisits > 0, stop_revisits > 0 and past_plateau >= 1, "
                             f"got {self.easy_revisits}, {self.stop_revisits}, "
                             f"{self.past_plateau}")  # fmt: skip
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")

    @property
    def jest_revisits(self) -> float:
        """Filter revisits above which JEST is recommended."""
        return max(self.easy_revisits, self.past_plateau * self.stop_revisits)


@dataclass(frozen=True)
class MethodCost:
    """FLOPs per step of a method (training and the learner's scoring), whether it uses the
    reference (whose cost is then charged to it in full), what else it costs once before its
    steps (`fixed`, FLOPs: on shards, the reference's pass over the filter's kept shards for
    filter + JEST), and a step's seconds on this machine (jestkit.plan.costs)."""

    train: float
    score: float = 0.0
    uses_reference: bool = False
    fixed: float = 0.0
    seconds: dict[str, float] | None = None  # a step's {"cpu", "wall"} seconds, measured

    @property
    def per_step(self) -> float:
        return self.train + self.score


@dataclass(frozen=True)
class Setting:
    """A method at the steps that spend the budget."""

    method: str
    steps: int
    flops: float  # total: the steps, plus the reference where it uses one
    filter_ratio: float | None
    keep: float | None
    revisits: float | None  # times the run goes over what it trains on (keep < 1 only)


@dataclass
class Decision:
    """The recommendation, why, and the methods the measurements could not separate."""

    method: str
    reasons: list[str] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)  # pilots between these


def settings(costs: dict[str, MethodCost], reference_flops: float, budget: float,
             batch_size: int, pool_size: int) -> dict[str, Setting]:  # fmt: skip
    """Each method at the steps that spend `budget` FLOPs (the reference charged to those that
    use it); a method the budget cannot run one step of is left out."""
    out = {}
    for name, cost in costs.items():
        fixed = (reference_flops if cost.uses_reference else 0.0) + cost.fixed
        steps = math.floor((budget - fixed) / cost.per_step) if cost.per_step > 0 else 0
        if steps >= 1:
            out[name] = at_steps(name, cost, reference_flops, steps, batch_size, pool_size)
    return out


def at_steps(name: str, cost: MethodCost, reference_flops: float, steps: int, batch_size: int,
             pool_size: int) -> Setting:  # fmt: skip
    """Method `name` run for `steps` steps: its total cost (the reference charged where it uses
    it) and how many times it goes over what it trains on."""
    _, ratio, keep = METHODS[name]
    fixed = (reference_flops if cost.uses_reference else 0.0) + cost.fixed
    seen = None if keep is None else steps * batch_size / max(1, round(keep * pool_size))
    return Setting(name, steps, fixed + steps * cost.per_step, ratio, keep, seen)


def decide(matched: float, reference_share: float, filter_revisits: float,
           rules: PlanRules) -> Decision:  # fmt: skip
    """The recommendation from the pool's matched share, the reference's share of the budget
    (R / C) and the revisits of the budget-spending filter run."""
    if not 0 <= matched <= 1 or reference_share < 0:
        raise ValueError("matched must be in [0, 1] and the reference's share >= 0")
    waste = 1 - matched
    if reference_share >= 1:
        return Decision("uniform", ["the reference alone costs the whole budget"])
    if waste < reference_share:
        why = (f"uniform wastes {waste:.0%} of its steps on noise, less than the reference's "
               f"{reference_share:.0%} of the budget")
        d = Decision("uniform", [why])
    else:
        d = _reference_method(filter_revisits, rules)
        d.reasons.insert(0, f"uniform would waste {waste:.0%} of its steps on noise, more than "
                            f"the reference's {reference_share:.0%} of the budget")  # fmt: skip
    if abs(waste - reference_share) < rules.margin:
        other = _reference_method(filter_revisits, rules).method
        d.undecided = sorted({"uniform", other})
    return d


def _reference_method(revisits: float, rules: PlanRules) -> Decision:
    said = f"the filter's kept share would be revisited {revisits:.1f} times"
    if revisits < rules.easy_revisits:
        d = Decision("filter", [f"{said}: below {rules.easy_revisits:g}, still fresh"])
    elif revisits < rules.jest_revisits:
        d = Decision("easy", [f"{said}: above {rules.easy_revisits:g}, the filter's fixed share "
                              f"goes stale; below {rules.jest_revisits:g}, the reference alone "
                              "still finds new examples online"])  # fmt: skip
    else:
        d = Decision("jest", [f"{said}: above {rules.jest_revisits:g} ({rules.past_plateau:g} x "
                              f"{rules.stop_revisits:g}, where the reference-only methods stop "
                              "gaining); learnability keeps changing as the learner learns"])
    factor = 1 + rules.margin
    for threshold, pair in ((rules.easy_revisits, ["easy", "filter"]),
                            (rules.jest_revisits, ["easy", "jest"])):  # fmt: skip
        if threshold / factor <= revisits <= threshold * factor:
            d.undecided = pair
    return d


def fit_threshold(below: list[float], above: list[float]) -> float:
    """The threshold between values whose answer was the lower method (`below`) and those whose
    answer was the upper one (`above`): of the geometric midpoints between neighbouring values
    (and 0 and inf), the one that misplaces the fewest; among equals, the lowest. inf when
    nothing is above, 0 when nothing is below."""
    if not above:
        return math.inf
    if not below:
        return 0.0
    values = sorted(set(below) | set(above))
    candidates = [0.0] + [math.sqrt(a * b) for a, b in zip(values, values[1:], strict=False)]
    candidates.append(math.inf)

    def errors(t: float) -> int:
        return sum(v >= t for v in below) + sum(v < t for v in above)

    return min(candidates, key=lambda t: (errors(t), t))
