"""What building several kernels' candidates ahead of their timing saves a tuning call.

MetaSchedule sends a tuning call's candidates one kernel's batch at a time (8 replay-trace
samples), and the product's builder compiled each batch on the host's cores and timed it before
the next was built: on 2 cores, the last candidates of each batch compiled alone. With
`kernels.tvm_tuning.BUILD_AHEAD` candidates (`_BuildAhead`), the batches of several kernels go
to one pool of build threads and are timed together once built, never beside a build.

The tinynet base's first `--kernels` kernels are tuned from an empty database with `--trials`
trials each (the default run's seed tuning), both ways in turn, `--rounds` times (a slow spell
of the host scales neighbouring rounds alike): each call's wall seconds, its seconds a
candidate, the trials its screen ruled out, and the sum over the kernels of their best time
(calls counted; the schedules tried are the same both ways, each kernel's seeded by its key, so
this differs by timing alone). With `--work` (a `benchmarks/latency_default.py` work folder),
also that run's front check made again on its seed tuning (`benchmarks/check_budget.py:
check_with_transfer`: its transferred schedules, first pass and second pass), both ways in turn,
`--check-rounds` times.

    python benchmarks/build_ahead.py [--kernels 48] [--trials 8] [--rounds 3]
        [--work runs/bench-latency-default-26 --front 3 --check-rounds 1]

Writes benchmarks/results/build_ahead.md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
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
    ap.add_argument("--kernels", type=int, default=48, help="the tinynet base's first kernels")
    ap.add_argument("--trials", type=int, default=8, help="replay-trace trials per kernel")
    ap.add_argument("--rounds", type=int, default=3, help="tuning calls each way")
    ap.add_argument("--work", help="a benchmarks/latency_default.py work folder: its check too")
    ap.add_argument("--front", type=int, default=3, help="the front's first networks (--work)")
    ap.add_argument("--check-rounds", type=int, default=1, help="front checks each way")
    ap.add_argument("--out", default=str(RESULTS / "build_ahead.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    json_and_md(ap.parse_args(), measure, report)


@contextlib.contextmanager
def building_ahead(ahead: int):
    """`kernels.tvm_tuning.BUILD_AHEAD` set to `ahead` meanwhile."""
    from kernels import tvm_tuning as tt

    was, tt.BUILD_AHEAD = tt.BUILD_AHEAD, ahead
    try:
        yield
    finally:
        tt.BUILD_AHEAD = was


def tune_once(args, ahead: int) -> dict:
    """One tuning call from an empty database with `BUILD_AHEAD` set to `ahead`."""
    from benchmarks.latency_default import _base_kernels
    from kernels.tvm_latency import TVMBackend

    b = TVMBackend(tempfile.mkdtemp(prefix="build-ahead-"), trials_per_task=args.trials)
    kernels = _base_kernels(b, args.kernels, SPACE)
    with building_ahead(ahead):
        t0 = time.time()
        b.db.tune(kernels, focus=False)
        wall = time.time() - t0
    return {
        "build_ahead": ahead,
        "wall_s": wall,
        "candidates": len(kernels) * args.trials,
        "screened": b.db.stats["trials_screened"],
        "best_sum_us": 1e6 * sum(b.db._best(k) * k.calls for k in kernels),
    }


def check_once(args, lowered: list, ahead: int) -> dict:
    """The work folder's front check made again, `BUILD_AHEAD` set to `ahead`."""
    from benchmarks.check_budget import check_with_transfer

    with building_ahead(ahead):
        _, cost = check_with_transfer(Path(args.work), lowered, 8)
    keys = ("seconds", "kernels_tuned", "kernels_focused", "trials_screened")
    return {"build_ahead": ahead, **{k: cost[k] for k in keys}}


def _front_lowered(args) -> list:
    from benchmarks.common import front_networks, timed_front
    from kernels.tvm_latency import TVMBackend
    from spaces import load_space

    pts = timed_front(Path(args.work) / "run-empty", args.front)
    b = TVMBackend(tempfile.mkdtemp(prefix="build-ahead-"))
    return [b._lowered(m, r) for m, r in front_networks(load_space(SPACE), pts)]


def _in_turn(rounds: int, once) -> list[dict]:
    from kernels.tvm_tuning import BUILD_AHEAD

    out = []
    for r in range(rounds):
        for ahead in (0, BUILD_AHEAD) if r % 2 == 0 else (BUILD_AHEAD, 0):
            out.append({"round": r, **once(ahead)})
            print(out[-1], flush=True)
    return out


def measure(args) -> dict:
    calls = _in_turn(args.rounds, lambda a: tune_once(args, a))
    checks = []
    if args.work:
        lowered = _front_lowered(args)
        checks = _in_turn(args.check_rounds, lambda a: check_once(args, lowered, a))
    return {
        **provenance(),
        "kernels": args.kernels,
        "trials": args.trials,
        "calls": calls,
        "work": args.work,
        "checks": checks,
    }


def report(d: dict) -> str:
    ways = sorted({c["build_ahead"] for c in d["calls"]})

    def stat(ahead: int, key: str, per: bool = False) -> str:
        xs = [
            c[key] / (c["candidates"] if per else 1)
            for c in d["calls"]
            if c["build_ahead"] == ahead
        ]
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        fmt = "{:.3f} ± {:.3f}" if per else "{:.1f} ± {:.1f}"
        return fmt.format(statistics.mean(xs), sd)

    walls = {
        a: statistics.mean(c["wall_s"] for c in d["calls"] if c["build_ahead"] == a) for a in ways
    }
    fastest = min(walls, key=walls.get)
    lines = [
        "# Building several kernels' candidates ahead of their timing",
        "",
        f"`{d['command']}` ({d['date']}, {d['cpu']}).",
        "",
        f"The tinynet base's first {d['kernels']} kernels tuned from an empty database, "
        f"{d['trials']} replay-trace trials each (the default run's seed tuning), both ways in "
        f"turn, {len(d['calls']) // len(ways)} calls each way (mean ± std over them). build ahead: "
        "`kernels.tvm_tuning.BUILD_AHEAD`, the candidates built before any is timed (0: each "
        "kernel's batch of 8 built on the host's cores and timed before the next is built); "
        "best sum: the kernels' best times summed, each counted as often as the network calls it "
        "(the same schedules are tried both ways, so this differs by timing alone).",
        "",
        "| build ahead | wall s | s a candidate | screened | best sum µs |",
        "|---:|---:|---:|---:|---:|",
    ]
    for a in ways:
        wall = stat(a, "wall_s")
        per = stat(a, "wall_s", per=True)
        if a == fastest:
            wall, per = f"**{wall}**", f"**{per}**"
        lines.append(f"| {a} | {wall} | {per} | {stat(a, 'screened')} | {stat(a, 'best_sum_us')} |")
    if len(ways) == 2:
        change = 100 * (walls[ways[1]] / walls[ways[0]] - 1)
        lines += ["", f"- Building {ways[1]} ahead: wall time {change:+.1f} % against 0."]
    return "\n".join(lines + _checks_report(d)) + "\n"


def _checks_report(d: dict) -> list[str]:
    if not d.get("checks"):
        return []
    ways = sorted({c["build_ahead"] for c in d["checks"]})
    lines = [
        "",
        f"## The front check of `{d['work']}`, made again",
        "",
        "On that run's seed tuning, as the run's check made it (`benchmarks/check_budget.py: "
        "check_with_transfer`), both ways in turn; kernels: tuned (first pass) and given the "
        "second pass.",
        "",
        "| round | build ahead | s | kernels tuned | kernels focused | screened |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for c in d["checks"]:
        lines.append(
            f"| {c['round']} | {c['build_ahead']} | {c['seconds']:.1f} | {c['kernels_tuned']} | "
            f"{c['kernels_focused']} | {c['trials_screened']} |"
        )
    by = {a: [c["seconds"] for c in d["checks"] if c["build_ahead"] == a] for a in (0, max(ways))}
    if all(by.values()):
        mean = {a: statistics.mean(v) for a, v in by.items()}
        change = 100 * (mean[max(ways)] / mean[0] - 1)
        lines += [
            "",
            f"- Mean over the rounds: {mean[0]:.1f} s with 0, {mean[max(ways)]:.1f} s with "
            f"{max(ways)} ahead ({change:+.1f} %).",
        ]
    return lines


if __name__ == "__main__":
    main()
