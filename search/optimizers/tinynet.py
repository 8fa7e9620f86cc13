"""The "tiny formula" of Model Rubik's Cube / TinyNet (arXiv 2010.14819).

Sample (r, d, w) variants of the base network, evaluate them, fit r(c) and d(c) on the models of
the accuracy-FLOPs Pareto front by Gaussian-process regression (c: FLOPs relative to the base),
set w = sqrt(c / (r^2 d)), and build the network for any FLOPs target c."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from search.optimizers.base import Optimizer
from spaces.dims import Scale
from spaces.errors import ConfigError

log = logging.getLogger(__name__)


class TinyNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_flops: float | list[float] = Field(
        0.5, description="FLOPs targets: absolute, or <= 1 as a fraction of the base"
    )
    samples: int = Field(20, ge=3, description="(r, d, w) variants evaluated to fit the formula")


def _scale_dims(space) -> dict[str, Scale]:
    return {
        d.target: d
        for d in space.dims.values()
        if isinstance(d, Scale) and d.target in ("resolution", "depth", "width")
    }


class TinyNetFormula(Optimizer):
    """Fit the tiny formula on sampled variants, then ask for the network of each FLOPs target."""

    name = "tinynet"
    Options = TinyNetOptions

    @classmethod
    def check_space(cls, space, file):
        missing = {"resolution", "depth", "width"} - set(_scale_dims(space))
        if missing:
            raise ConfigError(
                file,
                "optimizer.name",
                f"tinynet needs scale dimensions targeting {', '.join(sorted(missing))} "
                f"in space {space.name!r}",
            )

    def __init__(self, space, objectives, constraints, seed, options=None):
        super().__init__(space, objectives, constraints, seed, options)
        self.check_space(space, None)
        self.dims = _scale_dims(space)
        self.base = space.full()
        self.base_flops = space.cost(self.base)["flops"]
        t = self.options.target_flops
        self.targets = [
            x / self.base_flops if x > 1 else float(x) for x in (t if isinstance(t, list) else [t])
        ]
        self.fit: dict | None = None
        self._asked_targets = 0
        self._sampling_done = False

    def _variant(self, r: float, d: float, w: float) -> dict:
        g = dict(self.base)
        g[self.dims["resolution"].name], g[self.dims["depth"].name], g[self.dims["width"].name] = (
            r,
            d,
            w,
        )
        return self.space.canonical(g)

    def _ratio(self, g) -> float:
        return self.space.cost(g)["flops"] / self.base_flops

    def ask(self):
        if not self._sampling_done:  # phase 1: the base, then random (r, d, w) variants of it
            if not self.seen:
                return self.fresh(lambda: self.base)
            if len(self.seen) < self.options.samples:
                dr, dd, dw = self.dims["resolution"], self.dims["depth"], self.dims["width"]
                before = len(self.seen)
                g = self.fresh(
                    lambda: self._variant(
                        dr.sample(self.rng), dd.sample(self.rng), dw.sample(self.rng)
                    ),
                    tries=500,
                )
                if len(self.seen) > before:
                    return g
                log.info("tinynet: the (r, d, w) grid holds only %d variants", before)
            self._sampling_done = True
        if self.fit is None:
            self._fit()
        if self._asked_targets >= len(self.targets):
            return None
        c = self.targets[self._asked_targets]
        self._asked_targets += 1
        g = self.formula(c)
        self.seen.add(self.space.genome_id(g))
        return g

    def _fit(self) -> None:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        done = [h for h in self.history if h.complete]
        if len(done) < 2:
            raise RuntimeError("the tiny formula needs at least two evaluated variants")
        acc = self.objectives[0].metric
        pts = [(self._ratio(h.genome), float(h.metrics[acc]), h) for h in done]
        # Pareto front over (accuracy up, FLOPs down)
        front = [
            p
            for p in pts
            if not any(q[1] >= p[1] and q[0] <= p[0] and (q[1] > p[1] or q[0] < p[0]) for q in pts)
        ]
        front.sort(key=lambda p: p[0])
        cs = np.array([[p[0]] for p in front])
        rs = np.array([p[2].genome[self.dims["resolution"].name] for p in front])
        ds = np.array([p[2].genome[self.dims["depth"].name] for p in front])
        # smooth curves: a length scale of at least a fifth of the FLOPs range, some noise
        kernel = ConstantKernel(1.0, (1e-2, 1e2)) * RBF(
            length_scale=0.5, length_scale_bounds=(0.2, 10.0)
        ) + WhiteKernel(1e-2, (1e-4, 1.0))
        with warnings.catch_warnings():  # few, grid-valued points: bounds are often hit, by design
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.gp_r = GaussianProcessRegressor(
                kernel, normalize_y=True, random_state=self.seed
            ).fit(cs, rs)
            self.gp_d = GaussianProcessRegressor(
                kernel, normalize_y=True, random_state=self.seed
            ).fit(cs, ds)
        self.fit = {
            "front": [
                {
                    "c": p[0],
                    acc: p[1],
                    "r": p[2].genome[self.dims["resolution"].name],
                    "d": p[2].genome[self.dims["depth"].name],
                    "w": p[2].genome[self.dims["width"].name],
                }
                for p in front
            ],
            "samples": [{"c": p[0], acc: p[1]} for p in pts],
        }
        log.info("tiny formula fitted on %d Pareto-front variants of %d", len(front), len(pts))

    def curves(self, c: float) -> tuple[float, float, float]:
        """The formula's continuous (r, d, w) for FLOPs ratio c."""
        dr, dd, dw = self.dims["resolution"], self.dims["depth"], self.dims["width"]
        r = float(np.clip(self.gp_r.predict([[c]])[0], dr.low, dr.high))
        d = float(np.clip(self.gp_d.predict([[c]])[0], dd.low, dd.high))
        w = float(np.clip(math.sqrt(c / (r * r * d)), dw.low, dw.high))
        return r, d, w

    def formula(self, c: float) -> dict:
        """The network for FLOPs ratio c: r and d from the fit snapped to their grids, then the
        width on its grid whose FLOPs come closest to c (w = sqrt(c / (r^2 d)) before snapping)."""
        r, d, w = self.curves(c)
        dr, dd, dw = self.dims["resolution"], self.dims["depth"], self.dims["width"]
        r, d = dr.validate(dr._snap(r)), dd.validate(dd._snap(d))
        widths = dw.grid() if dw.step else [dw._snap(w)]
        cands = [self._variant(r, d, x) for x in widths]
        return min(cands, key=lambda g: (abs(self._ratio(g) - c), abs(g[dw.name] - w)))

    def finish(self, run_dir: Path) -> None:
        """Write formula.json and the fitted curves (tinynet_formula.png) into the run folder."""
        if self.fit is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cs = np.linspace(min(p["c"] for p in self.fit["front"]), 1.0, 50)
        curves = np.array([self.curves(c) for c in cs])
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for i, lab in enumerate(("r(c)", "d(c)", "w(c) = sqrt(c / r^2 d)")):
            ax[0].plot(cs, curves[:, i], label=lab)
        for key, m in (("r", "o"), ("d", "s"), ("w", "^")):
            ax[0].scatter(
                [p["c"] for p in self.fit["front"]], [p[key] for p in self.fit["front"]], marker=m
            )
        ax[0].set_xlabel("FLOPs relative to the base (c)")
        ax[0].set_ylabel("multiplier")
        ax[0].legend()
        acc = self.objectives[0].metric
        ax[1].scatter(
            [p["c"] for p in self.fit["samples"]],
            [p[acc] for p in self.fit["samples"]],
            label="variants",
        )
        ax[1].plot(
            [p["c"] for p in self.fit["front"]],
            [p[acc] for p in self.fit["front"]],
            "r-o",
            label="Pareto front",
        )
        ax[1].set_xlabel("FLOPs relative to the base (c)")
        ax[1].set_ylabel(acc)
        ax[1].legend()
        fig.tight_layout()
        fig.savefig(Path(run_dir) / "tinynet_formula.png", dpi=100)
        plt.close(fig)
        out = {
            "base_flops": self.base_flops,
            **self.fit,
            "targets": [
                {
                    "c": c,
                    "rdw": self.curves(c),
                    "genome_id": self.space.genome_id(self.formula(c)),
                    "genome": self.space.to_json(self.formula(c)),
                    "flops_ratio": self._ratio(self.formula(c)),
                }
                for c in self.targets
            ],
        }
        (Path(run_dir) / "formula.json").write_text(json.dumps(out, indent=2))
