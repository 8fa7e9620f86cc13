"""Real latency: the core lock, TVM compile / tune / time on a tiny network with a tiny trial
budget, the operators both sides see, the latency model, schedules transferred between kernels,
and runs with `latency: tvm-model` and `latency: tvm-transfer` (in-process) and `latency: tvm`
(Ray workers calling the latency service)."""

import json
import logging
import math
import multiprocessing as mp
import random
import re
import time
import zlib

import optuna
import pytest

from kernels.cores import CoreLock
from kernels.latency_model import LatencyModel, op_of_kernel, torch_ops
from search.store import STUDY_NAME, open_storage
from spaces import load_space
from tests.conftest import TINY, run_cli, space_path


# --- the core lock ------------------------------------------------------------------------------
def _hold_shared(folder, seconds, started):
    lock = CoreLock(folder)
    with lock.shared():
        started.set()
        time.sleep(seconds)


def _try_shared(folder, q):
    lock = CoreLock(folder)
    t0 = time.perf_counter()
    with lock.shared():
        q.put(time.perf_counter() - t0)


def test_a_measurement_waits_for_the_step_in_flight_and_holds_new_steps_back(tmp_path):
    ctx = mp.get_context("fork")
    started = ctx.Event()
    trainer = ctx.Process(target=_hold_shared, args=(tmp_path, 1.0, started))
    trainer.start()
    assert started.wait(10)
    lock = CoreLock(tmp_path)
    t0 = time.perf_counter()
    q = ctx.Queue()
    with lock.exclusive():
        waited = time.perf_counter() - t0
        late = ctx.Process(
            target=_try_shared, args=(tmp_path, q)
        )  # a step asking during the measurement
        late.start()
        time.sleep(0.5)
    trainer.join(10)
    late.join(10)
    assert waited >= 0.5, "the measurement started beside a training step"
    assert q.get(timeout=5) >= 0.4, "a training step started during the measurement"


def test_the_lock_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_CORE_LOCK", "off")
    lock = CoreLock()
    with lock.exclusive(), lock.shared():
        pass
    assert not lock.enabled


def _cores_free(folder) -> bool:
    """Could a measurement take the cores now? (A separate open file, as another process has.)"""
    import fcntl
    import os

    fd = os.open(folder / "archsearch-cores.cores", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _locked_tiny(tmp_path, monkeypatch):
    """Digits and the tiny space's full network, with this process's core lock in `tmp_path`."""
    import kernels.cores as kl
    from evaluators.data import digits

    monkeypatch.setattr(kl, "_LOCK", CoreLock(tmp_path))
    data = digits(16, 0, 0.2, 0.2)
    space = load_space(TINY).with_classes(data.num_classes)
    return data, space.build(space.full(), space.supernet(0))


def test_training_steps_hold_the_lock_but_epoch_callbacks_do_not(tmp_path, monkeypatch):
    """A step's compute holds the lock shared; the epoch callback runs without it, because it may
    block: a Tune report waits for the driver, forever once ASHA has stopped the trial, and a
    measurement waiting on that step held every other worker back (a hung CI run)."""
    from evaluators.train import TrainRecipe, fine_tune

    data, model = _locked_tiny(tmp_path, monkeypatch)
    in_steps, in_callbacks = [], []
    model.register_forward_hook(lambda *_: in_steps.append(_cores_free(tmp_path)))
    fine_tune(
        model,
        data,
        16,
        TrainRecipe(epochs=2, batch_size=256, lr=0.02),
        seed=0,
        on_epoch=lambda epoch, net: in_callbacks.append((epoch, _cores_free(tmp_path))),
    )
    assert in_steps and not any(in_steps), "a training step ran without the core lock"
    assert in_callbacks == [(1, True), (2, True)], "the epoch callback ran under the core lock"


def _watch_decoding(monkeypatch, split, folder, log):
    """Record, at each batch the split decodes, whether a measurement could take the cores."""
    batches = split.batches

    def watched(*a, **kw):
        for b in batches(*a, **kw):
            log.append(_cores_free(folder))
            yield b

    monkeypatch.setattr(split, "batches", watched)


def test_evaluation_recalibration_and_decoding_hold_the_lock_batch_by_batch(tmp_path, monkeypatch):
    """A Ray worker recalibrates and scores its candidate, and decodes its training batches,
    while the latency service times another network: each batch, decoded and computed, holds
    the lock shared (a measurement waits for it), and nothing holds it once they are done."""
    from evaluators.train import TrainRecipe, evaluate, fine_tune, recalibrate_bn

    data, model = _locked_tiny(tmp_path, monkeypatch)
    forwards, decoded = [], []
    model.register_forward_hook(lambda *_: forwards.append(_cores_free(tmp_path)))
    _watch_decoding(monkeypatch, data.val, tmp_path, decoded)
    _watch_decoding(monkeypatch, data.train, tmp_path, decoded)
    recalibrate_bn(model, data.train.take(64, seed=0)[0], 16, batches=2, bs=32)
    evaluate(model, data.val, 16, bs=64)
    fine_tune(model, data, 16, TrainRecipe(epochs=1, batch_size=128, lr=0.02), seed=0)
    assert len(forwards) > 4 and not any(forwards), "a forward pass ran without the core lock"
    assert len(decoded) > 2 and not any(decoded), "a batch was decoded without the core lock"
    assert _cores_free(tmp_path), "the lock is still held after the evaluation"


# --- TVM -----------------------------------------------------------------------------------------
def _tiny_model(seed: int):
    from kernels.tvm_latency import realistic

    space = load_space(TINY)
    g = space.full() if seed == 0 else space.sample(random.Random(seed))
    r = space.arch(g).resolution
    return realistic(space.build(g, space.supernet(seed=0)), r, seed), r


def test_onnxruntime_and_eager_time_the_same_network_and_say_so():
    """The two baselines tuned TVM is compared with: the ONNX session computes what PyTorch does,
    and one session is timed again and again without exporting again."""
    import numpy as np
    import torch

    from kernels.latency import OnnxRuntimeLatency
    from kernels.torch_timing import TorchLatency

    model, r = _tiny_model(0)
    ort = OnnxRuntimeLatency(repeats=5, warmup=1, threads=1)
    sess, feed = ort.session(model, r)
    with torch.no_grad():
        ref = model(torch.from_numpy(feed["input"])).numpy()
    assert np.abs(sess.run(None, feed)[0] - ref).max() < 1e-4
    assert np.abs(ref).max() > 1e-3  # not all zeros, so the comparison means something
    for m in (
        ort.time((sess, feed)),
        ort.time((sess, feed)),
        ort.measure(model, r),
        TorchLatency(repeats=5, warmup=1, threads=1).measure(model, r),
    ):
        assert 0 < m["latency_ms"] < 1000 and m["latency_spread_ms"] >= 0
    assert ort.measure(model, r)["latency_source"] == "onnxruntime"
    assert TorchLatency(repeats=3, warmup=1).measure(model, r)["latency_source"] == "torch"


@pytest.fixture(scope="module")
def tvm_db(tmp_path_factory):
    """One tuning database for this module, as a user's runs share one: a kernel tuned by one
    test is not tuned again by the next (the first test checks tuning from empty)."""
    return tmp_path_factory.mktemp("tvm")


@pytest.fixture(scope="module")
def backend(tvm_db):
    from kernels.tvm_latency import TVMBackend

    return TVMBackend(tvm_db, trials_per_task=2, repeats=10)


def test_tvm_runs_kernels_on_every_core_even_where_omp_says_one():
    """TVM's own default is OMP_NUM_THREADS (1 in a Ray worker), else half the CPUs on x86; its
    kernels are tuned and timed on all of the host's cores instead, and the database names them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "from kernels.tvm_compile import load_tvm, host_cores, host_target, target_key\n"
        "tvm = load_tvm()\n"
        "print(tvm.get_global_func('runtime.NumThreads')(), host_cores(),\n"
        "      target_key(host_target(), host_cores()))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout.split()
    assert out[0] == out[1] and f"-t{out[1]}-" in out[2]
    # a user's own setting is kept
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "TVM_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout.split()
    assert out[0] == "1"


@pytest.mark.slow
def test_tuned_kernels_time_the_network_match_pytorch_and_are_reused(backend):
    from kernels.tvm_latency import TVMBackend

    model, r = _tiny_model(0)
    m = backend.measure(model, r)
    assert m["latency_source"] == "tvm" and m["latency_tuned_fraction"] == 1.0
    assert m["latency_kernels_tuned_now"] > 0
    assert 0 < m["latency_ms"] < 50 and m["latency_spread_ms"] >= 0
    assert (
        0 < m["latency_max_abs_diff"] < 1e-4
    )  # not bit-identical: TVM's own kernels, batch norm folded
    # a fresh process-like backend on the same database tunes nothing again
    again = TVMBackend(backend.db.dir.parent, trials_per_task=2, repeats=10).measure(model, r)
    assert f"-t{backend.threads}-" in backend.db.dir.name
    assert again["latency_kernels_tuned_now"] == 0 and again["latency_source"] == "tvm"
    rows = [
        json.loads(line) for line in (backend.db.dir / "kernels.jsonl").read_text().splitlines()
    ]
    assert (
        len({r["key"] for r in rows}) == m["latency_kernels"]
    )  # the latency table holds every kernel once
    # compiled once, timed again and again (what the benchmark's interleaved rounds do)
    c = backend.compile(model, r, tune=False, check=False)
    assert c["info"]["latency_source"] == "tvm" and c["info"]["latency_kernels_tuned_now"] == 0
    assert "latency_max_abs_diff" not in c["info"]
    times = [backend.time(c) for _ in range(2)]
    assert all(0 < t["latency_ms"] < 50 and t["latency_spread_ms"] >= 0 for t in times)
    # untuned kernels are labelled as such
    other, r2 = _tiny_model(3)
    un = backend.measure(other, r2, tune=False, remember=False)
    assert un["latency_source"].startswith("tvm-untuned") or un["latency_tuned_fraction"] == 1.0
    # with transfer, a network measured before is not measured again: its figure and source kept
    seen = backend.measure(model, r, tune=False, transfer=True)
    assert seen["latency_ms"] == again["latency_ms"] and seen["latency_source"] == "tvm"
    assert seen["latency_compile_s"] == 0 and "latency_measured_at" in seen
    est = backend.measure(other, r2, tune=False, transfer=True)
    est2 = backend.measure(other, r2, tune=False, transfer=True)
    assert "latency_measured_at" not in est and "latency_measured_at" in est2
    assert (est2["latency_ms"], est2["latency_source"]) == (
        est["latency_ms"],
        est["latency_source"],
    )
    # measured tuned since, the search still prices it at its first figure (a warm cache does
    # not change what a search sees); the tuned figure is what a fully tuned lookup gives
    tuned = backend.measure(other, r2, tune=True)
    est3 = backend.measure(other, r2, tune=False, transfer=True)
    assert (est3["latency_ms"], est3["latency_source"]) == (
        est["latency_ms"],
        est["latency_source"],
    )
    assert backend.known(other, r2)["latency_ms"] == tuned["latency_ms"]


def test_a_timing_with_a_wide_spread_is_timed_again_and_the_quietest_kept(backend, monkeypatch):
    """A network timing whose interquartile spread is over `RETIME_SPREAD` of its median (a slow
    spell over part of its repeats) is timed again, at most `RETIME_TRIES` more times, and the
    lowest median is kept; a quiet first timing is not repeated."""
    import numpy as np

    from kernels import tvm_latency as tl

    monkeypatch.setattr(backend, "_sync_ratio", lambda: 1.0)  # no slow spell: its own test
    quiet, spell = np.full(20, 0.20), np.r_[np.full(10, 0.20), np.full(10, 0.36)]
    for seq, want_ms, want_n in [
        ([quiet], 0.20, 1),
        ([spell, quiet * 1.05], 0.21, 2),
        ([spell * 1.1, spell, spell], 0.28, 1 + tl.RETIME_TRIES),
    ]:
        left = list(seq)
        monkeypatch.setattr(backend, "_time_once", lambda c, left=left: left.pop(0))
        got = backend.time({})
        assert got["latency_timings"] == want_n and got["latency_ms"] == pytest.approx(want_ms)
        assert not left
    assert tl.summary(spell)["latency_spread_ms"] > tl.RETIME_SPREAD * 0.28


def test_a_timing_beside_a_busy_process_is_timed_again_and_a_quiet_one_kept(backend, monkeypatch):
    """A timing during which other processes kept over `BUSY_CORES` of a core busy is taken
    again, up to `BUSY_TRIES` more times, and a quiet timing is kept even if a busy one read
    lower; a network busy through all its timings keeps its quickest, and the next network is
    then timed again only once (a host busy for good does not cost every network the waits)."""
    import numpy as np

    from kernels import tvm_latency as tl

    monkeypatch.setattr(tl, "BUSY_WAIT_S", 0.0)
    monkeypatch.setattr(backend, "_busy_host", False)
    monkeypatch.setattr(backend, "quiet", {k: 0 for k in backend.quiet})
    monkeypatch.setattr(backend, "_sync_ratio", lambda: 1.0)  # no slow spell: its own test

    def timings(seq):
        def once(c):
            ms, others = seq.pop(0)
            backend._others = others
            return np.full(20, ms)

        return once

    busy, quiet = 1.0, 0.01
    for seq, want_ms, want_n, want_busy in [
        ([(0.19, busy), (0.21, quiet)], 0.21, 2, 1),  # the busy one read lower: not kept
        ([(0.20, None)], 0.20, 1, 0),  # too brief to judge
        ([(0.30, busy), (0.26, busy), (0.28, busy), (0.27, busy), (0.29, busy)], 0.26, 5, 5),
        ([(0.30, busy), (0.25, busy)], 0.25, 2, 2),  # after a network busy throughout
        ([(0.30, busy), (0.22, quiet)], 0.22, 2, 1),
    ]:
        monkeypatch.setattr(backend, "_time_once", timings(seq))
        got = backend.time({})
        assert (got["latency_ms"], got["latency_timings"], got["latency_busy_timings"]) == (
            pytest.approx(want_ms),
            want_n,
            want_busy,
        )
        assert not seq
    assert backend.quiet["busy_timings"] == 9 and backend.quiet["busy_kept"] == 2


def test_a_timing_reads_the_cores_a_busy_process_beside_it_took(backend, monkeypatch):
    """Beside a process that spins on one core, a real timing of a compiled network reads over
    `BUSY_CORES` of a core taken from it (from /proc/stat), and is timed again."""
    import subprocess
    import sys

    from kernels import tvm_latency as tl

    monkeypatch.setattr(tl, "BUSY_WAIT_S", 0.0)
    monkeypatch.setattr(backend, "_busy_host", False)
    model, r = _tiny_model(0)
    c = backend.compile(model, r, tune=False, check=False)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        got = backend.time(c)
    finally:
        spin.kill()
        spin.wait()
    assert got["latency_others_cores"] > tl.BUSY_CORES + backend.spare_cores
    assert got["latency_busy_timings"] == got["latency_timings"] == 1 + tl.BUSY_TRIES
    assert backend._busy_host


def test_a_timing_round_waits_while_the_sync_probe_reads_a_slow_spell(backend, monkeypatch):
    """Before each round of `time_rounds` the thread-sync probe is read; while it reads over
    `SLOW_RATIO` x its quickest the round waits, up to `PROBE_WAIT_S`, then is timed anyway."""
    from kernels import tvm_latency as tl

    monkeypatch.setattr(tl, "PROBE_POLL_S", 0.0)
    monkeypatch.setattr(backend, "quiet", {k: 0 for k in backend.quiet})
    ratios = [1.0, 2.1, 2.0, 1.1, 2.5]
    monkeypatch.setattr(backend, "_sync_ratio", lambda: ratios.pop(0))
    monkeypatch.setattr(backend, "time", lambda c: {"latency_ms": 0.2})
    nets = [{"id": 1}, {"id": 2}]
    assert backend.time_rounds(nets, 2, 0.0) == [[0.2, 0.2], [0.2, 0.2]]
    assert backend.quiet["host_slow_probes"] == 2  # the second round waited out 2.1 and 2.0
    monkeypatch.setattr(tl, "PROBE_WAIT_S", 0.0)
    assert backend._await_quiet() == pytest.approx(2.5)  # gave up: timed anyway
    assert not ratios and backend.quiet["host_probes"] == 5
    # a spell through all the rounds: `PROBE_WAIT_S` in all, then one reading a round
    monkeypatch.setattr(tl, "PROBE_POLL_S", 0.01)
    monkeypatch.setattr(tl, "PROBE_WAIT_S", 0.03)
    monkeypatch.setattr(backend, "quiet", {k: 0 for k in backend.quiet})
    monkeypatch.setattr(backend, "_sync_ratio", lambda: 2.0)
    backend.time_rounds(nets, 6, 0.0)
    polls = round(backend.quiet["host_wait_s"] / 0.01)
    assert 1 <= polls <= 3 and backend.quiet["host_probes"] == polls + 6


def test_a_timing_in_a_slow_spell_is_timed_again_and_a_quick_one_kept(backend, monkeypatch):
    """A timing the thread-sync probe read over `SLOW_RATIO` x its quickest, just before or just
    after it, is taken again as one beside a busy process is, and one out of the spell is kept
    even where a slow one read lower; each says the probe's ratio and how many were slow."""
    import numpy as np

    from kernels import tvm_latency as tl

    monkeypatch.setattr(tl, "BUSY_WAIT_S", 0.0)
    monkeypatch.setattr(backend, "_busy_host", False)
    monkeypatch.setattr(backend, "quiet", {k: 0 for k in backend.quiet})
    monkeypatch.setattr(backend, "_others", None)
    for ms, ratios, want_ms, want_n, want_slow, want_ratio in [
        ([0.19, 0.21], [1.0, 1.9, 1.1, 1.0], 0.21, 2, 1, 1.1),  # slow after the first timing
        ([0.20], [1.2, 1.0], 0.20, 1, 0, 1.2),
        ([0.36, 0.34, 0.35, 0.33, 0.37], [2.0] * 10, 0.33, 5, 5, 2.0),  # a spell throughout
        ([0.30, 0.22], [2.0, 2.0, 1.0, 1.0], 0.22, 2, 1, 1.0),  # after it: one more try only
    ]:
        monkeypatch.setattr(backend, "_time_once", lambda c, ms=ms: np.full(20, ms.pop(0)))
        monkeypatch.setattr(backend, "_sync_ratio", lambda ratios=ratios: ratios.pop(0))
        got = backend.time({})
        assert (got["latency_ms"], got["latency_timings"], got["latency_slow_timings"]) == (
            pytest.approx(want_ms),
            want_n,
            want_slow,
        )
        assert got["latency_sync_ratio"] == want_ratio and got["latency_busy_timings"] == 0
        assert not ms and not ratios
    assert backend.quiet["slow_timings"] == 7 and backend.quiet["busy_kept"] == 1


def test_the_sync_probe_keeps_its_quickest_for_every_process_and_reads_a_busy_core(
    tmp_path, backend
):
    """The thread-sync probe (one tiny parallel kernel, really built and timed) keeps its quickest
    reading beside the database, where a new probe (another process's) starts from it; beside a
    process spinning on one core, its threads' meeting slows it over `SLOW_RATIO`."""
    import subprocess
    import sys

    from kernels import tvm_latency as tl
    from kernels.sync_probe import SyncProbe

    p = SyncProbe(backend.target, tmp_path)
    quiet = min(p.reading() for _ in range(3))
    assert 0 < p.best_us == quiet
    assert json.loads((tmp_path / "sync_probe.json").read_text())["best_us"] == quiet
    assert SyncProbe(backend.target, tmp_path).best_us == quiet
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert p.ratio() > tl.SLOW_RATIO
    finally:
        spin.kill()
        spin.wait()
    assert p.best_us == quiet  # a slow reading is not kept


def test_a_network_timed_over_its_bound_is_timed_in_more_rounds_until_under(backend, monkeypatch):
    """`time_rounds` with bounds (the front check: each network's search figure, priced with
    schedules the check's tuning also had): a network whose quietest round is over its bound by
    more than `BOUND_SLACK` (a slow spell longer than the rounds) is timed in more rounds, alone
    with the others over theirs, until one is under or `EXTRA_ROUNDS` were taken; networks under
    their bound, or without one, get the asked rounds alone."""
    from kernels import tvm_latency as tl

    monkeypatch.setattr(tl, "EXTRA_ROUND_S", 0.0)
    monkeypatch.setattr(backend, "_await_quiet", lambda left=None: None)  # its own test
    spell, quiet = 0.40, 0.21
    readings = {
        "slow": [spell] * 4 + [quiet, 0.5],  # a spell over the 3 rounds and the first extra
        "under": [0.25] * 6,
        "free": [0.90] * 6,
        "stuck": [spell] * (3 + tl.EXTRA_ROUNDS + 1),
    }
    monkeypatch.setattr(backend, "time", lambda c: {"latency_ms": readings[c["id"]].pop(0)})
    nets = [{"id": n} for n in ("slow", "under", "free")]
    times = backend.time_rounds(nets, 3, 0.0, bounds=[0.20, 0.30, None])
    assert times == [[spell] * 4 + [quiet], [0.25] * 3, [0.90] * 3]
    assert tl.over_bounds(times, [0.20, 0.30, None]) == []
    # a spell that outlasts the extra rounds: they stop, the quietest is kept
    times = backend.time_rounds([{"id": "stuck"}], 3, 0.0, bounds=[0.20])
    assert len(times[0]) == 3 + tl.EXTRA_ROUNDS and readings["stuck"] == [spell]
    # no bounds: the asked rounds alone
    assert backend.time_rounds([{"id": "under"}], 2, 0.0) == [[0.25, 0.25]]


def test_the_same_kernel_has_the_same_block_names_in_every_network():
    """MetaSchedule's database matches kernels by structure, block names aside, and replays a
    schedule by block name: a mean's block is named after the Relax variable it reads unless
    `named_mean_pass` names it, and then a schedule tuned in one network fails on the same mean
    in another (and tuning it twice made the database unreadable)."""

    from kernels.tvm_compile import host_target, prepared_module
    from kernels.tvm_latency import fold_batch_norm
    from kernels.tvm_transfer import block_names
    from kernels.tvm_tuning import extract_kernels

    space, target, names = load_space(TINY), host_target(), {}
    sup = space.supernet(seed=0)
    for g in [space.full()] + [space.sample(random.Random(s)) for s in range(1, 4)]:
        r = space.arch(g).resolution
        model = fold_batch_norm(space.build(g, sup))
        for k in extract_kernels(prepared_module(model, (1, 3, r, r), target), target):
            names.setdefault(k.key, set()).add(tuple(block_names(k.task.dispatched[0])))
    assert all(len(v) == 1 for v in names.values()), [v for v in names.values() if len(v) > 1]
    means = [v for v in names.values() if any("mean" in b for b in next(iter(v)))]
    assert means and not any(re.match(r"lv\d+", b) for v in names.values() for b in next(iter(v)))


@pytest.mark.parametrize("name", ["tiny", "resnet20"])
def test_an_import_without_pytorchs_decompositions_gives_the_same_kernels(name):
    """`import_module` skips PyTorch's decompositions (most of an import's time) for programs of
    operators that come out as they would have: every kernel of these networks has the key it
    has when imported with the decompositions, so a tuning database serves both, and the
    network computes the same. A program with another operator (Softplus) is imported with them."""
    import numpy as np
    import torch
    from torch import nn
    from tvm.relax.frontend.torch import from_exported_program

    from kernels.tvm_compile import host_target, import_module, load_tvm, ops_of, prepare
    from kernels.tvm_latency import fold_batch_norm
    from kernels.tvm_tuning import extract_kernels

    tvm, target = load_tvm(), host_target()
    from tvm import relax

    def decomposed(model, shape):
        with torch.no_grad():
            ep = torch.export.export(model, (torch.randn(*shape),))
        return from_exported_program(ep, keep_params_as_input=False)

    def keys(mod):
        return sorted(k.key for k in extract_kernels(prepare(mod, target), target))

    space = load_space(TINY if name == "tiny" else space_path(name))
    sup = space.supernet(seed=0)
    for g in [space.full(), space.sample(random.Random(1))]:
        r = space.arch(g).resolution
        model, shape = fold_batch_norm(space.build(g, sup)).eval(), (1, 3, r, r)
        fast = import_module(model, shape)
        assert keys(fast) == keys(decomposed(model, shape))
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        vm = relax.VirtualMachine(tvm.compile(prepare(fast, target), target=target), tvm.cpu())
        got = vm["main"](tvm.runtime.tensor(x.numpy()))[0].numpy()
        with torch.no_grad():
            assert np.abs(got - model(x).numpy()).max() < 1e-4
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Softplus()).eval()  # decomposed: exp, log...
    assert "relax.nn.softplus" not in ops_of(import_module(other, (1, 3, 8, 8)))
    assert keys(import_module(other, (1, 3, 8, 8))) == keys(decomposed(other, (1, 3, 8, 8)))


def test_tuning_times_in_full_only_the_candidates_a_brief_timing_does_not_rule_out(tmp_path):
    """With the runner's `screen`, each kernel's batch of candidates is first timed briefly and
    only those within `screen` times the fastest so timed get the full timing (`repeat` runs);
    the others keep their one brief figure. Every kernel's best is a fully timed candidate, and
    without a screen every candidate is timed in full."""
    from kernels.tvm_latency import TVMBackend
    from kernels.tvm_tuning import RUNNER

    model, r = _tiny_model(0)
    got = {}
    for screen in (1.5, 0):
        b = TVMBackend(tmp_path / f"s{screen}", trials_per_task=8, runner={"screen": screen})
        ks = b.kernels_of(model, r)[:4]
        b.db.tune(ks, focus=False)
        runs = {
            k.key: [
                len(rec.run_secs)
                for rec in b.db.database.get_top_k(
                    b.db.database.commit_workload(k.task.dispatched[0]), 64
                )
            ]
            for k in ks
        }
        got[screen] = (runs, b.db.stats["trials_screened"])
    runs, screened = got[1.5]
    assert screened == sum(n == 1 for v in runs.values() for n in v) > 0
    assert all(v[0] == RUNNER["repeat"] for v in runs.values())  # the best: timed in full
    runs, screened = got[0]
    assert screened == 0 and all(n == RUNNER["repeat"] for v in runs.values() for n in v)


def test_tuning_builds_several_kernels_ahead_but_never_times_beside_a_build(tmp_path, monkeypatch):
    """A tuning call hands each kernel's batch of candidates to the build threads and goes on to
    the next kernel's (`_BuildAhead`): the timing waits until `BUILD_AHEAD` candidates are built,
    or the scheduler asks for a result, and no candidate is timed while a build runs. A candidate
    that fails to build is its kernel's failed trial, and the others are tuned as before."""
    import threading

    from tvm.s_tir.meta_schedule.builder import local_builder

    import kernels.tvm_tuning as tt
    from kernels.tvm_latency import TVMBackend

    lock, state = threading.Lock(), {"building": 0, "built": 0, "calls": 0}
    timed_while_building, built_before_timing = [], []
    real_build, real_timed = local_builder.default_build, tt._timed

    def build(mod, target, params):
        with lock:
            state["building"] += 1
            state["calls"] += 1
            fail = state["calls"] == 5  # one candidate of the first kernel fails to build
        try:
            if fail:
                raise RuntimeError("a candidate that does not build")
            return real_build(mod, target, params)
        finally:
            with lock:
                state["building"] -= 1
                state["built"] += 1

    def timed(ready, evaluator):
        timed_while_building.append(state["building"])
        built_before_timing.append(state["built"])
        return real_timed(ready, evaluator)

    monkeypatch.setattr(local_builder, "default_build", build)
    monkeypatch.setattr(tt, "_timed", timed)
    monkeypatch.setattr(tt, "BUILD_AHEAD", 16)
    model, r = _tiny_model(0)
    b = TVMBackend(tmp_path, trials_per_task=8)
    ks = b.kernels_of(model, r)
    assert len(ks) >= 3
    b.db.tune(ks, focus=False)
    assert timed_while_building and not any(timed_while_building)
    assert built_before_timing[0] >= 16  # two kernels' batches built before the first timing
    failed = 0
    for k in ks:
        recs = b.db.database.get_top_k(b.db.database.commit_workload(k.task.dispatched[0]), 64)
        failed += 8 - len(recs)
        assert recs and recs[0].run_secs and float(recs[0].run_secs[0]) < 1  # a fully timed best
    assert failed == 1  # the candidate that did not build has no timing


def test_seed_tuning_builds_beside_the_pretraining_and_times_only_after_it(tmp_path, monkeypatch):
    """`tvm-transfer`'s seed tuning begun beside the supernet's pre-training (`beside_setup`):
    its candidates are built meanwhile, on threads of the lowest priority, while the training
    steps still take the machine's cores (shared: the tuning does not hold them), and none is
    timed till the block ends; `prepare_run` then waits for the timing and reports it. The
    kernels found from the untrained supernet are the trained network's. A block that fails
    abandons the tuning at its first timing."""
    import os
    import threading

    from tvm.s_tir.meta_schedule.builder import local_builder

    import kernels.cores as kl
    import kernels.tvm_tuning as tt
    from kernels.tvm_latency import realistic
    from kernels.tvm_provider import TVMTransferLatency

    inside = threading.Event()
    built_inside, nice_inside, timed_inside = [], set(), []
    real_build, real_timed = local_builder.default_build, tt._timed

    def build(mod, target, params):
        if inside.is_set():
            built_inside.append(1)
            nice_inside.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real_build(mod, target, params)

    def timed(ready, evaluator):
        timed_inside.append(inside.is_set())
        return real_timed(ready, evaluator)

    monkeypatch.setattr(local_builder, "default_build", build)
    monkeypatch.setattr(tt, "_timed", timed)
    monkeypatch.setattr(kl, "_LOCK", CoreLock(tmp_path))
    space, free = load_space(TINY), []
    p = TVMTransferLatency(tmp_path / "tvm", trials_per_task=4, seed_networks=1)
    with p.beside_setup(space, 0):
        inside.set()
        t0 = time.time()
        while time.time() - t0 < 60 and len(built_inside) < 8:
            free.append(_cores_free(tmp_path))  # the tuning does not hold the cores
            if not free[-1]:
                break
            with kl.core_lock().shared():  # a pre-training step
                time.sleep(0.05)
        inside.clear()
    assert free and all(free)
    assert len(built_inside) >= 8 and nice_inside == {19}
    p.prepare_run(space, space.supernet(seed=0), tmp_path, 0)
    assert timed_inside and not any(timed_inside)  # timed, but only once the block ended
    rep = json.loads((tmp_path / "latency.json").read_text())
    assert rep["seed_tuning_beside"] is True
    assert rep["seed_kernels_tuned"] == rep["seed_kernels"] > 0
    g = space.full()
    trained = realistic(space.build(g, space.supernet(seed=3)), space.arch(g).resolution, 3)
    b = p.backend()
    ks = b.kernels_of(trained, space.arch(g).resolution)
    assert len(ks) == rep["seed_kernels"] and not b.db.missing(ks)
    assert b.db.quiet is None and _cores_free(tmp_path)

    q = TVMTransferLatency(tmp_path / "tvm2", trials_per_task=4, seed_networks=1)
    with pytest.raises(KeyboardInterrupt), q.beside_setup(space, 0):
        raise KeyboardInterrupt  # the pre-training stopped
    with pytest.raises(RuntimeError, match="abandoned"):
        q.prepare_run(space, space.supernet(seed=0), tmp_path / "q", 0)


def test_a_kernels_best_so_far_screens_its_next_trials_even_two_at_a_time(tmp_path):
    """A kernel that already has a fully timed schedule (a transferred one, a first pass) screens
    its further trials against that time too (`TuningDB._floors`): a pass of 2 trials a kernel,
    which a batch alone could not screen, keeps the brief figure of the trials over `screen`
    times the kernel's best; the kernels' best schedules stay fully timed ones."""
    from kernels.tvm_latency import TVMBackend
    from kernels.tvm_tuning import RUNNER, arg_key

    model, r = _tiny_model(0)
    b = TVMBackend(tmp_path, trials_per_task=8)
    ks = b.kernels_of(model, r)
    b.db.tune(ks, focus=False)
    floors = b.db._floors(ks)
    assert floors and set(floors) <= {arg_key(k.shapes) for k in ks}
    first = {k.key: b.db._best(k) for k in ks}

    def records(k):
        return b.db.database.get_top_k(b.db.database.commit_workload(k.task.dispatched[0]), 64)

    def brief() -> int:  # records of one brief timing
        return sum(len(rec.run_secs) == 1 for k in ks for rec in records(k))

    before, brief0 = b.db.stats["trials_screened"], brief()
    b.db._run_metaschedule(ks, 2, seed=b.db.seed + 1, again=True)
    screened = b.db.stats["trials_screened"] - before
    assert 0 < screened == brief() - brief0 <= 2 * len(ks)
    for k in ks:
        assert len(records(k)[0].run_secs) == RUNNER["repeat"]  # the best: timed in full
        assert b.db._best(k) <= first[k.key]
    b.db.runner = {**b.db.runner, "screen": 0}  # no screen: none screened, floors or not
    before, brief0 = b.db.stats["trials_screened"], brief()
    b.db._run_metaschedule(ks, 2, seed=b.db.seed + 2, again=True)
    assert b.db.stats["trials_screened"] == before and brief() == brief0


@pytest.mark.slow
def test_focus_tops_up_the_slowest_kernels_once_also_those_tuned_before(tmp_path):
    """Kernels tuned without focus (tvm-transfer's seeds) get their second pass when a later call
    with focus needs them (the front check): the slowest ones making up `focus_share` of the
    network's time, once; the latency table then gives their better time."""
    from kernels.tvm_latency import TVMBackend
    from kernels.tvm_tuning import jsonl_rows

    model, r = _tiny_model(0)
    b = TVMBackend(tmp_path, trials_per_task=2, repeats=3, focus_trials=4, focus_share=0.5)
    ks = b.kernels_of(model, r)
    assert b.db.tune(ks, focus=False) == len({k.key for k in ks})
    assert b.db.stats["tasks_focused"] == 0 and max(b.db._trials_done(k) for k in ks) <= 2
    first = {k.key: b.db.seconds(k) for k in ks}
    slowest = max(ks, key=lambda k: first[k.key] * k.calls)
    assert b.db.tune(ks) == 0  # no new kernel, but a second pass
    n = b.db.stats["tasks_focused"]
    assert 1 <= n < len(first) and b.db._trials_done(slowest) > 2
    table = jsonl_rows(b.db.dir / "kernels.jsonl")
    assert table[slowest.key]["seconds"] == b.db._best(slowest) <= first[slowest.key]
    b.db.tune(ks)
    assert b.db.stats["tasks_focused"] == n  # topped up once
    # once in a process, whatever its records count (a trial need not add one)
    b.db._trials_done = lambda k: 0
    b.db.tune(ks)
    assert b.db.stats["tasks_focused"] == n


@pytest.mark.slow
def test_a_focus_budget_tops_up_the_kernels_with_the_largest_share_of_a_network_first(tmp_path):
    """With `focus_budget`, the second pass over several networks tunes the kernels with the
    largest share of any network's time first, as many as their trials fit in the budget; those
    left out are not topped up by a later session in the same process either."""
    from kernels.tvm_latency import TVMBackend

    b = TVMBackend(  # a budget for 2 kernels of 2 more trials each
        tmp_path, trials_per_task=2, repeats=3, focus_trials=4, focus_share=1.0, focus_budget=5
    )
    nets = [b.kernels_of(*_tiny_model(seed)) for seed in (0, 3)]
    every = [k for ks in nets for k in ks]
    b.db.tune(every, focus=False)
    share = {}
    for ks in nets:
        uniq = {k.key: k for k in ks}.values()
        total = sum(b.db._first_seconds(k) * k.calls for k in uniq)
        for k in uniq:
            share[k.key] = max(share.get(k.key, 0.0), b.db._first_seconds(k) * k.calls / total)
    assert len(share) > 2
    b.db.tune(every, networks=nets)
    topped = {k.key for k in every if b.db._trials_done(k) > 2}
    assert topped == set(sorted(share, key=lambda key: -share[key])[:2])
    assert b.db.stats["tasks_focused"] == 2
    assert b.db.stats["tasks_over_budget"] == len(share) - 2
    b.db.tune(every, networks=nets)
    assert (
        b.db.stats["tasks_focused"] == 2
        and {k.key for k in every if b.db._trials_done(k) > 2} == topped
    )


@pytest.mark.slow
def test_tuning_says_how_far_it_is_and_keeps_metaschedule_tables_off_the_console(
    tmp_path, monkeypatch, caplog, capfd
):
    """A default run tunes ~130 kernels: MetaSchedule's INFO (a table of every kernel after every
    batch, ~30,000 lines) stays in its log files; our own lines say trials done and time left."""
    import kernels.tvm_tuning as tt
    from kernels.tvm_latency import TVMBackend

    monkeypatch.setattr(tt, "PROGRESS_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="kernels.tvm_tuning")
    model, r = _tiny_model(0)
    b = TVMBackend(tmp_path, trials_per_task=2, repeats=3)
    ks = b.kernels_of(model, r)[:4]
    assert b.db.tune(ks) == len({k.key for k in ks})
    lines = [m for m in caplog.messages if m.startswith("tuning: ")]
    assert lines and all(re.match(r"tuning: \d+/\d+ trials, ~\d+ s left", m) for m in lines)
    out, err = capfd.readouterr()
    assert "Initializing Task" not in out + err and "Total trials" not in out + err


def _light_of_seed(monkeypatch, db) -> dict:
    """Keeps what `db._seed` returns (the kernels outside the transfer's share) under "light"."""
    seed, got = db._seed, {}

    def spy(todo, transfer):
        got["light"] = seed(todo, transfer)
        return got["light"]

    monkeypatch.setattr(db, "_seed", spy)
    return got


@pytest.mark.slow
def test_tuning_can_start_from_the_schedules_transfer_gives(tmp_path, monkeypatch):
    """The front check's tuning (`seeds`): each new kernel's transferred schedules (its first
    replay alone outside the transfer's share of their first replays' measured time) are built
    and timed as its trials are and kept in the tuning database beside them, so its best is the
    fastest of both; they do not count as trials when the slowest kernels are topped up; the
    network compiled from them computes what PyTorch does."""
    from kernels.tvm_latency import TVMBackend
    from kernels.tvm_transfer import Transfer

    b = TVMBackend(tmp_path, trials_per_task=1, repeats=3, focus_trials=3, focus_share=1.0)
    src, r0 = _tiny_model(0)
    b.db.tune(b.kernels_of(src, r0), focus=False)  # the sources
    model, r = _tiny_model(3)
    ks = b.kernels_of(model, r)
    new = b.db.missing(ks)
    assert new
    tr = Transfer(tries=2, pick="fastest", share=0.6)
    got = _light_of_seed(monkeypatch, b.db)
    b.db.tune(ks, seeds=tr)
    seeded = dict(b.db._seeded)
    assert seeded and set(seeded) <= {k.key for k in new}
    # outside the share, a kernel's one candidate is its first replay; inside, up to `tries`
    light = {k.key for k in got["light"]}
    assert light and len(light) < len(seeded)
    assert all(seeded[key] == 1 for key in light) and max(seeded.values()) <= 2
    assert b.db.stats["transferred_candidates"] == sum(seeded.values())
    again = TVMBackend(tmp_path, trials_per_task=1, repeats=3)  # what the database file holds
    for k in new:
        if k.key in seeded:  # its transferred candidates, its first trial and its second pass
            assert again.db._trials_done(k) >= seeded[k.key] + 2
    out = again.measure(model, r, tune=False)
    assert out["latency_source"] == "tvm" and out["latency_max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_the_check_seeds_each_kernel_with_the_schedule_the_search_priced_it_with(
    tmp_path, monkeypatch
):
    """The search's pick of each new kernel (the fastest of its replays, `picks.jsonl`) is what
    the front check, in another process, seeds that kernel's tuning with: that schedule alone,
    not every replay again; its light kernels are those outside the share of the picks' time
    as the check timed them."""
    from kernels.tvm_latency import TVMBackend
    from kernels.tvm_transfer import PICKS_FILE, Transfer

    b = TVMBackend(tmp_path, trials_per_task=1, repeats=3)
    b.db.tune(b.kernels_of(*_tiny_model(0)), focus=False)  # the sources
    model, r = _tiny_model(3)
    b.transfer = Transfer(tries=2, pick="fastest", share=1.0)  # the search's service
    assert b.measure(model, r, tune=False, transfer=True)["latency_kernels_transferred"] > 0
    rows = [json.loads(line) for line in (b.db.dir / PICKS_FILE).read_text().splitlines()]
    picks = {k: str(sch.trace) for k, (sch, _) in b.transfer._picked.items() if sch is not None}
    assert {row["key"] for row in rows} == set(picks)

    c = TVMBackend(tmp_path, trials_per_task=1, repeats=3)  # the driver's check
    ks = c.kernels_of(model, r)
    new = c.db.missing(ks)
    got = _light_of_seed(monkeypatch, c.db)
    c.db.tune(ks, seeds=Transfer(tries=2, pick="fastest", share=0.6), focus=False)
    assert c.db.stats["picks_reused"] == len(picks) == c.db.stats["transferred_candidates"]
    assert all(c.db._seeded[key] == 1 for key in picks)
    for k in new:
        if k.key in picks:  # the search's schedule among the kernel's records
            wl = c.db._db.commit_workload(k.task.dispatched[0])
            traces = {str(rec.trace) for rec in c.db._db.get_top_k(wl, 64)}
            assert picks[k.key] in traces
    light = {k.key for k in got["light"]}
    assert light and light < set(picks)


@pytest.mark.slow
@pytest.mark.parametrize("light_trials", [1, 0])
def test_the_checks_light_kernels_get_light_trials_beside_their_transferred_schedule(
    tmp_path, monkeypatch, light_trials
):
    """`light_trials`: in a tuning seeded by transfer, the new kernels outside the transfer's
    share of their first replays' measured time get that many trials (0: none, their
    transferred schedule stands), the rest `trials_per_task`; a kernel without a transferred
    schedule is never light."""
    from kernels.tvm_latency import TVMBackend
    from kernels.tvm_transfer import Transfer

    b = TVMBackend(tmp_path, trials_per_task=3, repeats=3, light_trials=light_trials)
    b.db.tune(b.kernels_of(*_tiny_model(0)), trials_per_task=1, focus=False)  # the sources
    ks = b.kernels_of(*_tiny_model(3))
    new = b.db.missing(ks)
    tr = Transfer(tries=2, pick="fastest", share=0.6)
    got = _light_of_seed(monkeypatch, b.db)
    b.db.tune(ks, seeds=tr, focus=False)
    light = {k.key for k in got["light"]}
    assert light and len(light) < len(new)
    assert all(b.db._seeded.get(key, 0) == 1 for key in light)
    assert b.db.stats["tasks_light"] == len(light)
    done = {k.key: b.db._trials_done(k) - b.db._seeded.get(k.key, 0) for k in new}
    assert all(done[key] <= light_trials for key in light)
    assert max(d for key, d in done.items() if key not in light) >= 2
    assert not b.db.missing(ks)  # every new kernel has a schedule in the database


@pytest.mark.slow
def test_a_kernel_is_tuned_on_the_same_samples_whatever_it_is_tuned_with(tmp_path):
    """Tuning seeds follow the kernel, not its place in the list: the same kernels tuned in
    reverse order, or with more trials, see the same first schedules (MetaSchedule's own
    seeding is by position, under which a reversed list shares almost none)."""
    from kernels.tvm_latency import TVMBackend

    model, r = _tiny_model(0)
    traces = []
    for name, trials, order in (("a", 2, 1), ("b", 2, -1), ("c", 4, 1)):
        b = TVMBackend(tmp_path / name, trials_per_task=trials, repeats=3)
        ks = b.kernels_of(model, r)[:3][::order]
        b.db.tune(ks)
        db = b.db.database
        traces.append(
            {
                k.key: {
                    str(x.trace) for x in db.get_top_k(db.commit_workload(k.task.dispatched[0]), 9)
                }
                for k in ks
            }
        )
    a, rev, more = traces
    same = sum(len(a[k] & rev[k]) for k in a)
    assert same >= 0.75 * sum(len(a[k]) for k in a) > 0
    assert sum(len(a[k] & more[k]) for k in a) >= same - 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny", "resnet20"])
def test_pytorch_sees_the_same_operators_as_the_tvm_kernels(name):
    """The latency model prices PyTorch operators with what TVM kernels taught it: both sides
    must describe a network by the same operators."""
    from collections import Counter

    from kernels.tvm_compile import host_target, prepared_module
    from kernels.tvm_latency import fold_batch_norm
    from kernels.tvm_tuning import extract_kernels

    space = load_space(TINY if name == "tiny" else space_path(name))
    target = host_target()
    for seed in range(2):
        g = space.full() if seed == 0 else space.sample(random.Random(seed))
        model = space.build(g, space.supernet(seed=0)).eval()
        r = space.arch(g).resolution
        kernels = extract_kernels(
            prepared_module(fold_batch_norm(model), (1, 3, r, r), target), target
        )
        tvm_side = Counter()
        for k in kernels:
            op = op_of_kernel(k.name, k.shapes)
            assert op is not None, k.name
            tvm_side[op.key] += k.calls
        assert tvm_side == Counter(o.key for o in torch_ops(model, r))


@pytest.mark.slow
def test_the_latency_model_prices_networks_it_was_not_fitted_on(backend):
    """Seven networks timed in three interleaved rounds (as tvm-model measures its sample) and
    kept with their rounds, each one's figure its quietest round's; a model fitted on five prices
    the other two from their kernels.

    What timing noise cannot break is checked: whole-network times that follow the model's form
    (a * kernel sum + b * ops + c) are recovered exactly from five networks, and the other two
    are priced from the kernels the database holds. How close the model comes on real timings is
    a benchmark figure (benchmarks/results/latency.md), not a test."""
    from kernels.tvm_latency import network_key, spread_genomes

    space = load_space(TINY)
    sup = space.supernet(seed=0)
    items = [
        (space.build(g, sup).eval(), space.arch(g).resolution)
        for g in spread_genomes(space, 7, seed=1)
    ]
    res = backend.measure_rounds(items, rounds=3)
    assert all(len(m["latency_rounds_ms"]) == 3 and m["latency_source"] == "tvm" for m in res)
    # each network's figure is its quietest round's, also when read back from the database
    assert all(m["latency_ms"] == min(m["latency_rounds_ms"]) for m in res)
    known = backend.networks()
    nets = [known[network_key(torch_ops(model, r), r)] for model, r in items]
    assert [n["rounds_ms"] for n in nets] == [m["latency_rounds_ms"] for m in res]
    again = [backend.known(model, r, rounds=3) for model, r in items]
    assert [k["latency_ms"] for k in again] == [m["latency_ms"] for m in res]
    model = backend.fit_model(nets[:5])
    assert model.fit_info["networks"] == 5
    ops = [LatencyModel.ops_from_json(n["ops"]) for n in nets]
    assert all(0 < model.predict_ms(o) < float("inf") for o in ops)
    # whole-network times of the model's own form: the fit recovers them, held-out ones too
    a, b, c = 1.3, 0.02, 0.05
    synthetic = [
        {**n, "ms": a * model.network_terms(o)[0] + b * len(o) + c, "rounds_ms": None}
        for n, o in zip(nets, ops)
    ]
    refit = backend.fit_model(synthetic[:5])
    for n, o in zip(synthetic[:5], ops[:5]):
        assert refit.predict_ms(o) == pytest.approx(n["ms"], rel=1e-6)
    if len({len(o) for o in ops[:5]}) > 1:  # op counts vary: the form is identified
        assert refit.calib == pytest.approx((a, b, c), rel=1e-6)
        for n, o in zip(synthetic[5:], ops[5:]):
            assert refit.predict_ms(o) == pytest.approx(n["ms"], rel=1e-6)


# --- runs -------------------------------------------------------------------------------------
def _trials(out):
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out, None))
    return [
        t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
    ]


@pytest.mark.slow
def test_tvm_model_run_fits_checks_and_reports_its_error(tmp_path, cache_dir, tvm_db):
    out = tmp_path / "run"
    r = run_cli(
        "run",
        TINY,
        "--budget",
        3,
        "--out",
        out,
        "--no-progress",
        "--set",
        f"cache={cache_dir}",
        "--set",
        "latency=tvm-model",
        "--set",
        f"latency.database={tvm_db}",
        "--set",
        "latency.trials_per_task=2",
        "--set",
        "latency.fit_networks=4",
        "--set",
        "latency.holdout=1",
        "--set",
        "latency.check_front=2",
        "--set",
        "latency.rounds=3",
        "--set",
        "objectives=[{metric: val_acc}, {metric: latency_ms, direction: minimize}]",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "latency.json").read_text())
    assert rep["provider"] == "tvm-model" and rep["fit_networks"] == 4 and rep["rounds"] == 3
    assert len(rep["holdout"]) == 1 and rep["holdout_mape"] >= 0
    assert 1 <= len(rep["front"]) <= 2 and all(c["source"] == "tvm" for c in rep["front"])
    assert rep["front_mape"] is not None
    assert (
        "error on the Pareto front measured with tuned kernels" in (out / "report.html").read_text()
    )
    trials = _trials(out)
    assert len(trials) == 3
    assert all(t.user_attrs["metrics"]["latency_source"] == "tvm-model" for t in trials)


def test_transferred_tile_sizes_fit_the_new_loop_and_stay_near_the_old():
    import math

    from kernels.tvm_transfer import nearest_tiling

    # a 64-long loop tiled (2, 4, 8), replayed on a 32-long one: one factor halved, two kept
    new = nearest_tiling(32, [2, 4, 8], 16)
    assert math.prod(new) == 32 and sum(a != b for a, b in zip(new, [2, 4, 8])) == 1
    for extent, old, limit in [(12, [1, 4, 4], 4), (7, [1, 1, 8], 4), (96, [3, 2, 16], 8)]:
        new = nearest_tiling(extent, old, limit)
        assert len(new) == len(old) and math.prod(new) == extent and new[-1] <= limit
    assert nearest_tiling(24, [2, 3, 4], 16) == [2, 3, 4]  # a fitting tiling is kept


def test_a_replay_whose_vector_lanes_gather_from_several_rows_is_dropped():
    """A 64-lane vector over 4 rows of 16 (of 32) gathers, a refitted replay can make one, and
    LLVM took 29 s over one such replay here: `wrapping_vector` names its loop, and not the
    same vector over 2 whole rows."""
    from tvm import te
    from tvm.s_tir import Schedule

    from kernels.tvm_compile import load_tvm
    from kernels.tvm_transfer import wrapping_vector

    load_tvm()
    a = te.placeholder((1, 8, 32, 32), name="A")
    b = te.compute((1, 8, 32, 32), lambda n, c, y, x: a[n, c, y, x] * 2.0, name="B")

    def vectorized(rows: int, width: int) -> str:
        sch = Schedule(te.create_prim_func([a, b]))
        n, c, y, x = sch.get_loops(sch.get_sblock("B"))
        y0, y1 = sch.split(y, [None, rows])
        x0, x1 = sch.split(x, [None, width])
        sch.reorder(n, c, y0, x0, y1, x1)
        sch.vectorize(sch.fuse(y1, x1))
        return sch.mod.script()

    assert wrapping_vector(vectorized(4, 16)) == "y_1_x_1_fused"
    assert wrapping_vector(vectorized(2, 32)) is None


def test_transfer_pick_fastest_keeps_the_replay_that_timed_fastest(backend, monkeypatch):
    """`transfer_pick: fastest`: a kernel's replays from its nearest tuned kernels are each
    compiled and timed alone (really), and the one that timed fastest is the kernel's schedule,
    kept for the next network that has the kernel; `nearest` keeps the first replay untimed."""
    import kernels.tvm_transfer as tt

    backend.db.tune(backend.kernels_of(*_tiny_model(0)))
    tr = tt.Transfer(tries=3, pick="fastest")
    tr.refresh(backend.db)
    timed = []

    def recording(built, **timing):
        timed.append((real(built, **timing), str(built.mod)))
        return timed[-1][0]

    real = tt.time_built
    monkeypatch.setattr(tt, "time_built", recording)
    picked = None
    for seed in range(1, 6):
        for k in backend.db.missing(backend.kernels_of(*_tiny_model(seed))):
            timed.clear()
            sch, _ = tr.schedule(k.task.dispatched[0], backend.target)
            if len({m for _, m in timed}) > 1:
                picked = (k, sch)
                break
        if picked:
            break
    assert picked, "no kernel with two different replays"
    k, sch = picked
    assert str(sch.mod) == min(timed)[1]
    assert all(t > 0 for t, _ in timed)
    nearest = tt.Transfer(tries=3)
    nearest.refresh(backend.db)
    near, _ = nearest.schedule(k.task.dispatched[0], backend.target)
    assert str(near.mod) == next(str(s.mod) for s, _ in tr.replays(k.task.dispatched[0]))
    n0 = len(timed)
    _, moved = tr.database(backend.db, [k], backend.target)
    n1 = len(timed)
    assert k.key in moved and n1 > n0  # timed on first use
    tr.database(backend.db, [k], backend.target)
    assert len(timed) == n1  # and kept
    with pytest.raises(ValueError, match="nearest or fastest"):
        tt.Transfer(pick="best")


@pytest.mark.slow
def test_a_kernel_no_tuned_schedule_replays_on_is_tuned_not_timed_untuned(tmp_path, monkeypatch):
    """A network compiled with transferred schedules, one of whose kernels no tuned kernel's
    schedule replays on (here: its structure's tuned kernels hidden from the transfer), gets that
    kernel tuned (`trials_per_task`) rather than TVM's untuned schedule; the other kernels keep
    the picks they were given (the database grew by another structure: none is picked again,
    none counted twice)."""
    import kernels.tvm_transfer as tt
    from kernels.tvm_latency import TVMBackend

    b = TVMBackend(tmp_path, trials_per_task=1, repeats=3)
    b.db.tune(b.kernels_of(*_tiny_model(0)), focus=False)  # the sources
    model, r = _tiny_model(3)
    new = b.db.missing(b.kernels_of(model, r))
    assert len(new) > 1
    tr = b.transfer = tt.Transfer(tries=2, pick="fastest")
    tr.refresh(b.db)
    lost = tt.structure(new[0].task.dispatched[0], tt.block_names(new[0].task.dispatched[0]))
    tr._sources = [src for src in tr._sources if src.structure != lost]
    stranded = {
        k.key
        for k in new
        if tt.structure(k.task.dispatched[0], tt.block_names(k.task.dispatched[0])) == lost
    }
    picked, timed = [], tr.timed
    monkeypatch.setattr(tr, "timed", lambda mods, *a: picked.extend(mods) or timed(mods, *a))
    info = b.compile(model, r, tune=False, check=False, transfer=True)["info"]
    assert "untuned" not in info["latency_source"]
    assert b.db.stats["tasks_stranded"] == len(stranded) == info["latency_kernels_tuned_now"]
    assert all(b.db.record(k) is not None for k in new if k.key in stranded)
    assert tr.stats["kernels_transferred"] == len({k.key for k in new} - stranded)
    assert tr.stats["kernels_not_transferred"] == len(stranded)
    assert len(picked) == len({k.key for k in new})  # each kernel picked once
    assert set(tr._picked) - stranded == {k.key for k in new} - stranded


def test_a_kernel_whose_nearest_sources_fail_replays_a_farther_one(backend):
    """A kernel whose `tries` nearest tuned kernels of its structure all fail to replay on it
    gets the first farther one that replays (one: nothing more is compiled for it), and is
    timed untuned only where none replays; a kernel with replays among its nearest is not
    given farther ones."""
    import dataclasses

    import kernels.tvm_transfer as tt

    backend.db.tune(backend.kernels_of(*_tiny_model(0)))
    tr = tt.Transfer(tries=2)
    tr.refresh(backend.db)
    k = next(k for k in backend.db.missing(backend.kernels_of(*_tiny_model(1))))
    mod = k.task.dispatched[0]
    good = [src for _, src in tr.replays(mod, 99)]
    assert good, "no source replays on the kernel"
    # the nearest sources (the kernel's own shapes) name blocks it lacks: they fail to replay
    lost = tt.rename_blocks(good[0].trace, good[0].blocks, [f"gone{b}" for b in good[0].blocks])
    broken = [
        dataclasses.replace(good[0], shapes=tt.shapes_of(mod), trace=lost, workload=i)
        for i in (1, 2, 3)
    ]
    tr._sources = broken + good
    got = list(tr.replays(mod))
    assert [src.workload for _, src in got] == [good[0].workload]
    assert tr.spans([mod], [(0, 1, tr.tries)]) == []  # no more replays beyond the first
    tr._sources = broken
    assert list(tr.replays(mod)) == []
    tr._sources = broken[:1] + good  # one of its 2 nearest replays: no farther ones
    assert [src.workload for _, src in tr.replays(mod)] == [good[0].workload]


def test_candidate_schedules_compile_without_tir_cse_and_run_the_same(backend):
    """A tuning trial's build and a transferred replay's build skip TIR's common-subexpression
    elimination (`CANDIDATE_BUILD`: LLVM does that work again), and the kernel so compiled
    computes what TVM's default pipeline compiles."""
    import numpy as np
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    import kernels.tvm_transfer as tt
    from kernels.tvm_compile import load_tvm
    from kernels.tvm_tuning import _in_process_builder

    tvm = load_tvm()
    ks = backend.kernels_of(*_tiny_model(0))
    backend.db.tune(ks)
    k = max(ks, key=lambda k: k.shapes[0][1] if len(k.shapes[0]) > 1 else 0)
    sch = Schedule(k.task.dispatched[0])
    backend.db.record(k).trace.apply_to_schedule(sch, remove_postproc=False)
    ran: list[str] = []

    @tvm.instrument.pass_instrument
    class Names:
        def run_before_pass(self, mod, info):
            ran.append(info.name)

    def passes(build) -> set[str]:
        ran.clear()
        with tvm.transform.PassContext(instruments=[Names()]):
            out = build()
        return set(ran), out

    default, lib = passes(lambda: tvm.compile(sch.mod, target=backend.target))
    replay, built = passes(lambda: tt.build_kernel(sch.mod, backend.target))
    trial, res = passes(
        lambda: _in_process_builder(1, {}).build([ms.builder.BuilderInput(sch.mod, backend.target)])
    )
    assert res[0].error_msg is None
    assert "tirx.CommonSubexprElim" in default
    for got in (replay, trial):
        assert "tirx.CommonSubexprElim" not in got and "tirx.StmtSimplify" in got
    out = [tvm.runtime.tensor(np.zeros(a.shape, a.dtype)) for a in built.args[-1:]]
    lib(*built.args[:-1], *out)
    built.lib.mod[built.name](*built.args)
    np.testing.assert_allclose(built.args[-1].numpy(), out[0].numpy(), rtol=1e-5, atol=1e-5)


def test_transfer_share_gives_all_tries_only_to_the_kernels_that_make_up_the_time(
    backend, monkeypatch
):
    """`transfer_share`: of a network's new kernels, those whose first replay, as measured,
    times calls, makes up the share get every try; the others their first replay alone, still
    compiled and timed."""
    import kernels.tvm_transfer as tt

    backend.db.tune(backend.kernels_of(*_tiny_model(0)))
    full = tt.Transfer(tries=3, pick="fastest")
    part = tt.Transfer(tries=3, pick="fastest", share=0.5)
    for tr in (full, part):
        tr.refresh(backend.db)
    new = next(  # a network with new kernels (other tests share this database)
        ks
        for ks in (backend.db.missing(backend.kernels_of(*_tiny_model(s))) for s in range(3, 40))
        if len(ks) >= 4
    )
    mods, calls = [k.task.dispatched[0] for k in new], [k.calls for k in new]
    # the measured share: time times calls, slowest first, a replay that did not build left out
    assert part.heavy({0: 3.0, 1: 1.0, 2: 0.5, 3: math.inf}, [1, 1, 4, 1]) == {0}
    wider = tt.Transfer(pick="fastest", share=0.6)
    assert wider.heavy({0: 3.0, 1: 1.0, 2: 0.5}, [1, 1, 4]) == {0, 2}
    assert part.heavy({}, []) == set()
    got_full, got_part = full.timed(mods, backend.target), part.timed(mods, backend.target, calls)
    built = part.stats["transfer_replays_built"]
    assert built < full.stats["transfer_replays_built"]
    assert [g is None for g in got_part] == [g is None for g in got_full]
    picked = [(g, m) for g, m in zip(got_part, mods) if g is not None]
    assert built >= len(picked)  # every kernel's first replay, then more for the heavy ones
    nearest = [str(g[1].mod) == str(next(part.replays(m))[0].mod) for g, m in picked]
    assert any(nearest)
    for g, m in picked:  # each pick is one of its kernel's replays
        assert str(g[1].mod) in {str(sch.mod) for sch, _ in part.replays(m, 3)}
    # stable times: which kernels get more replays is known. A kernel outside the share on
    # those times, whose first replay is then made slowest by far: the measured share gives it
    # its other replays, and one of them beats it
    ones = [(i, 0, 1) for i in range(len(mods))]
    firsts = {i: str(sch.mod) for i, sch, _ in part.spans(mods, ones)}

    def crc(mod: str) -> float:
        return (zlib.crc32(mod.encode()) % 1000 + 1) * 1e-6

    usual = part.heavy({i: crc(f) for i, f in firsts.items()}, calls)
    multi = [i for i in firsts if i not in usual and len(list(part.replays(mods[i], 3))) > 1]
    assert multi, "no kernel outside the share with two replays"
    x = multi[0]
    slow = firsts[x]

    def fake(mod: str) -> float:
        return 1.0 if mod == slow else crc(mod)

    monkeypatch.setattr(tt, "time_built", lambda b, **t: fake(str(b.mod)))
    fresh = tt.Transfer(tries=3, pick="fastest", share=0.5)
    fresh.refresh(backend.db)
    got = fresh.timed(mods, backend.target, calls)
    more = fresh.heavy({i: fake(f) for i, f in firsts.items()}, calls)
    assert x in more and str(got[x][1].mod) != slow
    for i, f in firsts.items():  # a kernel outside the measured share keeps its first replay
        if i not in more:
            assert str(got[i][1].mod) == f
    with pytest.raises(ValueError, match="share"):
        tt.Transfer(pick="fastest", share=0)


@pytest.mark.slow
def test_a_compiled_network_reports_its_kernels_own_times_summed(backend, tvm_db):
    """`latency_summed_ms`: each kernel's own time (tuned: as tuned; transferred with
    `pick: fastest`: its pick's timing) times its calls, summed, beside the whole network's time
    (benchmarks/kernel_sum.py compares the two)."""
    from kernels.tvm_latency import TVMBackend
    from kernels.tvm_transfer import Transfer

    backend.db.tune(backend.kernels_of(*_tiny_model(0)))
    b = TVMBackend(tvm_db, trials_per_task=2, repeats=10)
    b.transfer = Transfer(tries=2, pick="fastest")
    model, r = _tiny_model(7)
    c = b.compile(model, r, tune=False, check=False, transfer=True)
    assert c["info"]["latency_kernels_transferred"] > 0
    own = sum(
        k.calls * (b.db.seconds(k) if b.db.record(k) else b.transfer.seconds[k.key])
        for k in c["kernels"]
    )
    assert c["info"]["latency_summed_ms"] == pytest.approx(1e3 * own) and own > 0
    # with `nearest` picks are not timed: no sum
    b.transfer = Transfer(tries=2, pick="nearest")
    c = b.compile(model, r, tune=False, check=False, transfer=True)
    assert c["info"]["latency_summed_ms"] is None


@pytest.mark.slow
def test_networks_are_linked_from_kernels_compiled_once(backend, tvm_db):
    """A network is linked from compiled kernels (`kernels/tvm_library.py`): a transferred
    kernel as its pick compiled it, every kernel through LLVM once per process; the linked network
    computes what the whole-network build computes. Past `keep` kernels the least recently linked
    go; a network linked before keeps running, and linking it again compiles what went."""
    import numpy as np

    from kernels.tvm_compile import build, first_output, load_tvm, with_database
    from kernels.tvm_latency import TVMBackend
    from kernels.tvm_transfer import Transfer

    tvm = load_tvm()
    from tvm import relax

    backend.db.tune(backend.kernels_of(*_tiny_model(0)))
    b = TVMBackend(tvm_db, trials_per_task=2, repeats=10)
    b.transfer = Transfer(tries=2, pick="fastest")
    model, r = _tiny_model(7)
    c = b.compile(model, r, tune=False, transfer=True)
    st = dict(b.library.stats)
    assert c["info"]["latency_kernels_transferred"] > 0 and st["kernels_adopted"] > 0
    assert c["info"]["latency_max_abs_diff"] < 1e-4  # against PyTorch
    again = b.compile(model, r, tune=False, check=False, transfer=True)
    assert b.library.stats["kernels_compiled"] == st["kernels_compiled"]
    assert b.library.stats["kernels_adopted"] == st["kernels_adopted"]
    assert b.library.stats["kernels_reused"] > st["kernels_reused"]
    prepared = b._lowered(model, r)[0]
    database, _ = b._transferred(c["kernels"])
    whole = relax.VirtualMachine(build(prepared, b.target, database), tvm.cpu())
    out = first_output(again["vm"]["main"](again["input"]))
    assert np.allclose(first_output(whole["main"](again["input"])), out, atol=1e-5)
    # a library smaller than two networks: linking another evicts the first's oldest kernels
    lib = type(b.library)(b.target, keep=len(c["kernels"]) + 2)
    first = relax.VirtualMachine(
        lib.executable(with_database(prepared, b.target, database)), tvm.cpu()
    )
    other, r2 = _tiny_model(3)
    p2 = b._lowered(other, r2)[0]
    second = lib.executable(with_database(p2, b.target, b._transferred(b.kernels_of(other, r2))[0]))
    relax.VirtualMachine(second, tvm.cpu())  # all its kernels there, whatever went
    assert np.allclose(first_output(first["main"](again["input"])), out, atol=1e-5)
    n = lib.stats["kernels_compiled"]
    relinked = lib.executable(with_database(prepared, b.target, database))
    assert lib.stats["kernels_compiled"] > n
    vm = relax.VirtualMachine(relinked, tvm.cpu())
    assert np.allclose(first_output(vm["main"](again["input"])), out, atol=1e-5)


@pytest.mark.slow
def test_a_network_compiled_after_tuning_links_the_winners_tuning_built(tmp_path):
    """Tuning hands the module it built and timed for each kernel's winner to the kernel library
    (`kernels.tvm_tuning._Fastest`): the network compiled next links them instead of compiling
    them again, they are the database's best schedules, and the network computes what PyTorch
    does."""
    from kernels.tvm_latency import TVMBackend
    from kernels.tvm_library import kernel_name

    b = TVMBackend(tmp_path, trials_per_task=2, repeats=5)
    model, r = _tiny_model(5)
    kernels = b.kernels_of(model, r)
    assert b.db.tune(kernels) > 0
    adopted = set(b.library._names)
    assert b.db.stats["kernels_built_adopted"] == len(adopted) > 0
    winners = set()
    for k in {k.key: k for k in kernels}.values():
        sch = b.db.database.query_schedule(k.task.dispatched[0], b.target, "main")
        winners.add(kernel_name(sch.mod["main"], b.target))
    assert adopted <= winners  # the fastest candidate of each kernel, as the database keeps it
    c = b.compile(model, r, tune=False)
    assert b.library.stats["kernels_compiled"] == len(winners - adopted)
    assert b.library.stats["kernels_reused"] >= len(adopted)
    assert c["info"]["latency_max_abs_diff"] < 1e-4


def test_tvm_transfer_falls_back_to_eager_loudly_where_tvm_cannot_load(
    monkeypatch, caplog, tmp_path
):
    import kernels.tvm_compile
    from kernels.latency import make_latency
    from kernels.torch_timing import TorchLatency

    def broken():
        raise ImportError("libtvm.so: cannot open shared object file")

    monkeypatch.setattr(kernels.tvm_compile, "load_tvm", broken)
    with caplog.at_level("WARNING"):
        p = make_latency("tvm-transfer", tmp_path)
    assert isinstance(p, TorchLatency)
    assert "TVM cannot be loaded" in caplog.text and "libtvm.so" in caplog.text
    model, r = _tiny_model(0)
    assert p.measure(model, r)["latency_source"] == "torch"


@pytest.mark.slow
def test_tvm_transfer_run_replays_tuned_schedules_and_checks_the_front(tmp_path, cache_dir, tvm_db):
    """`tvm-transfer`: the full network's kernels tuned at the start; candidates compiled with
    those and, for their own kernels, schedules replayed from the nearest tuned ones (outputs
    still matching PyTorch), each trial saying which; the front re-measured tuned at the end."""
    out = tmp_path / "run"
    args = [
        "run",
        TINY,
        "--budget",
        3,
        "--no-progress",
        "--set",
        f"cache={cache_dir}",
        "--set",
        "latency=tvm-transfer",
        "--set",
        f"latency.database={tmp_path / 'tvm'}",
        "--set",
        "latency.trials_per_task=1",
        "--set",
        "latency.seed_networks=1",
        "--set",
        "latency.check_front=1",
        "--set",
        "latency.rounds=1",
        "--set",
        "objectives=[{metric: val_acc}, {metric: latency_ms, direction: minimize}]",
    ]
    r = run_cli(*args, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = [t.user_attrs["metrics"] for t in _trials(out)]
    assert len(metrics) == 3
    assert all(m["latency_source"].startswith("tvm") for m in metrics)
    moved = [m for m in metrics if m["latency_kernels_transferred"] > 0]
    assert moved, "no candidate got a transferred kernel"
    assert all("transferred" in m["latency_source"] for m in moved)
    # a compiled candidate's replays were picked (compiled and timed) and that time is its own
    assert all(m["latency_transfer_s"] > 0 for m in moved if "latency_measured_at" not in m)
    compiled = [m for m in metrics if "latency_measured_at" not in m]  # not a network seen before
    assert compiled and all(m["latency_max_abs_diff"] < 1e-4 for m in compiled)
    rep = json.loads((out / "latency.json").read_text())
    assert rep["provider"] == "tvm-transfer" and len(rep["seed_networks"]) == 1
    assert rep["seed_kernels_tuned"] == rep["seed_kernels"] > 0  # an empty database at first
    assert rep["seed_tuning_beside"] is True  # begun in the set-up (`beside_setup`)
    assert rep["seed_trials_screened"] == 0  # 1 trial, no floor: none screened
    assert rep["kernels_transferred"] > 0
    assert len(rep["front"]) == 1 and rep["front"][0]["tuned_source"] == "tvm"
    # the check's new kernels were tuned from their transferred schedules too (check_transfer)
    assert rep["front_kernels_tuned"] == 0 or rep["front_transferred_candidates"] > 0
    # each one's the schedule the search priced it with (the service's picks.jsonl), alone
    assert rep["front_picks_reused"] == rep["front_transferred_candidates"]
    assert rep["front_mape"] >= 0 and rep["front"][0]["rounds"] >= 1
    # pareto.json gives the checked network its tuned figure beside the one the search used
    front = json.loads((out / "pareto.json").read_text())["front"]
    checked = [e["metrics"] for e in front if "latency_tuned_ms" in e["metrics"]]
    assert [m["latency_tuned_ms"] for m in checked] == [rep["front"][0]["tuned_ms"]]
    shown = run_cli("show", out)
    assert shown.returncode == 0 and "latency_tuned_ms" in shown.stdout
    # the same config and seed on the warm database: the same candidates at the same figures
    # (a search prices a network at its first figure, even once the front check has tuned it),
    # so the same front, whose check finds it measured and tunes nothing
    r = run_cli(*args, "--out", tmp_path / "again")
    assert r.returncode == 0, r.stderr[-3000:]
    again = [t.user_attrs["metrics"] for t in _trials(tmp_path / "again")]
    assert [m["latency_ms"] for m in again] == [m["latency_ms"] for m in metrics]
    assert all("latency_measured_at" in m for m in again)
    rep2 = json.loads((tmp_path / "again" / "latency.json").read_text())
    assert rep2["seed_kernels_tuned"] == 0 and rep2["front_kernels_tuned"] == 0
    # the seed network (the base, measured tuned as the first run's reference) not even lowered
    assert rep2["seed_networks_tuned_before"] == 1 and rep2["seed_kernels"] == rep["seed_kernels"]
    assert rep2["front"][0]["tuned_ms"] == rep["front"][0]["tuned_ms"]


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["tvm", "tvm-transfer"])
def test_tvm_latency_on_ray_workers_goes_through_one_service(
    tmp_path, cache_dir, ray_session, provider
):
    """Ray workers' candidates are timed by one latency service on the driver's node, the
    workers at a lower CPU priority than it (`worker_nice`: it is the search's critical path);
    its figures (kernels tuned there, or transferred there) reach latency.json."""
    from evaluators.executor import WORKER_NICE

    out = tmp_path / "run"
    transfer = (
        ["seed_networks=1", "check_front=1", "rounds=1"] if provider == "tvm-transfer" else []
    )
    r = run_cli(
        "run",
        TINY,
        "--address",
        ray_session,
        "--workers",
        2,
        "--budget",
        2,
        "--out",
        out,
        "--no-progress",
        "--set",
        f"cache={cache_dir}",
        "--set",
        f"latency={provider}",
        "--set",
        f"latency.database={tmp_path / 'tvm'}",
        "--set",
        "latency.trials_per_task=1",
        "--set",
        "latency.repeats=5",
        *[a for s in transfer for a in ("--set", f"latency.{s}")],
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"latency service ({provider}) started" in r.stderr
    nice = re.search(r"niceness \[(\d+)\]", r.stderr)  # its own niceness plus WORKER_NICE
    assert nice and int(nice.group(1)) >= WORKER_NICE
    trials = _trials(out)
    assert len(trials) == 2
    sources = [t.user_attrs["metrics"]["latency_source"] for t in trials]
    stats = json.loads((out / "latency.json").read_text())
    assert stats["provider"] == provider
    assert stats["service_nice"] < int(nice.group(1))  # the service before the workers
    if provider == "tvm":
        assert sources == ["tvm", "tvm"]
        assert stats["tasks_seen"] >= stats["tasks_tuned"] > 0
    else:  # the service transferred; the driver only tuned the seed and checked the front
        moved = sum(t.user_attrs["metrics"]["latency_kernels_transferred"] for t in trials)
        assert moved > 0 and stats["kernels_transferred"] > 0
        assert all(s.startswith("tvm") for s in sources) and stats["seed_kernels_tuned"] > 0


def test_bad_latency_settings_are_exit_2_naming_the_field(tmp_path):
    r = run_cli("run", TINY, "--out", tmp_path / "a", "--set", "latency=tvmx")
    assert r.returncode == 2 and "latency.provider" in r.stderr
    r = run_cli(
        "run",
        TINY,
        "--out",
        tmp_path / "b",
        "--set",
        "latency=tvm",
        "--set",
        "latency.target={kind: nosuch}",
    )
    assert r.returncode == 2 and "latency.target" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "b" / "study.journal").exists()
