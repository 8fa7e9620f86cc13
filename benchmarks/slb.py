"""SLB (Searching for Low-Bit Weights, arXiv 2009.08695) on ResNet-20 / CIFAR-10.

A float ResNet-20 (`spaces/resnet20.yaml`'s full network) is trained from scratch on a CIFAR-10
subset (cached). Then, for each weight set (4-bit, 2-bit, 1-bit) on every conv of the residual
blocks (the stem conv and the classifier stay float, as in the paper):

- naive: post-training rounding of the float weights to the set (one scale per output channel)
  with batch-norm statistics recomputed, no training;
- SLB: the same rounding as the start, then fine-tuning with SLB (logits over the set's values,
  temperature rising from 1 to 100, hard argmax at the end);
- optionally (--ste) the same fine-tuning with a straight-through estimator.

Every low-bit model is checked to lie in its set. Writes benchmarks/results/slb.md.

    python benchmarks/slb.py [--data ../shared/data/cifar10_jpg.zip] [--per-class 500]
        [--epochs 15] [--slb-epochs 4] [--ste]
"""

from __future__ import annotations

import argparse
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
)  # noqa: E402

SETS = [("W4", "int4"), ("W2", "int2"), ("W1", "binary")]
PAPER = {"float": 95.44, "W4": 95.34, "W2": 95.03, "W1": 94.85}


def main() -> None:
    import torch

    from evaluators.evaluator import model_bits
    from evaluators.slb import in_set
    from evaluators.train import TrainRecipe, evaluate, fine_tune, recalibrate_bn
    from spaces.builder import quantize_model_
    from spaces.layers import GConv2d

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--epochs", type=float, default=15, help="float training epochs")
    ap.add_argument("--slb-epochs", type=float, default=4, help="low-bit fine-tuning epochs")
    ap.add_argument("--lr", type=float, default=0.02, help="low-bit fine-tuning learning rate")
    ap.add_argument(
        "--slb-lr", type=float, default=0.05, help="Adam's learning rate for the SLB logits"
    )
    ap.add_argument(
        "--ste", action="store_true", help="also fine-tune with a straight-through estimator"
    )
    ap.add_argument("--out", default=str(RESULTS / "slb.md"))
    ap.add_argument(
        "--no-search", action="store_true", help="skip the mixed-precision search on tinynet"
    )
    ap.add_argument("--search-budget", type=int, default=18)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-slb-mixed"))
    args = ap.parse_args()
    torch.set_num_threads(2)

    t_all = time.time()
    data = cifar_subset(args.data, args.per_class, args.test_per_class)
    space = resnet20_space(["float", "int8", "int4", "int2", "ternary", "binary"]).with_classes(
        data.num_classes
    )
    base, info = float_resnet20(space, data, args.epochs)
    facc, _ = evaluate(base, data.test, 32)
    groups = sorted(
        {m.qgroup for m in base.modules() if isinstance(m, GConv2d) and m.qgroup is not None}
    )
    rows = [("float (32-bit)", "float", facc, None, None, model_bits(base, {}), None)]
    print(f"float: test acc {facc:.4f}", flush=True)

    def check(model, ws):
        convs = [m for m in model.modules() if isinstance(m, GConv2d) and m.qgroup is not None]
        return all(in_set(m.weight, ws) for m in convs)

    for label, ws in SETS:
        quant = {g: ws for g in groups}
        naive = clone(base)
        quantize_model_(naive, quant)
        recalibrate_bn(naive, data.train, 32)
        nacc, _ = evaluate(naive, data.test, 32)
        assert check(naive, ws)
        results = {}
        methods = ["slb"] + (["ste"] if args.ste else [])
        for method in methods:
            m = clone(base)
            quantize_model_(m, quant)
            t0 = time.time()
            recipe = TrainRecipe(
                epochs=args.slb_epochs,
                batch_size=128,
                lr=args.lr,
                weight_decay=0.0,
                schedule="cosine",
                weight_training=method,
                slb_lr=args.slb_lr,
            )
            fine_tune(m, data, 32, recipe, 0, quant)
            secs = time.time() - t0
            ok = check(m, ws)
            acc, _ = evaluate(m, data.test, 32)
            results[method] = (acc, secs, ok)
            print(
                f"{label} {method}: test acc {acc:.4f} ({secs:.0f} s), in set: {ok}; naive {nacc:.4f}",
                flush=True,
            )
        rows.append((label, ws, results["slb"][0], nacc, results, model_bits(naive, quant), None))

    n_train = len(data.train)
    lines = [
        "# SLB low-bit weights on ResNet-20 / CIFAR-10",
        "",
        f"`python benchmarks/slb.py --per-class {args.per_class} --epochs {args.epochs:g} "
        f"--slb-epochs {args.slb_epochs:g}{' --ste' if args.ste else ''}` ({time.strftime('%Y-%m-%d')}, "
        f"2 CPU cores, {time.time() - t_all:.0f} s in all).",
        "",
        f"Data: a CIFAR-10 subset from `../shared/data/cifar10_jpg.zip`: {args.per_class} train images per "
        f"class ({n_train} for training, the rest validation), test on {len(data.test)} test images "
        f"({args.test_per_class} per class), no augmentation. Float ResNet-20 (`spaces/resnet20.yaml`, full "
        f"network) trained from scratch for {info['epochs']:g} epochs (SGD lr {info['lr']}, cosine, "
        f"{info.get('train_time_s', 0):.0f} s). Low-bit: every conv of the residual blocks in the set, one scale "
        "per output channel; the stem conv and the classifier stay float (as in the paper). W2 here is the "
        "symmetric 3-level set {-a, 0, a} (`int2`), W1 is {-a, a}.",
        "",
        f"SLB and STE fine-tune {args.slb_epochs:g} epochs (SGD lr {args.lr}, cosine, no weight decay) starting "
        f"from the rounded float network; SLB's logits and scales train with Adam (lr {args.slb_lr}, same "
        "schedule) and its temperature rises exponentially 1 -> 100. Naive: "
        "post-training rounding plus recomputed batch-norm statistics.",
        "",
        "| weights | model size (kbit) | naive rounding | SLB | "
        + ("STE | " if args.ste else "")
        + "SLB - naive | paper (ResNet-18, full CIFAR-10, SLB) |",
        "|---|---:|---:|---:|" + ("---:|" if args.ste else "") + "---:|---:|",
    ]
    for label, ws, acc, nacc, res, bits, _ in rows:
        if nacc is None:
            lines.append(
                f"| float | {bits / 1e3:.0f} | | {100 * acc:.2f} |"
                + (" |" if args.ste else "")
                + f" | {PAPER['float']} |"
            )
            continue
        ste = f" {100 * res['ste'][0]:.2f} |" if args.ste else ""
        lines.append(
            f"| {label} (`{ws}`) | {bits / 1e3:.0f} | {100 * nacc:.2f} | **{100 * acc:.2f}** |{ste} "
            f"{100 * (acc - nacc):+.2f} | {PAPER[label]} |"
        )
    lines += [
        "",
        "Every low-bit model's block convs lie exactly in their set after training (checked with "
        "`evaluators.slb.in_set`: "
        + ", ".join(
            f"{label} {'yes' if all(r[2] for r in res.values()) else 'NO'}"
            for label, _, _, _, res, _, _ in rows[1:]
        )
        + ").",
        "Fine-tuning time: "
        + ", ".join(
            f"{label} " + " / ".join(f"{k} {v[1]:.0f} s" for k, v in res.items())
            for label, _, _, _, res, _, _ in rows[1:]
        )
        + ".",
    ]
    if not args.no_search:
        lines += mixed_precision_search(args)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def mixed_precision_search(args) -> list[str]:
    """NSGA-II on spaces/tinynet.yaml over validation accuracy and model size in bits: every
    candidate's weight sets (one per stage) trained by SLB during fine-tuning."""
    import json
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
    secs = time.time() - t0
    front = json.loads((out / "pareto.json").read_text())["front"]
    lines = [
        "",
        "## Mixed-precision search on `spaces/tinynet.yaml`",
        "",
        f"`search run spaces/tinynet.yaml --optimizer ga --budget {args.search_budget} --set population_size=6 "
        "--set latency=none --set objectives='[{metric: val_acc, direction: maximize}, {metric: model_bits, "
        f"direction: minimize}}]'` ({secs / 60:.1f} min, digits): NSGA-II over validation accuracy and the "
        "model's size in bits; each stage's weight set is one of float / int8 / int4 / int2 (the space's "
        "options), low-bit stages trained by SLB (int8 straight-through) in the 3-epoch fine-tuning, "
        "together with the space's other dimensions. The front:",
        "",
        "| trial | val acc | test acc | model size (kbit) | FLOPs (M) | weight sets (stages 1-5) |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for p in sorted(front, key=lambda p: p["metrics"]["model_bits"]):
        m, g = p["metrics"], p["genome"]
        sets = " ".join(str(g[k]) for k in sorted(g) if k.startswith("weights."))
        lines.append(
            f"| {p['trial']} | {m['val_acc']:.4f} | {m.get('test_acc', float('nan')):.4f} | "
            f"{m['model_bits'] / 1e3:.0f} | {m['flops'] / 1e6:.1f} | {sets} |"
        )
    lines.append(
        f"\n{len(front)} non-dominated points; run folder `{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}`."
    )
    return lines


if __name__ == "__main__":
    main()
