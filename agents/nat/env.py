"""NAT's environment: one step per episode. The observation is a cell's DAG; the action gives
every edge one of NAT's transitions (keep, skip_connect, none); the reward is what the
evaluator says the transformation gained, with the run's constraints applied."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agents.nat.cell import (
    N_EDGES,
    N_FEATURES,
    N_NODES,
    TRANSITIONS,
    check_cell_space,
    guarded_transform,
    nat_reward,
    observe,
    relative_violation,
)
from spaces.space import Genome, Space


class NATEnv(gym.Env):
    """Transform one cell of `space` per episode.

    `evaluator` is anything with `.evaluate(genome, seed=...) -> EvalResult` (the tabular or the
    fine-tuning evaluator); results are cached by genome id, so a cell is evaluated once.
    `archs`, if given, are the cells `reset` draws from; otherwise it samples the space.
    `reset(options={"genome": g})` starts from a chosen cell."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        space: Space,
        evaluator: Any,
        metric: str = "val_acc",
        sign: float = 1.0,
        constraints: Sequence[Any] = (),
        penalty: float = 1.0,
        archs: Sequence[Genome] | None = None,
        eval_seed: int = 0,
    ):
        check_cell_space(space)
        self.space, self.evaluator, self.metric = space, evaluator, metric
        self.sign = sign  # +1: the metric is maximised, -1: minimised
        self.constraints, self.penalty, self.eval_seed = list(constraints), penalty, eval_seed
        self.archs = [space.canonical(g) for g in archs] if archs else None
        self.observation_space = spaces.Dict(
            {
                "nodes": spaces.Box(0.0, 1.0, (N_NODES, N_FEATURES), dtype=np.float32),
                "adjacency": spaces.MultiBinary([N_NODES, N_NODES]),
                "mask": spaces.MultiBinary([N_EDGES, len(TRANSITIONS)]),
            }
        )
        self.action_space = spaces.MultiDiscrete([len(TRANSITIONS)] * N_EDGES)
        self._genome: Genome | None = None
        self._cache: dict[str, Any] = {}

    def evaluate(self, genome: Genome):
        """The evaluator's result for `genome`, evaluated at most once."""
        gid = self.space.genome_id(genome)
        if gid not in self._cache:
            self._cache[gid] = self.evaluator.evaluate(genome, seed=self.eval_seed)
        return self._cache[gid]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and options.get("genome") is not None:
            g = self.space.validate(dict(options["genome"]))
        elif self.archs:
            g = self.archs[int(self.np_random.integers(len(self.archs)))]
        else:
            g = self.space.sample(random.Random(int(self.np_random.integers(2**62))))
        self._genome = g
        return observe(self.space, g), {"genome": dict(g), "genome_id": self.space.genome_id(g)}

    def step(self, action):
        if self._genome is None:
            raise RuntimeError("call reset() before step()")
        original = self._genome
        action = np.asarray(action, dtype=np.int64).reshape(N_EDGES)
        new, guarded = guarded_transform(self.space, original, action)
        a, b = self.evaluate(original), self.evaluate(new)
        info: dict[str, Any] = {
            "original": dict(original),
            "transformed": dict(new),
            "original_id": self.space.genome_id(original),
            "transformed_id": self.space.genome_id(new),
            "cost_before": self.space.cost(original),
            "cost_after": self.space.cost(new),
            "guarded": guarded,
        }
        if a.status == "complete" and b.status == "complete":
            reward = nat_reward(
                a.metrics, b.metrics, self.metric, self.sign, self.constraints, self.penalty
            )
            info.update(
                before=float(a.metrics[self.metric]),
                after=float(b.metrics[self.metric]),
                violation=relative_violation(b.metrics, self.constraints),
            )
        else:  # no reward without both metrics; say why
            reward = 0.0
            info["failed"] = a.reason if a.status != "complete" else b.reason
        self._genome = new
        return observe(self.space, new), float(reward), True, False, info
