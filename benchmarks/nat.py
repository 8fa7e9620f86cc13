"""NAT benchmark on `spaces/nb201.yaml`.

1. Tabular (NAS-Bench-201, CIFAR-10): for each training seed, `search run --optimizer nat`
   trains the agent on sampled cells and transforms 100 held-out cells (never trained on) with
   its greedy policy. Reported: mean CIFAR-10 test accuracy before and after, the fraction
   improved, the largest FLOPs and parameter change (must be <= 0), against a random
   transformation with the same allowed transitions (uniform over each edge's valid ones,
   averaged over 10 seeds), and two references: the best of all 3^6 transformations of each
   cell (an upper bound) and the hand rule "every avg_pool_3x3 becomes skip_connect".
2. Real cells: the seed-0 agent transforms the first 3 held-out cells whose network it changes,
   and the run's fine-tuning evaluator (digits, the `fast` preset, 3 and 8 fine-tuning epochs)
   scores the originals and the transformations.

Writes benchmarks/results/nat.md. About 9 minutes on 2 cores with an empty supernet cache.

    python benchmarks/nat.py [--work runs/bench-nat] [--seeds 0 1 2] [--train-archs 300] [--epochs 20]
                             [--real 3] [--finetune 3 8]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
CSV = ROOT.parent / "shared" / "data" / "nb201_merged.csv"
TABLE = ["--set", "preset=nb201-table", "--set", f"evaluator.table={CSV}"]
REAL = ["--set", "preset=fast"]


def cli(out: Path, *args, reuse: bool = False) -> float:
    """`search ARGS --out OUT`; its wall time. With `reuse`, a finished run folder is kept."""
    walls = out.parent / "walls.json"
    known = json.loads(walls.read_text()) if walls.exists() else {}
    if reuse and (out / "nat.json").exists() and out.name in known:
        return known[out.name]
    if out.exists():
        shutil.rmtree(out)
    cmd = [
        sys.executable,
        "-m",
        "search.cli",
        *map(str, args),
        "--out",
        str(out),
        "--no-progress",
        "--workers",
        "0",
    ]
    print("$", " ".join(cmd[2:]), flush=True)
    t = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    known[out.name] = time.time() - t
    walls.write_text(json.dumps(known))
    return known[out.name]


def network_changes(tab: Table, row: dict) -> bool:
    """Whether a transformation changes the network, not only edges that no path uses."""
    from agents.nat.cell import cell_ops
    from spaces.families.cell import live_edges

    ops = [
        cell_ops(tab.space, tab.space.from_json(row[k]["genome"]))
        for k in ("original", "transformed")
    ]
    return [(e, ops[0][e]) for e in live_edges(ops[0])] != [
        (e, ops[1][e]) for e in live_edges(ops[1])
    ]


def stored_trials(run_dir: Path) -> list:
    from search.config import load_run_config
    from search.store import load_records

    cfg, space, _ = load_run_config(run_dir / "config.yaml")
    return load_records(run_dir, cfg.storage, space, cfg.objectives, cfg.constraints)


def mean_sd(xs: list[float]) -> str:
    return (
        f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"
    )


class Table:
    """CIFAR-10 test accuracy (percent) and cost of cells, by lookup."""

    def __init__(self):
        from evaluators.table import TableEvaluator
        from spaces import load_space

        self.space = load_space(ROOT / "spaces" / "nb201.yaml")
        self.ev = TableEvaluator(self.space, str(CSV), "cifar10", "raspi4")

    def acc(self, g) -> float:
        return float(self.ev.evaluate(g).metrics["c10_test"])

    def cost(self, g) -> dict:
        return self.space.cost(g)


def transformed_stats(tab: Table, pairs: list[tuple[dict, dict]]) -> dict:
    """Before/after accuracy, improved fraction, largest relative cost change of (original, new) pairs."""
    before = [tab.acc(a) for a, _ in pairs]
    after = [tab.acc(b) for _, b in pairs]
    dflops = [tab.cost(b)["flops"] / tab.cost(a)["flops"] - 1 for a, b in pairs]
    dparams = [tab.cost(b)["params"] / tab.cost(a)["params"] - 1 for a, b in pairs]
    gains = [y - x for x, y in zip(before, after)]
    return {
        "before": statistics.mean(before),
        "after": statistics.mean(after),
        "gain": statistics.mean(gains),
        "improved": sum(g > 0 for g in gains) / len(gains),
        "worse": sum(g < 0 for g in gains) / len(gains),
        "unchanged": sum(tab.space.genome_id(a) == tab.space.genome_id(b) for a, b in pairs)
        / len(pairs),
        "max_dflops": max(dflops),
        "max_dparams": max(dparams),
        "mean_dflops": statistics.mean(dflops),
        "mean_dparams": statistics.mean(dparams),
    }


def random_pairs(tab: Table, archs: list[dict], seed: int) -> list[tuple[dict, dict]]:
    from agents.nat.cell import cell_ops, transform, valid_mask

    rng = np.random.default_rng(seed)
    out = []
    for g in archs:
        m = valid_mask(tab.space, cell_ops(tab.space, g))
        out.append(
            (g, transform(tab.space, g, [int(rng.choice(np.flatnonzero(m[k]))) for k in range(6)]))
        )
    return out


def oracle_pairs(tab: Table, archs: list[dict]) -> list[tuple[dict, dict]]:
    from agents.nat.cell import transform

    return [
        (
            g,
            max(
                (transform(tab.space, g, a) for a in itertools.product(range(3), repeat=6)),
                key=tab.acc,
            ),
        )
        for g in archs
    ]


def rule_pairs(tab: Table, archs: list[dict]) -> list[tuple[dict, dict]]:
    out = []
    for g in archs:
        t = {
            k: ("skip_connect" if k.startswith("op.") and v == "avg_pool_3x3" else v)
            for k, v in g.items()
        }
        out.append((g, tab.space.canonical(t)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--work", default="runs/bench-nat")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-archs", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--heldout", type=int, default=100)
    ap.add_argument("--real", type=int, default=3, help="cells scored by fine-tuning (0: skip)")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep finished runs of --work (same arguments), redo the rest",
    )
    ap.add_argument(
        "--finetune",
        type=int,
        nargs="+",
        default=[3, 8],
        help="fine-tuning epochs of the real cells",
    )
    args = ap.parse_args()
    work = ROOT / args.work
    if work.exists() and not args.reuse:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    tab = Table()
    space = tab.space

    # 100 held-out cells, fixed; every training run samples its cells avoiding them
    rng = random.Random(2019)
    held, ids = [], set()
    while len(held) < args.heldout:
        g = space.sample(rng)
        if space.genome_id(g) not in ids:
            ids.add(space.genome_id(g))
            held.append(g)
    (work / "heldout.json").write_text(json.dumps({"genomes": [space.to_json(g) for g in held]}))

    runs = []
    for s in args.seeds:
        out = work / f"table-s{s}"
        wall = cli(
            out,
            "run",
            "spaces/nb201.yaml",
            "--optimizer",
            "nat",
            *TABLE,
            "--seed",
            s,
            "--budget",
            100000,
            "--set",
            f"train_archs={args.train_archs}",
            "--set",
            f"epochs={args.epochs}",
            "--set",
            f"batch={args.batch}",
            "--set",
            f"transform={work / 'heldout.json'}",
            reuse=args.reuse,
        )
        rep = json.loads((out / "nat.json").read_text())
        assert rep["training"]["complete"] and rep["summary"]["transformed"] == len(held), rep[
            "summary"
        ]
        pairs = [
            (space.from_json(t["original"]["genome"]), space.from_json(t["transformed"]["genome"]))
            for t in rep["transforms"]
        ]
        assert not {space.genome_id(a) for a, _ in pairs} - ids  # the held-out cells, in order
        st = transformed_stats(tab, pairs)
        curve = rep["training"]["curve"]
        st.update(
            seed=s,
            wall=wall,
            updates=rep["training"]["updates"],
            first=statistics.mean(c["mean_reward"] for c in curve[:20]) * 100,
            last=statistics.mean(c["mean_reward"] for c in curve[-20:]) * 100,
            pairs=pairs,
            report=rep,
        )
        recs = stored_trials(out)
        st["trials"], st["duplicates"] = len(recs), len(recs) - len({r.genome_id for r in recs})
        runs.append(st)
        print(
            f"seed {s}: {st['before']:.2f} -> {st['after']:.2f} ({st['gain']:+.2f}), improved {st['improved']:.0%}",
            flush=True,
        )

    rand = [transformed_stats(tab, random_pairs(tab, held, s)) for s in range(10)]
    oracle = transformed_stats(tab, oracle_pairs(tab, held))
    rule_p = rule_pairs(tab, held)
    rule = transformed_stats(tab, rule_p)
    rule_ids = [space.genome_id(b) for _, b in rule_p]
    for r in runs:  # how often the agent's transformation is the hand rule's
        r["as_rule"] = statistics.mean(
            space.genome_id(b) == i for (_, b), i in zip(r["pairs"], rule_ids)
        )

    # real cells: the seed-0 agent's greedy transformations of held-out cells whose network it
    # changes (a change on a dead edge leaves the network as it is), fine-tuned two ways
    real = []
    if args.real:
        changed = [t for t in runs[0]["report"]["transforms"] if network_changes(tab, t)][
            : args.real
        ]
        (work / "real.json").write_text(
            json.dumps({"genomes": [t["original"]["genome"] for t in changed]})
        )
        for epochs in args.finetune:
            out = work / f"real-ft{epochs}"
            wall = cli(
                out,
                "run",
                "spaces/nb201.yaml",
                "--optimizer",
                "nat",
                *REAL,
                "--budget",
                2 * len(changed),
                "--set",
                f"evaluator.finetune.epochs={epochs}",
                "--set",
                f"init_policy={work / f'table-s{args.seeds[0]}'}",
                "--set",
                "train_archs=0",
                "--set",
                f"transform={work / 'real.json'}",
                reuse=args.reuse,
            )
            rep = json.loads((out / "nat.json").read_text())
            metrics = {r.genome_id: r.metrics for r in stored_trials(out)}
            real.append(
                {
                    "epochs": epochs,
                    "wall": wall,
                    "timings": json.loads((out / "timings.json").read_text())[-1],
                    "rows": rep["transforms"],
                    "summary": rep["summary"],
                    "metrics": metrics,
                }
            )

    write_md(args, runs, rand, oracle, rule, real, tab)


def write_md(args, runs, rand, oracle, rule, real, tab) -> None:
    agg = {
        k: [r[k] for r in runs]
        for k in (
            "before",
            "after",
            "gain",
            "improved",
            "worse",
            "unchanged",
            "max_dflops",
            "max_dparams",
            "mean_dflops",
            "mean_dparams",
        )
    }
    ragg = {k: [r[k] for r in rand] for k in agg}
    lines = [
        "# NAT on NAS-Bench-201",
        "",
        f"`python benchmarks/nat.py` ({time.strftime('%Y-%m-%d')}, 2 cores). Agent: two-layer GCN over the cell's DAG, "
        "one categorical head per edge (keep / skip_connect / none, a skip may only become none), REINFORCE with a "
        "moving-average baseline (decay 0.99), entropy bonus 0.003, Adam at 3e-4 (the paper's settings), "
        f"{args.batch} cells per update.",
        "",
        "## Tabular: CIFAR-10 test accuracy of 100 held-out cells",
        "",
        f"Each seed trains on {args.train_archs} sampled cells (none of the 100 held-out ones) for {args.epochs} "
        f"epochs ({args.train_archs * args.epochs // args.batch} updates) through "
        "`search run spaces/nb201.yaml --optimizer nat --set preset=nb201-table --set transform=heldout.json`, "
        "every cell evaluated once through the run's evaluator (the table), then transforms the held-out cells "
        "with its greedy (most probable) transitions. Accuracy: NAS-Bench-201's CIFAR-10 test accuracy, percent.",
        "",
        "| | mean acc before | mean acc after | mean gain (points) | improved | unchanged | worse | max FLOPs change | max params change | mean FLOPs change |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| NAT, seed {r['seed']} | {r['before']:.2f} | {r['after']:.2f} | {r['gain']:+.2f} | "
            f"{r['improved']:.0%} | {r['unchanged']:.0%} | {r['worse']:.0%} | {r['max_dflops']:+.1%} | "
            f"{r['max_dparams']:+.1%} | {r['mean_dflops']:+.1%} |"
        )
    lines += [
        f"| **NAT, mean ± sd of {len(runs)} seeds** | {mean_sd(agg['before'])} | **{mean_sd(agg['after'])}** | "
        f"**{mean_sd(agg['gain'])}** | {statistics.mean(agg['improved']):.0%} | {statistics.mean(agg['unchanged']):.0%} | "
        f"{statistics.mean(agg['worse']):.0%} | {max(agg['max_dflops']):+.1%} | {max(agg['max_dparams']):+.1%} | "
        f"{statistics.mean(agg['mean_dflops']):+.1%} |",
        f"| random transitions (same mask), mean ± sd of 10 seeds | {mean_sd(ragg['before'])} | {mean_sd(ragg['after'])} | "
        f"{mean_sd(ragg['gain'])} | {statistics.mean(ragg['improved']):.0%} | {statistics.mean(ragg['unchanged']):.0%} | "
        f"{statistics.mean(ragg['worse']):.0%} | {max(ragg['max_dflops']):+.1%} | {max(ragg['max_dparams']):+.1%} | "
        f"{statistics.mean(ragg['mean_dflops']):+.1%} |",
        f"| reference: avg_pool_3x3 -> skip_connect everywhere | {rule['before']:.2f} | {rule['after']:.2f} | {rule['gain']:+.2f} | "
        f"{rule['improved']:.0%} | {rule['unchanged']:.0%} | {rule['worse']:.0%} | {rule['max_dflops']:+.1%} | "
        f"{rule['max_dparams']:+.1%} | {rule['mean_dflops']:+.1%} |",
        f"| upper bound: best of all 3^6 transitions per cell | {oracle['before']:.2f} | {oracle['after']:.2f} | {oracle['gain']:+.2f} | "
        f"{oracle['improved']:.0%} | {oracle['unchanged']:.0%} | {oracle['worse']:.0%} | {oracle['max_dflops']:+.1%} | "
        f"{oracle['max_dparams']:+.1%} | {oracle['mean_dflops']:+.1%} |",
        "",
        f"- NAT raises the mean CIFAR-10 accuracy of the held-out cells by **{statistics.mean(agg['gain']):+.2f} points** "
        f"(every seed: {', '.join(f'{g:+.2f}' for g in agg['gain'])}); a random transformation with the same allowed "
        f"transitions changes it by {statistics.mean(ragg['gain']):+.2f}.",
        f"- No transformation raised FLOPs or parameters (largest change {max(agg['max_dflops']):+.1%} FLOPs, "
        f"{max(agg['max_dparams']):+.1%} params; checked with `space.cost` on every pair).",
        "- Training (mean reward of sampled transformations, points): "
        + "; ".join(
            f"seed {r['seed']}: {r['first']:+.2f} over the first 20 updates -> {r['last']:+.2f} over the last 20, "
            f"{r['trials']} trials, {r['duplicates']} duplicates, {r['wall']:.0f} s"
            for r in runs
        )
        + ".",
        "- The references say what is reachable with these transitions: on the table, replacing pooling by a "
        "skip pays most often and removing a convolution rarely does. The agent's transformation is the hand "
        "rule's for "
        + ", ".join(f"{r['as_rule']:.0%} (seed {r['seed']})" for r in runs)
        + " of the held-out cells: "
        "it finds that rule from rewards alone; the per-cell best (which also exploits the table's noise "
        "between equivalent cells) stays above it.",
        "",
    ]
    if real:
        lines += [
            "## Real cells: fine-tuned on digits",
            "",
            f"The seed-{args.seeds[0]} agent (`--set init_policy=RUN_DIR --set train_archs=0 --set transform=real.json`) "
            f"transforms the first {len(real[0]['rows'])} held-out cells whose network it changes, and the `train` "
            "evaluator scores originals and transformations: the NB201 cell network (3 stages x 5 cells, 16 "
            "channels, 32x32 input) inherits from a supernet pre-trained on digits (preset `fast`: 4 epochs of "
            "sandwich-rule pre-training, cached), is fine-tuned (SGD, lr 0.02, cosine, batch 64) and scored on "
            "digits' validation split (`val_acc`, the run's objective; 360 images) and its test split. Latency: "
            "PyTorch on this CPU, batch 1 (preset `fast`: 5 repeats). One fine-tuning seed per cell.",
            "",
        ]
        for rr in real:
            t = rr["timings"]
            lines += [
                f"**{rr['epochs']} fine-tuning epochs** (set-up {t.get('setup_s', 0):.0f} s, searching "
                f"{t.get('search_s', 0):.0f} s, whole command {rr['wall']:.0f} s):",
                "",
                "| cell | transitions | val acc before -> after | test acc before -> after | latency ms before -> after | FLOPs | params | table CIFAR-10 before -> after |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for row in rr["rows"]:
                a, b = row["original"], row["transformed"]
                ma, mb = (
                    rr["metrics"].get(a["genome_id"], {}),
                    rr["metrics"].get(b["genome_id"], {}),
                )
                ga, gb = tab.space.from_json(a["genome"]), tab.space.from_json(b["genome"])
                ch = ", ".join(f"{k}: {v}" for k, v in row["changes"].items())

                def pair(key, fmt, ma=ma, mb=mb):
                    return (
                        f"{ma[key]:{fmt}} -> {mb[key]:{fmt}}" if key in ma and key in mb else "n/a"
                    )

                lines.append(
                    f"| `{a['cell']}` | {ch} | {pair('val_acc', '.4f')} | {pair('test_acc', '.4f')} | "
                    f"{pair('latency_ms', '.2f')} | {a['flops'] / 1e6:.1f}M -> {b['flops'] / 1e6:.1f}M | "
                    f"{a['params'] / 1e3:.1f}k -> {b['params'] / 1e3:.1f}k | {tab.acc(ga):.2f} -> {tab.acc(gb):.2f} |"
                )
            sm = rr["summary"]
            lat = [
                rr["metrics"][r["transformed"]["genome_id"]]["latency_ms"]
                / rr["metrics"][r["original"]["genome_id"]]["latency_ms"]
                - 1
                for r in rr["rows"]
                if r["original"]["genome_id"] in rr["metrics"]
                and r["transformed"]["genome_id"] in rr["metrics"]
            ]
            rr["lat"] = statistics.mean(lat) if lat else float("nan")
            if "mean_gain" in sm:
                lines += [
                    "",
                    f"Mean validation-accuracy gain {sm['mean_gain'] * 100:+.2f} points "
                    f"({sm['improved']:.0%} of the cells improved); mean latency change {rr['lat']:+.0%}; "
                    "FLOPs and params never rose.",
                    "",
                ]
        gains = [rr["summary"]["mean_gain"] * 100 for rr in real if "mean_gain" in rr["summary"]]
        if len(gains) == len(real):
            verdict = (
                "costs accuracy"
                if max(gains) < 0
                else "gains accuracy"
                if min(gains) > 0
                else "is mixed"
            )
            lines += [
                f"On digits with these short recipes the table-trained agent's rewrite {verdict}: "
                + ", ".join(
                    f"{g:+.2f} points after {rr['epochs']} epochs" for g, rr in zip(gains, real)
                )
                + " of fine-tuning, while the rewritten cells run "
                + ", ".join(f"{-rr['lat']:.0%}" for rr in real)
                + " faster (pooling costs time on a CPU though "
                "FLOPs count it as free). What the table rewards (CIFAR-10, 200 epochs from scratch) need not hold "
                "for a few epochs of fine-tuning inherited weights on 8x8 digits scaled to 32x32; training the agent "
                "on this evaluator's rewards (`--set evaluator=train`, a few hundred fine-tunings) is the faithful "
                "way and did not fit this benchmark's time. Latencies are single measurements on a shared 2-core "
                "machine.",
                "",
            ]
    (RESULTS / "nat.md").write_text("\n".join(lines) + "\n")
    print("wrote", RESULTS / "nat.md")


if __name__ == "__main__":
    main()
