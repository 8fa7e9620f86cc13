"""Constrained search on NAS-Bench-201: every optimiser with its shipped defaults, under a latency
bound, against the feasible optimum the table gives.

Combinations: the table's three datasets x its latency columns x bounds at the 10th, 25th and
50th percentile of the column. Each optimiser maximises the dataset's accuracy subject to
`latency_ms <= bound` for `--queries` queries, `--seeds` seeds per combination. Per optimiser:
mean regret (feasible optimum minus the best feasible accuracy found, in points) over all
combinations, the share of combinations where its mean beats random's, its worst combination;
then the two-objective form (accuracy up, latency down, no bound): hypervolume after
`--queries` queries divided by the true front's. The unconstrained single-objective result stays
one line. Writes benchmarks/results/constrained.md and constrained.json.

The combinations are the cells of a sweep (`search sweep` over evaluator.dataset,
evaluator.table_latency and the bound); the benchmark runs them in memory through the same
engine (`search.simulate`), since thousands of run folders of 100 look-ups would measure
process start-up rather than the optimisers.

    python benchmarks/constrained.py [--seeds 10] [--devices all] [--jobs 2] [--csv PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
GROUPS = {"early": ["op.1<-0", "op.2<-0", "op.2<-1"], "late": ["op.3<-0", "op.3<-1", "op.3<-2"]}
DATASETS = ("cifar10", "cifar100", "imagenet16")
# every optimiser as it ships; the variants after it are options a user sets
VARIANTS = {
    "random": ("random", {}),
    "ga": ("ga", {}),
    "aging": ("aging", {}),
    "coevolution": ("coevolution", {}),
    "optuna": ("optuna", {}),
    "ga, surrogate 0": ("ga", {"surrogate": 0}),
    "aging, surrogate 0": ("aging", {"surrogate": 0}),
}


def spaces():
    import yaml

    from spaces.config import space_from_dict

    d = yaml.safe_load((ROOT / "spaces" / "nb201.yaml").read_text())
    base = {"name": "nb201", "family": d["family"], "dimensions": d["dimensions"]}
    return space_from_dict(base), space_from_dict({**base, "groups": GROUPS})


def best_feasible(recs, bound: float | None) -> float:
    ok = [r for r in recs if r.complete and (bound is None or r.metrics["latency_ms"] <= bound)]
    return max((100 * r.metrics["val_acc"] for r in ok), default=0.0)


def one_run(variant: str, space, ev, bound: float | None, seed: int, queries: int):
    from search.config import Constraint, Objective
    from search.optimizers import OPTIMIZERS
    from search.simulate import simulate

    name, options = VARIANTS[variant]
    cls = OPTIMIZERS[name]
    cons = [] if bound is None else [Constraint(metric="latency_ms", max=bound)]
    opt = cls(space, [Objective(metric="val_acc")], cons, seed, cls.Options(**options))
    return simulate(opt, ev, queries, cons)


def _evaluators(args, ds: str, dev: str):
    """The table evaluator of one (dataset, device), plain and with the grouped space."""
    from evaluators.table import TableEvaluator

    space, grouped = spaces()
    return TableEvaluator(space, args.csv, ds, dev), TableEvaluator(grouped, args.csv, ds, dev)


def constrained_pair(args, variants, ds: str, dev: str) -> list[dict]:
    """One row per percentile of one (dataset, device): the feasible optimum and each variant's
    bests."""
    logging.disable(logging.WARNING)
    ev, gev = _evaluators(args, ds, dev)
    rows = []
    lats = [r[ev.lat_col] for r in ev.rows.values()]
    for q in args.quantiles:
        bound = float(np.percentile(lats, q))
        opt = max(r[ev.acc_col] for r in ev.rows.values() if r[ev.lat_col] <= bound)
        row = {"dataset": ds, "device": dev, "percentile": q, "bound": bound, "optimum": opt}
        for v in variants:
            t = time.time()
            sp, e = (gev.space, gev) if VARIANTS[v][0] == "coevolution" else (ev.space, ev)
            bests = [
                best_feasible(one_run(v, sp, e, bound, s, args.queries), bound)
                for s in range(args.seeds)
            ]
            row[v] = {"bests": bests, "regret": opt - statistics.mean(bests)}
            row[v]["s"] = time.time() - t
        rows.append(row)
        print(
            f"{ds:<10} {dev:<16} p{q:<3} "
            + " ".join(f"{v[:8]} {row[v]['regret']:.2f}" for v in variants),
            flush=True,
        )
    return rows


def in_parallel(fn, args, variants, pairs) -> list:
    """`fn(args, variants, ds, dev)` for every pair, on `args.jobs` processes, in order."""
    from concurrent.futures import ProcessPoolExecutor

    calls = [(args, variants, ds, dev) for ds, dev in pairs]
    if args.jobs <= 1:
        return [fn(*c) for c in calls]
    with ProcessPoolExecutor(args.jobs) as pool:
        return list(pool.map(fn, *zip(*calls)))


def two_objective_pair(args, variants, ds: str, dev: str) -> dict[str, list[float]]:
    """Hypervolume ratios after `queries` (accuracy up, latency down) of one (dataset, device),
    per variant, for `hv_seeds` seeds."""
    from search.config import Objective
    from search.hypervolume import hypervolume_2d
    from search.optimizers import OPTIMIZERS
    from search.records import pareto_front
    from search.simulate import simulate

    logging.disable(logging.WARNING)
    ev, gev = _evaluators(args, ds, dev)
    objs = [Objective(metric="val_acc"), Objective(metric="latency_ms", direction="minimize")]
    pts = [[r[ev.acc_col] / 100, r[ev.lat_col]] for r in ev.rows.values()]
    ref = [min(p[0] for p in pts), max(p[1] for p in pts)]
    true = hypervolume_2d(pts, [1.0, -1.0], ref)
    out: dict[str, list[float]] = {v: [] for v in variants}
    for v in variants:
        name, options = VARIANTS[v]
        sp, e = (gev.space, gev) if name == "coevolution" else (ev.space, ev)
        for s in range(args.hv_seeds):
            cls = OPTIMIZERS[name]
            opt = cls(sp, objs, [], s, cls.Options(**options))
            front = pareto_front(simulate(opt, e, args.queries), [1.0, -1.0])
            out[v].append(hypervolume_2d([r.values for r in front], [1.0, -1.0], ref) / true)
    return out


def summarise(rows: list[dict], variants: list[str]) -> list[dict]:
    table = []
    for v in variants:
        regrets = [r[v]["regret"] for r in rows]
        worst = max(rows, key=lambda r: r[v]["regret"])
        beats = (
            sum(
                statistics.mean(r[v]["bests"]) > statistics.mean(r["random"]["bests"]) for r in rows
            )
            if "random" in variants and v != "random"
            else None
        )
        table.append(
            {
                "variant": v,
                "mean_regret": statistics.mean(regrets),
                "over_1": sum(x > 1.0 for x in regrets),
                "beats_random": None if beats is None else beats / len(rows),
                "worst": worst[v]["regret"],
                "worst_at": f"{worst['dataset']} {worst['device']} p{worst['percentile']}",
                "s": sum(r[v]["s"] for r in rows),
            }
        )
    return table


def _bold(vals: list[float], best: float) -> list[str]:
    return [f"**{x:.3f}**" if x == best else f"{x:.3f}" for x in vals]


def write(args, rows, table, hv, unconstrained, secs) -> str:
    n = len(rows)
    mr = _bold([t["mean_regret"] for t in table], min(t["mean_regret"] for t in table))
    wr = _bold([t["worst"] for t in table], min(t["worst"] for t in table))
    lines = [
        f"# Constrained search on NAS-Bench-201 ({time.strftime('%Y-%m-%d')})",
        "",
        f"`python benchmarks/constrained.py --seeds {args.seeds} --hv-seeds {args.hv_seeds} "
        f"--devices {args.devices} --jobs {args.jobs}` ({secs / 60:.0f} min on this machine, "
        f"{args.jobs} process(es)). {n} combinations: datasets "
        f"{', '.join(args.datasets)} x {n // (len(args.datasets) * len(args.quantiles))} latency "
        f"columns x bounds at the {', '.join(f'{q}th' for q in args.quantiles)} percentile of "
        f"the column; {args.queries} queries, {args.seeds} seeds each. Regret: the combination's "
        "feasible optimum (from the table) minus the mean best feasible test accuracy found, in "
        "points. Every optimiser as it ships (`coevolution` with the edges in two populations); "
        "the `surrogate 0` rows turn off the surrogate `ga` and `aging` ship with (`surrogate: 10`).",
        "",
        "| optimiser | mean regret | combinations over 1.0 | beats random in | worst | "
        "worst at | s |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for t, m, w in zip(table, mr, wr):
        beats = "-" if t["beats_random"] is None else f"{100 * t['beats_random']:.0f} %"
        lines.append(
            f"| {t['variant']} | {m} | {t['over_1']} of {n} | {beats} | {w} | {t['worst_at']} "
            f"| {t['s']:.0f} |"
        )
    best_hv = max(m for m, _ in hv.values())
    lines += [
        "",
        f"## Two objectives (accuracy up, latency down, no bound): hypervolume after "
        f"{args.queries} queries / the true front's",
        "",
        f"Mean over the {n // len(args.quantiles)} (dataset, device) pairs x {args.hv_seeds} seeds; "
        "reference point: the table's worst accuracy and worst latency.",
        "",
        "| optimiser | mean ratio | std |",
        "|---|---:|---:|",
    ]
    for v, (m, sd) in hv.items():
        cell = f"**{m:.4f}**" if m == best_hv else f"{m:.4f}"
        lines.append(f"| {v} | {cell} | {sd:.4f} |")
    lines += ["", "## Unconstrained, for reference", "", unconstrained, ""]
    lines += verdict(table)
    return "\n".join(lines) + "\n"


def verdict(table: list[dict]) -> list[str]:
    by = {t["variant"]: t for t in table}
    out = ["## Against the goal", ""]
    ga = by.get("ga")
    if ga:
        ok = ga["mean_regret"] <= 0.3 and ga["worst"] <= 1.0
        out.append(
            f"- Goal: the default optimiser (`ga`) at most 0.3 points of mean regret with no "
            f"combination above 1.0. Measured {ga['mean_regret']:.3f} mean, worst "
            f"{ga['worst']:.3f}: {'met' if ok else 'not met'}."
        )
    if "optuna" in by:
        for v in ("ga", "aging", "ga, surrogate 0", "aging, surrogate 0"):
            if v in by:
                d = by[v]["mean_regret"] - by["optuna"]["mean_regret"]
                word = "at least as good as" if d <= 0 else "behind"
                out.append(f"- `{v}` is {word} `optuna` ({d:+.3f} points of mean regret).")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=str(ROOT.parent / "shared" / "data" / "nb201_merged.csv"))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--hv-seeds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--devices", default="all", help="'all' or a comma list of latency columns")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--quantiles", default="10,25,50")
    ap.add_argument("--variants", default=";".join(VARIANTS), help="';'-separated")
    ap.add_argument("--jobs", type=int, default=1, help="processes, one (dataset, device) each")
    args = ap.parse_args()
    if not Path(args.csv).exists():
        sys.exit(f"constrained.py: error: {args.csv} does not exist (the NAS-Bench-201 table)")
    logging.disable(logging.WARNING)
    args.datasets = args.datasets.split(",")
    args.quantiles = [int(q) for q in args.quantiles.split(",")]
    variants = args.variants.split(";")
    header = Path(args.csv).open().readline().strip().split(",")
    devices = (
        [c[4:] for c in header if c.startswith("lat_")]
        if args.devices == "all"
        else args.devices.split(",")
    )
    pairs = [(ds, dev) for ds in args.datasets for dev in devices]
    t0 = time.time()
    rows = [r for rs in in_parallel(constrained_pair, args, variants, pairs) for r in rs]
    table = summarise(rows, variants)
    ratios = in_parallel(two_objective_pair, args, variants, pairs)
    hv = {}
    for v in variants:  # mean and std over every (dataset, device) and seed
        x = [h for r in ratios for h in r[v]]
        hv[v] = (statistics.mean(x), statistics.pstdev(x))
    ev = _evaluators(args, *pairs[0])[0]
    ub = [
        best_feasible(one_run("ga", ev.space, ev, None, s, args.queries), None) for s in range(10)
    ]
    top = max(r[ev.acc_col] for r in ev.rows.values())
    unconstrained = (
        f"`ga` (shipped defaults), {args.datasets[0]}, no bound, {args.queries} queries, 10 seeds: "
        f"best {statistics.mean(ub):.2f} +- {statistics.stdev(ub):.2f} against the table's "
        f"optimum {top:.2f}."
    )
    text = write(args, rows, table, hv, unconstrained, time.time() - t0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "constrained.md").write_text(text)
    state = {"rows": rows, "summary": table, "hypervolume": hv, "unconstrained": unconstrained}
    (RESULTS / "constrained.json").write_text(json.dumps(state, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
