"""What a run costs in all, with the reference's share visible.

A learner run's FLOPs (measured with torch.utils.flop_counter by jestkit.engine.flops) go to
training (its steps), learner scoring (the super-batch forward passes of JEST-like policies) and
reference scoring (zero when the reference is read from its cache). A method that uses a
reference also needs the reference: its training on the curated set and its one pass over the
pool (the cache, or the offline filter's scores). That is paid once and can be shared by many
learner runs (amortised), so it is a column of its own, and it is in the total: a user with one
learner pays all of it.
"""

from __future__ import annotations

COLUMNS = ("train", "learner_score", "reference")


def cost_columns(result: dict, reference: dict | None) -> dict[str, float]:
    """FLOPs of one learner run by where they go, and their total:

        train          the learner's training steps
        learner_score  the learner's scoring of each super-batch (0 for uniform, filter, easy)
        reference      reference: its training (train_flops) and its pass over the pool
                       (cache_flops), plus any reference scoring during the run
        total          the sum of the three

    `result`: a learner's result (its 'flops' by kind); `reference`: the reference.json (or
    result) of the reference the run used, None for a run without one (uniform on the raw pool).
    """
    flops = result["flops"]
    unknown = set(flops) - {"train", "learner_score", "reference_score"}
    if unknown:
        raise ValueError(f"unknown FLOP kinds {sorted(unknown)} in the run's result")
    ref = 0.0
    if reference is not None:
        ref = reference["train_flops"] + reference["cache_flops"]
    elif flops.get("reference_score", 0):
        raise ValueError("the run scored with a reference: pass that reference's info")
    out = {
        "train": float(flops["train"]),
        "learner_score": float(flops.get("learner_score", 0)),
        "reference": float(ref + flops.get("reference_score", 0)),
    }
    out["total"] = sum(out[c] for c in COLUMNS)
    return out
