"""TVM latency in the default run (`latency: tvm-transfer`): what a tuning trial costs, what the
default run costs from an empty cache and from a warm one, and how close the front's latency comes
to the same networks measured with fully tuned kernels.

1. Time split of a MetaSchedule trial: the first `--split-kernels` kernels of the tinynet base,
   tuned from an empty database with `--split-trials` trials each under MetaSchedule's profiler
   (building the candidate, running it in the runner process, the rest: sampling the trace,
   postprocessing, the database), once with each runner setting of RUNNERS, and the summed
   best kernel time each setting found (what the ranking of schedules bought).
2. `search run spaces/tinynet.yaml` (with `--set` items appended) in a fresh cache folder (empty
   supernet cache and tuning database), then the same again in the same cache folder (warm):
   wall time, split into set-up without tuning (data, pre-training, the base's evaluation), the
   seed networks' tuning, the search, and the front's measurement at the end.
3. The empty-cache run's Pareto front (its first `--front` networks): each one's reported latency
   against the same network measured with fully tuned kernels (`--full-trials` per kernel, a
   database of its own, in `--rounds` interleaved rounds) and against PyTorch eager; the mean
   absolute percentage error, and Kendall's tau of the reported and of the eager ranking against
   the fully tuned one. Then the run's own database (its seed tuning and its check) and the
   reference database are both compiled into the front's networks and timed together in
   `--retime-rounds` interleaved rounds in this one process: the run's check against the
   reference without the drift of this machine's speed between processes
   (benchmarks/results/timing_noise.md), which moved the same reference network 4-32 % between
   benchmarks. `--retime-only` does this alone, on the work folder and results file of a
   finished benchmark (its command kept beside the benchmark's). From bench-34 on, the MAPEs and
   tau are against each network's quickest fully tuned figure, of the first timing and each
   re-timing process's (`"reference": "quickest"` in the json): a slow spell of this host only
   slows a timing, and bench-33's first timing read 1.8x its re-timing. Older results keep
   their first timing as the reference.

Writes benchmarks/results/latency_default.md and .json (`--report-only` rebuilds the md).

    python benchmarks/latency_default.py [--split-kernels 8] [--split-trials 8] [--full-trials 32]
        [--front 4] [--set key=value ...] [--skip-run] [--retime-rounds 15]
        [--retime-processes 3] [--retime-only] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    RESULTS,
    compiled_with,
    front_networks,
    json_and_md,
    timed_front,
)

SPACE = ROOT / "spaces" / "tinynet.yaml"
RUNNERS = {  # the first is the product's timing (kernels.tvm_tuning.RUNNER), without its screen
    "3 x 3 runs, >= 20 ms, in this process (the default)": dict(
        number=3, repeat=3, min_repeat_ms=20, in_process=True, screen=0
    ),
    "3 x 3 runs, >= 20 ms, runner process": dict(
        number=3, repeat=3, min_repeat_ms=20, in_process=False, screen=0
    ),
    "1 x 3 runs, no minimum, runner process": dict(
        number=1, repeat=3, min_repeat_ms=0, in_process=False, screen=0
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--split-kernels", type=int, default=8)
    ap.add_argument("--split-trials", type=int, default=8)
    ap.add_argument("--full-trials", type=int, default=32, help="trials per kernel, 'fully tuned'")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--retime-rounds",
        type=int,
        default=15,
        help="rounds of part 3's re-timing: the run's database beside the reference's",
    )
    ap.add_argument(
        "--retime-processes",
        type=int,
        default=3,
        help="fresh processes part 3's re-timing runs in, one after another",
    )
    ap.add_argument(
        "--retime-only",
        action="store_true",
        help="only part 3's re-timing, on the work folder and the results file already at --out "
        "(their runs and reference kept; its command kept beside theirs)",
    )
    ap.add_argument("--front", type=int, default=4, help="front networks checked in part 3")
    ap.add_argument("--space", default=str(SPACE), help="the run file (default: the tinynet space)")
    ap.add_argument("--set", action="append", default=[], help="key=value for the runs")
    ap.add_argument("--skip-run", action="store_true", help="only part 1")
    ap.add_argument(
        "--keep-split",
        action="store_true",
        help="part 1 taken from the results file already at --out (its command is kept beside "
        "the new one), parts 2 and 3 run again",
    )
    ap.add_argument(
        "--split-only",
        action="store_true",
        help="only part 1, written into the results file already at --out (its parts 2 and 3 kept)",
    )
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-latency-default"))
    ap.add_argument("--out", default=str(RESULTS / "latency_default.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    ap.add_argument(
        "--front-only",
        action="store_true",
        help="only part 3, on the empty run already in --work (a fresh reference database); "
        "prints its table, writes no results file",
    )
    args = ap.parse_args()
    if args.report_only:  # results written before the picks were: add them if the work is here
        _fill_picks(args)
    if args.front_only:
        print("\n".join(_front_table(front(args, Path(args.work) / "run-empty"))))
        return
    json_and_md(args, run, report)


def _fill_picks(args) -> None:
    path = Path(args.out).with_suffix(".json")
    d = json.loads(path.read_text())
    if "picks_us" not in d["split"][0] and (Path(args.work) / "split-0").exists():
        _add_picks(d["split"], Path(args.work))
        path.write_text(json.dumps(d, indent=1) + "\n")


def run(args) -> dict:
    work = Path(args.work)
    cmd = "python benchmarks/latency_default.py " + " ".join(sys.argv[1:])
    if args.retime_only:
        d = json.loads(Path(args.out).with_suffix(".json").read_text())
        retime(args, work, d["front"])
        d["retime_from"] = f"{cmd} ({time.strftime('%Y-%m-%d')})"
        return d
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if args.split_only:
        d = json.loads(Path(args.out).with_suffix(".json").read_text())
        d["split"] = split(args, work)
        d["split_from"] = f"{cmd} ({time.strftime('%Y-%m-%d')})"
        return d
    kept = json.loads(Path(args.out).with_suffix(".json").read_text()) if args.keep_split else {}
    d = {
        "command": cmd,
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "full_trials": args.full_trials,
        # the headline's reference: each network's quickest of the benchmark's timings of it (its
        # first and each re-timing process's), as a slow spell only ever slows a timing (decided
        # before bench-34, after bench-33's first reference timing fell in a spell)
        "reference": "quickest",
        "split": kept["split"] if kept else split(args, work),
    }
    if kept:
        d["split_from"] = kept.get("split_from") or f"{kept['command']} ({kept['date']})"
    if not args.skip_run:
        d["runs"] = [default_run(args, work, name) for name in ("empty", "warm")]
        d["front"] = front(args, work / "run-empty")
        retime(args, work, d["front"])
    return d


def _base_kernels(backend, n: int, path):
    from kernels.tvm_latency import realistic
    from spaces import load_space

    space = load_space(path)
    g = space.full()
    r = space.arch(g).resolution
    return backend.kernels_of(realistic(space.build(g, space.supernet(0)), r), r)[:n]


def split(args, work: Path) -> list[dict]:
    """Part 1: one fresh database per runner setting, the same kernels and trials."""
    from tvm.s_tir import meta_schedule as ms

    from kernels.tvm_latency import TVMBackend

    out = []
    for label, runner in RUNNERS.items():
        folder = work / f"split-{len(out)}"
        b = TVMBackend(folder, trials_per_task=args.split_trials, runner=runner)
        kernels = _base_kernels(b, args.split_kernels, args.space)
        t0 = time.time()
        with ms.Profiler() as prof:
            b.db.tune(kernels)
        total = time.time() - t0
        parts = {k: float(v) for k, v in prof.get().items()}
        trials = args.split_trials * len(kernels)
        build, run_ = parts.get("SendToBuilder", 0.0), parts.get("SendToRunner", 0.0)
        inside = parts.get("Total", total)  # MetaSchedule's own loop; the rest is session set-up
        out.append(
            {
                "runner": label,
                "settings": runner,
                "kernels": len(kernels),
                "trials": trials,
                "total_s": total,
                "build_s": build,
                "run_s": run_,
                "rest_s": inside - build - run_,
                "session_s": total - inside,
                "best_us": 1e6 * sum(b.db.seconds(k) or 0.0 for k in kernels),
            }
        )
        print(f"split {label}: {total / trials:.3f} s a trial", flush=True)
    _add_picks(out, work)
    return out


def _records(folder: Path) -> dict[str, dict[str, float]]:
    """A tuning database's records read from its files: workload hash -> schedule trace -> mean
    time (µs)."""
    (db,) = [p for p in folder.iterdir() if (p / "database_workload.json").exists()]
    hashes = [json.loads(x)[0] for x in (db / "database_workload.json").read_text().splitlines()]
    out: dict[str, dict[str, float]] = {}
    for line in (db / "database_tuning_record.json").read_text().splitlines():
        w, rec = json.loads(line)
        secs = [float(x) for x in rec[1] or []]
        if secs:
            trace = json.dumps(rec[0], sort_keys=True)
            out.setdefault(hashes[w], {})[trace] = 1e6 * statistics.mean(secs)
    return out


def _add_picks(rows: list[dict], work: Path) -> None:
    """Each runner's picks timed by the first (the default): the runners tried the same
    schedules (kernel-seeded), so this is what a runner's noise costs in the schedule it keeps.
    `picks_us`: the summed default-runner time of each kernel's pick; `same_picks`: kernels where
    it picked the default's schedule (or one the default timed the same)."""
    ref = _records(work / "split-0")
    for i, row in enumerate(rows):
        mine = _records(work / f"split-{i}")
        total, same = 0.0, 0
        for h, timed in mine.items():
            pick = min(timed, key=timed.get)
            best = min(ref[h].values())
            got = ref[h].get(pick)
            if got is None:  # the default runner has no working record of this schedule
                total = float("nan")
                continue
            total += got
            same += got == best
        row["picks_us"], row["same_picks"] = total, same


def default_run(args, work: Path, name: str) -> dict:
    """Part 2: the default run in the benchmark's own cache folder (empty at the first run)."""
    out = work / f"run-{name}"
    cmd = [
        str(ROOT / ".venv" / "bin" / "search"),
        "run",
        str(args.space),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"cache={work / 'cache'}",
        *[x for s in args.set for x in ("--set", s)],
    ]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - t0
    # the run's log beside its folder: where its front check and tuning passes spent their time
    (work / f"run-{name}.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise SystemExit(
            f"the {name} run failed (log: {work / f'run-{name}.log'}):\n{r.stderr[-3000:]}"
        )
    timings = json.loads((out / "timings.json").read_text())[-1]
    lat = json.loads((out / "latency.json").read_text())
    tuning = lat.get("prepare_s", 0.0)  # the seed networks' kernels: extracted and tuned
    front_s = lat.get("front_s", 0.0)
    row = {
        "run": name,
        "wall_s": wall,
        "setup_s": timings["setup_s"] - tuning,
        "tuning_s": tuning,
        "search_s": timings["search_s"],  # the trials, up to the last one's result
        "front_s": front_s,  # after the last trial
        # process and Ray start-up, the outputs and the report
        "other_s": wall - timings["setup_s"] - timings["search_s"] - front_s,
        "provider": lat.get("provider"),
        "kernels_tuned": (lat.get("seed_kernels_tuned") or 0)
        + (lat.get("front_kernels_tuned") or 0),
        "kernels_transferred": lat.get("kernels_transferred"),
        # the search's picks: replays compiled and timed, and the service's seconds on them
        "replays_built": lat.get("transfer_replays_built"),
        "pick_s": lat.get("transfer_timing_s"),
        "front_mape_own": lat.get("front_mape"),
        # the check's seeding: transferred schedules timed, of them the search's own picks
        "check_seeds": lat.get("front_transferred_candidates"),
        "check_picks": lat.get("front_picks_reused"),
        # the check's timing rounds that waited out a host slow spell (`TVMBackend._await_quiet`):
        # its probes that read slow, and the seconds waited
        "slow_probes": lat.get("front_host_slow_probes"),
        "slow_ratio": _slow_ratio(),
        "waited_s": lat.get("front_host_wait_s"),
        # the check's timings taken again for a slow spell (`TVMBackend.time`)
        "front_slow_timings": lat.get("front_slow_timings"),
        # the search's network timings (priced.jsonl: this run's, when the cache started empty)
        # and how many of them were timed again for a wide spread (`TVMBackend.time`)
        "timings": _timings(Path(lat["database"])) if lat.get("database") else None,
        "front": [p["genome_id"] for p in json.loads((out / "pareto.json").read_text())["front"]],
        "genomes": _genomes(out),
    }
    print(f"{name} run: {wall:.0f} s", flush=True)
    return row


def _slow_ratio() -> float:
    """The probe ratio over which the host is in a slow spell, in the code that ran."""
    from kernels.tvm_latency import SLOW_RATIO

    return SLOW_RATIO


def _timings(db_dir: Path) -> dict:
    """How many networks priced.jsonl holds, and how many were timed more than once."""
    from kernels.tvm_tuning import jsonl_rows

    rows = jsonl_rows(db_dir / "priced.jsonl", first=True).values()
    return {
        "priced": len(rows),
        "timed_again": sum(r.get("timings", 1) > 1 for r in rows),
        # timings the thread-sync probe read a slow spell around (`TVMBackend.time`)
        "slow": sum(r.get("slow_timings", 0) for r in rows),
        "slow_networks": sum(r.get("slow_timings", 0) > 0 for r in rows),
    }


def _genomes(run_dir: Path) -> list[str]:
    """The run's genome ids in trial order (the order they finished in)."""
    from search.runs import open_run

    return [r.genome_id for r in open_run(run_dir).records]


def front(args, run_dir: Path) -> list[dict]:
    """Part 3: the front's networks, fully tuned and eager, against what the run reported."""
    from kernels.torch_timing import TorchLatency
    from kernels.tvm_latency import TVMBackend
    from spaces import load_space

    space = load_space(args.space)
    pts = timed_front(run_dir, args.front)
    # 32 trials per kernel, drawn as the run draws them (`kernels.tvm_tuning.kernel_seed`): its
    # `trials_per_task` first, then the rest in a second pass, for every kernel
    run_trials = yaml.safe_load((run_dir / "config.yaml").read_text())["latency"]["trials_per_task"]
    shutil.rmtree(Path(args.work) / "full-db", ignore_errors=True)
    b = TVMBackend(
        Path(args.work) / "full-db",
        trials_per_task=min(run_trials, args.full_trials),
        focus_trials=args.full_trials,
        focus_share=1.0,
        runner={"screen": 0},  # the reference: every trial timed in full
    )
    items = front_networks(space, pts)
    tuned = b.measure_rounds(items, args.rounds, tune=True, one_session=True)
    eager = TorchLatency(repeats=50, warmup=5)
    # the rounds the run's check timed each network in (more when over its search figure)
    checks = json.loads((run_dir / "latency.json").read_text()).get("front") or []
    rounds = {c["trial"]: c["rounds"] for c in checks if "rounds" in c}
    rows = []
    for p, (model, r), t in zip(pts, items, tuned):
        rows.append(
            {
                "trial": p["trial"],
                "genome_id": p["genome_id"],
                "source": p["metrics"]["latency_source"],
                "reported_ms": p["metrics"]["latency_ms"],
                # the run's own check at its end: the network with its own kernels tuned
                "checked_ms": p["metrics"].get("latency_tuned_ms"),
                "tuned_ms": t["latency_ms"],
                "tuned_source": t["latency_source"],
                "eager_ms": eager.measure(model, r)["latency_ms"],
            }
        )
        if p["trial"] in rounds:
            rows[-1]["checked_rounds"] = rounds[p["trial"]]
    return rows


def retime(args, work: Path, rows: list[dict]) -> None:
    """Part 3's networks compiled with the benchmark's fully tuned database and with the run's own
    (its seed tuning and its check) and timed together in `--retime-rounds` interleaved rounds,
    in each of `--retime-processes` fresh processes one after another (the same two compiled
    networks' ratio moves between processes here): each row of `rows` gets `retimed`, one
    {tuned_ms, checked_ms} per process, each its quietest round (as the run and the reference
    take theirs)."""
    import multiprocessing

    ids = [r["genome_id"] for r in rows]
    for r in rows:
        r["retimed"] = []
    for k in range(args.retime_processes):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            got = pool.apply(_retime_once, (args.space, str(work), ids, args.retime_rounds))
        for r, (tuned, checked) in zip(rows, got):
            r["retimed"].append({"tuned_ms": tuned, "checked_ms": checked})
        print(f"re-timed in process {k + 1} of {args.retime_processes}", flush=True)


def _retime_once(space_path: str, work: str, ids: list[str], rounds: int) -> list[tuple]:
    """(fully tuned ms, the run's database ms) of each front network `ids` of the empty run in
    `work`, timed together in `rounds` interleaved rounds in this process."""
    from kernels.provider import rounds_summary
    from kernels.tvm_latency import TVMBackend
    from kernels.tvm_tuning import TuningDB
    from spaces import load_space

    space, work = load_space(space_path), Path(work)
    by_id = {p["genome_id"]: p for p in timed_front(work / "run-empty", len(ids))}
    own = Path(json.loads((work / "run-empty" / "latency.json").read_text())["database"])
    b = TVMBackend(Path(tempfile.mkdtemp(prefix="retime-")), repeats=20)
    dbs = [TuningDB(work / "full-db", b.target).database, TuningDB(own.parent, b.target).database]
    compiled = []
    for model, r in front_networks(space, [by_id[i] for i in ids]):
        prepared, shape, _ = b._lowered(model, r)
        compiled += [compiled_with(b, prepared, shape, db) for db in dbs]
    times = [rounds_summary(t)["latency_ms"] for t in b.time_rounds(compiled, rounds, 0.0)]
    shutil.rmtree(b.db.dir.parent, ignore_errors=True)
    return [(times[2 * n], times[2 * n + 1]) for n in range(len(ids))]


def _tau(a, b) -> float | None:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b)[0]) if len(a) > 1 else None


def _mape(rows: list[dict], key: str) -> float:
    return statistics.mean(100 * abs(r[key] - r["tuned_ms"]) / r["tuned_ms"] for r in rows)


def report(d: dict) -> str:
    lines = [
        "# TVM latency in the default run (`latency: tvm-transfer`)",
        "",
        f"`{d['command']}` ({d['date']}, {d['cpus']} CPU cores, {d['cpu']}).",
        "",
        "## 1. Where a tuning trial's time goes",
        "",
        *(
            [f"Measured by a separate run of the script: `{d['split_from']}`.", ""]
            if d.get("split_from")
            else []
        ),
        "The tinynet base's first kernels, tuned from an empty database (replay-trace), under "
        "MetaSchedule's profiler. build: compiling each candidate schedule (in-process, LLVM); run: "
        "timing it, in this process (`in_process`, the module kept from its build) or in "
        "MetaSchedule's runner process (which links the exported candidate and loads it first); "
        "rest: sampling, postprocessing, database and "
        "the session's set-up (tuning contexts, the runner's worker process: the profiler covers "
        "the whole tuning call, so it falls here). Candidates are built on as many threads as the "
        "host has cores, and a batch's timing ends before the next batch is built. best: the sum "
        "of the kernels' best times as that runner measured them (one run per timing counts more "
        "call overhead on a kernel of a few microseconds, so the columns are not comparable). "
        "Both runners tried the same schedules (each kernel's trials are seeded by its key): "
        "picks µs is the sum of each kernel's pick as the default runner timed it, so it says "
        "what a runner's noise costs in the schedules it keeps; same picks: kernels where it "
        "kept the default's choice.",
        "",
        "| runner | kernels | trials | s / trial | build s / trial | run s / trial | rest s / trial "
        "| best µs | picks µs | same picks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def per_trial(s):
        return (s["total_s"] - s["session_s"]) / s["trials"]

    fastest = min(per_trial(s) for s in d["split"])
    for s in d["split"]:
        per = per_trial(s)
        cell = f"**{per:.3f}**" if per == fastest else f"{per:.3f}"
        lines.append(
            f"| {s['runner']} | {s['kernels']} | {s['trials']} | {cell} | "
            f"{s['build_s'] / s['trials']:.3f} | {s['run_s'] / s['trials']:.3f} | "
            f"{s['rest_s'] / s['trials']:.3f} | {s['best_us']:.1f} | {_picks_cells(s, d)} |"
        )
    if d.get("runs"):
        lines += _runs_section(d)
    return "\n".join(lines) + "\n"


def _picks_cells(s: dict, d: dict) -> str:
    if "picks_us" not in s:
        return "- | -"
    low = min(x["picks_us"] for x in d["split"])
    cell = f"{s['picks_us']:.1f}"
    return f"{'**' + cell + '**' if s['picks_us'] == low else cell} | {s['same_picks']}"


def _maybe(v, fmt: str) -> str:
    """`fmt` of `v`, or "-" where an older run's json lacks it."""
    return "-" if v is None else fmt.format(v)


def _runs_section(d: dict) -> list[str]:
    lines = [
        "",
        "## 2. The default run, empty cache then warm",
        "",
        "| cache | wall s | set-up without tuning s | tuning s | search s | front s | other s "
        "| kernels tuned | kernels transferred | replays picked from | pick s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in d["runs"]:
        lines.append(
            f"| {r['run']} | {r['wall_s']:.0f} | {r['setup_s']:.0f} | {r['tuning_s']:.0f} | "
            f"{r['search_s']:.0f} | {r['front_s']:.0f} | {r['other_s']:.0f} | "
            f"{r['kernels_tuned']} | "
            f"{r['kernels_transferred'] or 0} | {_maybe(r.get('replays_built'), '{}')} | "
            f"{_maybe(r.get('pick_s'), '{:.0f}')} |"
        )
    runs = d["runs"]
    if all("front" in r for r in runs):
        same = runs[0]["front"] == runs[1]["front"]
        lines += [
            "",
            f"The warm run's front is the empty run's: {'yes' if same else 'no'} "
            f"({len(runs[0]['front'])} and {len(runs[1]['front'])} networks). A search prices a "
            "network at the figure it first gave it, so a warm cache does not change what the "
            "search sees of a network, and `ga` waits at each generation's end for its trials "
            "(synchronous generations), so the two Ray workers finishing in another order does "
            f"not change the genomes either.{_overlap(runs)}",
        ]
    if runs[0].get("check_picks") is not None:
        lines += [
            "",
            f"The empty run's check timed {runs[0]['check_seeds']} transferred schedules beside "
            f"its trials, {runs[0]['check_picks']} of them the schedule the search priced the "
            "kernel with (`picks.jsonl`), compiled again in the driver.",
        ]
    if runs[0].get("slow_probes") is not None:
        lines += [
            "",
            "Slow spells waited out by the empty run's check (`TVMBackend._await_quiet`): "
            f"{runs[0]['slow_probes']} probes over {runs[0].get('slow_ratio', 1.4)}x the "
            f"quietest, {runs[0]['waited_s']:.0f} s waited"
            + (
                f"; {runs[0]['front_slow_timings']} of its timings taken again for one "
                "(`TVMBackend.time`)."
                if runs[0].get("front_slow_timings") is not None
                else "."
            ),
        ]
    t = runs[0].get("timings")
    if t:
        lines += [
            "",
            f"The empty run's search timed {t['priced']} networks; {t['timed_again']} of those "
            "timings had an interquartile spread over 10 % of their median and were timed "
            "again (at most twice more, the lowest median kept)."
            + (
                f" The thread-sync probe read a slow spell around {t['slow']} timings of "
                f"{t['slow_networks']} of them, each taken again (`kernels/sync_probe.py`)."
                if "slow" in t
                else ""
            ),
        ]
    rows = d["front"]
    lines += [
        "",
        "## 3. The front against fully tuned kernels",
        "",
        "reported: the figure the search ranked the network by; checked: the run's own "
        "measurement at its end, with the network's kernels tuned (`latency_tuned_ms` in "
        "pareto.json, up to `check_front` networks); fully tuned: the benchmark's, "
        f"{d.get('full_trials', 32)} trials per kernel in a database of its own."
        + (
            " Tuning seeds follow the kernel: the reference drew each kernel's first trials as "
            "the run did and then the rest, so the run's check differs from it by the trials its "
            "light kernels did not get and by timing, not by the luck of another seed."
            if "full_trials" in d  # runs before kernel seeding drew by position
            else ""
        ),
        "",
    ]
    if all(r.get("retimed") for r in rows):
        by = (
            f"by a later command on this work folder: `{d['retime_from']}`"
            if d.get("retime_from")
            else "by the benchmark itself"
        )
        lines += [
            "checked, re-timed and fully tuned, re-timed: the run's database at its end and the "
            "reference's, each compiled into the same networks and timed together in one process "
            "(interleaved rounds, each network's quietest), in several fresh processes one after "
            f"another (mean ± standard deviation over them), {by}.",
            "",
        ]
    quickest = d.get("reference") == "quickest" and all(r.get("retimed") for r in rows)
    lines += _front_table(rows, quickest)
    tuned = [r["tuned_ms"] for r in (quickest_rows(rows) if quickest else rows)]
    tau_r = _tau([r["reported_ms"] for r in rows], tuned)
    tau_e = _tau([r["eager_ms"] for r in rows], tuned)
    empty, warm = d["runs"][0]["wall_s"], d["runs"][1]["wall_s"]
    lines += [
        f"- Kendall's tau against the fully tuned ranking: reported {_fmt(tau_r)}, "
        f"PyTorch eager {_fmt(tau_e)}.",
        f"- Wall time: empty cache {empty / 60:.1f} min (goal at most 10: "
        f"{'met' if empty <= 600 else 'not met'}), warm {warm / 60:.1f} min (goal at most 5: "
        f"{'met' if warm <= 300 else 'not met'}).",
    ]
    return lines


def _front_table(rows: list[dict], quickest: bool = False) -> list[str]:
    """Part 3's table and its errors against the fully tuned figures: as the benchmark first
    timed them, or (`quickest`, with the re-timing) each network's quickest timing of them."""
    again = all(r.get("retimed") for r in rows)  # results before the re-timing: without
    quickest, first = quickest and again, rows
    if quickest:
        rows = quickest_rows(rows)
    lines = [
        "| trial | reported source | reported ms | checked ms | fully tuned ms | eager ms |"
        + (" checked, re-timed ms | fully tuned, re-timed ms |" if again else ""),
        "|---:|---|---:|---:|---:|---:|" + ("---:|---:|" if again else ""),
    ]
    for r in rows:
        checked = r.get("checked_ms")
        lines.append(
            f"| {r['trial']} | {r['source']} | {r['reported_ms']:.3f} | "
            f"{'n/a' if checked is None else f'{checked:.3f}'} | {r['tuned_ms']:.3f} | "
            f"{r['eager_ms']:.3f} |"
            + (f" {_spread(r, 'checked_ms')} | {_spread(r, 'tuned_ms')} |" if again else "")
        )
    mape = _mape(rows, "reported_ms")
    checked = [r for r in rows if r.get("checked_ms") is not None]
    lines += [""]
    if quickest:
        lines.append(
            "- fully tuned ms: each network's quickest fully tuned figure, of the benchmark's first "
            "timing and each re-timing process's (a slow spell of this host only ever slows a "
            "timing); the MAPEs and tau below are against it."
        )
    lines += [
        f"- Reported latency against fully tuned: MAPE **{mape:.1f} %** over {len(rows)} networks "
        f"(goal: at most 10 %: {'met' if mape <= 10 else 'not met'}).",
    ]
    if checked:
        m2 = _mape(checked, "checked_ms")
        lines.append(
            f"- The run's own check against fully tuned: MAPE **{m2:.1f} %** over {len(checked)} "
            f"networks (goal: at most 10 %: {'met' if m2 <= 10 else 'not met'})."
        )
    counted = [r["checked_rounds"] for r in checked if "checked_rounds" in r]
    if counted:
        lines.append(
            f"- The run's check timed its networks in {', '.join(map(str, counted))} "
            "interleaved rounds (a network it times over 15 % above its search figure gets more "
            "than the run's `rounds`: `kernels.tvm_latency.BOUND_SLACK`, a slow spell)."
        )
    if again:
        lines.append(_retimed_line(first))
    return lines


def quickest_rows(rows: list[dict]) -> list[dict]:
    """Part 3's re-timed `rows`, each with its network's quickest fully tuned figure (the
    benchmark's first timing or a re-timing process's) as its `tuned_ms`."""
    return [
        {**r, "tuned_ms": min(r["tuned_ms"], *(p["tuned_ms"] for p in r["retimed"]))} for r in rows
    ]


def _spread(row: dict, key: str) -> str:
    """A re-timed figure: the mean over processes, ± their standard deviation."""
    v = [p[key] for p in row["retimed"]]
    return f"{statistics.mean(v):.3f}" + (f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else "")


def together(rows: list[dict]) -> list[float]:
    """The MAPE of the run's database against the reference, both timed in one process: one per
    re-timing process."""
    return [
        statistics.mean(
            100
            * abs(r["retimed"][k]["checked_ms"] - r["retimed"][k]["tuned_ms"])
            / r["retimed"][k]["tuned_ms"]
            for r in rows
        )
        for k in range(len(rows[0]["retimed"]))
    ]


def _retimed_line(rows: list[dict]) -> str:
    """The MAPE of the run's database against the reference, both timed in one process: its mean
    ± standard deviation over the processes, and the range."""
    per = together(rows)
    m = statistics.mean(per)
    sd = f" ± {statistics.stdev(per):.1f}" if len(per) > 1 else ""
    ref = {id(r): statistics.mean(p["tuned_ms"] for p in r["retimed"]) for r in rows}

    def vs(key: str) -> float:  # figures of `key` against the re-timed reference's mean
        got = [r for r in rows if r.get(key) is not None]
        return statistics.mean(100 * abs(r[key] - ref[id(r)]) / ref[id(r)] for r in got)

    return (
        f"- The check's schedules against the reference's, without the drift between processes "
        f"(the run's database and the reference's timed together in one process): MAPE "
        f"**{m:.1f}{sd} %** over {len(rows)} networks and {len(per)} processes "
        f"({min(per):.1f}-{max(per):.1f} %; within 10 %: {'yes' if m <= 10 else 'no'}). Against "
        f"the re-timed reference's mean: the figures the run's check reported "
        f"{vs('checked_ms'):.1f} %, the search's figures {vs('reported_ms'):.1f} %, and the "
        f"reference as this benchmark first timed it {vs('tuned_ms'):.1f} % (how far the "
        f"process it was timed in strayed)."
    )


def _overlap(runs) -> str:
    """How many of the empty run's genomes the warm run asked for again, and its first other one
    (runs written before the genomes were kept: nothing)."""
    a, b = runs[0].get("genomes"), runs[1].get("genomes")
    if not a or not b:
        return ""
    first = next((i for i, g in enumerate(b) if g not in set(a)), None)
    if first is None and len(a) == len(b):
        return f" The warm run asked for the empty run's {len(a)} genomes, no other."
    where = "none" if first is None else f"trial {first}"
    return (
        f" The warm run asked for {len(set(a) & set(b))} of the empty run's {len(a)} genomes; "
        f"its first other one: {where}. (Before synchronous generations, the warm run parted "
        "from the empty one: the workers finished trials in another order.)"
    )


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    main()
