"""Filter pruning of ResNet-20 on a CIFAR-10 subset: the `ga` optimiser's accuracy x FLOPs front
against L1-norm filter pruning (Li et al., ICLR 2017) and random filter pruning at the same
FLOPs.

1. `search run spaces/resnet20.yaml --optimizer ga` (NSGA-II over val_acc up, FLOPs down) on
   the subset; its supernet is pre-trained once with the sandwich rule and cached.
2. For every point of the GA's front, the same number of filters per layer group chosen by the
   L1 norm of the pre-trained supernet's filters (summed over the layers writing a group, as the
   residual ties demand), and chosen at random: identical FLOPs by construction. These genomes
   are evaluated by the `given` optimiser with the same inherited weights and the same
   fine-tuning recipe.

Writes benchmarks/results/pruning.md.

    python benchmarks/pruning.py [--data ../shared/data/cifar10_jpg.zip] [--per-class 400]
        [--budget 24] [--work runs/bench-pruning]
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

from benchmarks.common import add_cifar_args, cli, fresh_work, same_counts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--budget", type=int, default=24)
    ap.add_argument("--population", type=int, default=8)
    add_cifar_args(ap, "bench-pruning", "pruning.md")
    args = ap.parse_args()

    work, set_args = fresh_work(args)
    sets = set_args[1::2]
    t0 = time.time()
    cli(
        "run",
        "spaces/resnet20.yaml",
        "--optimizer",
        "ga",
        "--budget",
        args.budget,
        "--seed",
        0,
        "--set",
        f"population_size={args.population}",
        *set_args,
        "--out",
        work / "ga",
    )
    t_ga = time.time() - t0

    # the GA front, and the L1 / random genomes at the same per-group counts
    from evaluators.registry import make_evaluator
    from search.config import load_run_config
    from spaces.builder import importance

    cfg, space, _ = load_run_config(ROOT / "spaces" / "resnet20.yaml", sets)
    ev = make_evaluator(cfg, space, "spaces/resnet20.yaml")
    ev.setup()  # the cached supernet of the GA run
    imp = importance(ev.supernet)
    space = ev.space
    front = json.loads((work / "ga" / "pareto.json").read_text())["front"]
    full_flops = space.cost(space.full())["flops"]
    rng = random.Random(0)
    l1, rnd = [], []
    for p in front:
        gl, gr = same_counts(space, space.from_json(p["genome"]), imp, rng)
        l1.append(space.to_json(gl))
        rnd.append(space.to_json(gr))
    (work / "l1.json").write_text(json.dumps(l1))
    (work / "random.json").write_text(json.dumps(rnd))
    t1 = time.time()
    for name in ("l1", "random"):
        cli(
            "run",
            "spaces/resnet20.yaml",
            "--optimizer",
            "given",
            "--set",
            f"genomes={work / (name + '.json')}",
            "--budget",
            len(front),
            "--seed",
            0,
            *set_args,
            "--out",
            work / name,
        )
    t_base = time.time() - t1

    def by_id(run):
        from search.store import RunStore

        st = RunStore(work / run, space, cfg.objectives, cfg.constraints, cfg.storage)
        return {r.genome_id: r.metrics for r in st.records() if r.complete}

    ml1, mrnd = by_id("l1"), by_id("random")
    sup = json.loads((work / "ga" / "supernet.json").read_text())
    rows, wins = [], 0
    for p, gl, gr in zip(front, l1, rnd):
        a = ml1[space.genome_id(space.from_json(gl))]
        b = mrnd[space.genome_id(space.from_json(gr))]
        m = p["metrics"]
        wins += m["test_acc"] >= a["test_acc"]
        rows.append(
            f"| {m['flops'] / 1e6:.1f} ({100 * m['flops'] / full_flops:.0f} %) | {m['params'] / 1e3:.0f}k | "
            f"{100 * m['val_acc']:.2f} / **{100 * m['test_acc']:.2f}** | {100 * a['val_acc']:.2f} / "
            f"{100 * a['test_acc']:.2f} | {100 * b['val_acc']:.2f} / {100 * b['test_acc']:.2f} |"
        )
    ga_mean = sum(p["metrics"]["test_acc"] for p in front) / len(front)
    l1_mean = sum(v["test_acc"] for v in ml1.values()) / len(ml1)
    rnd_mean = sum(v["test_acc"] for v in mrnd.values()) / len(mrnd)
    lines = (
        [
            "# Filter pruning: GA front vs L1-norm and random pruning (ResNet-20, CIFAR-10 subset)",
            "",
            f"`python benchmarks/pruning.py --per-class {args.per_class} --budget {args.budget}` "
            f"({time.strftime('%Y-%m-%d')}, 2 CPU cores; GA run {t_ga / 60:.1f} min including pre-training, "
            f"baselines {t_base / 60:.1f} min).",
            "",
            f"Data: {args.per_class} CIFAR-10 train images per class from `../shared/data/cifar10_jpg.zip` (90 % "
            f"train, 10 % validation), {args.test_per_class} test images per class, no augmentation. Supernet: "
            f"`spaces/resnet20.yaml` (filter masks on the 3 residual-tied stage groups and the 9 block-inner "
            f"groups, {full_flops / 1e6:.1f} MFLOPs), pre-trained {args.pretrain_epochs:g} epochs with the "
            f"sandwich rule (full network val acc {100 * sup.get('val_acc', float('nan')):.2f} %). Every "
            f"candidate inherits its filters and is fine-tuned {args.finetune_epochs:g} epochs (SGD lr 0.02, "
            "cosine), then scored on validation (the search's objective) and test.",
            "",
            f"GA: `search run spaces/resnet20.yaml --optimizer ga --set population_size={args.population} "
            f"--budget {args.budget}` (NSGA-II over val_acc and FLOPs). L1 / random: the same number of "
            "filters per group as each GA front point, chosen by the supernet's L1 filter norms (summed over "
            "the layers that write a residual-tied group) or uniformly at random, so FLOPs and params are "
            "identical; fine-tuned and scored the same way (`--optimizer given`).",
            "",
            "| FLOPs (M, of full) | params | GA val / test % | L1-norm val / test % | random val / test % |",
            "|---|---:|---:|---:|---:|",
        ]
        + rows
        + [
            "",
            f"Mean test accuracy over the {len(front)} front points: GA {100 * ga_mean:.2f} %, "
            f"L1-norm {100 * l1_mean:.2f} %, random {100 * rnd_mean:.2f} %. The GA's filters are at least as "
            f"accurate as L1's at {wins} of {len(front)} points (test accuracy; {data_note(args)}).",
        ]
    )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def data_note(args) -> str:
    return f"{10 * args.test_per_class} test images, one image = {100 / (10 * args.test_per_class):.2f} points"


if __name__ == "__main__":
    main()
