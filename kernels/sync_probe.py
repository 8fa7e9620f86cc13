"""The thread-sync probe: how long TVM's thread pool takes to launch one tiny parallel kernel now,
against the quickest it ever took on this target.

On this VM (2-core AMD EPYC, 2026-12-06) whole-network timings run 1.5-2.3x slow in spells of
about 10 s with no other process busy (/proc/stat: `kernels.cores.others_load`) and no page
faults. A 128x128 matmul (0.055 ms, one parallel launch) did not slow in them; a 32x32 one
(1.5 us a launch) went 1.5 to 2.3-2.7 us, and tracked the spells of two front networks (0.17 and
0.10 ms, about 200 and 100 launches a run) with correlations of 0.91 and 0.86 over 30 rounds:
what slows is the threads' meeting at each launch (most likely the host placing the two vCPUs
on cores further apart), not the kernels' work. Each network's probe (the first network of its
rounds, `TVMBackend._await_quiet` before) only knew its own quietest reading in the process, so a
process that started in a spell took the spell for quiet. This probe's quickest reading is kept
beside the tuning database (`sync_probe.json`), for every process that times on the target."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from kernels.cores import core_lock

SIZE = 32  # the matmul's side: one launch about 1.5 us on this VM, mostly the threads' meeting
TIMING = {"number": 1, "repeat": 3, "min_repeat_ms": 10}  # about 40 ms a reading


class SyncProbe:
    """`reading()`: the tiny parallel kernel's time (us) now; `ratio()`: that over the quickest
    reading kept in `folder`'s `sync_probe.json` (this one included)."""

    def __init__(self, target, folder: Path):
        self.target = target
        self.file = Path(folder) / "sync_probe.json"
        self.best_us = self._stored()
        self._fn = None

    def _stored(self) -> float:
        try:
            return float(json.loads(self.file.read_text())["best_us"])
        except (OSError, ValueError, KeyError, TypeError):
            return math.inf

    def reading(self) -> float:
        """The kernel's median time (us) over a brief timing, with the machine's cores held; the
        quickest so far kept (in `sync_probe.json` too)."""
        if self._fn is None:
            self._fn = parallel_matmul(self.target, SIZE, TIMING)
        fn, args = self._fn
        with core_lock().exclusive("sync probe"):
            us = float(np.median(fn(*args).results)) * 1e6
        if us < self.best_us:
            self.best_us = min(us, self._stored())  # another process's quicker one wins
            self._store()
        return us

    def ratio(self) -> float:
        return self.reading() / self.best_us

    def _store(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"best_us": self.best_us, "size": SIZE}))
        os.replace(tmp, self.file)


def parallel_matmul(target, n: int, timing: dict) -> tuple:
    """(time evaluator, its arguments) of an n x n float32 matmul for `target`, its rows spread
    over TVM's thread pool (one parallel launch a run), its columns vectorised."""
    from kernels.tvm_compile import load_tvm

    tvm = load_tvm()
    from tvm import s_tir, te

    a = te.placeholder((n, n), name="A")
    b = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    s = s_tir.Schedule(te.create_prim_func([a, b, c]))
    i, j, kk = s.get_loops(s.get_sblock("C"))
    jo, ji = s.split(j, [None, 16])
    s.reorder(i, jo, kk, ji)
    s.parallel(i)
    s.vectorize(ji)
    fn = tvm.compile(s.mod, target=target).jit()
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.random((n, n), dtype="float32")) for _ in range(2)]
    args.append(tvm.runtime.tensor(np.zeros((n, n), "float32")))
    return fn.time_evaluator("main", tvm.cpu(), **timing), args
