"""Real latency on this CPU: PyTorch eager, onnxruntime, TVM untuned and TVM with MetaSchedule-tuned
kernels for networks of `spaces/tinynet.yaml` (batch 1), and, over a 50-candidate search, how
many kernels were seen and how many had to be tuned (reuse), and the latency model's error
against whole-network measurement on candidates it was not fitted on.

1. Networks: the base (full genome) and 4 candidates spread over the space's FLOPs. Weights are
   the supernet's initialisation with batch-norm statistics recalibrated on random inputs and a
   random classifier (latency does not depend on weight values; the output check needs outputs
   that depend on the input). Tuning starts from an empty database, so
   each row's tuning time is what its new kernels cost (later rows reuse earlier kernels).
2. Search: `--candidates` random genomes of the space (what `--optimizer random` evaluates), each
   measured with tuned kernels (`latency: tvm`; `--search-trials` trials per new kernel, its own
   empty database), then all timed again in `--search-rounds` interleaved rounds (a candidate's
   time: the median over rounds until 2026-12-04, its quietest round's since,
   `kernels.provider.rounds_summary`). The latency model (per-kind regressions on the tuned kernels of
   the first `--fit` networks, calibrated on their whole-network times: what `latency: tvm-model`
   does at a run's start) is then scored on the other candidates.

Writes benchmarks/results/latency.md (and latency.json beside it).

    python benchmarks/latency.py [--trials 32] [--strategy replay-trace] [--candidates 50]
        [--fit 12] [--search-trials 8] [--rounds 5] [--search-rounds 5] [--work runs/bench-latency]

Part 1 is resumable: tuning goes on where it stopped, and every invocation times the five
networks again from the kept database (`--candidates 0` to time them alone). Part 2 is resumable
too (measured candidates are kept); `--skip-networks` keeps part 1's figures as they are, so the
file can be rewritten from the kept state without timing anything again.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS  # noqa: E402


def _model(space, sup, g):
    from kernels.tvm_latency import realistic

    return realistic(space.build(g, sup), space.arch(g).resolution)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--space", default=str(ROOT / "spaces" / "tinynet.yaml"))
    ap.add_argument(
        "--trials", type=int, default=32, help="MetaSchedule trials per kernel (part 1)"
    )
    ap.add_argument("--strategy", default="replay-trace", choices=["replay-trace", "evolutionary"])
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--fit", type=int, default=12)
    ap.add_argument("--search-trials", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument(
        "--skip-networks",
        action="store_true",
        help="keep part 1's kept figures; do not time them again",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="interleaved timing rounds of part 1 (each runtime's figure: the median over rounds)",
    )
    ap.add_argument(
        "--search-rounds",
        type=int,
        default=5,
        help="interleaved timing rounds of part 2's candidates (each one's time: its quietest round's)",
    )
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-latency"))
    ap.add_argument("--out", default=str(RESULTS / "latency.md"))
    args = ap.parse_args()

    import logging

    import numpy as np

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for n in ("tvm", "tvm_ffi"):
        logging.getLogger(n).setLevel(logging.WARNING)
    from kernels.latency import OnnxRuntimeLatency
    from kernels.latency_model import LatencyModel, torch_ops
    from kernels.torch_timing import TorchLatency
    from kernels.tvm_latency import TVMBackend, network_key, spread_genomes
    from spaces import load_space

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    state_file = work / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}

    def save():
        state_file.write_text(json.dumps(state, indent=2))

    space = load_space(args.space)
    sup = space.supernet(seed=0)

    # --- 1. five networks, four ways -------------------------------------------------------------
    rows = state.setdefault("networks", [])
    if not args.skip_networks:
        genomes = spread_genomes(space, 5, seed=0)
        key = f"{args.strategy}-{args.trials}"
        if state.get("networks_key") != key:
            rows.clear()
            shutil.rmtree(work / "tvm-tuned", ignore_errors=True)
            state["networks_key"] = key
        tuned = TVMBackend(
            work / "tvm-tuned",
            trials_per_task=args.trials,
            strategy=args.strategy,
            repeats=args.repeats,
        )
        untuned = TVMBackend(work / "tvm-untuned", trials_per_task=0, repeats=args.repeats)
        threads = (
            tuned.threads
        )  # all three on the same threads: TVM's runtime, onnxruntime's intra-op, torch's
        eager = TorchLatency(repeats=args.repeats, warmup=5, threads=threads)
        ort = OnnxRuntimeLatency(repeats=args.repeats, warmup=5, threads=threads)
        ort1 = OnnxRuntimeLatency(
            repeats=args.repeats, warmup=5, threads=1
        )  # faster on the smallest networks
        # a) tuning, network by network from an empty database (so later rows reuse earlier kernels)
        built = {}  # genome id -> (model, resolution, untuned, tuned compiled networks), for the timing
        for i, g in enumerate(genomes[len(rows) :], start=len(rows)):
            model, r = _model(space, sup, g), space.arch(g).resolution
            print(
                f"network {i + 1}/{len(genomes)}: {space.cost(g)['flops'] / 1e6:.2f} MFLOPs, {r}x{r}",
                flush=True,
            )
            ct, cu = tuned.compile(model, r, tune=True), untuned.compile(model, r, tune=False)
            built[space.genome_id(g)] = (model, r, cu, ct)
            m, u = ct["info"], cu["info"]
            rows.append(
                {
                    "name": "base" if i == 0 else f"candidate {i}",
                    "genome_id": space.genome_id(g),
                    "resolution": r,
                    **space.cost(g),
                    "untuned_diff": u["latency_max_abs_diff"],
                    "tuned_diff": m["latency_max_abs_diff"],
                    "kernels": m["latency_kernels"],
                    "kernels_tuned": m["latency_kernels_tuned_now"],
                    "tuning_s": m["latency_tuning_s"],
                    "source": m["latency_source"],
                }
            )
            save()
            print(json.dumps(rows[-1]), flush=True)
        # b) timing: the five networks four ways in interleaved rounds, each a median of `repeats` runs;
        # the figure is the median over rounds, so a slow spell of this shared VM hits every runtime alike
        compiled = []
        for g in genomes:
            if space.genome_id(g) in built:  # compiled above
                model, r, cu, ct = built[space.genome_id(g)]
            else:  # tuned by an earlier invocation
                model, r = _model(space, sup, g), space.arch(g).resolution
                cu, ct = (
                    untuned.compile(model, r, tune=False, check=False),
                    tuned.compile(model, r, tune=False, check=False),
                )
            compiled.append((model, r, ort.session(model, r), ort1.session(model, r), cu, ct))
        runs = {
            k: [[] for _ in genomes]
            for k in ("eager_ms", "ort_ms", "ort1_ms", "untuned_ms", "tuned_ms")
        }
        for rnd in range(args.rounds):
            for i, (model, r, sess, sess1, cu, ct) in enumerate(compiled):
                time.sleep(0.2)  # TVM's thread pool spins for a moment after a run
                runs["eager_ms"][i].append(eager.measure(model, r)["latency_ms"])
                runs["ort_ms"][i].append(ort.time(sess)["latency_ms"])
                runs["ort1_ms"][i].append(ort1.time(sess1)["latency_ms"])
                runs["untuned_ms"][i].append(untuned.time(cu)["latency_ms"])
                runs["tuned_ms"][i].append(tuned.time(ct)["latency_ms"])
            print(
                f"round {rnd + 1}/{args.rounds}: tuned "
                + " ".join(f"{v[-1]:.3f}" for v in runs["tuned_ms"])
                + " ms, onnxruntime "
                + " ".join(f"{v[-1]:.3f}" for v in runs["ort_ms"])
                + " ms",
                flush=True,
            )
        for i, row in enumerate(rows):
            for k, v in runs.items():
                row[k], row[k[:-3] + "_rounds"] = float(np.median(v[i])), v[i]
            row["ort_best_ms"] = min(row["ort_ms"], row["ort1_ms"])
            row["rounds_ahead_of_ort"] = sum(
                t <= min(a, b)
                for t, a, b in zip(runs["tuned_ms"][i], runs["ort_ms"][i], runs["ort1_ms"][i])
            )
        save()

    # --- 2. a 50-candidate search: reuse, and the latency model on unseen candidates ---------------
    search = state.setdefault("search", {"trials": args.search_trials, "nets": []})
    if search.get("trials") != args.search_trials:
        search.update({"trials": args.search_trials, "nets": []})
        shutil.rmtree(work / "tvm-search", ignore_errors=True)
    b = TVMBackend(
        work / "tvm-search", trials_per_task=args.search_trials, strategy="replay-trace", repeats=20
    )
    rng, seen_ids, genomes = random.Random(0), set(), []
    while len(genomes) < args.candidates:
        g = space.sample(rng)
        if space.genome_id(g) not in seen_ids:
            seen_ids.add(space.genome_id(g))
            genomes.append(g)
    nets = search["nets"]
    seen_keys = set(k for n in nets for k in n["kernel_keys"])
    for i, g in enumerate(genomes[len(nets) :], start=len(nets)):
        model, r = _model(space, sup, g), space.arch(g).resolution
        t0 = time.time()
        m = b.measure(model, r, tune=True, check=False)
        ops = torch_ops(model, r)
        known = b.networks().get(network_key(ops, r))
        keys = known["kernels"] if known else []
        new_seen = len(set(keys) - seen_keys)
        seen_keys |= set(keys)
        nets.append(
            {
                "genome_id": space.genome_id(g),
                "flops": space.cost(g)["flops"],
                "ms": m["latency_ms"],
                "spread_ms": m["latency_spread_ms"],
                "kernels": m["latency_kernels"],
                "new_kernels": new_seen,
                "tuned_now": m["latency_kernels_tuned_now"],
                "tuning_s": m["latency_tuning_s"],
                "wall_s": time.time() - t0,
                "source": m["latency_source"],
                "kernel_keys": keys,
                "ops": LatencyModel.ops_to_json(ops),
                "net": known,
            }
        )
        save()
        print(
            f"candidate {i + 1}/{len(genomes)}: {m['latency_ms']:.3f} ms, {m['latency_kernels']} kernels, "
            f"{m['latency_kernels_tuned_now']} tuned now ({m['latency_tuning_s']:.0f} s)",
            flush=True,
        )

    # whole networks timed again in interleaved rounds (what tvm-model does with its sample), as part 1's
    # are: on this host one timing strays 13 % from its network's median, which swamps the model's error
    if args.search_rounds > 1 and any(
        len(n.get("rounds_ms", [])) < args.search_rounds for n in nets
    ):
        assert all(n["genome_id"] == space.genome_id(g) for n, g in zip(nets, genomes)), (
            "kept candidates differ"
        )
        res = b.measure_rounds(
            [(_model(space, sup, g), space.arch(g).resolution) for g in genomes[: len(nets)]],
            args.search_rounds,
            tune=False,
            progress=lambda i, k: print(f"compiled {i}/{k} for the timing rounds", flush=True),
        )
        for n, m in zip(nets, res):
            n.setdefault("ms_once", n["ms"])  # the search's own single timing
            n["ms"], n["rounds_ms"] = m["latency_ms"], m["latency_rounds_ms"]
            if n["net"] is not None:
                n["net"]["ms"] = n["ms"]  # what the model is calibrated on
        save()

    full = [n for n in nets if n["net"] is not None]
    if not full:  # part 1 alone (--candidates 0 on a fresh work folder)
        write(args, rows, nets, None)
        return
    fit, test = full[: args.fit], full[args.fit :]

    def ape(m, ns):  # absolute percentage errors of model m on networks ns
        return [
            abs(m.predict_ms(LatencyModel.ops_from_json(n["ops"])) - n["ms"]) / n["ms"] * 100
            for n in ns
        ]

    model = b.fit_model([n["net"] for n in fit])
    errs, fit_errs = ape(model, test), ape(model, fit)
    # the same with every candidate's own kernel times (no regression: what composition alone misses)
    exact = b.fit_model([n["net"] for n in full])
    exact.fit_networks([(LatencyModel.ops_from_json(n["ops"]), n["ms"]) for n in fit])
    exact_errs = ape(exact, test)
    # the same model fitted and scored on one timing per candidate (what part 2 had before its rounds)
    once = [
        {**n, "ms": n["ms_once"], "net": {**n["net"], "ms": n["ms_once"]}}
        for n in full
        if "ms_once" in n
    ]
    once_errs = (
        ape(b.fit_model([n["net"] for n in once[: args.fit]]), once[args.fit :]) if once else []
    )

    def deviation(series):  # % by which each timing strays from its own series' median
        return [
            abs(v - med) / med * 100
            for t in series
            if t
            for med in [float(np.median(t))]
            for v in t
        ]

    rounds_dev = deviation([n.get("rounds_ms") for n in nets])
    # in time order (round by round, candidate by candidate): how long a slow spell lasts
    k = min((len(n.get("rounds_ms", [])) for n in nets), default=0)
    seq = (
        np.array([n["rounds_ms"][j] / n["ms"] - 1 for j in range(k) for n in nets])
        if k > 1
        else np.zeros(0)
    )
    lag = {d: float(np.corrcoef(seq[:-d], seq[d:])[0, 1]) for d in (1, 5)} if len(seq) > 10 else {}
    # how far one timing of a network strays from its own median over part 1's rounds (the floor)
    noise = deviation([r.get("tuned_rounds") for r in rows])
    # the uncalibrated sum of kernel times, for contrast (the fitted model's kernels, calibration off)
    raw = copy.copy(model)
    raw.calib = (1.0, 0.0, 0.0)
    raw_errs = ape(raw, test)
    kernel_total = sum(n["kernels"] for n in nets)
    distinct = len(seen_keys)
    tuned_total = sum(n["tuned_now"] for n in nets)
    summary = {
        "candidates": len(nets),
        "kernel_instances": kernel_total,
        "distinct_kernels": distinct,
        "kernels_tuned": tuned_total,
        "tuning_s": sum(n["tuning_s"] for n in nets),
        "wall_s": sum(n["wall_s"] for n in nets),
        "fit": len(fit),
        "test": len(test),
        "mape_test": float(np.mean(errs)) if errs else None,
        "max_ape_test": float(np.max(errs)) if errs else None,
        "mape_fit": float(np.mean(fit_errs)) if fit_errs else None,
        "mape_uncalibrated_sum": float(np.mean(raw_errs)) if raw_errs else None,
        "mape_exact_kernels": float(np.mean(exact_errs)) if exact_errs else None,
        "repeat_deviation_pct": float(np.mean(noise)) if noise else None,
        "search_rounds": k,
        "mape_test_one_timing": float(np.mean(once_errs)) if once_errs else None,
        "search_round_deviation_pct": float(np.mean(rounds_dev)) if rounds_dev else None,
        "search_round_max_ratio": float(max(v / n["ms"] for n in nets for v in n["rounds_ms"]))
        if k
        else None,
        "timing_correlation_lag1": lag.get(1),
        "timing_correlation_lag5": lag.get(5),
        "model": model.describe(),
    }
    state["summary"] = summary
    save()
    write(args, rows, nets, summary)


def write(args, rows, nets, s) -> None:
    import platform

    import numpy as np

    from kernels.tvm_compile import host_target

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    L = [
        "# Latency on this CPU: PyTorch, onnxruntime, TVM untuned and MetaSchedule-tuned",
        "",
        f"`python benchmarks/latency.py --trials {args.trials} --strategy {args.strategy} --candidates "
        f"{args.candidates} --fit {args.fit} --search-trials {args.search_trials} --search-rounds {args.search_rounds}` ({time.strftime('%Y-%m-%d')}, "
        f"{cpu}, 2 cores, {platform.python_version()}). Target `{host_target()}`. Batch 1, networks of "
        "`spaces/tinynet.yaml` (EfficientNet-B0-style, 32x32 at r = 1). Median of "
        f"{args.repeats} timed runs each, in {args.rounds} interleaved rounds (eager, onnxruntime on its two settings, TVM "
        "untuned, TVM tuned for each network in turn; the figure is the median over rounds), on "
        f"{os.environ.get('TVM_NUM_THREADS', '?')} threads for all three runtimes (TVM's runtime, onnxruntime's "
        "intra-op pool, torch's); every measurement and every tuning session holds the machine's core "
        "lock, so nothing of ours trains beside it.",
        "",
    ]
    if rows:
        L += [
            "## 1. Five networks",
            "",
            f"TVM tuned: batch norm folded into the convolutions, MetaSchedule `{args.strategy}` with "
            f"{args.trials} trials per kernel, tuning database empty at the start (so later rows reuse the "
            "kernels of earlier ones); max |diff|: largest absolute difference of the logits to PyTorch.",
            "",
            f"onnxruntime: its CPU provider on {os.environ.get('TVM_NUM_THREADS', '?')} intra-op threads (its "
            "default here) and on 1 thread (faster on the smallest networks); tuned / ort against the faster of "
            "the two; rounds ahead: rounds in which tuned TVM was at least as fast as both.",
            "",
            "| network | MFLOPs | res | PyTorch eager ms | onnxruntime ms | onnxruntime 1 thread ms | TVM untuned ms "
            "| TVM tuned ms | tuned / ort | rounds ahead | kernels (new, tuned) | tuning s | max abs diff untuned / tuned |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
        ]
        for r in rows:
            L.append(
                f"| {r['name']} `{r['genome_id']}` | {r['flops'] / 1e6:.2f} | {r['resolution']} | "
                f"{r['eager_ms']:.3f} | {r['ort_ms']:.3f} | {r['ort1_ms']:.3f} | {r['untuned_ms']:.3f} | "
                f"**{r['tuned_ms']:.3f}** | {r['tuned_ms'] / r['ort_best_ms']:.2f} | "
                f"{r['rounds_ahead_of_ort']}/{len(r['tuned_rounds'])} | {r['kernels']} ({r['kernels_tuned']}) | "
                f"{r['tuning_s']:.0f} | {r['untuned_diff']:.1e} / {r['tuned_diff']:.1e} |"
            )
        faster_ort = sum(r["tuned_ms"] <= r["ort_best_ms"] for r in rows)
        faster_eager = sum(r["tuned_ms"] <= r["eager_ms"] for r in rows)
        L += [
            "",
            f"- Tuned TVM at least as fast as onnxruntime (the faster of its two settings) on **{faster_ort} of "
            f"{len(rows)}** networks; "
            f"at least as fast as PyTorch eager on **{faster_eager} of {len(rows)}**; "
            f"tuned vs untuned TVM: {np.mean([r['untuned_ms'] / r['tuned_ms'] for r in rows]):.1f}x faster on average.",
            f"- Tuning: {sum(r['tuning_s'] for r in rows):.0f} s for {sum(r['kernels_tuned'] for r in rows)} kernels "
            f"({sum(r['kernels'] for r in rows)} kernel instances in the five networks).",
            f"- What it takes: MetaSchedule `{args.strategy}`, {args.trials} trials per kernel; batch norm folded "
            "into the convolutions before import; the Relax preparation passes, so that conv + bias + SiLU "
            "fuse into one kernel; a vectorisable sigmoid (1 / (1 + fast_exp(-x))) instead of libm's exp per "
            "element; NCHW layout, no NCHWc conversion; and TVM's runtime on all the host's cores (its own "
            "default is one thread on a 2-core x86 VM, which doubled every latency).",
        ]
    out, js = Path(args.out), Path(args.out).with_suffix(".json")
    if s is None:  # part 2 not run: the files' part 2 from its last run stays, under its own date
        before = out.read_text() if out.exists() else ""
        if "\n## 2. " in before:
            L += ["", "## 2." + before.split("\n## 2.", 1)[1].rstrip("\n")]
        s = json.loads(js.read_text()).get("search") if js.exists() else None
    else:
        L += _search_section(args, nets, s)
    out.write_text("\n".join(L) + "\n")
    js.write_text(json.dumps({"networks": rows, "search": s}, indent=2))
    print("\n".join(L))


def _search_section(args, nets, s) -> list[str]:
    """Part 2's lines: reuse over the search, and the latency model's error on unseen candidates."""
    import numpy as np

    L = [
        "",
        "## 2. A 50-candidate search: kernel reuse and the latency model",
        "",
        f"{s['candidates']} random candidates of the space (`channel_multiple: 8`), each compiled with tuned "
        f"kernels and timed (`latency: tvm`, {args.search_trials} replay-trace trials per new kernel, empty "
        "database at the start); then all of them timed again in "
        f"{s.get('search_rounds') or 1} interleaved rounds (each a median of 20 runs; a candidate's latency: the "
        "median over rounds, as `latency: tvm-model` measures the networks it fits on and checks).",
        "",
        "| | value |",
        "|---|---:|",
        f"| kernel instances over the candidates | {s['kernel_instances']} |",
        f"| distinct kernels (structural workloads) seen | {s['distinct_kernels']} |",
        f"| kernels tuned | {s['kernels_tuned']} |",
        f"| reuse: instances served by an existing tuned kernel | "
        f"{100 * (1 - s['kernels_tuned'] / max(1, s['kernel_instances'])):.0f} % |",
        f"| tuning time, all candidates | {s['tuning_s']:.0f} s |",
        f"| wall time, all candidates (tune + compile + check + time) | {s['wall_s']:.0f} s |",
        "",
    ]
    new = [n["tuned_now"] for n in nets]
    if new:
        q = max(1, len(new) // 5)
        L += [
            "Kernels tuned per candidate, in fifths of the search: "
            + ", ".join(f"{np.mean(new[i : i + q]):.1f}" for i in range(0, len(new), q))
            + " (reuse grows).",
            "",
        ]
    L += [
        "**Latency model** (what `latency: tvm-model` fits at a run's start): per-kind gradient-boosted regressions "
        "of log kernel time on log shape features, plus exact shapes from the latency table, fitted on the "
        f"tuned kernels of the first {s['fit']} candidates; network time = a x sum + b x operators + c, fitted on "
        f"those {s['fit']} whole-network times. Scored on the other {s['test']} candidates (never fitted on), "
        "against their whole-network measurement:",
        "",
        "| | MAPE % |",
        "|---|---:|",
        f"| latency model, {s['test']} held-out candidates | **{s['mape_test']:.1f}** (max {s['max_ape_test']:.1f}) |",
        f"| the same, on its {s['fit']} fitting candidates | {s['mape_fit']:.1f} |",
        f"| uncalibrated sum of predicted kernel times, held-out | {s['mape_uncalibrated_sum']:.1f} |",
    ]
    for key, label in (
        (
            "mape_exact_kernels",
            "the same model with every held-out candidate's own tuned kernel times (no regression)",
        ),
        (
            "mape_test_one_timing",
            "the latency model fitted and scored on one timing per candidate (the search's own)",
        ),
        (
            "search_round_deviation_pct",
            "for scale: one round's timing of a candidate against its median over the rounds",
        ),
        (
            "repeat_deviation_pct",
            "for scale: one timing of a tuned network against its own median over part 1's rounds",
        ),
    ):
        if s.get(key) is not None:  # lines older states lack
            L.append(f"| {label} | {s[key]:.1f} |")
    L += [
        "",
        "Reading: the line with each candidate's own kernel times leaves out the per-kind regressions' error; "
        "what it still shows is how far whole networks stray from a calibrated sum of their kernels. The last "
        "lines are the noise of timing a network once on this 2-core VM"
        + (
            f": slow spells of a few seconds (consecutive timings correlate, {s['timing_correlation_lag1']:.2f} "
            f"one candidate apart, {s['timing_correlation_lag5']:.2f} five apart) make a single timing up to "
            f"{s['search_round_max_ratio']:.1f}x its median"
            if s.get("timing_correlation_lag1") is not None
            else ""
        )
        + ", so both the model's fitting and its scoring use medians over interleaved rounds.",
        "",
        f"Goal: at most 10 %: **{'met' if s['mape_test'] is not None and s['mape_test'] <= 10 else 'not met'}**. "
        f"Calibration: {json.dumps(s['model']['calibration'])}.",
    ]
    return L


if __name__ == "__main__":
    main()
