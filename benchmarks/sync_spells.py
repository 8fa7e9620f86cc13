"""What this machine's slow spells slow: the front's networks timed beside small probe kernels,
round after round, in one process.

The front's networks of a `benchmarks/latency_default.py` run, compiled with the run's own
database, each timed once a round (20 runs of at least 20 ms, `TVMBackend._time_once`) right after
five probe kernels, each hand-scheduled with a parallel outer loop on TVM's thread pool:
`sync32`, the product's thread-sync probe (`kernels/sync_probe.py`: a 32x32 matmul, about 1.5 us a
launch, mostly the threads' meeting); `mm128`, a 128x128 matmul (one launch of about 0.05 ms of
arithmetic in cache); and streams of 512 KiB, 8 MiB and 64 MiB (out of the core's 1 MiB L2, the
32 MiB L3, memory). A probe that tracks the networks' times (correlation over the rounds) sees
what slows them. Nothing else runs.

    python benchmarks/sync_spells.py --work runs/bench-latency-default-32 [--rounds 40]

Writes benchmarks/results/sync_spells.md and .json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, json_and_md, own_front, provenance  # noqa: E402

SPACE = ROOT / "spaces" / "tinynet.yaml"
TIMING = {"number": 1, "repeat": 3, "min_repeat_ms": 10}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="a benchmarks/latency_default.py work folder")
    ap.add_argument("--front", type=int, default=2, help="the front's first networks")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--out", default=str(RESULTS / "sync_spells.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    json_and_md(ap.parse_args(), measure, report)


def _stream(tvm, target, rows: int):
    """us for a parallel, vectorised y = 2x + 1 over `rows` x 1024 floats."""
    import numpy as np
    from tvm import s_tir, te

    a = te.placeholder((rows, 1024), name="A")
    b = te.compute((rows, 1024), lambda i, j: a[i, j] * 2.0 + 1.0, name="B")
    s = s_tir.Schedule(te.create_prim_func([a, b]))
    i, j = s.get_loops(s.get_sblock("B"))
    s.parallel(i)
    s.vectorize(s.split(j, [None, 16])[1])
    fn = tvm.compile(s.mod, target=target).jit()
    x = tvm.runtime.tensor(np.random.default_rng(0).random((rows, 1024), dtype="float32"))
    y = tvm.runtime.tensor(np.zeros((rows, 1024), "float32"))
    ev = fn.time_evaluator("main", tvm.cpu(), **TIMING)
    return lambda: float(np.median(ev(x, y).results)) * 1e6


def measure(args) -> dict:
    import numpy as np

    from kernels.sync_probe import SyncProbe, parallel_matmul
    from kernels.tvm_compile import load_tvm

    tvm = load_tvm()
    b, pts, compiled = own_front(SPACE, args.work, args.front)
    mm128 = parallel_matmul(b.target, 128, TIMING)
    probes = {
        "sync32": SyncProbe(b.target, b.db.dir).reading,
        "mm128": lambda: float(np.median(mm128[0](*mm128[1]).results)) * 1e6,
        "stream 512 KiB": _stream(tvm, b.target, 128),
        "stream 8 MiB": _stream(tvm, b.target, 2048),
        "stream 64 MiB": _stream(tvm, b.target, 16384),
    }
    rows = []
    for k in range(args.rounds):
        row = {name: f() for name, f in probes.items()}
        row["networks_ms"] = [float(np.median(b._time_once(c))) for c in compiled]
        rows.append(row)
        print(f"round {k + 1} of {args.rounds}", flush=True)
    return {**provenance(), "trials": [p["trial"] for p in pts], "rounds": rows}


def _corr(a: list[float], b: list[float]) -> float:
    return float(statistics.correlation(a, b)) if len(set(a)) > 1 and len(set(b)) > 1 else 0.0


def report(d: dict) -> str:
    rows = d["rounds"]
    names = [k for k in rows[0] if k != "networks_ms"]
    nets = list(zip(*[r["networks_ms"] for r in rows]))
    out = [
        "# What this machine's slow spells slow",
        "",
        f"`{d['command']}` ({d['date']}, {d['cpu']}).",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        f"{len(rows)} rounds. least and largest: over the rounds; correlation: Pearson's, of the "
        "probe's time with each network's, over the rounds.",
        "",
        "| timed | least | largest | largest / least | "
        + " | ".join(f"correlation with trial {t}" for t in d["trials"])
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(d["trials"]),
    ]
    for name in names:
        xs = [r[name] for r in rows]
        cells = " | ".join(f"{_corr(xs, list(n)):.2f}" for n in nets)
        out.append(
            f"| {name} (us) | {min(xs):.2f} | {max(xs):.2f} | {max(xs) / min(xs):.2f} | {cells} |"
        )
    for t, n in zip(d["trials"], nets):
        out.append(
            f"| trial {t} (ms) | {min(n):.3f} | {max(n):.3f} | {max(n) / min(n):.2f} | "
            + " | ".join("" for _ in nets)
            + " |"
        )
    out += [
        "",
        "sync32 and the first network, round by round: "
        + ", ".join(f"{r['sync32']:.2f}/{r['networks_ms'][0]:.3f}" for r in rows)
        + ".",
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
