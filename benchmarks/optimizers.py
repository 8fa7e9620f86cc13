"""Every optimiser on the tabular NAS-Bench-201 evaluator, equal budgets, 20 seeds.

(a) best CIFAR-10 test accuracy after 150 queries: mean, std, regret to the table's optimum;
(b) hypervolume of (CIFAR-10 accuracy up, lat_raspi4 down) after 200 queries, divided by the
    hypervolume of the table's true front (reference point: the table's worst accuracy and
    worst latency).

Optimisers that cannot search the space as it is (tinynet: no r/d/w scales) are listed as
such; `coevolution` gets the space split into two populations of three edges; `given`
evaluates a fixed list and is no search; `nat` transforms given cells
(benchmarks/nat.py). Writes benchmarks/results/optimizers.md and
optimizers.png.

    python benchmarks/optimizers.py [--seeds 20] [--csv ../shared/data/nb201_merged.csv]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
GROUPS = {"early": ["op.1<-0", "op.2<-0", "op.2<-1"], "late": ["op.3<-0", "op.3<-1", "op.3<-2"]}
OPTIONS = {
    "ga": {"population_size": 10},
    "aging": {"population_size": 20, "sample_size": 5},
    "coevolution": {"population_size": 6},
}
MO_OPTIONS = {
    "ga": {"population_size": 10},
    "optuna": {"sampler": "nsga2", "population_size": 20},
    "coevolution": {"population_size": 6},
}


# optimisers that need another space, measured by their own benchmarks
MEASURED_ELSEWHERE = {
    "dcp": "benchmarks/results/dcp.md (and DKP: `granularity: kernel`)",
    "tinynet": "benchmarks/results/tinynet.md",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--csv", default=str(ROOT.parent / "shared" / "data" / "nb201_merged.csv"))
    ap.add_argument("--budget-acc", type=int, default=150)
    ap.add_argument("--budget-hv", type=int, default=200)
    args = ap.parse_args()
    if not Path(args.csv).exists():
        sys.exit(f"optimizers.py: error: {args.csv} does not exist (the NAS-Bench-201 table)")

    from evaluators.table import TableEvaluator
    from search.config import Objective
    from search.hypervolume import hypervolume_2d
    from search.optimizers import OPTIMIZERS
    from search.records import pareto_front
    from search.simulate import simulate
    from spaces.config import space_from_dict
    from spaces.errors import ConfigError

    d = yaml.safe_load((ROOT / "spaces" / "nb201.yaml").read_text())
    base = {"name": "nb201", "family": d["family"], "dimensions": d["dimensions"]}
    space = space_from_dict(base)
    grouped = space_from_dict({**base, "groups": GROUPS})
    ev = TableEvaluator(space, args.csv, "cifar10", "raspi4")
    gev = TableEvaluator(grouped, args.csv, "cifar10", "raspi4")
    optimum = max(r["c10_test"] for r in ev.rows.values())
    lat_ref = max(r[ev.lat_col] for r in ev.rows.values())
    acc_ref = min(r["c10_test"] for r in ev.rows.values())
    true_pts = [[r["c10_test"], r[ev.lat_col]] for r in ev.rows.values()]
    true_hv = hypervolume_2d(true_pts, [1.0, -1.0], [acc_ref, lat_ref])

    acc_rows, hv_rows, skipped = [], [], []
    t_all = time.time()
    for name, cls in OPTIMIZERS.items():
        sp, e = (grouped, gev) if name == "coevolution" else (space, ev)
        try:
            cls.check_space(sp, None)
        except ConfigError as err:
            why = str(err).split(": ", 2)[-1]
            if name in MEASURED_ELSEWHERE:
                why += f"; {MEASURED_ELSEWHERE[name]} measures it"
            skipped.append((name, why))
            continue
        if name == "given":
            skipped.append((name, "evaluates a given list of genomes; no search"))
            continue
        if name == "nat":
            skipped.append(
                (
                    name,
                    "rewrites given cells after training on ~2000 queries; "
                    "benchmarks/results/nat.md measures it",
                )
            )
            continue
        t = time.time()
        bests = []
        for seed in range(args.seeds):
            opt = cls(
                sp, [Objective(metric="c10_test")], [], seed, cls.Options(**OPTIONS.get(name, {}))
            )
            recs = simulate(opt, e, args.budget_acc)
            bests.append(max(r.values[0] for r in recs if r.complete))
        m, sd = statistics.mean(bests), statistics.stdev(bests)
        acc_rows.append((name, m, sd, optimum - m, time.time() - t, bests))
        t = time.time()
        hvs = []
        objs = [Objective(metric="c10_test"), Objective(metric="latency_ms", direction="minimize")]
        for seed in range(args.seeds):
            opt = cls(
                sp, objs, [], seed, cls.Options(**MO_OPTIONS.get(name, OPTIONS.get(name, {})))
            )
            recs = simulate(opt, e, args.budget_hv)
            front = pareto_front(recs, [1.0, -1.0])
            hvs.append(
                hypervolume_2d([r.values for r in front], [1.0, -1.0], [acc_ref, lat_ref]) / true_hv
            )
        hv_rows.append((name, statistics.mean(hvs), statistics.stdev(hvs), time.time() - t, hvs))
        print(
            f"{name:<12} best c10 {m:.3f} +- {sd:.3f}   HV ratio {hv_rows[-1][1]:.4f} +- {hv_rows[-1][2]:.4f}",
            flush=True,
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].boxplot([r[5] for r in acc_rows], tick_labels=[r[0] for r in acc_rows])
    ax[0].axhline(optimum, color="r", ls="--", label=f"table optimum {optimum:.2f}")
    ax[0].set_ylabel(f"best CIFAR-10 test acc after {args.budget_acc} queries (%)")
    ax[0].legend(fontsize=8)
    ax[1].boxplot([r[4] for r in hv_rows], tick_labels=[r[0] for r in hv_rows])
    ax[1].set_ylabel(f"hypervolume / true front's, {args.budget_hv} queries")
    for a in ax:
        a.tick_params(axis="x", labelrotation=20)
        a.grid(alpha=0.3)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "optimizers.png", dpi=100)

    lines = [
        f"# Optimisers on NAS-Bench-201 (tabular) ({time.strftime('%Y-%m-%d')})",
        "",
        f"`python benchmarks/optimizers.py --seeds {args.seeds}`; {time.time() - t_all:.0f} s in all. "
        f"Space `spaces/nb201.yaml` (6 edges x 5 ops, 15,625 cells), scored by lookup in "
        "`nb201_merged.csv`. Every optimiser never evaluates a genome twice. Plot: `optimizers.png`.",
        "",
        f"## (a) Best CIFAR-10 test accuracy after {args.budget_acc} queries, {args.seeds} seeds",
        "",
        f"Table optimum {optimum:.2f} %. Random search is the floor (the issue quotes 93.93 +- 0.20).",
        "",
        "| optimiser | options | mean % | std | regret to optimum | s (all seeds) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, m, sd, reg, secs, _ in sorted(acc_rows, key=lambda r: -r[1]):
        lines.append(
            f"| {name} | {OPTIONS.get(name, {}) or 'defaults (TPE)' if name == 'optuna' else OPTIONS.get(name, {}) or 'defaults'} | "
            f"{m:.3f} | {sd:.3f} | {reg:.3f} | {secs:.1f} |"
        )
    lines += [
        "",
        f"## (b) Hypervolume of accuracy x lat_raspi4 after {args.budget_hv} queries / the true front's",
        "",
        f"Reference point: accuracy {acc_ref:.2f} %, latency {lat_ref:.2f} (the table's worst); the true "
        f"front's hypervolume {true_hv:.2f}.",
        "",
        "| optimiser | options | mean ratio | std | s (all seeds) |",
        "|---|---|---:|---:|---:|",
    ]
    for name, m, sd, secs, _ in sorted(hv_rows, key=lambda r: -r[1]):
        lines.append(
            f"| {name} | {MO_OPTIONS.get(name, OPTIONS.get(name, {})) or 'defaults'} | {m:.4f} | {sd:.4f} | {secs:.1f} |"
        )
    if skipped:
        lines += ["", "Not run on this space:", ""] + [f"- `{n}`: {why}" for n, why in skipped]
    lines += [
        "",
        "`coevolution` runs on the same table with the six edges split into two populations "
        "(edges into nodes 1-2, edges into node 3).",
    ]
    text = "\n".join(lines) + "\n"
    (RESULTS / "optimizers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
