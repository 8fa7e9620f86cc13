"""DCP with the adaptive stopping rule on ResNet-20 / CIFAR-10 subset, against L1-norm and random
filter pruning at the same per-layer keep counts (so the same FLOPs).

For each epsilon: `search run spaces/resnet20.yaml --optimizer dcp --set epsilon=E` (DCP prunes
the supernet's full network: stage-wise discrimination-aware fine-tuning, greedy channel
selection, re-optimisation, adaptive stop; then the evaluator fine-tunes and scores it). Then
one `given` run evaluates the full network and, for every epsilon, the L1-norm and random
genomes with DCP's per-layer counts, inheriting the same pre-trained supernet and fine-tuned by
the same recipe. Shares the CIFAR-10 subset and the cached supernet with benchmarks/pruning.py.

Writes benchmarks/results/dcp.md.

    python benchmarks/dcp.py [--epsilons 0.1 0.01 0.001] [--per-class 1000] [--pretrain-epochs 20]

The base is trained plainly (`--sandwich 1`: the full network alone), as DCP and L1-norm pruning
start from an ordinary pre-trained model; `--sandwich 4` uses the supernet of benchmarks/pruning.py.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import DCP_DATA, add_cifar_args, cli, dcp_supernet, fresh_work, same_counts  # noqa: E402

PAPER = {0.1: "27x, 12.7 %", 0.01: "5.4x, 6.6 %", 0.001: "2.9x, 5.4 %"}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epsilons", type=float, nargs="+", default=[0.1, 0.01, 0.001])
    add_cifar_args(ap, "bench-dcp", "dcp.md", **DCP_DATA)
    ap.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="fine-tuning seeds per network in the comparison (the runs' own and seeds - 1 more)",
    )
    ap.add_argument(
        "--keep-runs",
        action="store_true",
        help="reuse the DCP and baseline runs already finished in --work (same settings)",
    )
    args = ap.parse_args()

    work, set_args = fresh_work(args, keep=args.keep_runs)
    sets = set_args[1::2]
    times_file = work / "times.json"
    times = (
        json.loads(times_file.read_text()) if times_file.exists() else {}
    )  # "0.1" / "baselines": seconds
    for eps in args.epsilons:
        if (work / f"dcp-{eps:g}" / "dcp.json").exists() and f"{eps:g}" in times:
            continue
        t0 = time.time()
        cli(
            "run",
            "spaces/resnet20.yaml",
            "--optimizer",
            "dcp",
            "--set",
            f"epsilon={eps}",
            "--seed",
            0,
            *set_args,
            "--out",
            work / f"dcp-{eps:g}",
        )
        times[f"{eps:g}"] = time.time() - t0
        times_file.write_text(json.dumps(times))

    from evaluators.registry import make_evaluator
    from search.config import load_run_config
    from search.store import RunStore
    from spaces.builder import importance

    cfg, space, _ = load_run_config(ROOT / "spaces" / "resnet20.yaml", sets)
    ev = make_evaluator(cfg, space, "spaces/resnet20.yaml")
    ev.setup()  # the cached pre-trained supernet, as DCP found it
    imp = importance(ev.supernet)
    space = ev.space
    rng = random.Random(0)
    dcp, baselines = {}, [space.to_json(space.full())]
    for eps in args.epsilons:
        d = json.loads((work / f"dcp-{eps:g}" / "dcp.json").read_text())
        rec = RunStore(
            work / f"dcp-{eps:g}", space, cfg.objectives, cfg.constraints, cfg.storage
        ).records()
        g = space.from_json(d["genome"])
        gl, gr = same_counts(space, g, imp, rng)
        dcp[eps] = {
            "report": d,
            "genome": g,
            "metrics": next(r.metrics for r in rec if r.complete),
            "l1": gl,
            "random": gr,
        }
        baselines += [space.to_json(gl), space.to_json(gr)]
    (work / "baselines.json").write_text(json.dumps(baselines))
    if "baselines" not in times:
        t0 = time.time()
        cli(
            "run",
            "spaces/resnet20.yaml",
            "--optimizer",
            "given",
            "--set",
            f"genomes={work / 'baselines.json'}",
            "--budget",
            len({json.dumps(b, sort_keys=True) for b in baselines}),
            "--seed",
            0,
            *set_args,
            "--out",
            work / "baselines",
        )
        times["baselines"] = time.time() - t0
        times_file.write_text(json.dumps(times))
    t_base = times["baselines"]
    got = {
        r.genome_id: r.metrics
        for r in RunStore(
            work / "baselines", space, cfg.objectives, cfg.constraints, cfg.storage
        ).records()
        if r.complete
    }
    full = got[space.genome_id(space.full())]
    fc = space.cost(space.full())

    def acc(m):
        return f"{100 * m['test_acc']:.2f}"

    rows = [f"| full network | 1.00x | 1.00x | {fc['flops'] / 1e6:.1f} | {acc(full)} | | | | |"]
    for eps in args.epsilons:
        d = dcp[eps]
        m = d["metrics"]
        l1 = got[space.genome_id(d["l1"])]
        rnd = got[space.genome_id(d["random"])]
        layers = d["report"]["layers"]
        stops = sum(v["stopped"] == "epsilon" for v in layers.values())
        rows.append(
            f"| DCP eps={eps:g} | **{fc['flops'] / m['flops']:.2f}x** | {fc['params'] / m['params']:.2f}x | "
            f"{m['flops'] / 1e6:.1f} | **{acc(m)}** | {acc(l1)} | {acc(rnd)} | {stops}/{len(layers)} "
            f"({d['report'].get('time_s', 0):.0f} s) | {PAPER.get(eps, '')} |"
        )
    kept = {
        eps: " ".join(f"{v['kept']}/{v['channels']}" for v in dcp[eps]["report"]["layers"].values())
        for eps in args.epsilons
    }
    lines = (
        [
            "# DCP: discrimination-aware channel pruning with adaptive stopping (ResNet-20, CIFAR-10 subset)",
            "",
            f"`python benchmarks/dcp.py --per-class {args.per_class} --test-per-class {args.test_per_class} "
            f"--pretrain-epochs {args.pretrain_epochs:g} --sandwich {args.sandwich}` ({time.strftime('%Y-%m-%d')}, 2 CPU cores; "
            + ", ".join(f"eps {e:g}: {times[f'{e:g}'] / 60:.1f} min" for e in args.epsilons)
            + f"; baselines {t_base / 60:.1f} min).",
            "",
            f"Data: {args.per_class} CIFAR-10 train images per class (90 % train, 10 % validation) from "
            f"`../shared/data/cifar10_jpg.zip`, {args.test_per_class} test images per class, no augmentation: a "
            "subset, so accuracies are far below the paper's (full CIFAR-10, hundreds of epochs). The base: "
            f"`spaces/resnet20.yaml`'s full ResNet-20 pre-trained {args.pretrain_epochs:g} epochs "
            + (
                "alone (`--sandwich 1`: a plain base, as the papers start from). "
                if args.sandwich == 1
                else f"as a supernet (sandwich rule, {args.sandwich} sub-networks a batch). "
            )
            + "DCP (defaults: lambda 1, each stage head first trained alone (10 "
            "passes over 2,048 cached features), then one stage fine-tuning epoch with the stage's "
            "discrimination-aware loss, 256 selection images, 3 Adam steps (lr 0.005) of re-optimisation per "
            "added channel, retried at a 4x smaller lr when they lower nothing) prunes the 9 block-inner channel groups; every network (DCP's, L1's, random's, the full "
            f"one) is then fine-tuned {args.finetune_epochs:g} epochs (SGD lr 0.02, cosine) and scored on the test "
            "images. L1 / random keep the same number of channels per layer as DCP (equal FLOPs and params).",
            "",
            "| network | FLOPs reduction | params reduction | MFLOPs | test acc % | L1-norm, same FLOPs | random, same "
            "FLOPs | layers stopped by epsilon (DCP time) | paper, VGG / CIFAR-10 (reduction, error) |",
            "|---|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        + rows
        + ["", "Channels kept per block (s1.b0 ... s3.b2):", ""]
        + [f"- eps {e:g}: {k}" for e, k in kept.items()]
    )
    if args.seeds > 1:
        lines += [""] + seed_table(args, work, ev, dcp, got, full)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def seed_table(args, work: Path, ev, dcp: dict, got: dict, full: dict) -> list[str]:
    """Every network of the table fine-tuned with `args.seeds - 1` more seeds (in-process, the
    evaluator's own recipe; DCP's network from DCP's weights): test accuracy as mean and standard
    error over the seeds, and DCP minus L1 per seed (paired: same seed, same FLOPs)."""
    import statistics

    space, pre = ev.space, ev.supernet
    cache = (
        work / "seeds.json"
    )  # test accuracies of the extra seeds, so a rerun adds what is missing
    done = json.loads(cache.read_text()) if cache.exists() else {}

    def accs(name: str, genome, first: dict, supernet) -> list[float]:
        out = [first["test_acc"]]
        for seed in range(1, args.seeds):
            key = f"{name}/{seed}"
            if key not in done:
                ev.supernet = supernet
                r = ev.evaluate(genome, seed=1000 + seed)
                ev.supernet = pre
                if r.status != "complete":
                    raise RuntimeError(f"{name} seed {seed}: {r.reason}")
                done[key] = r.metrics["test_acc"]
                cache.write_text(json.dumps(done, indent=1))
                print(f"{key}: test acc {100 * done[key]:.2f}", flush=True)
            out.append(done[key])
        return [100 * a for a in out]

    def ms(v: list[float]) -> str:
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v) / len(v) ** 0.5:.2f}"

    t0 = time.time()
    fa = accs("full", space.full(), full, pre)
    rows = [f"| full network | {ms(fa)} | | | |"]
    for eps in args.epsilons:
        d = dcp[eps]
        da = accs(
            f"dcp-{eps:g}", d["genome"], d["metrics"], dcp_supernet(pre, work / f"dcp-{eps:g}")
        )
        la = accs(f"l1-{eps:g}", d["l1"], got[space.genome_id(d["l1"])], pre)
        ra = accs(f"random-{eps:g}", d["random"], got[space.genome_id(d["random"])], pre)
        diff = [a - b for a, b in zip(da, la)]
        rows.append(f"| DCP eps={eps:g} | **{ms(da)}** | {ms(la)} | {ms(ra)} | {ms(diff)} |")
    return [
        f"## Over {args.seeds} fine-tuning seeds",
        "",
        f"Each network fine-tuned {args.seeds} times (the runs' seed above, then seeds 1001-{1000 + args.seeds - 1} "
        f"in-process with the same recipe; {(time.time() - t0) / 60:.1f} min this time, the seeds' accuracies kept in "
        "`seeds.json` of the work folder): test accuracy %, mean ± standard error over the seeds; the last "
        "column pairs DCP with L1 seed by seed.",
        "",
        "| network | DCP | L1-norm, same FLOPs | random, same FLOPs | DCP - L1 |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]


if __name__ == "__main__":
    main()
