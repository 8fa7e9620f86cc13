"""SLB (Searching for Low-Bit Weights, arXiv 2009.08695) against straight-through training at
equal budget, on ResNet-20 / a CIFAR-10 subset.

For each seed (`--seeds`, the whole method repeated: float training, then every row below),
a float ResNet-20 (`spaces/resnet20.yaml`'s full network) is trained from scratch for
`--epochs` (E) epochs (cached by seed). Then, with the same fine-tuning recipe and the same
`--slb-epochs` (F) epochs for every row that trains after E:

- float, trained from scratch: E epochs;
- float, fine-tuned: E + F epochs (the float network gets the low-bit rows' extra budget);
- rounding: post-training rounding to the weight set (one scale per output channel) with
  batch-norm statistics re-estimated, E + 0 epochs;
- STE: the rounded network fine-tuned F epochs with a straight-through estimator (rounding
  followed by the same fine-tuning as SLB's), E + F epochs;
- SLB: the rounded network fine-tuned F epochs with SLB (logits over the set's values,
  temperature 1 -> 100, hard argmax at the end, batch norm re-estimated), E + F epochs.

The low-bit sets are 4-bit (int4, 16 levels), 2-bit (int2, 4 levels {-1, -1/3, 1/3, 1}) and
1-bit (binary) on every conv of the residual blocks (stem and classifier float). Every low-bit
model is checked to lie in its set. Test accuracy is reported as mean +- std over the seeds,
the best mean of each column in bold. Writes benchmarks/results/slb.md and slb.json (every
figure of the md; `--report-only` rebuilds the md from it). Optionally (on by default,
`--no-search` skips it) a mixed-precision NSGA-II search on spaces/tinynet.yaml.

    python benchmarks/slb.py [--data ../shared/data/cifar10_jpg.zip] [--per-class 500]
        [--epochs 15] [--slb-epochs 4] [--seeds 3] [--no-search] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402 - after the path above
    DEFAULT_DATA,
    RESULTS,
    cifar_subset,
    clone,
    float_resnet20,
    resnet20_space,
)

SETS = [("W4", "int4"), ("W2", "int2"), ("W1", "binary")]
# (key, row label, which columns: "float" or "low"); budgets are filled in from the arguments
METHODS = [
    ("float", "float, trained from scratch", "float"),
    ("float_ft", "float, fine-tuned", "float"),
    ("round", "rounding (post-training, batch norm re-estimated)", "low"),
    ("ste", "STE: rounding, then straight-through fine-tuning", "low"),
    ("slb", "SLB", "low"),
]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--epochs", type=float, default=15, help="float training epochs (E)")
    ap.add_argument(
        "--slb-epochs",
        type=float,
        default=4,
        help="fine-tuning epochs (F) of every row that trains after E: float, STE, SLB",
    )
    ap.add_argument("--lr", type=float, default=0.02, help="fine-tuning learning rate")
    ap.add_argument(
        "--slb-lr", type=float, default=0.05, help="Adam's learning rate for the SLB logits"
    )
    ap.add_argument("--seeds", type=int, default=3, help="repetitions of the whole method")
    ap.add_argument("--out", default=str(RESULTS / "slb.md"), help="the md; the json beside it")
    ap.add_argument(
        "--no-search", action="store_true", help="skip the mixed-precision search on tinynet"
    )
    ap.add_argument("--search-budget", type=int, default=18)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-slb-mixed"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    args = ap.parse_args()
    out = Path(args.out)
    js_path = out.with_suffix(".json")
    if args.report_only:
        js = json.loads(js_path.read_text())
    else:
        js = run(args)
        js_path.write_text(json.dumps(js, indent=1))
    text = report(js)
    out.write_text(text)
    print(text)


def run(args) -> dict:
    import torch

    from evaluators.evaluator import model_bits
    from evaluators.slb import in_set
    from evaluators.train import TrainRecipe, evaluate, fine_tune, recalibrate_bn
    from spaces.builder import quantize_model_
    from spaces.layers import GConv2d

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))  # 2 unless told
    t_all = time.time()
    data = cifar_subset(args.data, args.per_class, args.test_per_class)
    space = resnet20_space(["float", "int8", "int4", "int2", "ternary", "binary"]).with_classes(
        data.num_classes
    )

    def in_sets(model, ws):
        convs = [m for m in model.modules() if isinstance(m, GConv2d) and m.qgroup is not None]
        return all(in_set(m.weight, ws) for m in convs)

    def recipe(method: str) -> TrainRecipe:  # one fine-tuning recipe for every row that trains
        return TrainRecipe(
            epochs=args.slb_epochs,
            batch_size=128,
            lr=args.lr,
            weight_decay=0.0,
            schedule="cosine",
            weight_training=method,
            slb_lr=args.slb_lr,
        )

    runs, floats, bits = [], [], {}
    for seed in range(args.seeds):
        base, info = float_resnet20(space, data, args.epochs, seed=seed)
        floats.append(info)
        groups = sorted(
            {m.qgroup for m in base.modules() if isinstance(m, GConv2d) and m.qgroup is not None}
        )
        bits["float"] = model_bits(base, {})
        acc, _ = evaluate(base, data.test, 32)
        res = {"float": {"float": {"acc": acc, "secs": info.get("train_time_s")}}}
        m = clone(base)
        t0 = time.time()
        fine_tune(m, data, 32, recipe("slb"), seed)  # no weight sets: plain float fine-tuning
        acc, _ = evaluate(m, data.test, 32)
        res["float_ft"] = {"float": {"acc": acc, "secs": time.time() - t0}}
        print(f"seed {seed} float: {res['float']['float']['acc']:.4f} -> {acc:.4f}", flush=True)
        for key in ("round", "ste", "slb"):
            res[key] = {}
        for label, ws in SETS:
            quant = {g: ws for g in groups}
            rounded = clone(base)
            quantize_model_(rounded, quant)
            bits[ws] = model_bits(rounded, quant)
            t0 = time.time()
            recalibrate_bn(rounded, data.train, 32, batches=20, bs=128)
            acc, _ = evaluate(rounded, data.test, 32)
            res["round"][ws] = {
                "acc": acc,
                "secs": time.time() - t0,
                "in_set": in_sets(rounded, ws),
            }
            for method in ("ste", "slb"):
                m = clone(rounded)
                t0 = time.time()
                fine_tune(m, data, 32, recipe(method), seed, quant)
                secs = time.time() - t0
                acc, _ = evaluate(m, data.test, 32)
                res[method][ws] = {"acc": acc, "secs": secs, "in_set": in_sets(m, ws)}
            print(
                f"seed {seed} {label}: "
                + ", ".join(f"{k} {res[k][ws]['acc']:.4f}" for k in ("round", "ste", "slb")),
                flush=True,
            )
        runs.append(res)
    js = {
        "args": {k: v for k, v in vars(args).items() if k != "report_only"},
        "date": time.strftime("%Y-%m-%d"),
        "train_images": len(data.train),
        "test_images": len(data.test),
        "float_training": floats,
        "bits": bits,
        "runs": runs,
        "search": None,
    }
    if not args.no_search:
        js["search"] = mixed_precision_search(args)
    js["total_s"] = round(time.time() - t_all, 1)
    return js


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def report(js: dict) -> str:
    a = js["args"]
    e, f, n = a["epochs"], a["slb_epochs"], len(js["runs"])
    budgets = {"float": f"{e:g}", "float_ft": f"{e:g} + {f:g}", "round": f"{e:g} + 0"}
    budgets["ste"] = budgets["slb"] = f"{e:g} + {f:g}"
    columns = [("float (32-bit)", "float")] + [(f"{lab} (`{ws}`)", ws) for lab, ws in SETS]
    cells = {}  # (method, set) -> (mean, std) of test accuracy in %
    for key, _, kind in METHODS:
        for _, ws in columns:
            if (ws == "float") == (kind == "float"):
                accs = [100 * r[key][ws]["acc"] for r in js["runs"]]
                cells[key, ws] = _stats(accs)
    best = {
        ws: max(v[0] for (k, w), v in cells.items() if w == ws) for _, ws in columns
    }  # computed: the best mean of each column
    flt = js["float_training"][0]
    lines = [
        "# SLB low-bit weights on ResNet-20 / CIFAR-10: equal budgets, several seeds",
        "",
        f"`python benchmarks/slb.py --per-class {a['per_class']} --test-per-class {a['test_per_class']} "
        f"--epochs {e:g} --slb-epochs {f:g} --seeds {n}"
        + (" --no-search" if a.get("no_search") else "")
        + f"` ({js['date']}, 2 CPU cores, {js.get('total_s', 0) / 60:.0f} min in all).",
        "",
        f"Data: a CIFAR-10 subset from `../shared/data/cifar10_jpg.zip`: {a['per_class']} train "
        f"images per class ({js['train_images']} for training, the rest validation), test on "
        f"{js['test_images']} test images ({a['test_per_class']} per class), no augmentation; the "
        f"same subset for every seed. Seed s trains its own float ResNet-20 (`spaces/resnet20.yaml`, "
        f"full network) from scratch for E = {e:g} epochs (SGD lr {flt['lr']}, cosine, weight decay "
        "5e-4), and fine-tunes every row below with seed s. Low-bit: every conv of the residual "
        "blocks in the set, one scale per output channel; the stem conv and the classifier stay "
        "float. Sets: `intN` has 2^N levels, linspace(-1, 1, 2^N) times the scale (as in SLB's "
        "authors' code): W4 16 levels, W2 {-a, -a/3, a/3, a}, W1 {-a, a}.",
        "",
        f"Every row that trains after E trains F = {f:g} epochs with one recipe (SGD lr {a['lr']}, "
        "cosine, no weight decay, batch 128): the float network, STE and SLB. STE is the rounded "
        "network fine-tuned straight-through, i.e. rounding followed by the same fine-tuning; "
        f"SLB starts from the same rounded network, its logits and scales train with Adam (lr "
        f"{a['slb_lr']}, same schedule), its temperature rises exponentially 1 -> 100. Both end on "
        "the hard assignment followed by batch-norm re-estimation (20 training batches); "
        "rounding alone re-estimates batch norm on the same 20 batches.",
        "",
        f"Test accuracy (%), mean ± std over {n} seed{'s' if n > 1 else ''}; the best mean of "
        "each column in bold.",
        "",
        "| method | training epochs | " + " | ".join(c for c, _ in columns) + " |",
        "|---|---|" + "---:|" * len(columns),
        "| model size (kbit, `model_bits`) | | "
        + " | ".join(f"{js['bits'][ws] / 1e3:.0f}" for _, ws in columns)
        + " |",
    ]
    for key, label, _ in METHODS:
        row = []
        for _, ws in columns:
            if (key, ws) not in cells:
                row.append("")
                continue
            mean, std = cells[key, ws]
            txt = f"{mean:.2f} ± {std:.2f}"
            row.append(f"**{txt}**" if mean == best[ws] else txt)
        lines.append(f"| {label} | {budgets[key]} | " + " | ".join(row) + " |")
    ok = {
        ws: all(r[k][ws]["in_set"] for r in js["runs"] for k in ("round", "ste", "slb"))
        for _, ws in SETS
    }
    secs = {
        (k, ws): statistics.fmean(r[k][ws]["secs"] for r in js["runs"])
        for k in ("ste", "slb")
        for _, ws in SETS
    }
    # SLB minus STE per seed (paired); a set counts as a win only where the mean difference
    # exceeds its standard deviation over the seeds
    diffs = {
        ws: [100 * (r["slb"][ws]["acc"] - r["ste"][ws]["acc"]) for r in js["runs"]]
        for _, ws in SETS
    }
    gaps = {ws: _stats(diffs[ws]) for _, ws in SETS}
    wins = [lab for lab, ws in SETS if gaps[ws][0] > gaps[ws][1]]
    lines += [
        "",
        "Every low-bit model's block convs lie exactly in their set (`evaluators.slb.in_set`): "
        + ", ".join(f"{lab} {'yes' if ok[ws] else 'NO'}" for lab, ws in SETS)
        + ". Mean fine-tuning time (shared machine, so only indicative): "
        + ", ".join(
            f"{lab} STE {secs['ste', ws]:.0f} s / SLB {secs['slb', ws]:.0f} s" for lab, ws in SETS
        )
        + ". The paper's CIFAR-10 figures (full data, long schedules) are not repeated here.",
    ]
    if js.get("search"):
        lines += search_lines(js["search"])
    verdict = "yes" if len(wins) == len(SETS) else "no"
    lines += [
        "",
        f"Does the paper's claim (SLB beats straight-through at equal budget) hold here? "
        f"**{verdict.capitalize()}**: SLB is ahead of STE by more than the seed-to-seed spread of "
        f"the paired difference in {len(wins)} of {len(SETS)} weight sets (SLB minus STE: "
        + ", ".join(f"{lab} {gaps[ws][0]:+.2f} ± {gaps[ws][1]:.2f}" for lab, ws in SETS)
        + f" points, {n} seed{'s' if n > 1 else ''}).",
    ]
    return "\n".join(lines) + "\n"


def mixed_precision_search(args) -> dict:
    """NSGA-II on spaces/tinynet.yaml over validation accuracy and model size in bits: every
    candidate's weight sets (one per stage) trained by SLB during fine-tuning."""
    import shutil
    import subprocess

    out = Path(args.work)
    if out.exists():
        shutil.rmtree(out)
    cmd = [
        sys.executable,
        "-m",
        "search.cli",
        "run",
        "spaces/tinynet.yaml",
        "--optimizer",
        "ga",
        "--budget",
        str(args.search_budget),
        "--seed",
        "0",
        "--workers",
        "0",
        "--no-progress",
        "--set",
        "population_size=6",
        "--set",
        "latency=none",
        "--set",
        "objectives=[{metric: val_acc, direction: maximize}, {metric: model_bits, direction: minimize}]",
        "--out",
        str(out),
    ]
    print("$", " ".join(cmd[2:]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    front = json.loads((out / "pareto.json").read_text())["front"]
    return {
        "budget": args.search_budget,
        "secs": round(time.time() - t0, 1),
        "work": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
        "front": [
            {
                "trial": p["trial"],
                "metrics": {
                    k: p["metrics"].get(k) for k in ("val_acc", "test_acc", "model_bits", "flops")
                },
                "sets": [
                    str(p["genome"][k]) for k in sorted(p["genome"]) if k.startswith("weights.")
                ],
            }
            for p in front
        ],
    }


def search_lines(s: dict) -> list[str]:
    lines = [
        "",
        "## Mixed-precision search on `spaces/tinynet.yaml`",
        "",
        f"`search run spaces/tinynet.yaml --optimizer ga --budget {s['budget']} --set population_size=6 "
        "--set latency=none --set objectives='[{metric: val_acc, direction: maximize}, {metric: model_bits, "
        f"direction: minimize}}]'` ({s['secs'] / 60:.1f} min, digits): NSGA-II over validation accuracy and "
        "the model's size in bits (`model_bits`: low-bit conv weights as the ONNX export stores them, packed "
        "codes plus a float32 scale per output channel, every other parameter at 32 bits); each stage's "
        "weight set is one of float / int8 / int4 / int2 (the space's options), low-bit stages trained by "
        "SLB (int8 straight-through) in the 3-epoch fine-tuning, together with the space's other "
        "dimensions. The front:",
        "",
        "| trial | val acc | test acc | model size (kbit) | FLOPs (M) | weight sets (stages 1-5) |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for p in sorted(s["front"], key=lambda p: p["metrics"]["model_bits"]):
        m = p["metrics"]
        test = m.get("test_acc")
        lines.append(
            f"| {p['trial']} | {m['val_acc']:.4f} | {'' if test is None else f'{test:.4f}'} | "
            f"{m['model_bits'] / 1e3:.0f} | {m['flops'] / 1e6:.1f} | {' '.join(p['sets'])} |"
        )
    lines.append(f"\n{len(s['front'])} non-dominated points; run folder `{s['work']}`.")
    return lines


if __name__ == "__main__":
    main()
