"""MetaSchedule tuning with one persistent database per target, shared by every run.

Tasks are MetaSchedule's fused kernels, identified by their structural workload: a layer shape
tuned for one candidate is never tuned again for another, and only tasks the database lacks are
tuned (`tune_tasks` alone would tune them all again). Beside the MetaSchedule database the folder
keeps `kernels.jsonl`, one line per tuned kernel (its name, buffer shapes and measured time):
the per-operator latency table that `kernels.latency_model` is fitted on.

    <cache>/tvm/<kind>-<mcpu>-<cores>-t<runtime threads>-<digest>/
        database_workload.json, database_tuning_record.json, kernels.jsonl, networks.jsonl
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kernels.cores import core_lock
from kernels.latency_model import op_of_kernel
from kernels.tvm_compile import candidate_build, host_cores, load_tvm, target_key

log = logging.getLogger(__name__)


def jsonl_rows(path: Path, first: bool = False) -> dict[str, dict]:
    """The rows of a JSON-lines file by their `key` (the last row of a key wins, or the first
    with `first`; a line cut short by a crash is skipped); empty if there is no file."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not (first and row["key"] in out):
                out[row["key"]] = row
    return out


@dataclass
class Kernel:
    """One fused kernel of a network: its structural key, name, buffer shapes and call count."""

    key: str
    name: str
    shapes: list[list[int]]
    calls: int
    task: object = field(default=None, repr=False)

    @property
    def op(self):
        """Its anchor operator (a convolution, matrix product or mean), or None."""
        return op_of_kernel(self.name, self.shapes)


def extract_kernels(prepared, target) -> list[Kernel]:
    """The fused kernels MetaSchedule would tune for a prepared module."""
    load_tvm()
    from tvm.s_tir import meta_schedule as ms
    from tvm_ffi import structural_hash

    out = []
    for t in ms.relax_integration.extract_tasks(prepared, target):
        func = t.dispatched[0]["main"]
        shapes = [[int(d) for d in p.shape] for p in func.params]
        key = f"{structural_hash(t.dispatched[0]) & 0xFFFFFFFFFFFFFFFF:016x}"
        out.append(Kernel(key, t.task_name, shapes, int(t.weight), t))
    return out


_MS_LOGGER = "tvm.s_tir.meta_schedule"


def _detach_foreign_handlers() -> list[logging.Handler]:
    """MetaSchedule configures its loggers with logging.config.dictConfig, naming every handler
    already on its logger; a handler it did not create (a test's log capture, an application's
    handler: unnamed) makes that fail. Take them off for the tuning; `_close_ms_handlers` puts
    them back. Its console handler takes its logger's level: warnings only, unless this module
    logs at DEBUG (its INFO is a table of every kernel after every batch, ~30,000 lines for a
    default run's tuning); `_Progress` says how far tuning is instead."""
    logger = logging.getLogger(_MS_LOGGER)
    logger.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    foreign = [h for h in logger.handlers if not (h.get_name() or "").startswith(_MS_LOGGER)]
    for h in foreign:
        logger.removeHandler(h)
    return foreign


def _close_ms_handlers(foreign: list[logging.Handler]) -> None:
    """Close MetaSchedule's per-tuning file handlers (their folder is removed) and give its logger
    back the handlers it had."""
    for name in [
        _MS_LOGGER,
        *[n for n in logging.root.manager.loggerDict if n.startswith(_MS_LOGGER + ".task_")],
    ]:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.FileHandler) and (h.get_name() or "").startswith(_MS_LOGGER):
                logger.removeHandler(h)
                h.close()
    for h in foreign:
        logging.getLogger(_MS_LOGGER).addHandler(h)


PROGRESS_EVERY_S = 30.0  # a tuning session's progress line at most this often


class _Progress:
    """A log line at most every `every` seconds while a tuning session times its candidates:
    trials done of `total`, and the time left at the rate since the first batch was timed (a
    tuning beside pre-training builds for a minute or more before it times any)."""

    def __init__(self, total: int, every: float):
        self.total, self.every, self.done = total, every, 0
        self.t0 = self.last = time.time()
        self.first = 0  # trials timed in the first batch, the rate's start

    def __call__(self, n: int) -> None:
        now = time.time()
        if self.done == 0:
            self.t0, self.last, self.first = now, now, n
        self.done += n
        if now - self.last >= self.every and 0 < self.done < self.total:
            self.last = now
            rate = (now - self.t0) / max(1, self.done - self.first)
            log.info(
                "tuning: %d/%d trials, ~%.0f s left",
                self.done,
                self.total,
                rate * (self.total - self.done),
            )


def _in_process_builder(workers: int = 1, keep: dict | None = None, fastest=None, ahead=None):
    """A MetaSchedule builder that compiles candidates in this process, on `workers` threads (TVM
    compiles outside Python's lock: 2 threads build 40 candidates in half the time of one): the
    default one starts a fresh pool of worker processes for every batch, each importing TVM
    again (seconds each). With `keep` (for `_in_process_runner`), each built module stays in
    `keep`, its machine code generated on the builder's thread, under a key that stands for its
    artifact path; else it is exported to a file for MetaSchedule's runner process. `fastest` (a
    `_Fastest`, with `keep`): each kept module's kernel named for it. `ahead` (a `_BuildAhead`,
    with `keep`): a batch's candidates are handed to its threads and the call returns at once,
    so that the next kernels' batches build beside them (a failed build is the runner's error)."""
    load_tvm()
    from concurrent.futures import ThreadPoolExecutor

    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    def one(bi, key=None):
        try:
            with candidate_build():
                mod = default_build(bi.mod, bi.target, None)
            if keep is None:
                return BuilderResult(default_export(mod), None)
            mod[mod.entry_name]  # noqa: B018 - LLVM emits the code on the first lookup
            key = key or _artifact_key()
            keep[key] = mod
            if fastest is not None:
                fastest.name(key, bi.mod)
            return BuilderResult(key, None)
        except Exception as e:  # noqa: BLE001 - a failed candidate, not a failed tuning
            if key is not None:
                keep[key] = f"build failed: {e}"
            return BuilderResult(None, f"build failed: {e}")

    def later(bi):
        key = _artifact_key()
        ahead.submit(one, bi, key)
        return BuilderResult(key, None)

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            if ahead is not None and keep is not None:
                return [later(bi) for bi in build_inputs]
            if workers <= 1 or len(build_inputs) <= 1:
                return [one(bi) for bi in build_inputs]
            with ThreadPoolExecutor(min(workers, len(build_inputs))) as pool:
                return list(pool.map(one, build_inputs))

    return InProcessBuilder()


def _artifact_key() -> str:
    """The key a kept candidate module stands under in place of an artifact path: MetaSchedule
    removes an artifact's folder once it is timed, so an empty one stands in."""
    return os.path.join(tempfile.mkdtemp(prefix="archsearch-built-"), "module")


# candidates a tuning call's builder may build ahead of their timing (`_BuildAhead`): several
# kernels' batches on the build threads at once, held in memory (about 2 MB each) until timed;
# 0: each batch built and timed alone, as MetaSchedule sends it (benchmarks/build_ahead.py)
BUILD_AHEAD = 48
# the most candidates held built while a `Quiet` keeps their timing waiting (about 1 GB): a seed
# tuning beside pre-training builds up to this many, then waits for the pre-training to end
BESIDE_MAX = 512


class Quiet:
    """When a tuning that started beside other work in this process (the supernet's pre-training)
    may time its candidates: until `open`, the tuning's thread (`lower`: its sampling of
    candidates) and its build threads run at the lowest CPU priority (`_lowest_priority`), in the
    time the other work leaves idle, and no candidate is timed, nor the machine's cores held
    (`kernels.cores`: the pre-training's steps hold them shared); once open, the tuning's thread
    gets its priority back where the system allows (a process may not raise its own priority
    without the right to), holds the cores and times, as any tuning does. `open(abandoned=True)`
    (the other work failed): the tuning stops at its first timing."""

    def __init__(self):
        self._event, self._abandoned = threading.Event(), False
        self._held, self._holding = contextlib.ExitStack(), False
        self._lowered: tuple[int, int] | None = None  # (thread id, its nice value before)

    def open(self, abandoned: bool = False) -> None:
        self._abandoned = abandoned
        self._event.set()

    def is_open(self) -> bool:
        return self._event.is_set()

    def lower(self) -> None:
        """The calling thread (the tuning's) at the lowest priority until this opens."""
        before = _lowest_priority()
        if before is not None:
            self._lowered = (threading.get_native_id(), before)

    def wait(self) -> None:
        """On the tuning's thread, before it times: till open, then the cores held (`release`)."""
        self._event.wait()
        if self._abandoned:
            raise RuntimeError("tuning abandoned: the work it ran beside failed")
        if self._lowered is not None and self._lowered[0] == threading.get_native_id():
            try:
                os.setpriority(os.PRIO_PROCESS, *self._lowered)
            except OSError:
                log.debug("the tuning's thread keeps its lowest priority (not allowed to raise it)")
            self._lowered = None
        if not self._holding:
            self._held.enter_context(core_lock().exclusive("tuning"))
            self._holding = True

    def release(self) -> None:
        self._held.close()
        self._holding = False


def still_beside(quiet: Quiet | None) -> bool:
    """Whether a tuning with this `quiet` (`TuningDB.quiet`) still runs beside the other work:
    it then builds at the lowest priority, holds no cores and times nothing."""
    return quiet is not None and not quiet.is_open()


def _lowest_priority() -> int | None:
    """This thread at the lowest CPU priority (Linux, where a thread's nice value is its own):
    it then runs only in the time the process's other threads and the machine leave idle.
    Returns its nice value before, None where it was not changed."""
    if not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except OSError:
        return None
    return before


class _BuildAhead:
    """Builds the candidates of several kernels on one pool of threads before any is timed.
    MetaSchedule builds and times one kernel's batch (8 candidates) at a time: on 2 threads, the
    last candidates of each batch compile alone while the other thread waits (48 tinynet
    candidates: 0.14 s each in batches of 8, 0.10 s in one pool). Here the builder hands a batch
    to the pool and returns, the runner returns futures that time nothing yet, and the timing
    waits (`flush`) until `BUILD_AHEAD` candidates are waiting or the scheduler asks for a result:
    then every build in flight is finished first, so no kernel is timed beside a compilation,
    and the batches are timed in the order they came, each as `_in_process_runner` times it.
    With a `Quiet` not yet open, the build threads run at the lowest priority, up to
    `BESIDE_MAX` candidates wait, and the timing waits for it to open."""

    def __init__(self, workers: int, quiet: Quiet | None = None):
        from concurrent.futures import ThreadPoolExecutor

        beside = still_beside(quiet)
        self.pool = ThreadPoolExecutor(
            max(1, workers),
            thread_name_prefix="archsearch-build",
            initializer=_lowest_priority if beside else None,
        )
        self.window, self.quiet = max(1, BUILD_AHEAD), quiet
        self.building: list = []  # the builds handed to the pool since the last flush
        self.batches: list = []  # (timing of one batch, its waiting futures), in order

    def submit(self, fn, *args) -> None:
        self.building.append(self.pool.submit(fn, *args))

    def add(self, timing, n: int) -> list:
        """The futures of a batch of `n` candidates that `timing` times when this flushes."""
        futures = [_waiting_future()(self) for _ in range(n)]
        self.batches.append((timing, futures))
        waiting = sum(len(f) for _, f in self.batches)
        if waiting >= (BESIDE_MAX if still_beside(self.quiet) else self.window):
            self.flush()
        return futures

    def flush(self) -> None:
        if self.quiet is not None:
            self.quiet.wait()
        for b in self.building:
            b.result()
        self.building.clear()
        batches, self.batches = self.batches, []
        for timing, futures in batches:
            for f, got in zip(futures, timing()):
                f.got = got

    def close(self) -> None:
        """The pool stopped; builds not started are dropped (a tuning call that failed)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.building.clear()
        self.batches.clear()


@functools.cache
def _waiting_future():
    """MetaSchedule's future of a candidate that a `_BuildAhead` times when it flushes."""
    load_tvm()
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunnerFuture

    @derived_object
    class Waiting(PyRunnerFuture):
        def __init__(self, ahead):
            super().__init__()
            self.ahead, self.got = ahead, None

        def done(self) -> bool:
            return self.got is not None

        def result(self):
            if self.got is None:
                self.ahead.flush()
            return self.got.result()

    return Waiting


def _in_process_runner(
    config: dict,
    built: dict,
    progress=None,
    screen: float = 0.0,
    counts=None,
    floors=None,
    fastest=None,
    ahead=None,
):
    """A MetaSchedule runner that times each candidate in this process, the module
    `_in_process_builder` kept in `built`, with MetaSchedule's own argument allocation and
    evaluator (`config`: its EvaluatorConfig): MetaSchedule's LocalRunner instead exports each
    candidate to a file that its runner process links and loads (and that process is started
    anew, TVM imported, for every tuning session). Timing is synchronous, so a batch's timing
    ends before the next batch is built (with `ahead`, no build runs while it times). With
    `screen` (a batch being one kernel's candidates, as MetaSchedule sends them), each is first
    timed briefly (`SCREEN_TIMING`) and only those within `screen` times the fastest so timed
    get `config`'s timing; the others keep the brief figure (`counts["trials_screened"]` counts
    them). `floors` (`arg_key` of a kernel's buffers: the best time it already has, a
    transferred schedule or a first pass): the fastest is then the faster of the batch's and the
    kernel's floor, so that a batch of one or two candidates is screened too. `fastest` (a
    `_Fastest`): each timed candidate offered to it. `ahead` (the builder's `_BuildAhead`): the
    batch is timed when it flushes, its futures waiting till then."""
    load_tvm()
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner

    full = EvaluatorConfig(**config, enable_cpu_cache_flush=False)
    brief = EvaluatorConfig(**SCREEN_TIMING, enable_cpu_cache_flush=False)

    def timing(runner_inputs):
        out = _timed_batch(runner_inputs, built, full, brief, screen, counts, floors, fastest)
        if progress is not None:
            progress(len(out))
        return out

    @derived_object
    class InProcessRunner(PyRunner):
        def run(self, runner_inputs):
            if ahead is None:
                return timing(runner_inputs)
            return ahead.add(lambda: timing(runner_inputs), len(runner_inputs))

    return InProcessRunner()


def _timed_batch(runner_inputs, built, full, brief, screen, counts, floors, fastest) -> list:
    """One batch of candidates timed as `_in_process_runner` says: MetaSchedule's futures."""
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture

    ready = [_loaded(ri, built) for ri in runner_inputs]
    loaded = sum(not isinstance(r, str) for r in ready)
    floor = (floors or {}).get(arg_key(runner_inputs[0].args_info)) if ready else None
    enough = loaded > 2 or (floor is not None and loaded > 0)
    quick = _screened(ready, brief, screen, counts, floor) if screen and enough else None
    out = []
    for ri, r, got in zip(runner_inputs, ready, quick or [None] * len(ready)):
        got = r if isinstance(r, str) else got or _timed(r, full)
        if fastest is not None and not isinstance(got, str):
            fastest.offer(str(ri.artifact_path), ri.args_info, got, r[0])
        out.append(
            LocalRunnerFuture(error_message=got)
            if isinstance(got, str)
            else LocalRunnerFuture(res=got)
        )
    return out


def _loaded(ri, built: dict):
    """A candidate ready to time: (module, device, arguments), or why it is not."""
    tvm = load_tvm()
    from tvm.s_tir.meta_schedule.runner.local_runner import default_alloc_argument

    mod = built.pop(str(ri.artifact_path), None)
    if mod is None:
        return f"in-process runner: no built module for {ri.artifact_path}"
    if isinstance(mod, str):  # its build failed (`_in_process_builder` with `ahead`)
        return mod
    try:
        dev = tvm.runtime.device(str(ri.device_type), 0)
        return mod, dev, default_alloc_argument(dev, [a.as_json() for a in ri.args_info], 1)
    except Exception as e:  # noqa: BLE001 - a candidate that fails to run: its error
        return f"in-process runner: {e}"


def _timed(ready: tuple, evaluator):
    """A loaded candidate's times (s) under `evaluator`, or its error."""
    from tvm.s_tir.meta_schedule.runner.utils import run_evaluator_common

    mod, dev, args = ready
    try:
        return run_evaluator_common(mod, dev, evaluator, args)
    except Exception as e:  # noqa: BLE001 - a candidate that fails to run: its error
        return f"in-process runner: {e}"


class _Fastest:
    """The fastest candidate module of each kernel that a tuning call built and timed, for the
    kernel library (`KernelLibrary.adopt`): a network compiled after tuning (the run's reference
    after the seed tuning, the front check's networks) then links the module its kernel's
    winner was timed as, instead of sending the winner through LLVM again (about 0.13 CPU-s a
    kernel here). The runner tells kernels apart by their buffer shapes (`arg_key`): of two
    kernels with the same shapes, only the faster's module is kept, and the other's winner is
    compiled when a network links it, as before. One module a kernel: each holds about 2 MB."""

    def __init__(self, target):
        self.target = target
        self.names: dict[str, str] = {}  # built module's key -> its kernel's `kernel_name`
        self.best: dict[tuple, tuple] = {}  # arg_key -> (mean s, kernel name, module)

    def name(self, key: str, mod) -> None:
        from kernels.tvm_library import kernel_name

        try:
            self.names[key] = kernel_name(mod["main"], self.target)
        except Exception:  # noqa: BLE001 - unnamed: compiled again when linked, as before
            pass

    def offer(self, key: str, args, secs, module) -> None:
        name = self.names.pop(key, None)
        if name is None or not secs:
            return
        mean, ak = mean_seconds(secs), arg_key(args)
        if mean < self.best.get(ak, (math.inf,))[0]:
            self.best[ak] = (mean, name, module)

    def hand_over(self, library) -> int:
        """The kept modules adopted by `library` (None: dropped); how many."""
        n = 0
        if library is not None:
            for _, name, module in self.best.values():
                n += library.adopt(name, module, module.entry_name)
        self.best.clear()
        self.names.clear()
        return n


def mean_seconds(secs) -> float:
    """The mean of a candidate's run times (MetaSchedule's `run_secs`, or the runner's list)."""
    return sum(float(s) for s in secs) / len(secs)


def arg_key(args) -> tuple:
    """A kernel's buffer shapes as a key: from MetaSchedule's `ArgInfo`s or `Kernel.shapes`. It
    tells the kernels of one tuning session apart but for kernels with the same shapes, which
    then share the lower floor (`_in_process_runner`)."""
    return tuple(
        tuple(int(d) for d in (a if isinstance(a, (list, tuple)) else a.as_json()[2])) for a in args
    )


def _screened(ready: list, brief, screen: float, counts, floor: float | None = None) -> list:
    """For each of one kernel's loaded candidates (`_loaded`): its brief times when they are over
    `screen` times the fastest brief time, its error when it failed, else None (to be timed
    fully). Timed one after another within well under a second, so a slow spell of this machine
    (seconds) scales them all alike. With `floor` (the kernel's best time so far, fully timed
    earlier), the fastest is the faster of it and the batch's: in a slow spell of more than
    `screen` times, every candidate keeps its brief figure, and the kernel its earlier best."""
    quick = [None if isinstance(r, str) else _timed(r, brief) for r in ready]
    means = [sum(q) / len(q) if isinstance(q, list) and q else None for q in quick]
    timed = [m for m in means if m is not None]
    if not timed:
        return [q if isinstance(q, str) else None for q in quick]
    cut, out = screen * min(timed + ([floor] if floor else [])), []
    for q, m in zip(quick, means):
        slow = m is not None and m > cut
        out.append(q if slow or isinstance(q, str) else None)
        if slow and counts is not None:
            counts["trials_screened"] = counts.get("trials_screened", 0) + 1
    return out


def _waiting_runner(inner, progress=None):
    """`inner` (MetaSchedule's LocalRunner) made to finish a batch's timing before the next batch
    is built: its runs are otherwise left going while the next task's candidates compile, on the
    same cores, and a kernel timed beside a compilation ranks its schedules on noise."""
    load_tvm()
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner

    @derived_object
    class WaitingRunner(PyRunner):
        def run(self, runner_inputs):
            futures = inner.run(runner_inputs)
            for f in futures:
                f.result()
            if progress is not None:
                progress(len(futures))
            return futures

    return WaitingRunner()


# a trial's kernel timed `repeat` times, each the mean of `number` runs, at least `min_repeat_ms`
# (one run each is 0.09 s a trial sooner, but a kernel of a few microseconds timed once ranks its
# schedules on overhead: benchmarks/results/latency_default.md); `in_process`: timed in this
# process (`_in_process_runner`), else in MetaSchedule's runner process
RUNNER = dict(number=3, repeat=3, min_repeat_ms=20, in_process=True, screen=1.5)
# `screen`: a kernel's candidates in one batch are first timed briefly (`SCREEN_TIMING`), and only
# those within `screen` times the fastest so timed are timed as above; the others keep the brief
# figure, which rules them out (0: every candidate timed in full)
SCREEN_TIMING = dict(number=1, repeat=1, min_repeat_ms=5)
# candidates measured per MetaSchedule iteration, the same for every trial budget: replay-trace
# draws a batch's samples together, so a kernel's first 8 samples are the same with 8 trials as
# with 32
TRIALS_PER_BATCH = 8


def kernel_seed(seed: int, key: str) -> int:
    """The tuning seed of one kernel: a function of the run's seed and the kernel alone."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "big") >> 1


def slowest_share(timed: list[tuple[float, object]], share: float) -> list:
    """Of (time, item) pairs, the slowest items that make up `share` of their summed time, slowest
    first (`TuningDB._focus`'s choice of the kernels where more trials pay)."""
    timed = sorted(timed, key=lambda t: -t[0])
    total, acc, out = sum(t for t, _ in timed), 0.0, []
    for t, item in timed:
        if acc >= share * total:
            break
        out.append(item)
        acc += t
    return out


class TuningDB:
    """A target's tuning database: which kernels are tuned, their times, and tuning of the rest."""

    def __init__(
        self,
        folder: str | Path,
        target,
        trials_per_task: int = 32,
        strategy: str = "replay-trace",
        seed: int = 0,
        runner: dict | None = None,
        focus_trials: int = 0,
        focus_share: float = 0.8,
        light_trials: int | None = None,
        focus_budget: int = 0,
    ):
        self.target = target
        # the new kernels that make up `focus_share` of their summed tuned time get `focus_trials`
        # trials in all (a second pass); the others keep `trials_per_task`
        self.focus_trials, self.focus_share = focus_trials, focus_share
        # the second pass's trials in all, per tuning session (0: unbounded; `_within_budget`)
        self.focus_budget = focus_budget
        # with transferred seeds: the trials of a new kernel outside the transfer's share of the
        # time its first replay measured (`_seed`, `_first_pass`); 0: none, its transferred
        # schedule stands; None: `trials_per_task`
        self.light_trials = light_trials
        # how MetaSchedule times each trial's kernel (its EvaluatorConfig)
        self.runner = {**RUNNER, **(runner or {})}
        load_tvm()
        self.threads = int(os.environ["TVM_NUM_THREADS"])
        self.dir = Path(folder).expanduser() / target_key(target, self.threads)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.trials_per_task, self.strategy, self.seed = trials_per_task, strategy, seed
        self._db = None
        self._loaded_size = -1
        self.table: dict[str, dict] = {}
        self.stats = {
            "tasks_seen": 0,
            "tasks_tuned": 0,
            "tasks_focused": 0,
            "tasks_over_budget": 0,  # chosen for the second pass, left out by `focus_budget`
            "tasks_light": 0,
            "tasks_stranded": 0,  # tuned during a search: no tuned schedule replayed on them
            "transferred_candidates": 0,
            "picks_reused": 0,  # of those, the search's picks (`_seed`)
            "trials_screened": 0,  # trials ruled out by their brief timing (`RUNNER`'s screen)
            "tuning_s": 0.0,
            "kernels_built_adopted": 0,  # tuning's winners linked without compiling (`_Fastest`)
        }
        self._seen: set[str] = set()
        self._seeded: dict[str, int] = {}  # kernel key: transferred candidates `_seed` committed
        # kernel keys given their second pass (`_focus`) here, or left out of it by its budget
        self._focused: set[str] = set()
        # a `kernels.tvm_library.KernelLibrary` that takes in the modules tuning built for its
        # kernels' winners (`_Fastest`), and those modules until a tuning call ends
        self.library, self._kept = None, _Fastest(target)
        # a tuning beside other work in this process: its timing waits for this to open (`Quiet`)
        self.quiet: Quiet | None = None
        self.reload()

    @property
    def _fastest(self):
        """The tuning call's `_Fastest`, None without a library to hand its modules to (nothing
        then named or kept)."""
        return self._kept if self.library is not None else None

    # --- the database ----------------------------------------------------------------------
    def _files(self):
        return self.dir / "database_workload.json", self.dir / "database_tuning_record.json"

    def reload(self) -> None:
        """Read what other processes may have added since (cheap when nothing changed)."""
        wl, rec = self._files()
        size = sum(p.stat().st_size for p in (wl, rec) if p.exists())
        self.table.update(jsonl_rows(self.dir / "kernels.jsonl"))
        if size == self._loaded_size and self._db is not None:
            return
        load_tvm()
        from tvm.s_tir import meta_schedule as ms

        self._db = ms.database.JSONDatabase(
            str(wl), str(rec), allow_missing=True, module_equality="structural"
        )
        self._loaded_size = size

    @property
    def database(self):
        return self._db

    def record(self, k: Kernel):
        return self._db.query_tuning_record(k.task.dispatched[0], self.target, "main")

    def seconds(self, k: Kernel) -> float | None:
        """The tuned kernel's measured time (the best record's mean), or None if untuned."""
        row = self.table.get(k.key)
        if row is not None and row.get("seconds"):
            return row["seconds"]
        return self._best(k)

    def missing(self, kernels: list[Kernel]) -> list[Kernel]:
        out, keys = [], set()
        for k in kernels:
            if k.key not in keys and self.record(k) is None:
                keys.add(k.key)
                out.append(k)
        return out

    def note_seen(self, kernels: list[Kernel]) -> None:
        new = {k.key for k in kernels} - self._seen
        self._seen |= new
        self.stats["tasks_seen"] = len(self._seen)

    # --- tuning ------------------------------------------------------------------------------
    def tune(
        self,
        kernels: list[Kernel],
        trials_per_task: int | None = None,
        focus: bool = True,
        networks: list[list[Kernel]] | None = None,
        seeds=None,
    ) -> int:
        """Tune the kernels the database lacks (under the core lock: tuning measures; with a
        `quiet` not yet open, once it opens: `Quiet`); with `focus`, then give the slowest
        kernels of each network (`networks`: the kernels' networks, default all one) the rest of
        `focus_trials` (`_focus`), also those tuned before with fewer. `seeds` (a
        `kernels.tvm_transfer.Transfer`): each new kernel's tuning also gets its transferred
        schedules as candidates (`_seed`), and those outside the transfer's share of their first
        replays' measured time get `light_trials` (`_first_pass`). Returns how many kernels were
        new; writes their rows to the latency table."""
        trials = trials_per_task or self.trials_per_task
        self.note_seen(kernels)
        quiet = self.quiet
        beside = still_beside(quiet)  # the cores held once it opens
        if beside:
            quiet.lower()
        try:
            with contextlib.nullcontext() if beside else core_lock().exclusive("tuning"):
                return self._tune(kernels, trials, focus, networks, seeds)
        finally:
            if quiet is not None:
                quiet.release()
            self.stats["kernels_built_adopted"] += self._kept.hand_over(self.library)

    def _tune(self, kernels, trials, focus, networks, seeds) -> int:
        """`tune` with the core lock held."""
        self.reload()
        todo = self.missing(kernels)
        if trials <= 0:
            self._table_rows(kernels)
            return 0
        t0 = time.time()
        if todo:
            light = self._seed(todo, seeds) if seeds is not None else []
            self._first_pass(todo, trials, light)
            self._table_rows(todo)  # their first-pass times rank them for `_focus`
        ranked: dict[str, tuple[float, Kernel]] = {}
        for net in (networks or [kernels]) if focus else []:
            for share, k in self._focus(net, trials):
                ranked[k.key] = max(ranked.get(k.key, (0.0, k)), (share, k), key=lambda x: x[0])
        heavy = {k.key: k for k in self._within_budget(ranked, trials)}
        more = list(heavy.values())
        if more:  # a second pass with a fresh seed: replay-trace would replay the first
            self._run_metaschedule(more, self.focus_trials - trials, seed=self.seed + 1, again=True)
            self._focused |= heavy.keys()
        if not (todo or more):
            self._table_rows(kernels)
            return 0
        dt = time.time() - t0
        self.stats["tasks_focused"] += len(more)
        self.stats["tasks_tuned"] += len(todo)
        self.stats["tuning_s"] += dt
        wl, rec = self._files()
        self._loaded_size = sum(p.stat().st_size for p in (wl, rec) if p.exists())
        self._table_rows(kernels, again={k.key for k in more})
        failed = [k.name for k in todo if self.record(k) is None]
        if failed:
            log.warning(
                "no working schedule found for %d kernel%s: %s",
                len(failed),
                "" if len(failed) == 1 else "s",
                ", ".join(failed[:5]),
            )
        log.info("tuned %d new kernels, %d more in %.0f s", len(todo), len(more), dt)
        return len(todo)

    def _focus(self, kernels: list[Kernel], trials: int) -> list[tuple[float, Kernel]]:
        """Of `kernels`, the slowest that make up `focus_share` of their summed time (each
        kernel's best time times its calls), with their share of that time, less those that had
        more than `trials` trials already, and those given their second pass in this process (by
        name: a kernel's records need not grow with its trials, and a plain run's front check,
        compiling each network after its one session, gave 2 kernels their second pass again:
        `mean7` held 9 records after 8 + 4 + 4 trials): where more trials pay. Of 82 kernels
        tuned with 32 replay-trace trials, the best of the first 8 summed to 43 % more than the
        best of all 32; the slowest 30 (80 % of the time) at 32 and the rest at 8 came within 3 %
        for half the trials."""
        if self.focus_trials <= trials or self.focus_share <= 0:
            return []
        self.reload()
        uniq = list({k.key: k for k in kernels}.values())
        timed = [(s * k.calls, k) for s, k in ((self._first_seconds(k), k) for k in uniq) if s]
        total = sum(t for t, _ in timed) or 1.0
        share = {k.key: t / total for t, k in timed}
        return [
            (share[k.key], k)
            for k in slowest_share(timed, self.focus_share)
            if k.key not in self._focused
            and self._trials_done(k) - self._seeded.get(k.key, 0) <= trials
        ]

    def _within_budget(self, ranked: dict[str, tuple[float, Kernel]], trials: int) -> list:
        """Of the kernels `_focus` chose (by key: their largest share of a network's time, and
        the kernel), those the second pass tunes: all, or with a `focus_budget`, the largest
        shares first while their trials fit in it (a check of 3 networks then costs what one of
        2 does: the kernels it leaves out are those that make up the least of any network)."""
        order = sorted(ranked.values(), key=lambda x: -x[0])
        if not self.focus_budget:
            return [k for _, k in order]
        fit = max(0, self.focus_budget // max(1, self.focus_trials - trials))
        self.stats["tasks_over_budget"] += max(0, len(order) - fit)
        self._focused |= {k.key for _, k in order[fit:]}  # not chosen again by a later session
        return [k for _, k in order[:fit]]

    def _first_pass(self, todo: list[Kernel], trials: int, light: list[Kernel]) -> None:
        """`trials` for each of `todo`, but `light_trials` (when fewer) for those in `light`:
        kernels outside the transfer's share of their first replays' measured time, each with
        that replay already among its candidates (`_seed`); with `light_trials` 0 that replay
        is their schedule. Each kernel's trials are drawn from its own seed, so its first
        `light_trials` are the first of those it would have had."""
        few = set()
        if self.light_trials is not None and self.light_trials < trials:
            few = {k.key for k in light if self.record(k) is not None}  # a replay that ran
        rest = [k for k in todo if k.key not in few]
        if rest:
            self._run_metaschedule(rest, trials)
        if few and self.light_trials:
            self._run_metaschedule([k for k in todo if k.key in few], self.light_trials)
        self.stats["tasks_light"] += len(few)

    def _seed(self, todo: list[Kernel], transfer) -> list[Kernel]:
        """Commit each of `todo`'s transferred schedules (`Transfer.replays`: replayed from the
        `tries` nearest tuned kernels of the same operator) as candidates of its tuning, built and
        timed as MetaSchedule's trials are (`_commit`): the kernel's tuning then keeps the
        fastest of its trials and the schedules transfer gives it.

        A kernel a search priced (its pick in `picks.jsonl`, `Transfer.note_picks`) gets the
        schedule it was priced with alone: the search compiled and timed its other replays and
        kept this one, and the check's figure can then be held to the search's
        (`TVMBackend.time_rounds`' bounds). Kernels outside the transfer's `share` of their
        picks' time so timed (`Transfer.heavy`) are returned as light.

        The others (no pick recorded, or it no longer replays) step as the search's pick does
        (`Transfer.timed`): every kernel's first replay first, then with the transfer's `share`
        below 1 the other replays only for the kernels whose first replay, as timed, times
        their calls, makes up the share, or did not build or run (`Transfer.in_steps`); those
        left with their first replay are light too. Returns the light kernels."""
        t0, before = time.time(), self.stats["transferred_candidates"]
        transfer.refresh(self)
        mods, calls = [k.task.dispatched[0] for k in todo], [k.calls for k in todo]
        picked = self._commit(todo, transfer.picked(self.dir, mods, [k.key for k in todo]))
        self.stats["picks_reused"] += len(picked)
        light = set(picked) - transfer.heavy(picked, calls) if picked else set()
        rest = [i for i in range(len(todo)) if i not in picked]
        if rest:
            sub = [todo[i] for i in rest]
            steps = transfer.in_steps(
                len(sub), [k.calls for k in sub], lambda s: self._commit_replays(sub, transfer, s)
            )
            light |= {rest[j] for j in steps}
        log.info(
            "tuning: %d transferred schedules timed for %d kernels in %.0f s (%d the search's "
            "picks)",
            self.stats["transferred_candidates"] - before,
            len(todo),
            time.time() - t0,
            len(picked),
        )
        return [todo[i] for i in sorted(light)]

    def _commit_replays(self, todo: list[Kernel], transfer, spans: list[tuple]) -> dict:
        """The replays `spans` names (`Transfer.spans`: (index into `todo`, first, last))
        committed as `_commit` does."""
        return self._commit(todo, transfer.spans([k.task.dispatched[0] for k in todo], spans))

    def _commit(self, todo: list[Kernel], cands: list[tuple]) -> dict:
        """Transferred schedules (`cands`: (index into `todo`, schedule, source)), built and
        timed as MetaSchedule's trials are (`_in_process_builder`, `_in_process_runner`) and
        committed to the database as records of their kernel's tuning. Returns each kernel's
        (by index) fastest mean time among them."""
        load_tvm()
        from tvm.s_tir import meta_schedule as ms

        if not cands:
            return {}
        built: dict = {}
        results = _in_process_builder(host_cores(), built, self._fastest).build(
            [ms.builder.BuilderInput(sch.mod, self.target) for _, sch, _ in cands]
        )
        if self.quiet is not None:
            self.quiet.wait()
        inputs, kept = [], []
        for (i, sch, _), res in zip(cands, results):
            if res.error_msg is None:
                info = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
                inputs.append(ms.runner.RunnerInput(res.artifact_path, "cpu", info))
                kept.append((i, sch, info))
        best: dict[int, float] = {}
        for (i, sch, info), fut, ri in zip(
            kept,
            _in_process_runner(self._timing(), built, fastest=self._fastest).run(inputs),
            inputs,
        ):
            shutil.rmtree(os.path.dirname(str(ri.artifact_path)), ignore_errors=True)
            res = fut.result()
            if res.error_msg is None and res.run_secs:
                k = todo[i]
                wl = self._db.commit_workload(k.task.dispatched[0])
                rec = ms.database.TuningRecord(sch.trace, wl, res.run_secs, self.target, info)
                self._db.commit_tuning_record(rec)
                self._seeded[k.key] = self._seeded.get(k.key, 0) + 1
                self.stats["transferred_candidates"] += 1
                best[i] = min(mean_seconds(res.run_secs), best.get(i, math.inf))
        return best

    def _timing(self) -> dict:
        """How a candidate is timed: MetaSchedule's EvaluatorConfig fields of `runner`."""
        return {k: v for k, v in self.runner.items() if k not in ("in_process", "screen")}

    def _first_seconds(self, k: Kernel) -> float | None:
        """The kernel's time after its first pass (what `_focus` ranks by, so that its choice
        does not move once the chosen kernels got faster)."""
        row = self.table.get(k.key)
        return row.get("first_seconds", row["seconds"]) if row else self._best(k)

    def _best(self, k: Kernel) -> float | None:
        """The kernel's best record's mean time now (the latency table keeps the first)."""
        r = self.record(k)
        return mean_seconds(r.run_secs) if r and r.run_secs else None

    def _trials_done(self, k: Kernel) -> int:
        """How many working schedules the database holds for the kernel."""
        mod = k.task.dispatched[0]
        if not self._db.has_workload(mod):
            return 0
        return len(self._db.get_top_k(self._db.commit_workload(mod), max(64, self.focus_trials)))

    def _run_metaschedule(
        self, todo: list[Kernel], trials: int, seed: int | None = None, again: bool = False
    ) -> None:
        """MetaSchedule on `todo`, `trials` each, its records into the database (logs in a
        temporary folder; other libraries' log handlers detached meanwhile); `again`: the focus
        pass, on kernels tuned before."""
        load_tvm()
        from tvm.s_tir import meta_schedule as ms

        logs = Path(tempfile.mkdtemp(prefix="archsearch-ms-"))
        foreign, ahead = _detach_foreign_handlers(), None
        try:
            ctxs = self._contexts(todo, logs, self.seed if seed is None else seed)
            timing = self._timing()
            built: dict | None = {} if self.runner.get("in_process") else None
            if built is not None and (BUILD_AHEAD or self.quiet is not None):
                ahead = _BuildAhead(host_cores(), self.quiet)
            n, progress = len(todo), _Progress(trials * len(todo), PROGRESS_EVERY_S)
            if built is not None:
                screen = self.runner.get("screen") or 0.0
                floors = self._floors(todo)
                args = (progress, screen, self.stats, floors, self._fastest, ahead)
                runner = _in_process_runner(timing, built, *args)
            else:
                runner = _waiting_runner(
                    ms.runner.LocalRunner(
                        evaluator_config=ms.runner.EvaluatorConfig(
                            **timing, enable_cpu_cache_flush=False
                        )
                    ),
                    progress,
                )
            log.info(
                "tuning %d %skernel%s (%d %strials each)",
                n,
                "of the slowest " if again else "new ",
                "" if n == 1 else "s",
                trials,
                "more " if again else "",
            )
            ms.tune_tasks(
                tasks=ctxs,
                task_weights=[float(k.calls) for k in todo],
                work_dir=str(logs),
                max_trials_global=trials * len(ctxs),
                max_trials_per_task=trials,
                num_trials_per_iter=TRIALS_PER_BATCH,
                builder=_in_process_builder(host_cores(), built, self._fastest, ahead),
                runner=runner,
                database=self._db,
                cost_model="random" if self.strategy != "evolutionary" else "xgb",
            )
        finally:
            if ahead is not None:
                ahead.close()
            _close_ms_handlers(foreign)
            shutil.rmtree(logs, ignore_errors=True)

    def _floors(self, todo: list[Kernel]) -> dict:
        """Each kernel's best time so far (its transferred schedules', its first pass's), by
        `arg_key`, for the runner's screen; the lower where two kernels share the key."""
        out: dict = {}
        for k in todo:
            s = self._best(k)
            if s is not None:
                key = arg_key(k.shapes)
                out[key] = min(s, out.get(key, s))
        return out

    def _contexts(self, todo: list[Kernel], logs: Path, seed: int) -> list:
        """MetaSchedule's tuning contexts of `todo`, each seeded by `seed` and the kernel's key
        (MetaSchedule seeds them by their position in the list): a kernel's replay-trace samples
        are then the same whichever network or batch of kernels it is tuned with, so a kernel
        tuned with `focus_trials` here and in another database saw the same schedules."""
        from tvm.s_tir import meta_schedule as ms
        from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir

        loggers = get_loggers_from_work_dir(str(logs), [k.task.task_name for k in todo])
        return [
            ms.TuneContext(
                mod=k.task.dispatched[0],
                target=k.task.target,
                space_generator="post-order-apply",
                search_strategy=self.strategy,
                task_name=k.task.task_name,
                logger=logger,
                rand_state=kernel_seed(seed, k.key),
                num_threads=self._cores(),
            ).clone()
            for k, logger in zip(todo, loggers)
        ]

    def _cores(self) -> int:
        n = self.target.attrs.get("num-cores") if hasattr(self.target, "attrs") else None
        return int(n) if n else (os.cpu_count() or 1)

    def _table_rows(self, kernels: list[Kernel], again: set[str] = frozenset()) -> None:
        """Add the tuned kernels missing from the latency table, and anew those in `again` (tuned
        further since: the last row of a kernel wins)."""
        rows, done = [], set()
        for k in kernels:
            if k.key in self.table and k.key not in again or k.key in done:
                continue
            done.add(k.key)
            s = self._best(k) if k.key in again else self.seconds(k)
            if s is None:
                continue
            row = {"key": k.key, "name": k.name, "shapes": k.shapes, "seconds": s}
            if k.key in self.table:
                row["first_seconds"] = self._first_seconds(k)
            self.table[k.key] = row
            rows.append(row)
        if rows:
            with open(self.dir / "kernels.jsonl", "a") as fh:
                for row in rows:
                    fh.write(json.dumps(row) + "\n")
