"""The machine's cores, guarded by one lock, so that no latency measurement overlaps tuning or
training. It lives with the measurements (`kernels/`), which need the cores to themselves;
training (`evaluators/`) only shares them.

On 2 cores anything running beside a measurement ruins it. Training steps hold the lock shared
(many at once, released after every step); measurements and tuning hold it exclusively. A
measurement that asks waits for the steps in flight to end, and new steps wait for it (writer
preference through a second "gate" file), so a busy search cannot starve a measurement.

The lock is a pair of `flock` files: per machine, across processes (Ray workers, the latency
service, other runs). `ARCHSEARCH_CORE_LOCK` names the folder (default: the system's temp folder);
`ARCHSEARCH_CORE_LOCK=off` disables it."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class CoreLock:
    """Shared for work that may run beside other work, exclusive for measurements."""

    def __init__(self, folder: str | Path | None = None):
        env = os.environ.get("ARCHSEARCH_CORE_LOCK", "")
        self.enabled = env.lower() != "off"
        self.folder = Path(folder or env or tempfile.gettempdir())
        self._files: dict[str, int] = {}
        self._pid = -1
        self._depth = threading.local()
        self.waited_s = 0.0  # time spent waiting for exclusive access, for reports

    def _fd(self, name: str) -> int:
        if self._pid != os.getpid():  # a forked child must not share the parent's descriptions
            self._files, self._pid = {}, os.getpid()
        if name not in self._files:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._files[name] = os.open(
                self.folder / f"archsearch-cores.{name}", os.O_RDWR | os.O_CREAT, 0o666
            )
        return self._files[name]

    def _held(self) -> int:
        return getattr(self._depth, "n", 0)

    @contextlib.contextmanager
    def shared(self):
        """Around one training step (cheap: four flock calls)."""
        if not self.enabled or self._held():
            yield
            return
        gate, cores = self._fd("gate"), self._fd("cores")
        fcntl.flock(gate, fcntl.LOCK_SH)  # blocks while a measurement waits or runs
        fcntl.flock(cores, fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
        self._depth.n = 1
        try:
            yield
        finally:
            self._depth.n = 0
            fcntl.flock(cores, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self, what: str = "measurement"):
        """Around a measurement or a tuning session: waits for running steps, then owns the
        cores."""
        if not self.enabled or self._held():
            yield
            return
        gate, cores = self._fd("gate"), self._fd("cores")
        t0 = time.perf_counter()
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(cores, fcntl.LOCK_EX)
            waited = time.perf_counter() - t0
            self.waited_s += waited
            if waited > 1.0:
                log.debug("%s waited %.1f s for the cores", what, waited)
            self._depth.n = 1
            try:
                yield
            finally:
                self._depth.n = 0
                fcntl.flock(cores, fcntl.LOCK_UN)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)

    def __getstate__(self):  # descriptors stay with their process
        return {"enabled": self.enabled, "folder": self.folder}

    def __setstate__(self, state):
        self.__init__(state["folder"])
        self.enabled = state["enabled"]


_LOCK: CoreLock | None = None


def core_lock() -> CoreLock:
    """This process's handle on the machine's core lock."""
    global _LOCK
    if _LOCK is None:
        _LOCK = CoreLock()
    return _LOCK


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def busy_seconds(cpus: set[int] | None = None) -> float | None:
    """CPU seconds the machine's `cpus` (default: those this process may run on) have been busy
    since boot: user, nice, system, irq, softirq and steal time (time the hypervisor gave the
    core to someone else) from /proc/stat. None where there is no /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        cpus = cpus if cpus is not None else os.sched_getaffinity(0)
    except (OSError, AttributeError):
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks * _TICK_S


@contextlib.contextmanager
def others_load():
    """Measures the cores other processes (and the hypervisor) took from this process's cores
    during the block: the dict it yields gets `wall_s` (the block's wall time) and `cores`
    (their busy time over it, in cores; None where the machine cannot say) once the block
    ends."""
    out: dict[str, float | None] = {"cores": None, "wall_s": None}
    b0, c0, w0 = busy_seconds(), time.process_time(), time.perf_counter()
    try:
        yield out
    finally:
        b1, c1, wall = busy_seconds(), time.process_time(), time.perf_counter() - w0
        out["wall_s"] = wall
        if b0 is not None and b1 is not None and wall > 0:
            out["cores"] = max(0.0, (b1 - b0) - (c1 - c0)) / wall
