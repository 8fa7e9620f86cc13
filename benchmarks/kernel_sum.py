"""Could `tvm-transfer` price a candidate by its kernels instead of compiling it whole?

A candidate's transferred kernels are each compiled and timed alone when they are picked
(`transfer_pick: fastest`), so their summed times (`TVMBackend.kernel_sum`, each kernel's time
times its calls) come for free; the whole-network LLVM build could then be skipped. This script
measures whether the sum, calibrated on a few networks timed whole, prices networks well enough.

From an empty tuning database the full tinynet network's kernels are tuned (`--trials` each, as a
`tvm-transfer` run's seed tuning). `--calibration` networks are chosen as a calibration would
choose them (the seed, then the smallest and largest of a spread sample) and `--networks` others
spread over the space's FLOPs (the kind a search prices). Each is compiled whole with transferred
kernels and timed in `--rounds` interleaved rounds in one quiet process (the median). Models of
the whole time from the sum (the sum alone; a x sum; a x sum + c; a x sum + b x kernel calls) are
fitted on the calibration networks and scored on the others, and fitted leave-one-out over all.
And the cost: compiling a network whole (the torch.export / Relax import and the LLVM build)
against pricing it by its kernels once its picks are made (the import and the sum).

    python benchmarks/kernel_sum.py [--networks 10] [--rounds 3] [--trials 8]

Writes benchmarks/results/kernel_sum.md and .json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, json_and_md, provenance  # noqa: E402

SPACE = ROOT / "spaces" / "tinynet.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--networks", type=int, default=10, help="networks priced and timed whole")
    ap.add_argument(
        "--calibration", type=int, default=3, help="networks a calibration is fitted on"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=8, help="trials per seed kernel")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--space", default=str(SPACE))
    ap.add_argument("--out", default=str(RESULTS / "kernel_sum.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    json_and_md(ap.parse_args(), measure, report)


def measure(args) -> dict:
    from kernels.tvm_latency import TVMBackend, spread_genomes
    from kernels.tvm_transfer import Transfer
    from spaces import load_space

    space = load_space(args.space)
    sup = space.supernet(0)
    tmp = Path(tempfile.mkdtemp(prefix="kernel-sum-"))
    try:
        b = TVMBackend(tmp, trials_per_task=args.trials)
        b.transfer = Transfer(pick="fastest")
        seeds = spread_genomes(space, 1, args.seed)
        t0 = time.time()
        b.db.tune(b.kernels_of(space.build(seeds[0], sup), space.arch(seeds[0]).resolution))
        tuning_s = time.time() - t0
        cal = seeds + _excluding(space, args.calibration - 1, args.seed, seeds)
        cal = cal[: args.calibration]
        others = _excluding(space, args.networks, args.seed + 1, cal)
        genomes = cal + others
        items = [(space.build(g, sup), space.arch(g).resolution) for g in genomes]
        measured = b.measure_rounds(items, args.rounds, tune=False, transfer=True)
        rows = []
        for i, ((model, r), g, m) in enumerate(zip(items, genomes, measured)):
            t0 = time.time()  # pricing by kernels: the import and the sum (picks made)
            kernels = b.kernels_of(model, r)
            b.kernel_sum(kernels)
            price_s = time.time() - t0
            calls = sum(k.calls for k in kernels)
            rows.append(
                {
                    "genome_id": space.genome_id(g),
                    "calibration": i < len(cal),
                    "flops": space.cost(g)["flops"],
                    "resolution": r,
                    "kernels": m["latency_kernels"],
                    "calls": calls,
                    "transferred": m["latency_kernels_transferred"],
                    "summed_ms": m["latency_summed_ms"],
                    "whole_ms": m["latency_ms"],
                    "rounds_ms": m["latency_rounds_ms"],
                    "compile_s": m["latency_compile_s"],
                    "price_s": price_s,
                }
            )
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        **provenance(),
        "trials": args.trials,
        "rounds": args.rounds,
        "seed_tuning_s": tuning_s,
        "networks": rows,
    }


def _excluding(space, n: int, seed: int, taken: list) -> list:
    """Up to `n` genomes other than `taken`: the smallest and largest FLOPs of a seeded sample
    first (`spread_genomes` without its full network)."""
    from kernels.tvm_latency import spread_genomes

    if n <= 0:
        return []
    ids = {space.genome_id(g) for g in taken}
    return spread_genomes(space, n + 1, seed, exclude=ids)[1:][:n]


# the whole time from the sum: each model's columns, fitted by least squares on relative error
MODELS = {
    "sum alone": lambda r: [],
    "a x sum": lambda r: [r["summed_ms"]],
    "a x sum + c": lambda r: [r["summed_ms"], 1.0],
    "a x sum + b x calls": lambda r: [r["summed_ms"], float(r["calls"])],
}


def _errors(model, fit: list[dict], score: list[dict]) -> list[float]:
    """Signed errors (%) on `score` of `model` fitted on `fit`."""
    import numpy as np

    cols = MODELS[model]
    if not cols(fit[0]):
        return [100 * (r["summed_ms"] - r["whole_ms"]) / r["whole_ms"] for r in score]
    w = np.array([1 / r["whole_ms"] for r in fit])
    A = np.array([cols(r) for r in fit]) * w[:, None]
    sol, *_ = np.linalg.lstsq(A, np.array([r["whole_ms"] for r in fit]) * w, rcond=None)
    return [100 * (float(np.dot(cols(r), sol)) - r["whole_ms"]) / r["whole_ms"] for r in score]


def errors(rows: list[dict]) -> dict:
    """Each model's errors: fitted on the calibration networks and scored on the others; and
    leave-one-out over all networks."""
    cal = [r for r in rows if r["calibration"]]
    test = [r for r in rows if not r["calibration"]]
    return {
        m: {
            "held_out": _errors(m, cal, test),
            "loo": [_errors(m, rows[:i] + rows[i + 1 :], [r])[0] for i, r in enumerate(rows)],
        }
        for m in MODELS
    }


def _mape(errs: list[float]) -> float:
    return statistics.mean(abs(e) for e in errs)


def report(d: dict) -> str:
    rows = d["networks"]
    errs = errors(rows)
    lines = [
        "# Pricing candidates by their kernels' summed times",
        "",
        f"`{d['command']}` ({d['date']}, {d['cpu']}). The full tinynet network's kernels tuned "
        f"with {d['trials']} replay-trace trials each ({d['seed_tuning_s']:.0f} s); every other "
        "kernel transferred (`transfer_pick: fastest`); every network compiled whole and timed in "
        f"{d['rounds']} interleaved rounds in one quiet process (whole ms: the median).",
        "",
        "## 1. Each network",
        "",
        "summed: its kernels' own times (tuned: as tuned; transferred: its pick's timing) times "
        "their calls; cal.: a calibration network; error: a x sum + b x calls fitted on the "
        "calibration networks, against whole.",
        "",
        "| network | cal. | MFLOPs | kernels | calls | transferred | summed ms | whole ms "
        "| whole / summed | error % | compiled whole s | priced s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    held = iter(errs["a x sum + b x calls"]["held_out"])
    for r in rows:
        err = "fitted" if r["calibration"] else f"{next(held):+.1f}"
        lines.append(
            f"| {r['genome_id'][:8]} | {'yes' if r['calibration'] else ''} | "
            f"{r['flops'] / 1e6:.2f} | {r['kernels']} | {r['calls']} | {r['transferred']} | "
            f"{r['summed_ms']:.3f} | {r['whole_ms']:.3f} | {r['whole_ms'] / r['summed_ms']:.2f} | "
            f"{err} | {r['compile_s']:.1f} | {r['price_s']:.1f} |"
        )
    lines += _errors_table(errs, len(rows) - sum(r["calibration"] for r in rows), len(rows))
    comp = [r["compile_s"] for r in rows]
    price = [r["price_s"] for r in rows]
    lines += [
        "",
        f"Compiling a network whole took {statistics.mean(comp):.1f} s on average "
        f"({min(comp):.1f}-{max(comp):.1f}: the import and the LLVM build); pricing it by its "
        f"kernels, once its transferred picks were made (which both need), "
        f"{statistics.mean(price):.1f} s ({min(price):.1f}-{max(price):.1f}: the import and "
        "the sum).",
    ]
    return "\n".join(lines) + "\n"


def _errors_table(errs: dict, held: int, n: int) -> list[str]:
    lines = [
        "",
        "## 2. How well the sum prices a network",
        "",
        f"held out: fitted on the calibration networks, scored on the {held} others; "
        f"leave-one-out: fitted on {n - 1} networks, scored on the last, each in turn.",
        "",
        "| model | held out MAPE % | held out worst % | leave-one-out MAPE % | "
        "leave-one-out worst % |",
        "|---|---:|---:|---:|---:|",
    ]
    best_h = min(_mape(e["held_out"]) for e in errs.values())
    best_l = min(_mape(e["loo"]) for e in errs.values())
    for m, e in errs.items():
        h, lo = _mape(e["held_out"]), _mape(e["loo"])
        lines.append(
            f"| {m} | {f'**{h:.1f}**' if h == best_h else f'{h:.1f}'} | "
            f"{max(e['held_out'], key=abs):+.1f} | "
            f"{f'**{lo:.1f}**' if lo == best_l else f'{lo:.1f}'} | {max(e['loo'], key=abs):+.1f} |"
        )
    return lines


if __name__ == "__main__":
    main()
