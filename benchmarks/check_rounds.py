"""How the front check's timing protocol (its rounds, and the runs in each timing) decides how
close its figures come to the networks' quiet figures on this machine, and what each costs.

The front's networks of a `benchmarks/latency_default.py` run, compiled with the run's own
database (the schedules its check timed), in each of `--processes` fresh processes, one after
another. In each, every protocol of `--protocols` (R:N: R interleaved rounds, N runs per timing;
the default run's check is 5:20) times them `--checks` times, the protocols taking turns, each
time as the check does (`TVMBackend.time_rounds`, rounds at least 3 s apart, each network's
quietest round; without the check's extra rounds for a network over its search figure). A check's
error: its figures' MAPE against each network's quiet figure, the least round of all the
process's checks. Nothing else runs.

    python benchmarks/check_rounds.py --work runs/bench-latency-default-32 \
        [--protocols 5:20 10:10 15:20] [--checks 4] [--processes 2]

Writes benchmarks/results/check_rounds.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, json_and_md, own_front, provenance  # noqa: E402

SPACE = ROOT / "spaces" / "tinynet.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="a benchmarks/latency_default.py work folder")
    ap.add_argument("--front", type=int, default=3, help="the front's first networks")
    ap.add_argument("--protocols", nargs="+", default=["5:20", "10:10", "15:20"])
    ap.add_argument("--checks", type=int, default=4, help="checks per protocol and process")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "check_rounds.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    for p in args.protocols:
        r, n = p.split(":")
        if not (r.isdigit() and n.isdigit() and int(r) > 0 and int(n) > 0):
            ap.error(f"--protocols: {p!r} is not ROUNDS:RUNS (two positive integers)")
    if args.child:
        print(json.dumps(child(args)))
        return
    json_and_md(args, measure, report)


def child(args) -> dict:
    """In this process: the front's networks compiled with the run's database, then each
    protocol's checks in turn; per protocol, each check's figures (ms, by network) and seconds,
    and every round figure of each network."""
    b, pts, compiled = own_front(SPACE, args.work, args.front)
    out = {p: {"figures": [], "seconds": []} for p in args.protocols}
    rounds: list[list[float]] = [[] for _ in compiled]
    for _ in range(args.checks):
        for p in args.protocols:
            r, n = (int(x) for x in p.split(":"))
            b.repeats, t0 = n, time.perf_counter()
            times = b.time_rounds(compiled, r)
            out[p]["seconds"].append(time.perf_counter() - t0)
            out[p]["figures"].append([min(t) for t in times])
            for acc, t in zip(rounds, times):
                acc += t
    return {"trials": [p["trial"] for p in pts], "protocols": out, "rounds": rounds}


def measure(args) -> dict:
    procs = []
    for i in range(args.processes):
        cmd = [sys.executable, __file__, "--child", "--work", args.work, "--front", str(args.front)]
        cmd += ["--checks", str(args.checks), "--protocols", *args.protocols]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            sys.exit(f"process {i + 1} failed:\n{r.stderr[-3000:]}")
        procs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"process {i + 1} of {args.processes}: done", flush=True)
    return {**provenance(), "protocols": args.protocols, "checks": args.checks, "processes": procs}


def _errors(proc: dict, p: str) -> list[float]:
    """Each check's MAPE (%) against the process's quiet figures."""
    quiet = [min(r) for r in proc["rounds"]]
    return [
        100 * statistics.mean(abs(f - q) / q for f, q in zip(figs, quiet))
        for figs in proc["protocols"][p]["figures"]
    ]


def _pm(xs: list[float], fmt: str = ".1f") -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):{fmt}} ± {sd:{fmt}}"


def report(d: dict) -> str:
    procs = d["processes"]
    rows = []
    for p in d["protocols"]:
        errs = [e for proc in procs for e in _errors(proc, p)]
        secs = [s for proc in procs for s in proc["protocols"][p]["seconds"]]
        worst = max(errs)
        rows.append((p, errs, secs, worst))
    best_mean = min(statistics.mean(r[1]) for r in rows)
    out = [
        "# The front check's timing rounds against the networks' quiet figures",
        "",
        f"`{d['command']}` ({d['date']}, {d['cpu']}).",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        f"{d['checks']} checks per protocol in each of {len(procs)} processes: mean ± standard "
        "deviation over all of them.",
        "",
        "| rounds:runs | check MAPE vs quiet % | worst check % | checks within 10 % | s per check |",
        "|---|---:|---:|---:|---:|",
    ]
    for p, errs, secs, worst in rows:
        mape = _pm(errs)
        if statistics.mean(errs) == best_mean:
            mape = f"**{mape}**"
        within = sum(e <= 10 for e in errs)
        out.append(f"| {p} | {mape} | {worst:.1f} | {within} of {len(errs)} | {_pm(secs)} |")
    out += ["", "Quiet figures (ms, the least round of each process), by trial:", ""]
    for i, t in enumerate(procs[0]["trials"]):
        out.append(f"- trial {t}: " + ", ".join(f"{min(p['rounds'][i]):.3f}" for p in procs))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
