"""Where `tvm-transfer`'s search figures lose: the front of a `latency_default` run, timed in one
quiet process with three sets of kernels, and its kernels one by one.

`benchmarks/latency_default.py` compares the figures a search ranked its front by (transferred
kernels, timed while Ray workers train) with the same networks fully tuned. This script splits
that gap into its two causes by timing, in `--rounds` interleaved rounds with nothing else running:

- transferred: each network compiled as the search compiled it, every kernel given the schedule
  transferred from the seed networks' tuned kernels (a copy of the run's database cut back to the
  records of its seed tuning, the first `seed_kernels_tuned` workloads);
- checked: the run's database at its end (the front's own kernels tuned, `check_front`);
- fully tuned: the benchmark's reference database (`full-db`, 32 trials per kernel).

reported / (the compilation with the run's pick) is what the load of the search cost its figures; transferred / fully tuned
is what transfer costs; a fourth compilation picks each kernel's fastest replay of `--tries` sources
(`latency.transfer_pick: fastest`), a fifth does so only for the kernels that make up `--share` of
a network's new kernels' time as their first replays time them (`latency.transfer_share`). Then per kernel (each compiled alone with each schedule, timed
`--kernel-repeats` times): the kernels' summed time by operator, so
the operators where transfer loses most are named.

    python benchmarks/transfer_quality.py --work runs/bench-latency-default-5 [--rounds 5]

Writes benchmarks/results/transfer_quality.md and .json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
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
# transferred schedules: the nearest source's replay, the fastest replay, the fastest replay for
# the kernels that make up a share of the time (its share: --share): name, (pick, share)
TRANSFERS = {
    "transferred": ("nearest", 1.0),
    "fastest transferred": ("fastest", 1.0),
    "share transferred": ("fastest", None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="a latency_default.py work folder")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kernel-repeats", type=int, default=20)
    ap.add_argument("--front", type=int, default=3)
    ap.add_argument("--tries", type=int, default=3, help="sources replayed per kernel")
    ap.add_argument(
        "--share", type=float, default=0.9, help="the share of time whose kernels get --tries"
    )
    ap.add_argument("--space", default=str(SPACE))
    ap.add_argument("--out", default=str(RESULTS / "transfer_quality.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    args = ap.parse_args()
    if args.report_only:  # results written before the run's pick was: add it if the run is here
        _fill_run_pick(args)
    json_and_md(args, measure, report)


def _fill_run_pick(args) -> None:
    path = Path(args.out).with_suffix(".json")
    d = json.loads(path.read_text())
    run_dir = Path(args.work) / "run-empty"
    if "run_pick" not in d and (run_dir / "config.yaml").exists():
        d["run_pick"] = run_pick(run_dir)
        path.write_text(json.dumps(d, indent=1) + "\n")


def seed_only_db(database: Path, n: int, into: Path) -> Path:
    """A copy of a tuning database holding only its first `n` workloads and their records (the
    seed networks' tuning, which comes first in a `tvm-transfer` run) and the search's picks
    (`kernels.tvm_transfer.PICKS_FILE`, which the front check seeds from); its folder's
    parent."""
    from kernels.tvm_transfer import PICKS_FILE

    dst = into / database.name
    dst.mkdir(parents=True)
    wl = (database / "database_workload.json").read_text().splitlines()
    (dst / "database_workload.json").write_text("\n".join(wl[:n]) + "\n")
    keep = [
        line
        for line in (database / "database_tuning_record.json").read_text().splitlines()
        if line.strip() and json.loads(line)[0] < n
    ]
    (dst / "database_tuning_record.json").write_text("\n".join(keep) + "\n")
    picks = database / PICKS_FILE  # the search's picks, made on the seed tuning alone
    if picks.exists():
        shutil.copy(picks, dst / PICKS_FILE)
    return into


def measure(args) -> dict:
    from kernels.tvm_latency import TVMBackend
    from kernels.tvm_transfer import Transfer
    from spaces import load_space

    work = Path(args.work)
    run_dir = work / "run-empty"
    lat = json.loads((run_dir / "latency.json").read_text())
    space = load_space(args.space)
    pts = timed_front(run_dir, args.front)
    tmp = Path(tempfile.mkdtemp(prefix="transfer-quality-"))
    try:
        run_db = Path(lat["database"])
        seed_db = seed_only_db(run_db, lat["seed_kernels_tuned"], tmp)
        dbs = {}
        for name, (pick, share) in TRANSFERS.items():
            dbs[name] = TVMBackend(seed_db)
            dbs[name].transfer = Transfer(tries=args.tries, pick=pick, share=share or args.share)
        dbs["checked"] = TVMBackend(run_db.parent)
        dbs["fully tuned"] = TVMBackend(work / "full-db")
        nets = [(p, m, r) for p, (m, r) in zip(pts, front_networks(space, pts))]
        rows = networks(dbs, nets, args.rounds)
        print(json.dumps(rows, indent=1), flush=True)
        kernels = per_kernel(dbs, nets, args.kernel_repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        **provenance(),
        "seed_kernels": lat["seed_kernels_tuned"],
        "tries": args.tries,
        "share": args.share,
        "run_pick": run_pick(run_dir),
        "transfer_stats": {n: dbs[n].transfer.stats for n in TRANSFERS},
        "networks": rows,
        "operators": kernels,
    }


def run_pick(run_dir: Path) -> str:
    """The `transfer_pick` the run's search compiled its candidates with (`nearest` before the
    setting existed), `fastest-share` where its `transfer_share` was below 1."""
    import yaml

    lat = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()).get("latency") or {}
    pick = lat.get("transfer_pick", "nearest")
    return "fastest-share" if pick == "fastest" and lat.get("transfer_share", 1) < 1 else pick


def networks(dbs: dict, nets: list, rounds: int) -> list[dict]:
    """Each network compiled with each database (transfer only where the first lacks a kernel)
    and timed in interleaved rounds; the medians."""
    compiled = []
    for _, model, r in nets:
        for name, b in dbs.items():
            c = b.compile(model, r, tune=False, check=True, transfer=name in TRANSFERS)
            compiled.append((name, c))
    times = defaultdict(list)
    for _ in range(rounds):
        for i, (name, c) in enumerate(compiled):
            time.sleep(0.2)
            times[i].append(dbs[name].time(c)["latency_ms"])
    rows = []
    for j, (p, _, _) in enumerate(nets):
        row = {
            "trial": p["trial"],
            "genome_id": p["genome_id"],
            "reported_ms": p["metrics"]["latency_ms"],
            "reported_source": p["metrics"]["latency_source"],
        }
        for i in range(j * len(dbs), (j + 1) * len(dbs)):
            name, c = compiled[i]
            row[f"{name}_ms"] = statistics.median(times[i])
            row[f"{name}_source"] = c["info"]["latency_source"]
            row[f"{name}_max_abs_diff"] = c["info"].get("latency_max_abs_diff")
        rows.append(row)
    return rows


def kernel_seconds(kernel, database, target, repeats: int) -> float | None:
    """The kernel compiled alone with the database's schedule for it, its median time (s)."""
    from kernels.tvm_compile import load_tvm
    from kernels.tvm_transfer import time_kernel

    load_tvm()
    from tvm.s_tir import meta_schedule as ms

    mod = kernel.task.dispatched[0]
    if database.query_tuning_record(mod, target, "main") is None:
        return None
    return time_kernel(ms.tir_integration.compile_tir(database, mod, target).mod, target, repeats)


def per_kernel(dbs: dict, nets: list, repeats: int) -> list[dict]:
    """The front's distinct kernels the seed tuning lacks, each timed alone with each transferred
    schedule and the fully tuned one; per operator kind, the summed time (time x calls) of each
    and the kernel the nearest source's replay slows most."""
    full = dbs["fully tuned"]
    kernels = {}
    for _, model, r in nets:
        for k in full.kernels_of(model, r):
            kernels.setdefault(k.key, k)
    todo = [k for k in kernels.values() if dbs["transferred"].db.record(k) is None]
    unions = {n: dbs[n]._transferred(todo)[0] for n in TRANSFERS}
    ops: dict[str, dict] = {}
    for k in todo:
        got = {n: kernel_seconds(k, u, full.target, repeats) for n, u in unions.items()}
        tuned = kernel_seconds(k, full.db.database, full.target, repeats)
        if tuned is None or None in got.values():
            continue
        kind = k.op.kind if k.op is not None else "other"
        o = ops.setdefault(kind, {"op": kind, "kernels": 0, "tuned_us": 0.0})
        o["kernels"] += 1
        o["tuned_us"] += 1e6 * tuned * k.calls
        for n, secs in got.items():
            o[f"{n}_us"] = o.get(f"{n}_us", 0.0) + 1e6 * secs * k.calls
        ratio = got["transferred"] / tuned
        if ratio > o.get("worst_ratio", 0):
            o["worst_ratio"], o["worst_kernel"] = ratio, f"{k.name} {k.shapes}"
    return sorted(ops.values(), key=lambda o: o["tuned_us"] - o["transferred_us"])


def _pct(a, b) -> float:
    return 100 * (a - b) / b


# the compilations with transferred kernels a report shows: name, column label, the run's pick
SHOWN = (
    ("transferred", "transferred", "nearest"),
    ("fastest transferred", "fastest", "fastest"),
    ("share transferred", "fastest of the share", "fastest-share"),
)


def report(d: dict) -> str:
    rows, ops = d["networks"], d["operators"]
    shown = [s for s in SHOWN if f"{s[0]}_ms" in rows[0]]  # older results lack the share
    pick = d["run_pick"]
    # the compilation that matches the search's own: the one with the run's pick
    as_run = {p: name for name, _, p in SHOWN}[pick]
    share = "share transferred_ms" in rows[0]
    lines = [
        "# Where `tvm-transfer`'s search figures lose",
        "",
        f"`{d['command']}` ({d['date']}, {d['cpu']}).",
        "",
        f"The front of a `benchmarks/latency_default.py` run, each network compiled "
        f"{'five' if share else 'four'} ways and "
        "timed in one quiet process in interleaved rounds (medians). transferred: every kernel "
        f"the seed network's {d['seed_kernels']} tuned kernels lack given the schedule of the "
        "nearest one that replays on it, as the search compiled it (`pick: nearest`); fastest: "
        f"the fastest of the replays from the {d['tries']} nearest, each compiled and timed alone "
        "(`pick: fastest`); "
        + (
            f"fastest of the share: the fastest of those replays only for the kernels making up "
            f"{d['share']:.0%} of each network's new kernels' time as their first replays time "
            f"them, the first replay for the rest (`transfer_share: {d['share']}`); "
            if share
            else ""
        )
        + "checked: the run's database at its end (the front's own kernels "
        "tuned, the run's check); fully tuned: 32 trials per kernel. reported: the figure the "
        "search ranked the network by (transferred kernels, timed while Ray workers trained), "
        f"compared with the compilation that matches the run's `transfer_pick: {pick}`.",
        "",
        "| trial | reported ms | "
        + "".join(f"{label} ms | " for _, label, _ in shown)
        + f"checked ms | fully tuned ms | reported vs {pick} | "
        + "".join(f"{label} vs fully tuned | " for _, label, _ in shown)
        + "checked vs fully tuned |",
        "|---:|---:|" + "---:|" * (2 * len(shown) + 4),
    ]
    for r in rows:
        compiled = [n for n, _, _ in shown] + ["checked"]
        lines.append(
            f"| {r['trial']} | {r['reported_ms']:.3f} "
            + "".join(f"| {r[n + '_ms']:.3f} " for n in compiled)
            + f"| {r['fully tuned_ms']:.3f} "
            f"| {_pct(r['reported_ms'], r[as_run + '_ms']):+.1f} % "
            + "".join(f"| {_pct(r[n + '_ms'], r['fully tuned_ms']):+.1f} % " for n in compiled)
            + "|"
        )
    return "\n".join(lines + _summary(d, shown, as_run) + _operators(ops, shown)) + "\n"


def _summary(d: dict, shown: list, as_run: str) -> list[str]:
    rows, stats = d["networks"], d["transfer_stats"]

    def mean(a, b):
        return statistics.mean(_pct(r[a], r[b]) for r in rows)

    st = stats["fastest transferred"]
    out = [
        "",
        "- Timing during the search against the same compiled network timed quietly: "
        f"{mean('reported_ms', as_run + '_ms'):+.1f} % on average.",
        "- Transferred kernels (nearest source) against fully tuned ones, both timed quietly: "
        f"{mean('transferred_ms', 'fully tuned_ms'):+.1f} % on average; the fastest of "
        f"{d['tries']} replays: {mean('fastest transferred_ms', 'fully tuned_ms'):+.1f} %; "
        + (
            f"the fastest for the share: {mean('share transferred_ms', 'fully tuned_ms'):+.1f} %; "
            if len(shown) > 2
            else ""
        )
        + f"the run's check: {mean('checked_ms', 'fully tuned_ms'):+.1f} %.",
        f"- Picking the fastest replay timed {st['kernels_transferred']} kernels' replays in "
        f"{st['transfer_timing_s']:.0f} s (compiling each alone is most of it).",
    ]
    if len(shown) > 2:
        sh = stats["share transferred"]
        out[-1] = (
            f"- Picking the fastest replay compiled and timed {st['transfer_replays_built']} "
            f"replays for {st['kernels_transferred']} kernels in {st['transfer_timing_s']:.0f} s; "
            f"for the share {sh['transfer_replays_built']} in {sh['transfer_timing_s']:.0f} s "
            "(compiling each alone is most of it)."
        )
    return out


def _operators(ops: list, shown: list) -> list[str]:
    out = [
        "",
        "## By operator",
        "",
        "The front's distinct kernels that the seed tuning lacks, each compiled alone with each "
        "schedule and timed alone (median); summed as time x calls per network instance (a kernel "
        "counted once however many front networks share it). Most time lost first; worst: the "
        "kernel the nearest source's replay slows most against fully tuned.",
        "",
        "| operator | kernels | "
        + "".join(f"{label} µs | " for _, label, _ in shown)
        + "fully tuned µs | worst ratio | worst kernel |",
        "|---|---:|" + "---:|" * (len(shown) + 2) + "---|",
    ]
    for o in ops:
        out.append(
            f"| {o['op']} | {o['kernels']} "
            + "".join(f"| {o[n + '_us']:.1f} " for n, _, _ in shown)
            + f"| {o['tuned_us']:.1f} "
            f"| {o.get('worst_ratio', 0):.2f} | `{o.get('worst_kernel', '')}` |"
        )
    return out


if __name__ == "__main__":
    main()
