"""Wall time of the two reference runs of the run issue, written to benchmarks/results/run.md.

1. `search run spaces/tinynet.yaml --optimizer random --budget 8 --set latency=torch` with an empty supernet cache
   (pre-training included); target: under 5 minutes, best candidate's digits test accuracy >= 95 %.
2. `search run spaces/nb201.yaml --optimizer random --budget 2000 --set evaluator=table`;
   target: under a minute.

Usage: python benchmarks/run_speed.py [--table ../shared/data/nb201_merged.csv]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(args: list[str], env: dict) -> float:
    t = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "search.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        sys.exit(f"failed: search {' '.join(args)}\n{r.stderr[-3000:]}")
    return time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default=str(ROOT.parent / "shared" / "data" / "nb201_merged.csv"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "run.md"))
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ARCHSEARCH_CACHE": str(Path(tmp) / "cache")}
        run1 = Path(tmp) / "tinynet"
        t1 = timed(
            [
                "run",
                "spaces/tinynet.yaml",
                "--optimizer",
                "random",
                "--budget",
                "8",
                "--set",
                "latency=torch",  # the pipeline's speed, eager latency (no TVM tuning)
                "--out",
                str(run1),
                "--no-progress",
            ],
            env,
        )
        best = json.loads((run1 / "best" / "metrics.json").read_text())
        manifest = next((Path(tmp) / "cache" / "supernets").glob("*/manifest.json"))
        pre = json.loads(manifest.read_text())["train_time_s"]
        rows.append(
            (
                "tinynet, random, budget 8, empty cache",
                f"{t1:.0f} s (pre-training {pre:.0f} s)",
                "< 300 s",
                f"best val acc {best['metrics']['val_acc']:.4f}, test acc {best['metrics']['test_acc']:.4f} (target >= 0.95)",
            )
        )
        run2 = Path(tmp) / "nb201"
        t2 = timed(
            [
                "run",
                "spaces/nb201.yaml",
                "--optimizer",
                "random",
                "--budget",
                "2000",
                "--set",
                "evaluator=table",
                "--set",
                f"evaluator.table={a.table}",
                "--out",
                str(run2),
                "--no-progress",
            ],
            env,
        )
        best2 = json.loads((run2 / "best" / "metrics.json").read_text())
        rows.append(
            (
                "nb201, random, budget 2000, table",
                f"{t2:.1f} s",
                "< 60 s",
                f"best CIFAR-10 test acc {best2['metrics']['c10_test']:.2f} %",
            )
        )
    lines = [
        f"# Reference runs ({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores)",
        "",
        "| run | wall time | target | result |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
