"""What a tuning trial's compile and timing cost, and what the product's two cuts change.

The tinynet base's first `--kernels` kernels are tuned from an empty database with `--trials`
replay-trace trials each, and their candidates kept as MetaSchedule sent them (one batch, one
kernel's candidates). Then:

1. compile: every candidate compiled on one thread with TVM's default TIR pipeline and as a
   candidate (`kernels.tvm_compile.candidate_build`: without TIR's common-subexpression
   elimination, as tuning trials and transferred replays are compiled); both builds of every
   candidate timed with the tuning's full timing (`RUNNER`) in `--rounds` interleaved rounds
   (each its least): their time ratio, each kernel's best under either, and the default build
   against itself in two rounds (the timing's own noise).
2. screen: each batch built again and run through the product's runner
   (`kernels.tvm_tuning._in_process_runner`) with every candidate timed in full, then with the
   screen (`RUNNER["screen"]`: a brief timing first, the full one only within that factor of the
   batch's fastest), then in full again: the runner's seconds a batch, the candidates ruled out,
   and each kernel's pick judged by the two full timings (each candidate's least of them).

    python benchmarks/trial_cost.py [--kernels 16] [--trials 8] [--rounds 3]

Writes benchmarks/results/trial_cost.md and .json.
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
    ap.add_argument("--kernels", type=int, default=16, help="the tinynet base's first kernels")
    ap.add_argument("--trials", type=int, default=8, help="replay-trace trials per kernel")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (part 1)")
    ap.add_argument("--out", default=str(RESULTS / "trial_cost.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    json_and_md(ap.parse_args(), measure, report)


def candidates(args) -> tuple:
    """A backend on a fresh database and the candidates its tuning of the base's first kernels
    built, batch by batch."""
    from benchmarks.latency_default import _base_kernels
    from kernels import tvm_tuning as tt
    from kernels.tvm_latency import TVMBackend

    b = TVMBackend(tempfile.mkdtemp(prefix="trial-cost-"), trials_per_task=args.trials)
    kernels = _base_kernels(b, args.kernels, SPACE)
    batches, real = [], tt._in_process_builder

    def keeping(workers=1, keep=None):
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.builder import PyBuilder

        inner = real(workers, keep)

        @derived_object
        class Keeping(PyBuilder):
            def build(self, build_inputs):
                batches.append([bi.mod for bi in build_inputs])
                return inner.build(build_inputs)

        return Keeping()

    tt._in_process_builder = keeping
    try:
        b.db.tune(kernels, focus=False)
    finally:
        tt._in_process_builder = real
    return b, batches


def measure(args) -> dict:
    b, batches = candidates(args)
    return {
        **provenance(),
        "kernels": len(batches),
        "trials": args.trials,
        "rounds": args.rounds,
        "compile": compile_part(b, batches, args.rounds),
        "screen": screen_part(b, batches),
    }


def compile_part(b, batches: list, rounds: int) -> dict:
    """Part 1: each candidate built both ways (one thread), then timed in interleaved rounds."""
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig

    from kernels.tvm_compile import candidate_build
    from kernels.tvm_tuning import _timed

    def built(mod, as_candidate: bool):
        t0 = time.perf_counter()
        with candidate_build() if as_candidate else contextlib.nullcontext():
            m = default_build(mod, b.target, None)
        m[m.entry_name]  # noqa: B018 - LLVM emits the code on the first lookup
        return m, time.perf_counter() - t0

    mods = [m for batch in batches for m in batch]
    out = {"default": [built(m, False) for m in mods], "candidate": [built(m, True) for m in mods]}
    config = EvaluatorConfig(**b.db._timing(), enable_cpu_cache_flush=False)
    times = {k: [[] for _ in mods] for k in out}
    for _ in range(rounds):
        for i, mod in enumerate(mods):
            for k in out:
                times[k][i].append(_mean(_timed(_loaded_built(out[k][i][0], mod), config)))
    sizes = [len(batch) for batch in batches]
    return {
        "build_s": {k: [s for _, s in v] for k, v in out.items()},
        "times_s": times,
        "sizes": sizes,
    }


def _loaded_built(mod, scheduled):
    """A built module ready for `_timed`, as the tuning's runner loads one (`_loaded`)."""
    from tvm.s_tir import meta_schedule as ms

    from kernels.tvm_tuning import _loaded

    info = ms.arg_info.ArgInfo.from_entry_func(scheduled, remove_preproc=True)
    return _loaded(ms.runner.RunnerInput("built", "cpu", info), {"built": mod})


def _mean(secs) -> float:
    return sum(float(s) for s in secs) / len(secs) if isinstance(secs, list) and secs else 1e10


def screen_part(b, batches: list) -> dict:
    """Part 2: each batch through the product's runner in full, screened, in full again."""
    from kernels.tvm_tuning import RUNNER

    rows = []
    for mods in batches:
        full1, s1, _ = run_batch(b, mods, 0.0)
        screened, s2, n = run_batch(b, mods, RUNNER["screen"])
        full2, s3, _ = run_batch(b, mods, 0.0)
        rows.append(
            {
                "full": [full1, full2],
                "screened": screened,
                "seconds": {"full": (s1 + s3) / 2, "screened": s2},
                "ruled_out": n,
            }
        )
    return {"screen": RUNNER["screen"], "batches": rows}


def run_batch(b, mods: list, screen: float) -> tuple:
    """One kernel's candidates built and run through the tuning's in-process runner: each one's
    mean time (s), the runner's seconds, and how many the screen ruled out."""
    from tvm.s_tir import meta_schedule as ms

    from kernels.tvm_compile import host_cores
    from kernels.tvm_tuning import _in_process_builder, _in_process_runner

    built: dict = {}
    res = _in_process_builder(host_cores(), built).build(
        [ms.builder.BuilderInput(m, b.target) for m in mods]
    )
    inputs = [
        ms.runner.RunnerInput(
            r.artifact_path, "cpu", ms.arg_info.ArgInfo.from_entry_func(m, remove_preproc=True)
        )
        for r, m in zip(res, mods)
    ]
    counts = {"trials_screened": 0}
    runner = _in_process_runner(b.db._timing(), built, None, screen, counts)
    t0 = time.perf_counter()
    futures = runner.run(inputs)
    dt = time.perf_counter() - t0
    got = [f.result() for f in futures]
    secs = [_mean(list(g.run_secs)) if g.error_msg is None else 1e10 for g in got]
    return secs, dt, counts["trials_screened"]


def _ratios(a: list[float], b: list[float]) -> list[float]:
    return [y / x for x, y in zip(a, b) if x < 1e9 and y < 1e9]


def _same_best(a: list[float], b: list[float], sizes: list[int]) -> int:
    """Kernels (consecutive batches of `sizes`) whose fastest candidate is the same in both."""
    same, i = 0, 0
    for n in sizes:
        x, y = a[i : i + n], b[i : i + n]
        same += x.index(min(x)) == y.index(min(y))
        i += n
    return same


def report(d: dict) -> str:
    c, s = d["compile"], d["screen"]
    least = {k: [min(t) for t in v] for k, v in c["times_s"].items()}
    rows = [
        ("TVM's default pipeline", least["default"], c["build_s"]["default"]),
        ("as a candidate (no TIR CSE)", least["candidate"], c["build_s"]["candidate"]),
    ]
    n, k = len(least["default"]), d["kernels"]
    out = [
        "# What a tuning trial costs, and what screening and the candidate build change",
        "",
        f"`{d['command']}` ({d['date']}, {d['cpu']}).",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        __doc__.split("\n\n")[2],
        "",
        f"## 1. Compiling a candidate ({n} candidates of {k} kernels, {d['rounds']} rounds)",
        "",
        "time ratio: each candidate's least time over the rounds against the default build's; "
        "same best: kernels whose fastest candidate is the default build's fastest.",
        "",
        "| build | ms a candidate (one thread) | time ratio, median | min | max | same best |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, times, secs in rows:
        r = _ratios(least["default"], times)
        out.append(
            f"| {name} | {1e3 * statistics.mean(secs):.0f} | {statistics.median(r):.3f} | "
            f"{min(r):.3f} | {max(r):.3f} | "
            f"{_same_best(least['default'], times, c['sizes'])} of {k} |"
        )
    if d["rounds"] > 1:
        r = _ratios(*[[t[j] for t in c["times_s"]["default"]] for j in (0, 1)])
        out += [
            "",
            f"The default build's first two rounds against each other (the timing's noise): "
            f"median {statistics.median(r):.3f}, {min(r):.3f}-{max(r):.3f}.",
        ]
    return "\n".join(out + _screen_lines(s, k)) + "\n"


def _screen_lines(s: dict, k: int) -> list[str]:
    rows = s["batches"]
    ref = [[min(a, b) for a, b in zip(*r["full"])] for r in rows]

    def loss(pick_from: str) -> tuple[int, float]:
        same, lost = 0, []
        for r, best in zip(rows, ref):
            got = r["full"][0] if pick_from == "full" else r["screened"]
            j = got.index(min(got))
            same += j == r["full"][0].index(min(r["full"][0]))
            lost.append(100 * (best[j] / min(best) - 1))
        return same, statistics.mean(lost)

    cands = sum(len(r["screened"]) for r in rows)
    ruled = sum(r["ruled_out"] for r in rows)
    out = [
        "",
        f"## 2. Screening ({cands} candidates in {len(rows)} batches, screen {s['screen']:g}x)",
        "",
        "same pick: kernels whose fastest candidate is the first full timing's; off the best: "
        "the pick's time against the fastest candidate's, both as the least of the two full "
        "timings (mean over kernels).",
        "",
        "| runner | s a batch | timed in full | same pick | off the best % |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, key in (("every candidate in full", "full"), ("screened", "screened")):
        same, lost = loss(key)
        full = cands if key == "full" else cands - ruled
        secs = statistics.mean(r["seconds"][key] for r in rows)
        out.append(f"| {name} | {secs:.3f} | {full} of {cands} | {same} of {k} | {lost:.1f} |")
    return out


if __name__ == "__main__":
    main()
