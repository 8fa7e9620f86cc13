"""Transfer-tuning: a kernel that was never tuned gets the schedule of the nearest tuned kernel of
the same operator (the idea of Gibson & Cano's transfer-tuning), so that a candidate is compiled
with tuned-quality kernels in seconds instead of minutes of MetaSchedule.

A tuned kernel's record holds its schedule as a trace: the primitives applied (split, reorder,
parallel, vectorise, compute-at, ...) and the random decisions taken (tile sizes and the like).
Replaying that trace on another kernel of the same operator takes two adaptations:

- blocks are looked up by name, and Relax names some blocks after its variables (`lv82_red`), so
  the source's block names are mapped onto the target's by position;
- tile sizes must multiply to the loop's extent, so each `SamplePerfectTile` decision becomes the
  target extent's factorisation nearest to it (in log space, under the same innermost limit).

Kernels match when their block structures are the same (names without numbering) and their
buffers have the same ranks; among those, the nearest in log buffer shape is tried first, then the
next ones, up to `tries`. A replay that fails leaves the kernel to the next source, or untuned.
Transferred schedules go into an in-memory database beside the tuning database, never into it: a
kernel counts as tuned only when MetaSchedule tuned it. The one exception is tuning itself: the
front check of `tvm-transfer` (`latency.check_transfer`) times a new kernel's transferred
schedules as candidates of its tuning, beside its MetaSchedule trials (`TuningDB._seed`), and
those records are the tuning database's like any trial's."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from kernels.tvm_compile import candidate_build, load_tvm

log = logging.getLogger(__name__)

_SBLOCK = re.compile(r'T\.sblock\("([^"]+)"')


def block_names(mod) -> list[str]:
    """The names of a kernel's blocks, in program order."""
    return _SBLOCK.findall(mod.script())


def structure(mod, blocks: list[str]) -> tuple:
    """What two kernels must share for one's schedule to replay on the other: their blocks
    (`blocks`, its `block_names`, without numbering or Relax variable names) and their buffers'
    ranks."""
    blocks = tuple(re.sub(r"^lv\d+", "lv", re.sub(r"\d+$", "", b)) for b in blocks)
    ranks = tuple(len(p.shape) for p in mod["main"].params)
    return blocks, ranks


def shapes_of(mod) -> list[list[int]]:
    return [[int(d) for d in p.shape] for p in mod["main"].params]


def shape_distance(a: list[list[int]], b: list[list[int]]) -> float:
    """Sum of |log| differences of matching buffer dimensions."""
    return sum(
        abs(math.log(max(x, 1)) - math.log(max(y, 1)))
        for sa, sb in zip(a, b)
        for x, y in zip(sa, sb)
    )


@functools.lru_cache(maxsize=4096)
def _factorisations(n: int, parts: int) -> tuple[tuple[int, ...], ...]:
    if parts == 1:
        return ((n,),)
    out = []
    for d in range(1, n + 1):
        if n % d == 0:
            out.extend((d, *rest) for rest in _factorisations(n // d, parts - 1))
    return tuple(out)


def nearest_tiling(extent: int, old: list[int], max_innermost: int) -> list[int]:
    """The factorisation of `extent` into len(old) factors nearest to `old` in log space, its
    innermost factor at most `max_innermost` (when positive)."""
    options = [
        f for f in _factorisations(extent, len(old)) if max_innermost <= 0 or f[-1] <= max_innermost
    ] or [(*([1] * (len(old) - 1)), extent)]
    return list(
        min(
            options,
            key=lambda f: sum(abs(math.log(a) - math.log(max(b, 1))) for a, b in zip(f, old)),
        )
    )


def rename_blocks(trace, old: list[str], new: list[str]):
    """The trace with the source kernel's block names replaced by the target's, by position."""
    from tvm.s_tir.schedule import Instruction, Trace

    if len(old) != len(new):
        raise ValueError("the kernels' blocks differ")
    names = dict(zip(old, new))
    insts, decisions = [], {}
    for inst in trace.insts:
        new_inst = inst
        if inst.kind.name == "GetSBlock":
            attrs = [names.get(str(a), a) if _is_str(a) else a for a in inst.attrs]
            new_inst = Instruction(inst.kind, inst.inputs, attrs, inst.outputs)
        insts.append(new_inst)
        d = trace.get_decision(inst)
        if d is not None:
            decisions[new_inst] = d
    return Trace(insts, decisions)


def _is_str(a) -> bool:
    return isinstance(a, str) or type(a).__name__ == "String"


_VECTORIZED = re.compile(r"for (\w+) in T\.vectorized\(")
_SPATIAL = re.compile(r"= T\.axis\.spatial\((?:T\.int64\()?(\d+)\)?, (.*)\)$", re.M)


def wrapping_vector(script: str) -> str | None:
    """The vectorised loop (in a scheduled kernel's TVMScript) whose lanes wrap within a spatial
    axis of a block (the axis bound to the loop modulo less than its extent: the lanes gather
    from several rows), or None. A replayed schedule whose tile sizes were refitted can fuse and
    vectorise loops that covered whole rows in its source and part rows here. Of the 1,115
    replays of a 18-trial run's 383 new kernels (2026-12-05), 16 wrapped: each ran slower than
    its kernel's fastest other replay (1.2-14x), and three (a 1x1 convolution, 64 lanes from 4
    rows of 16 under a 64-step unroll) took LLVM 20-27 s each to compile, the others 0.1-0.2 s."""
    lanes = _VECTORIZED.findall(script)
    if not lanes:
        return None
    for extent, binding in _SPATIAL.findall(script):
        for var in lanes:  # `var % c` or `(... + var) % c`
            mods = re.findall(rf"\b{var}\)? % (?:T\.int64\()?(\d+)", binding)
            if any(int(c) < int(extent) for c in mods):
                return var
    return None


def _tile_adapter(sch):
    """A decision provider for `Trace.apply_to_schedule`: tile sizes refitted to the target's
    loop extents; every other decision kept."""

    def provide(inst, inputs, attrs, decision):
        if inst.kind.name != "SamplePerfectTile" or decision is None:
            return decision
        extent = int(sch.get(inputs[0]).extent)
        old = [int(x) for x in decision]
        if math.prod(old) == extent:
            return decision
        return nearest_tiling(extent, old, int(attrs[1]))

    return provide


@dataclass
class Source:
    """A tuned kernel whose schedule can be replayed."""

    structure: tuple
    shapes: list[list[int]]
    blocks: list[str]
    trace: object
    run_secs: list[float]
    workload: int = 0  # its workload's structural hash: what `picks.jsonl` names it by


# a replay's timing for the pick: replays of one kernel differ by tens of percent when they differ
# at all, so a short timing tells them apart; benchmarks/results/transfer_pick.md measures what
# it saves and what it changes in the picks against time_kernel's longer timing
PICK_TIMING = {"number": 3, "repeat": 5, "min_repeat_ms": 1}

# beside the tuning database: each kernel's pick, by kernel key (`Transfer.note_picks`)
PICKS_FILE = "picks.jsonl"


def _replayed(schedule_cls, mod, blocks: list[str], src: Source):
    """`mod` scheduled by `src`'s trace (block names mapped, tile sizes refitted), or None when
    the replay fails or its vector lanes wrap (`wrapping_vector`)."""
    sch = schedule_cls(mod)
    try:
        trace = rename_blocks(src.trace, src.blocks, blocks)
        trace.apply_to_schedule(sch, remove_postproc=False, decision_provider=_tile_adapter(sch))
    except Exception as e:  # noqa: BLE001 - TVM's schedule errors: try the next source
        log.debug("transfer failed: %s", str(e).splitlines()[0][:200])
        return None
    wraps = wrapping_vector(sch.mod.script())
    if wraps:
        log.debug("transfer dropped: the vector lanes of %s wrap", wraps)
        return None
    return sch


@dataclass
class Built:
    """One kernel compiled alone, ready to time: its module, library and random inputs."""

    mod: object
    lib: object
    args: list
    name: str  # its function: `tvm_library.kernel_name`, so that the kernel library can adopt it


def build_kernel(mod, target) -> Built:
    """One kernel (a scheduled TIR module) compiled alone as a candidate (`candidate_build`), its
    machine code generated (LLVM emits it on the first lookup of the function, so that is done
    here too, where it can run on another thread) and random inputs made for it."""
    import numpy as np

    from kernels.tvm_library import kernel_name, named

    tvm = load_tvm()
    name = kernel_name(mod["main"], target)
    with candidate_build():
        lib = tvm.compile(named(mod["main"], name), target=target)
    lib.mod[name]  # noqa: B018 - the lookup generates the code
    rng = np.random.default_rng(0)
    args = [
        tvm.runtime.tensor(rng.standard_normal([int(d) for d in p.shape]).astype(str(p.dtype)))
        for p in mod["main"].params
    ]
    return Built(mod, lib, args, name)


def time_built(built: Built, number: int = 3, repeat: int = 10, min_repeat_ms: int = 5) -> float:
    """The median time (s) of a built kernel; the caller holds the machine's cores."""
    import numpy as np

    tvm = load_tvm()
    ev = built.lib.mod.time_evaluator(
        built.name, tvm.cpu(), number=number, repeat=repeat, min_repeat_ms=min_repeat_ms
    )
    return float(np.median(ev(*built.args).results))


def time_kernel(mod, target, repeats: int = 10) -> float:
    """One kernel (a scheduled TIR module) compiled alone and timed on random inputs, with the
    machine's cores held: its median time in seconds."""
    from kernels.cores import core_lock

    built = build_kernel(mod, target)
    with core_lock().exclusive("measurement"):
        return time_built(built, repeat=repeats)


def _built_or_none(mod, target) -> Built | None:
    try:
        return build_kernel(mod, target)
    except Exception as e:  # noqa: BLE001 - a replay that does not build: not a pick
        log.debug("transferred schedule did not build: %s", str(e).splitlines()[0][:200])
        return None


def build_kernels(mods: list, target, threads: int | None = None) -> list[Built | None]:
    """`build_kernel` of each of `mods`, on `threads` threads (default: as many as the host has
    cores; LLVM releases the interpreter); None for one that does not build."""
    from concurrent.futures import ThreadPoolExecutor

    from kernels.tvm_compile import host_cores

    with ThreadPoolExecutor(threads or max(1, host_cores())) as pool:
        return list(pool.map(lambda m: _built_or_none(m, target), mods))


def time_kernels(built: list[Built | None], timing: dict) -> list[float]:
    """`time_built` of each built kernel, one after another with the machine's cores held once;
    infinity for one that did not build."""
    from kernels.cores import core_lock

    with core_lock().exclusive("measurement"):
        return [math.inf if b is None else time_built(b, **timing) for b in built]


def _schedule_and_times(timed: tuple | None) -> tuple:
    """What `Transfer.schedule` gives, from one of `Transfer.timed`'s results: the schedule and
    its source's measured times, or (None, None)."""
    return (timed[1], timed[2].run_secs) if timed else (None, None)


class Transfer:
    """Replays the tuning database's schedules on kernels it lacks.

    `pick`: `nearest` replays the nearest source that replays; `fastest` replays up to `tries`
    sources, compiles each replay alone (a network's replays on as many threads as the host has
    cores), times each alone with a short timing (`PICK_TIMING`) and keeps the fastest (a kernel's
    pick is kept for the process, until the database gains a kernel of its structure).
    benchmarks/results/transfer_quality.md measures both against fully tuned kernels: the
    front's convolutions ran 2.0x their fully tuned time with the nearest source's replay, 1.3x
    with the fastest.

    `share` (pick: fastest): of the kernels picked together (a network's new ones), each first
    gets its first replay (its nearest source's that replays), compiled and timed; then only
    the slowest that make up this share of their time so measured (times their calls) get the
    other `tries - 1` replays. A replay's compile is most of a pick's cost, and most of a
    network's time is in few kernels. The front check's tuning (`TuningDB._seed`) sorts its
    kernels the same way, on its own timing of their first replays."""

    def __init__(self, tries: int = 3, pick: str = "nearest", share: float = 1.0):
        if pick not in ("nearest", "fastest"):
            raise ValueError(f"transfer pick must be nearest or fastest, not {pick!r}")
        if not 0 < share <= 1:
            raise ValueError(f"transfer share must be in (0, 1], not {share!r}")
        self.tries, self.pick, self.share = tries, pick, share
        self._sources: list[Source] = []
        self._db_size = -1
        self._picked: dict[str, tuple] = {}  # kernel key: (schedule, source times)
        self._structure: dict[str, tuple] = {}  # kernel key: its structure, of those picked
        self.seconds: dict[str, float] = {}  # kernel key: its pick's own time (pick: fastest)
        self.library = None  # a tvm_library.KernelLibrary that keeps the compiled picks
        self.stats = {
            "kernels_transferred": 0,
            "kernels_not_transferred": 0,
            "transfer_timing_s": 0.0,
            "transfer_replays_built": 0,  # replays compiled for picks
        }

    def refresh(self, db) -> None:
        """Index the tuned kernels of `db` (a `TuningDB`), again only when it grew."""
        size = db._loaded_size
        if size == self._db_size:
            return
        from tvm_ffi import structural_hash

        from kernels.tvm_tuning import mean_seconds

        best: dict[int, tuple[float, object]] = {}  # the fastest record of each workload
        for rec in db.database.get_all_tuning_records():
            if not rec.run_secs:
                continue
            secs = mean_seconds(rec.run_secs)
            if secs >= 1e9:  # MetaSchedule's mark of a candidate that failed to build or run
                continue
            key = structural_hash(rec.workload.mod)
            if key not in best or secs < best[key][0]:
                best[key] = (secs, rec)
        known = {s.workload: s for s in self._sources}
        self._sources = [self._source(r, key) for key, (_, r) in best.items()]
        self._db_size = size
        # new sources (or better schedules of known ones): a kernel of their structure may now
        # have a better pick; the picks of other structures stand (a search that tunes a kernel
        # no schedule replays on does not pick every other kernel again)
        grown = {
            s.structure
            for s in self._sources
            if s.workload not in known or s.run_secs != known[s.workload].run_secs
        }
        for key in [k for k, st in self._structure.items() if st in grown]:
            self._picked.pop(key, None)
            self.seconds.pop(key, None)
            del self._structure[key]

    @staticmethod
    def _source(rec, workload: int = 0) -> Source:
        mod, blocks = rec.workload.mod, block_names(rec.workload.mod)
        return Source(
            structure(mod, blocks),
            shapes_of(mod),
            blocks,
            rec.trace,
            [float(x) for x in rec.run_secs],
            workload,
        )

    def _nearest(self, mod) -> tuple[list[str], list[Source]]:
        """`mod`'s block names and the tuned kernels of its structure, nearest first."""
        blocks = block_names(mod)
        st, shapes = structure(mod, blocks), shapes_of(mod)
        near = sorted(
            (s for s in self._sources if s.structure == st),
            key=lambda s: shape_distance(s.shapes, shapes),
        )
        return blocks, near

    def replays(self, mod, tries: int | None = None):
        """(schedule, source) of `mod` replayed from each of the `tries` (default: the
        transfer's) nearest tuned kernels of the same structure, nearest first, as they come (a
        source that fails is skipped). When none of those replays, the farther ones are tried in
        turn and the first that replays is yielded: a kernel is then timed untuned only where
        no tuned kernel of its structure replays on it. On bench-28's front a 5x5 depthwise
        convolution (48 channels, 14 -> 7) failed on its 3 nearest sources (loop splits that
        do not fit) and replayed on its 4th: timed untuned, it left its network priced at
        0.422 ms against 0.184 ms checked, the search's ranking of the front upside down."""
        load_tvm()
        from tvm.s_tir import Schedule

        blocks, near = self._nearest(mod)
        n, got = tries or self.tries, False
        for i, src in enumerate(near):
            if i >= n and got:
                return
            sch = _replayed(Schedule, mod, blocks, src)
            if sch is not None:
                yield sch, src
                if i >= n:
                    return
                got = True

    # --- the search's picks, for the front check -------------------------------------------
    def note_picks(self, folder: Path, keys: list[str], got: list[tuple | None]) -> None:
        """Append each kernel's pick (`timed`'s (seconds, schedule, source), by kernel key) to
        `PICKS_FILE` in `folder` (the tuning database's): the front check seeds its tuning with
        the schedule the search priced the kernel with (`picked`), in another process."""
        rows = [
            {"key": k, "source": f"{p[2].workload:x}", "seconds": p[0]}
            for k, p in zip(keys, got)
            if p is not None and p[2].workload
        ]
        if rows:
            with open(Path(folder) / PICKS_FILE, "a") as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in rows))

    def picked(self, folder: Path, mods: list, keys: list[str]) -> list[tuple]:
        """(index, schedule, source) for each of `mods` (kernel keys `keys`) that a search picked
        a replay for (`note_picks`), its source still among this transfer's: that replay."""
        from kernels.tvm_tuning import jsonl_rows

        load_tvm()
        from tvm.s_tir import Schedule

        rows = jsonl_rows(Path(folder) / PICKS_FILE)
        by_id = {f"{s.workload:x}": s for s in self._sources}
        out = []
        for i, (mod, key) in enumerate(zip(mods, keys)):
            src, blocks = by_id.get(rows.get(key, {}).get("source")), block_names(mod)
            if src is not None and src.structure == structure(mod, blocks):
                sch = _replayed(Schedule, mod, blocks, src)
                if sch is not None:
                    out.append((i, sch, src))
        return out

    def schedule(self, mod, target):
        """A schedule of `mod` replayed from a tuned kernel of the same structure (the nearest,
        or with `pick: fastest` the fastest on `target` of the `tries` nearest) and that
        kernel's measured times, or (None, None) when none replays."""
        if self.pick == "nearest":
            return next(((sch, src.run_secs) for sch, src in self.replays(mod)), (None, None))
        return self.fastest([mod], target)[0]

    def fastest(self, mods: list, target) -> list[tuple]:
        """`schedule` with `pick: fastest` for several kernels at once."""
        return [_schedule_and_times(p) for p in self.timed(mods, target)]

    def timed(self, mods: list, target, calls: list[int] | None = None) -> list[tuple | None]:
        """(seconds, schedule, source) of each of `mods`: its fastest replay on `target`, or None
        when none replays. With `share` 1 every kernel's `tries` replays are compiled (on as many
        threads as the host has cores: LLVM is most of a pick's cost), then timed one after
        another with the cores held once. Below 1, first every kernel's first replay alone
        (`_fastest`), then the other replays only for the kernels whose first replay, times its
        calls (`calls`, default 1), makes up `share` of their summed time (`heavy`), or did not
        build: sorted by what was measured, not by an estimate from the nearest tuned kernel's
        time scaled by work, which cannot see that a replay runs several times its kernel's
        tuned time (benchmarks/results/transfer_quality.md)."""
        if not mods:
            return []
        t0 = time.time()
        n, best = len(mods), {}
        self.in_steps(n, calls or [1] * n, lambda spans: self._fastest(mods, spans, target, best))
        if self.library is not None:  # the network's compile links the picks as compiled here
            for _, _, _, b in best.values():
                self.library.adopt(b.name, b.lib.mod)
        self.stats["transfer_timing_s"] += time.time() - t0
        return [best[i][:3] if i in best else None for i in range(n)]

    def in_steps(self, n: int, calls: list[int], run) -> set[int]:
        """Replays of `n` kernels (with `calls` each) handed to `run` as the share asks (`run`:
        spans, `spans`'s, to {index: fastest seconds} of the kernels it timed). With `share` 1
        every kernel's `tries` at once; below, every kernel's first replay, then the other
        replays for the kernels whose first replay makes up the share (`heavy`) or did not time.
        Returns the kernels left with their first replay alone. The search's pick (`timed`) and
        the front check's seeding (`TuningDB._seed`) both step so, each with its own timing."""
        if self.share >= 1:
            run([(i, 0, self.tries) for i in range(n)])
            return set()
        first = run([(i, 0, 1) for i in range(n)])
        more = self.heavy(first, calls) | (set(range(n)) - first.keys())
        run([(i, 1, self.tries) for i in sorted(more)])
        return set(first) - more

    def heavy(self, seconds: dict[int, float], calls: list[int]) -> set[int]:
        """Of kernels by index, each with its first replay's measured time in `seconds`, those
        whose time times their calls make up `share` of the sum (slowest first)."""
        from kernels.tvm_tuning import slowest_share

        timed = [(t * calls[i], i) for i, t in seconds.items() if math.isfinite(t)]
        return set(slowest_share(timed, self.share))

    def spans(self, mods: list, spans: list[tuple]) -> list[tuple]:
        """(index, schedule, source) for each (index, first, last) of `spans`: the replays of
        `mods[index]` (of its `tries` nearest sources, those that replay) from its `first` to
        before its `last`. A first replay is the first source's that replays, so a kernel whose
        nearest source fails still gets one."""
        return [
            (i, sch, src)
            for i, lo, hi in spans
            for sch, src in itertools.islice(self.replays(mods[i]), lo, hi)
        ]

    def _fastest(self, mods: list, spans: list[tuple], target, best: dict) -> dict[int, float]:
        """The replays `spans` names (`spans`), compiled together and timed; `best` (index:
        (seconds, schedule, source, built)) keeps each kernel's fastest. Returns the fastest
        time of each kernel here timed (built and run)."""
        flat = self.spans(mods, spans)
        if not flat:
            return {}
        built = build_kernels([sch.mod for _, sch, _ in flat], target)
        self.stats["transfer_replays_built"] += len(built)
        for (i, sch, src), b, t in zip(flat, built, time_kernels(built, PICK_TIMING)):
            if t < best.get(i, (math.inf,))[0]:
                best[i] = (t, sch, src, b)
        return {i: best[i][0] for i, _, _ in flat if i in best}

    def database(self, db, kernels, target, count: bool = True):
        """An in-memory database with a transferred schedule for each of `kernels` that `db`
        lacks, and the keys of those that got one; with `pick: fastest`, each pick's own time in
        `seconds` (kernel key: seconds). `count`: into `stats` (not when the same network asks
        again)."""
        load_tvm()
        from tvm.s_tir import meta_schedule as ms

        self.refresh(db)
        mem = ms.database.MemoryDatabase(module_equality="structural")
        todo = list({k.key: k for k in kernels if db.record(k) is None}.values())
        new = [k for k in todo if k.key not in self._picked]
        if self.pick == "fastest":
            got = self.timed([k.task.dispatched[0] for k in new], target, [k.calls for k in new])
            picks = [_schedule_and_times(p) for p in got]
            if getattr(db, "dir", None) is not None:
                self.note_picks(db.dir, [k.key for k in new], got)
            self.seconds.update({k.key: p[0] for k, p in zip(new, got) if p})
        else:
            picks = [self.schedule(k.task.dispatched[0], target) for k in new]
        self._picked.update(zip([k.key for k in new], picks))
        for k in new:
            mod = k.task.dispatched[0]
            self._structure[k.key] = structure(mod, block_names(mod))
        done = set()
        for k in todo:
            mod = k.task.dispatched[0]
            sch, secs = self._picked[k.key]
            if sch is None:
                self.stats["kernels_not_transferred"] += count
                continue
            # a database serves only records with times: the source's stand in (this database
            # lives for one compilation, and nothing reads its times)
            wl = mem.commit_workload(mod)
            mem.commit_tuning_record(ms.database.TuningRecord(sch.trace, wl, secs, target, None))
            done.add(k.key)
        self.stats["kernels_transferred"] += len(done) if count else 0
        return mem, done
