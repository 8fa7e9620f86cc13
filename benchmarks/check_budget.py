"""What the front check of a `tvm-transfer` run buys with its trials.

At its end a run measures its front (up to `check_front` networks) with their own kernels tuned.
Up to bench-9 the default run's check gave each new kernel 8 replay-trace trials, then 32 in all
for the kernels that make up 80 % of the time (`focus_trials`); in `benchmarks/latency_default.py`
that check took longer than the whole search. This script asks what smaller checks would have
said (8 or 16 trials for every kernel; 8, then `--focus-trials` for the slowest kernels making up
`--focus-share` of each network's time), and runs the check the run made (`latency.check_transfer`:
8 trials, each new kernel's transferred schedules timed beside them, and the run's own
`focus_trials` second pass if it had one) again on the run's seed tuning.

It reads the work folder of a `benchmarks/latency_default.py` run: the empty-cache run's front and
the benchmark's fully tuned database (`full-db`: 32 trials for every kernel of the front's first
networks, its first trials drawn as the run's check drew them, `kernels.tvm_tuning.kernel_seed`).
Each kernel's best schedule among its first N trials there is what a check with N trials a kernel
would have found. The front's networks are compiled with each such database, and with the run's
own database (its seed tuning and its check, focus included), and all are timed in `--rounds`
interleaved rounds in this one quiet process (`TVMBackend.time_rounds`); each is compared with the same networks at 32 trials.
Cost: the trials a check tunes that gives every kernel of the front's networks N trials (all
networks, or the first alone, as `check_front: 1` would); the run's own check tuned only the
kernels its seed tuning lacked, its trials and seconds are in its log and latency.json.

    python benchmarks/check_budget.py --work runs/bench-latency-default-9 [--trials 8 16 32]
        [--transfer-trials 8 4] [--light-trials 0 2] [--transfer-focus 0 16] [--focus-trials 16]
        [--focus-share 0.8] [--focus-from 8 4]

Writes benchmarks/results/check_budget.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    RESULTS,
    compiled_with,
    front_networks,
    json_and_md,
    provenance,
    timed_front,
)

SPACE = ROOT / "spaces" / "tinynet.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="a benchmarks/latency_default.py work folder")
    ap.add_argument("--trials", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--front", type=int, default=3, help="the front's first networks")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--space", default=str(SPACE))
    ap.add_argument("--out", default=str(RESULTS / "check_budget.md"))
    ap.add_argument(
        "--transfer-trials",
        type=int,
        nargs="+",
        default=[8],
        help="trials of the check that also times transferred schedules, run by the script "
        "once for each count (0: no such check)",
    )
    ap.add_argument(
        "--focus-trials",
        type=int,
        default=16,
        help="a check giving the slowest kernels this many trials in all (0: none)",
    )
    ap.add_argument(
        "--light-trials",
        type=int,
        nargs="+",
        default=None,
        help="trials of the check with transferred schedules for the kernels outside the run's "
        "transfer_share (`latency.light_trials`), one check each (default: the run's setting)",
    )
    ap.add_argument(
        "--transfer-focus",
        type=int,
        nargs="+",
        default=None,
        help="`focus_trials` of the check with transferred schedules, one check each for every "
        "--light-trials count (at most --transfer-trials: no second pass; default: the run's)",
    )
    ap.add_argument(
        "--transfer-budget",
        type=int,
        nargs="+",
        default=None,
        help="`focus_budget` of the check with transferred schedules (the second pass's trials in "
        "all; 0: no bound), one check each (default: the run's)",
    )
    ap.add_argument(
        "--screen",
        type=float,
        nargs="+",
        default=None,
        help="the tuning runner's `screen` (kernels.tvm_tuning.RUNNER) for the check with "
        "transferred schedules, one check each (0: every trial timed in full; default: the "
        "code's)",
    )
    ap.add_argument("--focus-share", type=float, default=0.8)
    ap.add_argument(
        "--focus-from",
        type=int,
        nargs="+",
        default=None,
        help="first-pass trials of the focus check, one variant each (default: the least of "
        "--trials)",
    )
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    json_and_md(ap.parse_args(), measure, report)


def read_database(folder: Path) -> tuple[list, list]:
    """The workloads of the JSON database in `folder` and its records as (workload index, record
    json), in the order they were committed."""
    from tvm.s_tir import meta_schedule as ms

    from kernels.tvm_compile import load_tvm

    load_tvm()
    wls = [
        ms.database.Workload.from_json(json.loads(line))
        for line in (folder / "database_workload.json").read_text().splitlines()
    ]
    recs = [
        json.loads(line)
        for line in (folder / "database_tuning_record.json").read_text().splitlines()
    ]
    return wls, recs


def first_trials(wls: list, recs: list, n: int, more: dict | None = None):
    """An in-memory database with each workload's best record among its first `n` (`more`: a
    count by workload index for some; `wls`, `recs`: `read_database`'s), and the trials that took
    by workload index."""
    from tvm.s_tir import meta_schedule as ms

    best, counts = _best_of_first(wls, recs, n, more)
    mem = ms.database.MemoryDatabase(module_equality="structural")
    for _, r in best.values():
        mem.commit_tuning_record(
            ms.database.TuningRecord(
                r.trace, mem.commit_workload(r.workload.mod), r.run_secs, r.target, r.args_info
            )
        )
    return mem, counts


def _best_of_first(wls: list, recs: list, n: int, more: dict | None = None) -> tuple:
    """Each workload's best (mean seconds, record) among its first `n` records (`more`: a count
    by workload index for some), and how many records that took by workload index."""
    from tvm.s_tir import meta_schedule as ms

    best: dict[int, tuple[float, object]] = {}
    seen: dict[int, int] = {}
    more = more or {}
    for i, rec in recs:
        seen[i] = seen.get(i, 0) + 1
        if seen[i] > more.get(i, n):
            continue
        r = ms.database.TuningRecord.from_json(rec, wls[i])
        secs = [float(x) for x in r.run_secs or []]
        t = sum(secs) / len(secs) if secs else 1e10
        if t < 1e9 and t < best.get(i, (1e10,))[0]:
            best[i] = (t, r)
    return best, {i: min(c, more.get(i, n)) for i, c in seen.items()}


def focus_counts(wls: list, recs: list, nets: list[list[tuple[int, int]]], n: int, share: float):
    """The kernels a check's second pass (`focus_trials`) would tune further, as
    `TuningDB._focus` chooses them (`slowest_share`): in each network (its kernels as (workload
    index, calls)), the slowest by their best of their first `n` trials times their calls, making
    up `share` of the network's summed time. Their workload indices."""
    from kernels.tvm_tuning import slowest_share

    best, _ = _best_of_first(wls, recs, n)
    out: set[int] = set()
    for ks in nets:
        out.update(slowest_share([(best[i][0] * c, i) for i, c in ks if i in best], share))
    return out


def measure(args) -> dict:
    from tvm_ffi import structural_hash

    from kernels.tvm_latency import TVMBackend
    from kernels.tvm_tuning import TuningDB
    from spaces import load_space

    work = Path(args.work)
    wls, recs = read_database(next((work / "full-db").iterdir()))
    own = next(p for p in (work / "cache" / "tvm").iterdir() if p.is_dir())
    space = load_space(args.space)
    pts = timed_front(work / "run-empty", args.front)
    b = TVMBackend(tempfile.mkdtemp(prefix="check-budget-"), repeats=20)
    variants = {f"{n} trials": first_trials(wls, recs, n) for n in args.trials}
    variants["the run's check"] = (TuningDB(own.parent, b.target).database, None)
    index = {structural_hash(w.mod): i for i, w in enumerate(wls)}
    nets, lowered, calls = [], [], []
    for p, (model, r) in zip(pts, front_networks(space, pts)):
        lowered.append(b._lowered(model, r))
        # each kernel's workload index in the fully tuned database, and its calls
        calls.append(
            [
                (index.get(structural_hash(k.task.dispatched[0]), -1), k.calls)
                for k in lowered[-1][2]
            ]
        )
        found = {i for i, _ in calls[-1]}
        nets.append({"trial": p["trial"], "genome_id": p["genome_id"], "workloads": found})
    for n in (args.focus_from or [min(args.trials)]) if args.focus_trials else []:
        heavy = focus_counts(wls, recs, calls, n, args.focus_share)
        name = f"{n} trials, {args.focus_trials} for the slowest {100 * args.focus_share:.0f} %"
        variants[name] = first_trials(wls, recs, n, {i: args.focus_trials for i in heavy})
    transfer_checks = []
    for n, light, focus, screen, budget in (
        (t, x, f, c, u)
        for t in args.transfer_trials
        if t
        for x in args.light_trials or [None]
        for f in args.transfer_focus or [None]
        for c in args.screen or [None]
        for u in args.transfer_budget or [None]
    ):
        db, cost = check_with_transfer(work, lowered, n, light, focus, screen, budget)
        transfer_checks.append(cost)
        name = f"{n} trials + transferred schedules"
        if cost.get("kernels_light"):
            name += f" ({cost['light_trials']} for the {cost['kernels_light']} light kernels)"
        if cost["kernels_focused"]:
            name += f", {cost['focus_trials']} for the slowest"
            if cost.get("focus_budget"):
                name += f" within {cost['focus_budget']} trials"
        elif focus is not None:
            name += ", no second pass"
        if screen is not None:
            name += f", screened at {screen:g}x" if screen else ", every trial timed in full"
        variants[name] = (db, None)
    compiled = [
        compiled_with(b, prepared, shape, db)
        for prepared, shape, _ in lowered
        for db, _ in variants.values()
    ]
    times = iter(statistics.median(t) for t in b.time_rounds(compiled, args.rounds, 0.0))
    medians = {(n["genome_id"], name): next(times) for n in nets for name in variants}
    return {
        **provenance(),
        "work": str(work),
        "rounds": args.rounds,
        "run_check": _run_check(work),
        "transfer_checks": transfer_checks,
        "variants": [
            {
                "name": name,
                "trials_all": _trials(nets, counts),
                "trials_first": _trials(nets[:1], counts),
                "ms": {n["genome_id"]: medians[(n["genome_id"], name)] for n in nets},
            }
            for name, (_, counts) in variants.items()
        ],
        "networks": [{k: v for k, v in n.items() if k != "workloads"} for n in nets],
    }


def check_with_transfer(
    work: Path,
    lowered: list,
    trials: int,
    light: int | None = None,
    focus: int | None = None,
    screen: float | None = None,
    budget: int | None = None,
) -> tuple:
    """The front check as `latency.check_transfer` makes it, run here: on a copy of the run's
    database cut back to its seed tuning, each kernel of the front's networks that it lacks tuned
    with `trials` trials and its transferred schedules timed beside them
    (`TuningDB.tune(seeds=...)`, from the run's `transfer_tries` nearest tuned kernels, for the
    kernels its `transfer_share` gives them; `light`, default the run's `light_trials`: the
    trials of those outside that share), then the run's second pass if it had one (`focus`,
    default the run's `focus_trials`: at most `trials` makes none; `screen`, default the code's:
    the tuning runner's brief first timing, `kernels.tvm_tuning.RUNNER`; `budget`, default the
    run's `focus_budget`: the second pass's trials in all). Its database and what it cost."""
    import shutil
    import time

    import yaml

    from benchmarks.transfer_quality import seed_only_db
    from kernels.tvm_latency import TVMBackend
    from kernels.tvm_transfer import Transfer

    run = work / "run-empty"
    lat = json.loads((run / "latency.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())["latency"]
    keys = ("focus_trials", "focus_share", "light_trials", "focus_budget")
    passes = {k: cfg[k] for k in keys if cfg.get(k) is not None}  # the run's tuning passes
    if light is not None:
        passes["light_trials"] = light
    if focus is not None:
        passes["focus_trials"] = focus
    if budget is not None:
        passes["focus_budget"] = budget
    tmp = Path(tempfile.mkdtemp(prefix="check-transfer-"))
    seed_db = seed_only_db(Path(lat["database"]), lat["seed_kernels_tuned"], tmp / "db")
    runner = {"screen": screen} if screen is not None else None
    tb = TVMBackend(seed_db, trials_per_task=trials, runner=runner, **passes)
    nets = [ks for _, _, ks in lowered]
    t0 = time.time()
    tuned = tb.db.tune(
        [k for ks in nets for k in ks],
        networks=nets,
        seeds=Transfer(
            tries=cfg["transfer_tries"], pick="fastest", share=cfg.get("transfer_share", 1.0)
        ),
    )
    cost = {
        "trials": trials,
        "kernels_tuned": tuned,
        "kernels_focused": tb.db.stats["tasks_focused"],
        "kernels_light": tb.db.stats["tasks_light"],
        "light_trials": tb.db.light_trials,
        "focus_trials": tb.db.focus_trials,
        "focus_budget": tb.db.focus_budget,
        "kernels_over_budget": tb.db.stats["tasks_over_budget"],
        "transferred_candidates": tb.db.stats["transferred_candidates"],
        "screen": tb.db.runner.get("screen"),
        "trials_screened": tb.db.stats.get("trials_screened"),
        "seconds": time.time() - t0,
    }
    db = tb.db.database
    shutil.rmtree(tmp, ignore_errors=True)  # the database is in memory now
    return db, cost


def _trials(nets: list[dict], counts: dict | None) -> int | None:
    """Trials a check of `nets` tunes: each distinct kernel's count in `counts` (by workload
    index); None for the run's own check (in its log)."""
    if counts is None:
        return None
    return sum(counts.get(i, 0) for i in set().union(*(n["workloads"] for n in nets)))


def _run_check(work: Path) -> dict:
    lat = json.loads((work / "run-empty" / "latency.json").read_text())
    return {"front_s": lat.get("front_s"), "kernels_tuned": lat.get("front_kernels_tuned")}


def report(d: dict) -> str:
    nets = d["networks"]
    ref = next(v for v in d["variants"] if v["name"] == "32 trials")["ms"]
    out = [
        "# What the front check's trials buy",
        "",
        f"`{d['command']}` ({d['date']}, {d['cpu']}).",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        __doc__.split("\n\n")[2].replace("\n", " "),
        "",
        f"The run's own check took {d['run_check']['front_s']:.0f} s and tuned "
        f"{d['run_check']['kernels_tuned']} kernels. Each network timed in {d['rounds']} "
        "interleaved rounds (the median, ms); error: against the same network at 32 trials.",
        "",
        *[
            line
            for c in d.get("transfer_checks", [d.get("transfer_check")])
            for line in _transfer_check_line(c)
        ],
        "| check | trials (front) | trials (first network) | "
        + " | ".join(f"trial {n['trial']} ms" for n in nets)
        + " | MAPE % |",
        "|---|---:|---:|" + "---:|" * len(nets) + "---:|",
    ]
    for v in d["variants"]:
        errs = [
            100 * abs(v["ms"][n["genome_id"]] - ref[n["genome_id"]]) / ref[n["genome_id"]]
            for n in nets
        ]
        out.append(
            f"| {v['name']} | {_n(v['trials_all'])} | {_n(v['trials_first'])} | "
            + " | ".join(f"{v['ms'][n['genome_id']]:.3f}" for n in nets)
            + f" | {statistics.mean(errs):.1f} |"
        )
    return "\n".join(out) + "\n"


def _transfer_check_line(c: dict | None) -> list[str]:
    if not c:
        return []
    return [
        f"The check with transferred schedules (`latency.check_transfer`), run by this script on "
        f"the run's seed tuning: {c['kernels_tuned']} kernels tuned with {c['trials']} trials "
        + (
            f"({c['light_trials']} for the {c['kernels_light']} outside the transfer's share) "
            if c.get("kernels_light")
            else "each "
        )
        + f"and {c['transferred_candidates']} transferred schedules timed beside them"
        + (
            f", then {c['kernels_focused']} of the slowest given {c['focus_trials']} trials in all"
            if c.get("kernels_focused")
            else ""
        )
        + (
            f" ({c['kernels_over_budget']} more chosen, left out by a budget of "
            f"{c['focus_budget']} trials)"
            if c.get("kernels_over_budget")
            else ""
        )
        + (
            f"; {c['trials_screened']} trials ruled out by a brief first timing (over "
            f"{c['screen']:g}x the fastest of their batch)"
            if c.get("trials_screened")
            else ""
        )
        + f", in {c['seconds']:.0f} s.",
        "",
    ]


def _n(x) -> str:
    return "(its log)" if x is None else str(x)


if __name__ == "__main__":
    main()
