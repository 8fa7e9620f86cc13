"""A user's own network compressed three ways at equal FLOPs (issue: your own network).

The ResNet-18 example (`examples/resnet18.py`, width 16 as `examples/resnet18.yaml`) is trained
once on a CIFAR-10 subset (`../shared/data/cifar10_jpg.zip`), then compressed to 50 % and 25 %
of its FLOPs by
  (a) GA: `search run` with the `ga` optimiser over the generated masks, val_acc after a short
      fine-tune as its objective, the FLOPs held in [0.9, 1.0] x the target (a constraint);
  (b) L1: Torch-Pruning's own magnitude pruner (`tp.pruner.MagnitudePruner`, L1 importance,
      one pruning ratio for every layer, found by bisection to meet the target);
  (c) random: masks keeping as many channels per group as (b) (rounded to the space's channel
      multiple, then within (b)'s FLOPs), chosen at random.
Every compressed network then gets the same fine-tuning (`--epochs`) and is scored on the test
images; the whole method is repeated for each seed (the GA's search and the random masks
differ by seed; L1 is deterministic, its fine-tuning is seeded). Writes
benchmarks/results/own_model.md and own_model.json.

    python benchmarks/own_model.py [--seeds 3] [--per-class 500] [--budget 24]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import DEFAULT_DATA, RESULTS  # noqa: E402 - after the path above

SPACE = ROOT / "examples" / "resnet18.yaml"


def run_sets(args, cache: Path) -> list[str]:
    """The example on the CIFAR-10 subset, with the base's training recipe."""
    return [
        "dataset=imagefolder",
        f"dataset.path={Path(args.data).resolve()}",
        f"dataset.per_class={args.per_class}",
        f"dataset.test_per_class={args.test_per_class}",
        "dataset.val_fraction=0.1",
        f"pretrain.epochs={args.base_epochs}",
        "pretrain.batch_size=128",
        "pretrain.lr=0.1",
        "pretrain.weight_decay=0.0005",
        f"evaluator.finetune.epochs={args.proxy_epochs}",
        "evaluator.finetune.batch_size=128",
        "evaluator.finetune.lr=0.02",
        "latency=none",
        "dimensions.resolution.low=1.0",  # every method at the full input size
        f"cache={cache}",
    ]


def flops_of(net, r: int = 32) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    was = net.training
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 3, r, r))
    net.train(was)
    return int(fc.get_total_flops())


def l1_pruned(base, space, target: int):
    """Torch-Pruning's magnitude pruner (L1), one ratio for every layer, bisected to the
    largest network within `target` FLOPs. Returns (network, per-group kept counts)."""
    import torch_pruning as tp

    head = space.family.analysis.head
    lo, hi, best = 0.0, 0.95, None
    for _ in range(14):
        ratio = (lo + hi) / 2
        net = copy.deepcopy(base).eval()
        pruner = tp.pruner.MagnitudePruner(
            net,
            torch.zeros(1, 3, 32, 32),
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=[net.get_submodule(head)],
            round_to=None,  # rounded counts move the FLOPs in steps too coarse to meet a target
        )
        pruner.step()
        if flops_of(net) <= target:
            best, hi = net, ratio
        else:
            lo = ratio
    mods = dict(best.named_modules())
    counts = {g.name: mods[g.root].out_channels for g in space.family.analysis.groups}
    return best, counts


def random_genome(space, counts: dict[str, int], rng: random.Random, target: int) -> dict:
    """Channels at random, as many per group as L1 keeps, rounded to the space's channel
    multiple (a count off the multiple would be cut down to it when built): up first, then the
    group keeping the largest share loses a multiple until the FLOPs are within `target`."""
    m = space.family.spec.channel_multiple
    sizes = space.family.groups()
    keep = {g: min(sizes[g], -(-k // m) * m) for g, k in counts.items()}

    def genome():
        g = dict(space.full())
        for group, k in keep.items():
            chosen = set(rng.sample(range(sizes[group]), k))
            g[f"mask.{group}"] = tuple(int(i in chosen) for i in range(sizes[group]))
        return g

    while space.cost(genome())["flops"] > target:
        group = max(keep, key=lambda x: (keep[x] / sizes[x], x))
        if keep[group] <= m:
            break
        keep[group] -= m
    return genome()


def finetune_and_test(net, data, args, seed: int) -> tuple[float, float]:
    from evaluators.train import TrainRecipe, evaluate, fine_tune, recalibrate_bn

    recipe = TrainRecipe(epochs=args.epochs, batch_size=128, lr=0.02, weight_decay=5e-4)
    recalibrate_bn(net, data.train, 32)
    t0 = time.time()
    fine_tune(net, data, 32, recipe, seed)
    return evaluate(net, data.test, 32)[0], time.time() - t0


def ga_search(args, cache: Path, target: int, seed: int, out: Path) -> dict:
    """`search run` with ga at the FLOPs target; returns the best feasible genome's entry."""
    import subprocess

    cons = f"constraints=[{{metric: flops, min: {int(0.9 * target)}, max: {target}}}]"
    cmd = [
        sys.executable,
        "-m",
        "search.cli",
        "run",
        str(SPACE),
        "--out",
        str(out),
        "--optimizer",
        "ga",
        "--budget",
        str(args.budget),
        "--seed",
        str(seed),
        "--workers",
        "0",
        "--no-progress",
        "--set",
        "objectives=[{metric: val_acc}]",
        "--set",
        cons,
        "--set",
        "population_size=8",
    ]
    for s in run_sets(args, cache):
        cmd += ["--set", s]
    # a run folder is reused only by the same command (another subset or budget is another run)
    sig = hashlib.sha256(" ".join(cmd[3:]).encode()).hexdigest()[:8]
    out = out.with_name(f"{out.name}-{sig}")
    cmd[cmd.index("--out") + 1] = str(out)
    if not (out / "pareto.json").exists():
        if out.exists():  # an earlier attempt stopped part-way: start it again
            cmd.append("--overwrite")
        print("$", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    best = json.loads((out / "best" / "metrics.json").read_text())
    timings = json.loads((out / "timings.json").read_text())
    best["search_s"] = sum(t["search_s"] for t in timings)
    best["trials"] = sum(t["trials"] for t in timings)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--base-epochs", type=float, default=30)
    ap.add_argument(
        "--proxy-epochs", type=float, default=1, help="the GA's fine-tuning per candidate"
    )
    ap.add_argument(
        "--epochs", type=float, default=8, help="every compressed network's fine-tuning"
    )
    ap.add_argument("--budget", type=int, default=24, help="GA candidates per search")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--targets", default="0.5,0.25")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-own-model"))
    args = ap.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"own_model.py: error: {args.data} does not exist")
    work, cache = Path(args.work), Path(args.work) / "cache"
    work.mkdir(parents=True, exist_ok=True)

    from evaluators.registry import make_evaluator
    from search.config import load_run_config

    cfg, space, _ = load_run_config(SPACE, run_sets(args, cache))
    ev = make_evaluator(cfg, space, str(SPACE))
    t0 = time.time()
    ev.setup()  # the base: the example trained once (cached)
    space, data, base = ev.space, ev.data, ev.supernet
    base_flops = flops_of(base)
    from evaluators.train import evaluate

    state = {
        "base": {
            "test_acc": evaluate(base, data.test, 32)[0],
            "flops": base_flops,
            "params": sum(p.numel() for p in base.parameters()),
            "train_s": ev.supernet_info.get("train_time_s"),
            "setup_s": time.time() - t0,
        },
        "space": {
            "dimensions": len(space.dims),
            "groups": len(space.family.groups()),
            "channels": sum(space.family.groups().values()),
        },
        "args": {k: v for k, v in vars(args).items() if k != "work"},
        "rows": [],
    }
    saved = work / "own_model.json"
    if saved.exists():  # rows of an interrupted run with the same arguments are kept
        old = json.loads(saved.read_text())
        if old.get("args") == state["args"]:
            state["rows"] = old["rows"]
    done = {(r["target"], r["seed"], r["method"]) for r in state["rows"]}
    for frac in map(float, args.targets.split(",")):
        target = int(frac * base_flops)
        l1_net, counts = l1_pruned(base, space, target)
        l1_flops = flops_of(l1_net)  # random keeps within L1's FLOPs: equal to it, not above
        for seed in range(args.seeds):
            ga = ga_search(args, cache, target, seed, work / f"ga-{frac}-s{seed}")
            g_ga = space.from_json(ga["genome"])
            rows = [
                ("GA", space.build(g_ga, base), ga),
                ("L1 (Torch-Pruning)", copy.deepcopy(l1_net), {}),
                (
                    "random",
                    space.build(random_genome(space, counts, random.Random(seed), l1_flops), base),
                    {},
                ),
            ]
            for method, net, extra in rows:
                if (frac, seed, method) in done:
                    continue
                acc, ft_s = finetune_and_test(net, data, args, seed)
                row = {
                    "target": frac,
                    "seed": seed,
                    "method": method,
                    "test_acc": acc,
                    "flops": flops_of(net),
                    "params": sum(p.numel() for p in net.parameters()),
                    "finetune_s": ft_s,
                }
                if extra:
                    row.update(search_s=extra["search_s"], trials=extra["trials"])
                state["rows"].append(row)
                print(json.dumps(row), flush=True)
                saved.write_text(json.dumps(state, indent=2))
    write(state, args)
    return 0


def write(state: dict, args) -> None:
    b, sp = state["base"], state["space"]
    lines = [
        f"# Your own network: ResNet-18 (examples/resnet18.py) compressed at equal FLOPs ({time.strftime('%Y-%m-%d')})",
        "",
        f"`python benchmarks/own_model.py --seeds {args.seeds} --per-class {args.per_class} --budget {args.budget}` "
        f"on this machine (2 CPU cores). CIFAR-10 subset from `cifar10_jpg.zip`: {args.per_class} training "
        f"images a class (10 % of them validation), {args.test_per_class} test images a class.",
        "",
        f"- Base: the example's ResNet-18 (width 16), {b['flops'] / 1e6:.1f} MFLOPs, {b['params']:,} parameters, "
        f"trained once for {args.base_epochs:g} epochs: **{100 * b['test_acc']:.2f} %** test accuracy.",
        f"- The generated space: {sp['groups']} coupled channel groups ({sp['channels']} channels), "
        f"{sp['dimensions']} dimensions (a mask per group; the resolution held at 32), 2^{sp['channels']} masks.",
        f"- GA: `search run examples/resnet18.yaml --optimizer ga` (population 8), {args.budget} candidates "
        f"per search, each fine-tuned {args.proxy_epochs:g} epoch(s) and scored on the validation images; "
        "FLOPs held within [0.9, 1.0] x the target. L1: Torch-Pruning's MagnitudePruner, one ratio for "
        "every layer (bisected to the largest network within the target). Random: per-group channel counts of the L1 result rounded to the space's channel multiple and held within L1's FLOPs, channels at random.",
        f"- Every compressed network: batch norm recalibrated, then the same {args.epochs:g}-epoch "
        "fine-tuning (SGD, lr 0.02, cosine), test accuracy. Mean ± std over the seeds; each seed repeats "
        "the whole method.",
        "",
        "| FLOPs target | method | test acc % | FLOPs (M) | params | GA search: s (candidates, s each) | fine-tune s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for frac in sorted({r["target"] for r in state["rows"]}, reverse=True):
        rows = [r for r in state["rows"] if r["target"] == frac]
        by = {}
        for r in rows:
            by.setdefault(r["method"], []).append(r)
        means = {m: statistics.mean(x["test_acc"] for x in rs) for m, rs in by.items()}
        top = max(means.values())
        for m, rs in by.items():
            accs = [100 * x["test_acc"] for x in rs]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            acc = f"{statistics.mean(accs):.2f} ± {sd:.2f}"
            acc = f"**{acc}**" if means[m] == top else acc
            search = "-"
            if "search_s" in rs[0]:
                secs = statistics.mean(x["search_s"] for x in rs)
                search = f"{secs:.0f} ({rs[0]['trials']}, {secs / max(1, rs[0]['trials']):.0f})"
            lines.append(
                f"| {frac:.0%} | {m} | {acc} | {statistics.mean(x['flops'] for x in rs) / 1e6:.2f} | "
                f"{statistics.mean(x['params'] for x in rs):,.0f} | {search} | "
                f"{statistics.mean(x['finetune_s'] for x in rs):.0f} |"
            )
    lines += ["", "Reading:", ""] + verdicts(state)
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "own_model.md").write_text(text)
    (RESULTS / "own_model.json").write_text(json.dumps(state, indent=2))
    print(text)


def verdicts(state: dict) -> list[str]:
    """Where the GA wins and where it does not, per target, from the numbers."""
    out = []
    for frac in sorted({r["target"] for r in state["rows"]}, reverse=True):
        rows = [r for r in state["rows"] if r["target"] == frac]
        mean = {
            m: statistics.mean(r["test_acc"] for r in rows if r["method"] == m)
            for m in {r["method"] for r in rows}
        }
        ga = mean.get("GA")
        others = {m: v for m, v in mean.items() if m != "GA"}
        best_other = max(others, key=others.get)
        diff = 100 * (ga - others[best_other])
        verdict = "ahead of" if diff > 0 else "behind"
        cost = statistics.mean(r["search_s"] for r in rows if r["method"] == "GA")
        out.append(
            f"- At {frac:.0%} of the FLOPs the GA is {verdict} the best baseline ({best_other}) by "
            f"{abs(diff):.2f} points, after {cost:.0f} s of search the baselines do not spend."
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
