"""How far one compiled network's timing moves on this machine, and which summary of interleaved
rounds holds still.

The front's networks of a `benchmarks/latency_default.py` run, compiled with the benchmark's fully
tuned database (`full-db`) in each of `--processes` fresh processes, one after another, and timed
there in `--rounds` interleaved rounds (`TVMBackend.time_rounds`: each round, each network's
median of 20 runs of at least 20 ms). Nothing else runs. Every latency figure of the project (a
search's, a front check's, the benchmarks' references) is one process's median over rounds; this
says how much of a MAPE between two such figures is the machine.

    python benchmarks/timing_noise.py --work runs/bench-latency-default-12 [--processes 3]

Writes benchmarks/results/timing_noise.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    RESULTS,
    front_networks,
    json_and_md,
    provenance,
    timed_front,
)

SPACE = ROOT / "spaces" / "tinynet.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="a benchmarks/latency_default.py work folder")
    ap.add_argument("--front", type=int, default=3, help="the front's first networks")
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=str(RESULTS / "timing_noise.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    json_and_md(args, measure, report)


def child(args) -> dict:
    """In this process: the front's networks compiled with the fully tuned database and timed in
    interleaved rounds; each one's times (ms) by trial."""
    from kernels.tvm_latency import TVMBackend
    from spaces import load_space

    work = Path(args.work)
    space = load_space(SPACE)
    pts = timed_front(work / "run-empty", args.front)
    b = TVMBackend(work / "full-db", repeats=20)
    compiled = [b.compile(m, r, tune=False, check=False) for m, r in front_networks(space, pts)]
    times = b.time_rounds(compiled, args.rounds, 0.0)
    return {str(p["trial"]): t for p, t in zip(pts, times)}


def measure(args) -> dict:
    runs = []
    for i in range(args.processes):
        cmd = [sys.executable, __file__, "--child", "--work", args.work, "--front", str(args.front)]
        cmd += ["--rounds", str(args.rounds)]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"process {i + 1}: done", flush=True)
    return {**provenance(), "rounds": args.rounds, "processes": runs}


def _spread(values: list[float]) -> float:
    """(largest - smallest) / smallest, %."""
    return 100 * (max(values) - min(values)) / min(values)


def report(d: dict) -> str:
    procs = d["processes"]
    trials = list(procs[0])
    out = [
        "# How far a compiled network's timing moves here",
        "",
        f"`{d['command']}` ({d['date']}, {d['cpu']}).",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        f"Per process: the median and the least of its {d['rounds']} round figures, and the "
        "rounds more than 30 % above its least (ms). spread: (largest - smallest) / smallest of "
        "that summary over the processes.",
        "",
        "| trial | process | median ms | least ms | rounds > 1.3x least |",
        "|---:|---:|---:|---:|---:|",
    ]
    for t in trials:
        for i, p in enumerate(procs):
            xs = p[t]
            slow = sum(x > 1.3 * min(xs) for x in xs)
            out.append(
                f"| {t} | {i + 1} | {statistics.median(xs):.3f} | {min(xs):.3f} | "
                f"{slow} of {len(xs)} |"
            )
    out += ["", "| trial | spread of medians % | spread of least % |", "|---:|---:|---:|"]
    for t in trials:
        med = [statistics.median(p[t]) for p in procs]
        low = [min(p[t]) for p in procs]
        out.append(f"| {t} | {_spread(med):.1f} | {_spread(low):.1f} |")
    seq = procs[0][trials[0]]
    out += [
        "",
        f"The rounds of trial {trials[0]} in process 1, in order (ms): "
        + " ".join(f"{x:.3f}" for x in seq)
        + ".",
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
