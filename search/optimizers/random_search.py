"""Random search: the floor every other optimiser must beat."""

from __future__ import annotations

from search.optimizers.base import Optimizer


class RandomSearch(Optimizer):
    """Uniform samples of the space, seeded, never the same genome twice; within the constraints
    that are known before evaluation (FLOPs, parameters, a table's latency)."""

    name = "random"

    def ask(self):
        return self.fresh(self.sample_feasible)
