"""One process per run folder: `search run` and `search resume` hold an OS lock on the folder
(`run.lock`, holding their PID) for as long as they run; a second process is refused (exit 2,
naming the holder). The kernel releases the lock when its holder dies, also after `kill -9`."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from spaces.errors import ConfigError

LOCK_FILE = "run.lock"


class RunLock:
    """An exclusive, non-blocking `flock` on a run folder's lock file."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the folder or raise ConfigError naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                str(self.path.parent),
                None,
                f"in use by process {holder} (a `search run` or `search resume` on this folder); "
                "wait for it to end or stop it",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
