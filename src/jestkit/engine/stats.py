"""What the learner trained on: counts of each category of the data's per-example metadata
(the demo's noise labels: how much of the selected data had a wrong caption)."""

from __future__ import annotations

import torch

from jestkit.data.source import Examples


class SelectionStats:
    """Counts of every metadata category among the examples trained on, and their ids."""

    def __init__(self, categories: dict[str, tuple[str, ...]]):
        self.categories = dict(categories)
        self.counts = {k: torch.zeros(len(v), dtype=torch.long) for k, v in categories.items()}
        self.selected_ids: list[torch.Tensor] = []

    def add(self, chosen: Examples) -> None:
        for name, values in chosen.meta.items():
            self.counts[name] += torch.bincount(values, minlength=len(self.categories[name]))
        self.selected_ids.append(chosen.ids)

    def fractions(self, name: str) -> dict[str, float]:
        """Share of each category of meta field `name` among the examples trained on."""
        total = max(1, int(self.counts[name].sum()))
        counts = self.counts[name].tolist()
        return {c: n / total for c, n in zip(self.categories[name], counts, strict=True)}

    def state_dict(self) -> dict:
        return {"counts": self.counts, "selected_ids": self.selected_ids}

    def load_state_dict(self, state: dict) -> None:
        self.counts, self.selected_ids = state["counts"], state["selected_ids"]
