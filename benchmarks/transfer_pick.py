"""What `transfer_pick: fastest` costs, and what its short timing changes in the picks.

For each kernel a `tvm-transfer` search has not tuned, `pick: fastest` replays the schedules of
the `--tries` nearest tuned kernels of the same operator, compiles each replay alone and times
it, and keeps the fastest. This script takes the front of a `benchmarks/latency_default.py` run
(its seed tuning alone: the run's database cut back to its seed networks' records, as
`transfer_quality.py` does), gathers the front's kernels that the seeds lack, and measures:

- build: every replay compiled one after another, then again on as many threads as the host has
  cores (`build_kernels`, as `Transfer.fastest` does);
- timing: every replay timed, in `--rounds` interleaved rounds, with `time_kernel`'s timing (3
  runs a repeat, 10 repeats of at least 5 ms) and with `PICK_TIMING` (the product's); each
  round's picks are judged by a third, long timing of every replay (20 repeats of at least 10
  ms, taken apart from both), so neither timing is judged by its own noise.

    python benchmarks/transfer_pick.py --work runs/bench-latency-default-6

Writes benchmarks/results/transfer_pick.md and .json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
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
from benchmarks.transfer_quality import SPACE, seed_only_db  # noqa: E402

LONG = {"number": 3, "repeat": 10, "min_repeat_ms": 5}  # time_kernel's
JUDGE = {"number": 3, "repeat": 20, "min_repeat_ms": 10}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="a latency_default.py work folder")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--front", type=int, default=3)
    ap.add_argument("--tries", type=int, default=3, help="sources replayed per kernel")
    ap.add_argument("--space", default=str(SPACE))
    ap.add_argument("--out", default=str(RESULTS / "transfer_pick.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    json_and_md(ap.parse_args(), measure, report)


def kernels_and_replays(args, tmp: Path):
    """The front's distinct kernels that the run's seed tuning lacks, each with its replays."""
    from kernels.tvm_latency import TVMBackend
    from kernels.tvm_transfer import Transfer
    from spaces import load_space

    run_dir = Path(args.work) / "run-empty"
    lat = json.loads((run_dir / "latency.json").read_text())
    space = load_space(args.space)
    pts = timed_front(run_dir, args.front)
    backend = TVMBackend(seed_only_db(Path(lat["database"]), lat["seed_kernels_tuned"], tmp))
    kernels = {}
    for model, r in front_networks(space, pts):
        for k in backend.kernels_of(model, r):
            if backend.db.record(k) is None:
                kernels.setdefault(k.key, k)
    transfer = Transfer(tries=args.tries, pick="fastest")
    transfer.refresh(backend.db)
    replays = [
        (k, [sch.mod for sch, _ in transfer.replays(k.task.dispatched[0])])
        for k in kernels.values()
    ]
    return backend.target, [(k, mods) for k, mods in replays if mods], len(pts)


def build_all(mods: list, target, threads: int) -> tuple[list, float]:
    from kernels.tvm_transfer import build_kernels

    t0 = time.perf_counter()
    built = build_kernels(mods, target, threads)
    if None in built:
        raise RuntimeError(f"{built.count(None)} of {len(mods)} replays did not build")
    return built, time.perf_counter() - t0


def time_all(built: list, timing: dict) -> tuple[list[float], float]:
    from kernels.tvm_transfer import time_kernels

    t0 = time.perf_counter()
    secs = time_kernels(built, timing)
    return secs, time.perf_counter() - t0


def picks(groups: list[tuple[int, int, int]], secs: list[float]) -> list[int]:
    """Each kernel's fastest replay (index into the flat list) by `secs`."""
    return [min(range(a, b), key=secs.__getitem__) for _, a, b in groups]


def measure(args) -> dict:
    from kernels.tvm_compile import host_cores
    from kernels.tvm_transfer import PICK_TIMING

    tmp = Path(tempfile.mkdtemp(prefix="transfer-pick-"))
    try:
        target, replays, n_front = kernels_and_replays(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mods = [m for _, ms in replays for m in ms]
    groups, at = [], 0  # (calls, first, end) of each kernel's replays in `mods`
    for k, ms in replays:
        groups.append((k.calls, at, at + len(ms)))
        at += len(ms)
    _, serial_s = build_all(mods, target, 1)
    built, threaded_s = build_all(mods, target, max(1, host_cores()))
    timings = {"time_kernel": LONG, "pick": PICK_TIMING}
    rounds = {name: [] for name in timings}
    for _ in range(args.rounds):
        for name, timing in timings.items():
            secs, spent = time_all(built, timing)
            rounds[name].append({"timing_s": spent, "picks": picks(groups, secs)})
        judge, _ = time_all(built, JUDGE)
        best = picks(groups, judge)
        for rs in rounds.values():
            r = rs[-1]
            r["picked_us"] = 1e6 * sum(c * judge[i] for (c, _, _), i in zip(groups, r["picks"]))
            r["best_us"] = 1e6 * sum(c * judge[i] for (c, _, _), i in zip(groups, best))
            r["same_as_judge"] = sum(a == b for a, b in zip(r["picks"], best))
    for a, b in zip(rounds["time_kernel"], rounds["pick"]):
        b["same_as_time_kernel"] = sum(x == y for x, y in zip(a["picks"], b["picks"]))
    return {
        **provenance(),
        "threads": max(1, host_cores()),
        "front": n_front,
        "kernels": len(groups),
        "replays": len(mods),
        "build_serial_s": serial_s,
        "build_threaded_s": threaded_s,
        "timings": timings,
        "rounds": rounds,
    }


def _ms(xs: list[float], fmt: str = "{:.1f}") -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(sd)}"


def report(d: dict) -> str:
    n, k = d["replays"], d["kernels"]
    lines = [
        "# What `transfer_pick: fastest` costs",
        "",
        f"`{d['command']}` ({d['date']}, {d['cpu']}).",
        "",
        f"The front's first {d['front']} networks of a `benchmarks/latency_default.py` run: "
        f"{k} distinct kernels that its seed tuning lacks, {n} replays of the nearest tuned "
        "kernels' schedules on them. Picking a kernel's replay means compiling each replay "
        "alone and timing it.",
        "",
        "## Compiling the replays",
        "",
        "| threads | replays | s | s / replay |",
        "|---:|---:|---:|---:|",
        f"| 1 | {n} | {d['build_serial_s']:.1f} | {d['build_serial_s'] / n:.3f} |",
        f"| {d['threads']} (the product's) | {n} | **{d['build_threaded_s']:.1f}** | "
        f"**{d['build_threaded_s'] / n:.3f}** |",
        "",
        "## Timing them",
        "",
        f"Every replay timed with each timing in {len(d['rounds']['pick'])} interleaved rounds "
        "(mean ± std over rounds); each round's picks judged by a long timing of every replay "
        f"({JUDGE['repeat']} repeats of at least {JUDGE['min_repeat_ms']} ms, taken apart): "
        "picked µs is the kernels' summed judged time (time x calls in a network) of the "
        "replays each timing picked, best µs that of the judge's own picks. same picks: "
        "kernels where the timing kept the replay the judge would.",
        "",
        "| timing | runs x repeats, at least | s (all replays) | picked µs | best µs | same picks |",
        "|---|---|---:|---:|---:|---:|",
    ]
    rows = []
    for name, label in [
        ("time_kernel", "`time_kernel`'s"),
        ("pick", "`PICK_TIMING` (the product's)"),
    ]:
        t, rs = d["timings"][name], d["rounds"][name]
        rows.append(
            (
                label,
                f"{t['number']} x {t['repeat']}, {t['min_repeat_ms']} ms",
                [r["timing_s"] for r in rs],
                [r["picked_us"] for r in rs],
                [r["best_us"] for r in rs],
                [r["same_as_judge"] for r in rs],
            )
        )
    fastest = min(range(len(rows)), key=lambda i: statistics.mean(rows[i][2]))
    closest = min(range(len(rows)), key=lambda i: statistics.mean(rows[i][3]))
    for i, (label, t, secs, picked, best, same) in enumerate(rows):
        s, p = _ms(secs), _ms(picked)
        s, p = (f"**{s}**" if i == fastest else s), (f"**{p}**" if i == closest else p)
        lines.append(f"| {label} | {t} | {s} | {p} | {_ms(best)} | {_ms(same)} of {k} |")
    agree = [r["same_as_time_kernel"] for r in d["rounds"]["pick"]]
    lines += [
        "",
        f"- The two timings kept the same replay for {_ms(agree)} of {k} kernels a round.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
