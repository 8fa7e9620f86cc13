"""A cheap model of a fitness over the genome: ridge regression on each dimension's features
(one-hot choices, mask bits, scale positions) and the log of the costs known before evaluation
(FLOPs, parameters, a table's latency: accuracy follows capacity). Surrogate-assisted evolution
breeds several children per ask and evaluates the one the model ranks first, as predictor-guided
NAS does (e.g. BANANAS, NPENAS): many mutants are ranked for the price of one evaluation."""

from __future__ import annotations

import numpy as np

from spaces.space import Genome, Space


class Surrogate:
    """`fit` on (genome, fitness) pairs, `predict` the fitness of genomes not evaluated yet
    (larger is better)."""

    def __init__(self, space: Space, alpha: float = 1.0, extra=None):
        self.space, self.alpha = space, alpha
        self.extra = extra  # genome -> further features (the costs known before evaluation)
        self._f: dict[tuple, np.ndarray] = {}

    def features(self, genome: Genome) -> np.ndarray:
        key = tuple(tuple(v) if isinstance(v, list) else v for v in genome.values())
        if key not in self._f:
            enc = [f for n, d in self.space.dims.items() for f in d.features(genome[n])]
            self._f[key] = np.asarray(enc + (self.extra(genome) if self.extra else []), float)
        return self._f[key]

    def fit(self, genomes: list[Genome], ys: list[float]) -> None:
        X = np.stack([self.features(g) for g in genomes])
        y = np.asarray(ys, dtype=float)
        self.mu, self.sd, self.y0 = X.mean(0), X.std(0) + 1e-9, y.mean()
        Z = (X - self.mu) / self.sd
        # the dual form: as many unknowns as trials, however many features (mask bits)
        a = np.linalg.solve(Z @ Z.T + self.alpha * np.eye(len(y)), y - self.y0)
        self.w = Z.T @ a

    def predict(self, genomes: list[Genome]) -> np.ndarray:
        X = np.stack([self.features(g) for g in genomes])
        return self.y0 + ((X - self.mu) / self.sd) @ self.w
