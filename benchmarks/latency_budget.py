"""What tuning budget tuned TVM needs on this CPU: the base network of `spaces/tinynet.yaml`
(batch 1, the same weights as benchmarks/latency.py) tuned from an empty database with each
MetaSchedule setting given, against onnxruntime and PyTorch eager on the same network.

Each setting is `strategy:trials` (trials per kernel): `replay-trace` samples schedules at
random; `evolutionary` searches them with an XGBoost cost model. Writes
benchmarks/results/latency_budget.md (and .json).

    python benchmarks/latency_budget.py [--settings replay-trace:32 evolutionary:64]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--space", default=str(ROOT / "spaces" / "tinynet.yaml"))
    ap.add_argument("--settings", nargs="+", default=["replay-trace:32", "evolutionary:64"])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-latency-budget"))
    ap.add_argument("--out", default=str(RESULTS / "latency_budget.md"))
    args = ap.parse_args()
    settings = []
    for s in args.settings:
        strategy, _, trials = s.partition(":")
        if strategy not in ("replay-trace", "evolutionary") or not trials.isdigit():
            ap.error(f"--settings: {s!r} is not STRATEGY:TRIALS (replay-trace or evolutionary)")
        settings.append((strategy, int(trials)))

    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for n in ("tvm", "tvm_ffi"):
        logging.getLogger(n).setLevel(logging.WARNING)
    from kernels.latency import OnnxRuntimeLatency
    from kernels.torch_timing import TorchLatency
    from kernels.tvm_latency import TVMBackend, realistic
    from spaces import load_space

    space = load_space(args.space)
    g = space.full()
    r = space.arch(g).resolution
    model = realistic(space.build(g, space.supernet(seed=0)), r)
    work = Path(args.work)
    eager = TorchLatency(repeats=args.repeats, warmup=5).measure(model, r)["latency_ms"]
    ort = OnnxRuntimeLatency(repeats=args.repeats, warmup=5).measure(model, r)["latency_ms"]
    print(f"eager {eager:.3f} ms, onnxruntime {ort:.3f} ms", flush=True)
    rows = []
    for strategy, trials in settings:
        folder = work / f"{strategy}-{trials}"
        shutil.rmtree(
            folder, ignore_errors=True
        )  # from an empty database: the tuning time is all of it
        b = TVMBackend(folder, trials_per_task=trials, strategy=strategy, repeats=args.repeats)
        t0 = time.time()
        m = b.measure(model, r, tune=True)
        row = {
            "strategy": strategy,
            "trials": trials,
            "kernels": m["latency_kernels"],
            "tuning_s": m["latency_tuning_s"],
            "wall_s": time.time() - t0,
            "tuned_ms": m["latency_ms"],
            "spread_ms": m["latency_spread_ms"],
            "diff": m["latency_max_abs_diff"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    L = [
        "# Tuning budget: tuned TVM against onnxruntime (tinynet base, batch 1)",
        "",
        f"`python benchmarks/latency_budget.py --settings {' '.join(args.settings)}` ({time.strftime('%Y-%m-%d')}, "
        f"2 CPU cores, nothing else running). The base network of `spaces/tinynet.yaml` "
        f"({space.cost(g)['flops'] / 1e6:.1f} MFLOPs, {r}x{r}), batch norm folded, tuned from an empty database "
        f"per setting; median of {args.repeats} runs.",
        "",
        f"PyTorch eager **{eager:.3f} ms**, onnxruntime **{ort:.3f} ms**.",
        "",
        "| strategy | trials per kernel | kernels | tuning s | tuned TVM ms | vs onnxruntime | vs eager | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in rows:
        L.append(
            f"| {x['strategy']} | {x['trials']} | {x['kernels']} | {x['tuning_s']:.0f} | {x['tuned_ms']:.3f} | "
            f"{ort / x['tuned_ms']:.2f}x | {eager / x['tuned_ms']:.1f}x | {x['diff']:.1e} |"
        )
    L += ["", "vs onnxruntime / vs eager: their latency over tuned TVM's (above 1: TVM faster)."]
    Path(args.out).write_text("\n".join(L) + "\n")
    Path(args.out).with_suffix(".json").write_text(
        json.dumps({"eager_ms": eager, "ort_ms": ort, "rows": rows}, indent=2)
    )
    print("\n".join(L))


if __name__ == "__main__":
    main()
