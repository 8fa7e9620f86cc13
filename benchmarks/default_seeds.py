"""The default run (`search run spaces/tinynet.yaml`, `latency: tvm-transfer`) from an empty cache,
once per seed: its wall time against the 10-minute goal of the TVM-latency issue, split as
benchmarks/latency_default.py splits it, and what its front check found (how many networks the
front had and the check measured, and how far the search's figures were from the check's).

Each seed's run gets a fresh cache folder (empty supernet cache and tuning database) under
`--work`, one after another, nothing else running. The seed moves the pre-training, the search's
genomes and so the front: a front of more networks costs a longer check.

`--reference-only` then measures each seed's front (its first `--front` networks) against fully
tuned kernels, as benchmarks/latency_default.py's part 3 does (`--full-trials` per kernel in a
database of its own, then that database and the run's timed together in 3 fresh processes), on
the runs already in `--work`, and adds it to the results file at `--out`: the MAPE goal over
seeds. The reference is each network's quickest fully tuned figure (latency_default's rule since
bench-34).

Writes benchmarks/results/default_seeds.md and .json (`--report-only` rebuilds the md).

    python benchmarks/default_seeds.py [--seeds 0 1 2] [--work runs/bench-default-seeds]
        [--reference-only [--front 3] [--full-trials 32]]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, json_and_md, mean_sd  # noqa: E402
from benchmarks.latency_default import (  # noqa: E402
    SPACE,
    _mape,
    _tau,
    default_run,
    front,
    quickest_rows,
    retime,
    together,
)

GOAL_S = 600  # the goal: at most 10 minutes from an empty cache
PRETRAINED = re.compile(r"supernet pre-trained: \d+ steps in ([\d.]+) s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--space", default=str(SPACE), help="the run file (default: the tinynet space)")
    ap.add_argument("--set", action="append", default=[], help="key=value for the runs")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-default-seeds"))
    ap.add_argument("--out", default=str(RESULTS / "default_seeds.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    ap.add_argument(
        "--reference-only",
        action="store_true",
        help="each seed's front in --work against fully tuned kernels, added to the results file "
        "already at --out (its runs kept)",
    )
    ap.add_argument("--front", type=int, default=3, help="front networks of the reference")
    ap.add_argument("--full-trials", type=int, default=32, help="trials per kernel, 'fully tuned'")
    json_and_md(ap.parse_args(), run, report)


def run(args) -> dict:
    if args.reference_only:
        d = json.loads(Path(args.out).with_suffix(".json").read_text())
        for row in d["rows"]:
            row["reference"] = reference(args, Path(args.work) / f"seed-{row['seed']}")
        cmd = "python benchmarks/default_seeds.py " + " ".join(sys.argv[1:])
        d["reference_from"] = f"{cmd} ({time.strftime('%Y-%m-%d')})"
        d["full_trials"] = args.full_trials
        return d
    rows = []
    for seed in args.seeds:
        work = Path(args.work) / f"seed-{seed}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        one = argparse.Namespace(space=args.space, set=[*args.set, f"seed={seed}"])
        rows.append({"seed": seed, **_checked(default_run(one, work, "empty"), work)})
    return {
        "command": "python benchmarks/default_seeds.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "cpu": platform.machine(),
        "rows": rows,
    }


def _checked(row: dict, work: Path) -> dict:
    """The run's row (`default_run`) with its pre-training time and its front check's figures."""
    log = (work / "run-empty.log").read_text()
    got = PRETRAINED.search(log)
    lat = json.loads((work / "run-empty" / "latency.json").read_text())
    front = lat.get("front") or []
    return {
        **{k: row[k] for k in ("wall_s", "setup_s", "tuning_s", "search_s", "front_s", "other_s")},
        "pretrain_s": float(got.group(1)) if got else None,
        "kernels_tuned": row["kernels_tuned"],
        "front_size": len(row["front"]),
        "checked": [
            {k: c[k] for k in ("trial", "source", "reported_ms", "tuned_ms", "error_pct")}
            for c in front
        ],
    }


def reference(args, work: Path) -> list[dict]:
    """The front of the run in `work` against fully tuned kernels: latency_default's part 3 rows
    (`front`), re-timed beside the run's own database in 3 fresh processes (`retime`)."""
    part3 = argparse.Namespace(
        space=args.space,
        front=args.front,
        full_trials=args.full_trials,
        rounds=5,
        work=str(work),
        retime_rounds=15,
        retime_processes=3,
    )
    rows = front(part3, work / "run-empty")
    retime(part3, work, rows)
    print(f"reference of {work.name}: {len(rows)} networks", flush=True)
    return rows


def _reference_section(d: dict) -> list[str]:
    """Each seed's front against its quickest fully tuned figures, and the MAPE goal over seeds."""
    out = [
        "",
        "## The front against fully tuned kernels",
        "",
        f"Measured by a later command on the same runs: `{d['reference_from']}`. fully tuned: "
        f"each network of the run's front measured with {d['full_trials']} trials per kernel in "
        "a database of its own (benchmarks/latency_default.py's part 3), its figure the quickest "
        "of that timing and of 3 fresh processes timing it beside the run's own database. "
        "checked: the run's own check (`latency_tuned_ms`); search: the search's figures.",
        "",
        "| seed | networks | checked vs fully tuned % | search vs fully tuned % | tau search "
        "| tau eager | check's schedules vs fully tuned, timed together % |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    checks = []
    for r in d["rows"]:
        rows = quickest_rows(r["reference"])
        got = [x for x in rows if x.get("checked_ms") is not None]
        checks.append(_mape(got, "checked_ms"))
        ref = [x["tuned_ms"] for x in rows]
        per = together(r["reference"])
        out.append(
            f"| {r['seed']} | {len(rows)} | {checks[-1]:.1f} | {_mape(rows, 'reported_ms'):.1f} | "
            f"{_num(_tau([x['reported_ms'] for x in rows], ref), '.2f')} | "
            f"{_num(_tau([x['eager_ms'] for x in rows], ref), '.2f')} | {mean_sd(per)} |"
        )
    met = sum(m <= 10 for m in checks)
    out += [
        "",
        f"- The run's check against fully tuned: MAPE {mean_sd(checks, '{:.1f}')} % over "
        f"{len(checks)} seeds ({min(checks):.1f}-{max(checks):.1f} %); within 10 %: {met} of "
        f"{len(checks)}.",
    ]
    return out


def report(d: dict) -> str:
    rows = d["rows"]
    cols = ["wall_s", "pretrain_s", "setup_s", "tuning_s", "search_s", "front_s", "other_s"]
    out = [
        "# The default run from an empty cache, over seeds",
        "",
        f"`{d['command']}` ({d['date']}, {d['cpu']}).",
        "",
        "`search run spaces/tinynet.yaml --set seed=S` in a fresh cache folder per seed, one after "
        "another on this 2-core machine. wall: the command's; pre-training: the supernet's (in "
        "set-up); set-up: without the seed tuning's wait; seed tuning: what it adds after the "
        "pre-training (it builds beside it); search: the trials; check: the front check after "
        "them; other: process and Ray start-up, outputs and report "
        "(benchmarks/latency_default.py's split). front: the run's Pareto front; checked: its "
        "first networks measured with their own kernels tuned (`check_front`); search vs "
        "checked: the search's figures against the check's (MAPE), and Kendall's tau of their "
        "rankings (2 or more networks).",
        "",
        "| seed | wall s | pre-training s | set-up s | seed tuning s | search s | check s | other s "
        "| front | checked | kernels tuned | search vs checked % | tau |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ch = r["checked"]
        mape = statistics.mean(c["error_pct"] for c in ch) if ch else None
        tau = _tau([c["reported_ms"] for c in ch], [c["tuned_ms"] for c in ch]) if ch else None
        cells = [str(r["seed"]), *(_num(r[c], ".0f") for c in cols)]
        cells += [str(r["front_size"]), str(len(ch)), str(r["kernels_tuned"])]
        cells += [_num(mape, ".1f"), _num(tau, ".2f")]
        out.append("| " + " | ".join(cells) + " |")
    walls = [r["wall_s"] for r in rows]
    mean = [
        "mean ± std",
        *(_mean_sd([r[c] for r in rows if r[c] is not None]) for c in cols),
    ]
    out.append("| " + " | ".join(mean + [""] * 5) + " |")
    met = sum(w <= GOAL_S for w in walls)
    out += [
        "",
        f"- Wall time: {_mean_sd(walls)} s over {len(rows)} seeds ({min(walls):.0f}-"
        f"{max(walls):.0f} s); at most {GOAL_S // 60} minutes: {met} of {len(rows)}.",
        "- Each checked network (trial: the search's figure and source, the check's figure):",
        "",
    ]
    for r in rows:
        for c in r["checked"]:
            out.append(
                f"  - seed {r['seed']}, trial {c['trial']}: {c['reported_ms']:.3f} ms "
                f"(`{c['source']}`) against {c['tuned_ms']:.3f} ms checked, "
                f"{c['error_pct']:.1f} % off"
            )
    if all("reference" in r for r in rows):
        out += _reference_section(d)
    return "\n".join(out) + "\n"


def _num(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def _mean_sd(xs: list[float]) -> str:
    """`benchmarks.common.mean_sd` in whole seconds; empty where no run gave the figure."""
    return mean_sd(xs, "{:.0f}") if xs else ""


if __name__ == "__main__":
    main()
