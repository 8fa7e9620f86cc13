"""TinyNet benchmark on `spaces/tinynet.yaml` (digits, real pre-training and fine-tuning).

1. A two-objective NSGA-II run (val_acc up, latency_ms down): the size of its Pareto front, and
   Optuna's own plots of the run's study.
2. The tiny formula (arXiv 2010.14819) fitted on sampled (r, d, w) variants, against EfficientNet's
   compound scaling inverted (d = 1.2^phi, w = 1.1^phi, r = 1.15^phi, phi < 0) at FLOPs targets of
   25 %, 50 % and 75 % of the base, and single-axis shrinking (only r, only d, only w) at the
   same targets: does the paper's claim (resolution and depth matter more than width when
   shrinking) hold here?

Writes benchmarks/results/tinynet.md and PNGs beside it. About 12 minutes on 2 cores with an
empty supernet cache.

    python benchmarks/tinynet.py [--work runs/bench-tinynet] [--samples 20] [--nsga-budget 24]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
TARGETS = [0.25, 0.5, 0.75]
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # EfficientNet's depth, width, resolution coefficients


def cli(*args) -> None:
    cmd = [sys.executable, "-m", "search.cli", *map(str, args), "--no-progress", "--workers", "0"]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def records(run_dir: Path):
    from search.config import load_run_config
    from search.store import load_records

    cfg, space, _ = load_run_config(run_dir / "config.yaml")
    return space, cfg, load_records(run_dir, cfg.storage, space, cfg.objectives, cfg.constraints)


class Grid:
    """Place continuous (r, d, w) multipliers on the space's grids at the FLOPs target."""

    def __init__(self, space):
        from search.optimizers.tinynet import _scale_dims

        self.space, self.dims = space, _scale_dims(space)
        self.base = space.full()
        self.base_flops = space.cost(self.base)["flops"]

    def genome(self, r, d, w):
        g = dict(self.base)
        g[self.dims["resolution"].name], g[self.dims["depth"].name], g[self.dims["width"].name] = (
            r,
            d,
            w,
        )
        return self.space.canonical(g)

    def ratio(self, g) -> float:
        return self.space.cost(g)["flops"] / self.base_flops

    def rdw(self, g):
        return tuple(g[self.dims[k].name] for k in ("resolution", "depth", "width"))

    def near(self, c: float, r: float, d: float, w: float, free=("resolution", "depth", "width")):
        """The grid genome around (r, d, w) with FLOPs closest to c; dimensions not in `free`
        stay at 1.0 (the base)."""
        opts = []
        for k, x in zip(("resolution", "depth", "width"), (r, d, w)):
            dim = self.dims[k]
            grid = dim.grid()
            if k not in free:
                opts.append([dim.high])
            elif len(free) == 1:
                opts.append(grid)  # single-axis shrinking: that axis alone meets the target
            else:
                lo = max([v for v in grid if v <= x] or [grid[0]])
                hi = min([v for v in grid if v >= x] or [grid[-1]])
                opts.append(sorted({lo, hi}))
        cands = [self.genome(*p) for p in itertools.product(*opts)]
        return min(
            cands,
            key=lambda g: (
                abs(self.ratio(g) - c),
                sum((a - b) ** 2 for a, b in zip(self.rdw(g), (r, d, w))),
            ),
        )


def compound(c: float) -> tuple[float, float, float]:
    phi = math.log(c) / math.log(ALPHA * BETA**2 * GAMMA**2)
    return GAMMA**phi, ALPHA**phi, BETA**phi


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--work", default="runs/bench-tinynet", help="folder for the benchmark's runs (replaced)"
    )
    ap.add_argument(
        "--samples", type=int, default=20, help="(r, d, w) variants for the tiny formula"
    )
    ap.add_argument("--nsga-budget", type=int, default=24)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = (ROOT / args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    common = ["--seed", args.seed]

    # 1. NSGA-II over accuracy and latency
    nsga = work / "nsga2"
    t = time.time()
    cli(
        "run",
        "spaces/tinynet.yaml",
        "--optimizer",
        "optuna",
        "--set",
        "sampler=nsga2",
        "--set",
        f"population_size={args.population}",
        "--budget",
        args.nsga_budget,
        "--out",
        nsga,
        *common,
    )
    t_nsga = time.time() - t
    front = json.loads((nsga / "pareto.json").read_text())["front"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    from search.store import STUDY_NAME, open_storage

    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(nsga, None))
    ax = optuna.visualization.matplotlib.plot_pareto_front(
        study, target_names=["val_acc", "latency_ms"]
    )
    ax.figure.savefig(RESULTS / "tinynet_nsga2_pareto.png", dpi=100, bbox_inches="tight")
    plt.close("all")
    ax = optuna.visualization.matplotlib.plot_optimization_history(
        study, target=lambda tr: tr.values[0], target_name="val_acc"
    )
    ax.figure.savefig(RESULTS / "tinynet_nsga2_history.png", dpi=100, bbox_inches="tight")
    plt.close("all")

    # 2. the tiny formula
    formula_dir = work / "formula"
    t = time.time()
    cli(
        "run",
        "spaces/tinynet.yaml",
        "--optimizer",
        "tinynet",
        "--set",
        f"samples={args.samples}",
        "--set",
        f"target_flops={TARGETS}",
        "--budget",
        args.samples + len(TARGETS),
        "--out",
        formula_dir,
        *common,
    )
    t_formula = time.time() - t
    formula = json.loads((formula_dir / "formula.json").read_text())
    shutil.copy(formula_dir / "tinynet_formula.png", RESULTS / "tinynet_formula.png")
    space, _, frecs = records(formula_dir)
    grid = Grid(space)
    by_id = {r.genome_id: r for r in frecs if r.complete}

    # 3. the baselines at the same targets, in a run of their own (same cache, seed, evaluator)
    rows = []  # (c, method, genome)
    for tgt in formula["targets"]:
        c = tgt["c"]
        rows.append((c, "tiny formula", by_id[tgt["genome_id"]].genome))
        r, d, w = compound(c)
        rows.append((c, "EfficientNet inverse compound", grid.near(c, r, d, w)))
        for axis in ("resolution", "depth", "width"):
            rows.append((c, f"only {axis}", grid.near(c, 1.0, 1.0, 1.0, free=(axis,))))
    base_dir = work / "baselines"
    gfile = work / "baseline_genomes.json"
    todo = [g for _, _, g in rows if space.genome_id(g) not in by_id]
    gfile.write_text(json.dumps([space.to_json(g) for g in todo]))
    t = time.time()
    if todo:
        cli(
            "run",
            "spaces/tinynet.yaml",
            "--optimizer",
            "given",
            "--set",
            f"genomes={gfile}",
            "--budget",
            len(todo),
            "--out",
            base_dir,
            *common,
        )
        _, _, brecs = records(base_dir)
        by_id.update({r.genome_id: r for r in brecs if r.complete})
    t_base = time.time() - t

    # 4. the table
    lines = [
        f"# TinyNet: NSGA-II front and the tiny formula ({time.strftime('%Y-%m-%d')}, 2 cores, digits)",
        "",
        "Produced by `python benchmarks/tinynet.py`. Space `spaces/tinynet.yaml` (EfficientNet-B0-style, "
        f"{grid.base_flops / 1e6:.1f} MFLOPs at r = d = w = 1), supernet pre-trained once (cached) with the "
        "sandwich rule; every candidate inherits its weights and is fine-tuned 3 epochs. Digits: "
        "val and test sets of about 360 images each, so one image is 0.28 points of accuracy.",
        "",
        "## 1. Two-objective NSGA-II (val_acc up, latency_ms down)",
        "",
        f"`search run spaces/tinynet.yaml --optimizer optuna --set sampler=nsga2 --set population_size={args.population} "
        f"--budget {args.nsga_budget}`: {t_nsga:.0f} s, **{len(front)} non-dominated points**. Optuna's "
        "own plots of the run's study: `tinynet_nsga2_pareto.png` (plot_pareto_front), "
        "`tinynet_nsga2_history.png` (plot_optimization_history).",
        "",
        "| val_acc | latency_ms | MFLOPs | params | r, d, w |",
        "|---:|---:|---:|---:|---|",
    ]
    for e in front:
        m = e["metrics"]
        gg = space.from_json(e["genome"])
        lines.append(
            f"| {m['val_acc']:.4f} | {m['latency_ms']:.3f} | {m['flops'] / 1e6:.2f} | {m['params']:,} | "
            f"{', '.join(f'{x:g}' for x in grid.rdw(gg))} |"
        )
    lines += [
        "",
        "## 2. Tiny formula vs inverted compound scaling vs single-axis shrinking",
        "",
        f"Formula fitted on {args.samples} sampled (r, d, w) variants ({t_formula:.0f} s including the "
        f"targets); baselines {t_base:.0f} s. Fitted curves: `tinynet_formula.png`. "
        "Continuous multipliers are placed on the space's grids (r step 0.125, d step 0.25, "
        "w step 0.125) at the closest FLOPs, so the FLOPs columns give the real ratios.",
        "",
        "| target | method | r, d, w | FLOPs ratio | val_acc | test_acc | latency_ms |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    summary: dict[str, list[float]] = {}
    for c, method, g in rows:
        rec = by_id.get(space.genome_id(g))
        m = rec.metrics if rec else {}
        acc = m.get("val_acc", float("nan"))
        test = m.get("test_acc", float("nan"))
        if abs(grid.ratio(g) - c) <= 0.06:  # only networks that meet the target count
            summary.setdefault(method, []).append((acc + test) / 2)
        lines.append(
            f"| {c:.2f} | {method} | {', '.join(f'{x:g}' for x in grid.rdw(g))} | {grid.ratio(g):.3f} | "
            f"{acc:.4f} | {test:.4f} | {m.get('latency_ms', float('nan')):.3f} |"
        )
    cont = ", ".join(
        f"c={t_['c']:.2f}: r={t_['rdw'][0]:.3f} d={t_['rdw'][1]:.3f} w={t_['rdw'][2]:.3f}"
        for t_ in formula["targets"]
    )
    lines += [
        "",
        f"The formula's continuous multipliers: {cont}.",
        "",
        "Mean of (val + test) / 2 over the targets that the method's grid networks meet within "
        "0.06 of the FLOPs ratio (the grids cannot reach every target by one axis alone):",
        "",
        "| method | targets met | mean accuracy |",
        "|---|---:|---:|",
    ]
    for k, v in summary.items():
        lines.append(f"| {k} | {len(v)} | {sum(v) / len(v):.4f} |")
    mean = {k: sum(v) / len(v) for k, v in summary.items()}
    for k in (
        "only resolution",
        "only depth",
        "only width",
        "tiny formula",
        "EfficientNet inverse compound",
    ):
        mean.setdefault(k, float("nan"))
    rd = max(mean["only resolution"], mean["only depth"])
    verdict = (
        "shrinking width alone beats shrinking resolution or depth alone"
        if mean["only width"] > rd
        else "shrinking resolution or depth alone is at least as good as shrinking width alone"
    )
    lines += [
        "",
        f"**The paper's claim here:** {verdict} "
        f"(only width {mean['only width']:.4f}, only resolution {mean['only resolution']:.4f}, "
        f"only depth {mean['only depth']:.4f}); the tiny formula "
        f"{'beats' if mean['tiny formula'] > mean['EfficientNet inverse compound'] else 'does not beat'} "
        f"the inverted compound scaling on average ({mean['tiny formula']:.4f} vs "
        f"{mean['EfficientNet inverse compound']:.4f}).",
        "",
        f"Total wall time {time.time() - t0:.0f} s.",
    ]
    text = "\n".join(lines) + "\n"
    (RESULTS / "tinynet.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
