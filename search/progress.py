"""Progress of long work: a bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("archsearch.run")


class Progress:
    """A progress bar on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, initial: int, enabled: bool = True):
        self.tty = enabled and sys.stderr.isatty()
        self.total, self.n, self.t0, self.bar = total, initial, time.time(), None
        self.start_n, self.last_line = initial, 0.0
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="trial", dynamic_ncols=True)

    def update(self, n: int, text: str) -> None:
        if self.bar:
            self.bar.update(n - self.bar.n)
            self.bar.set_postfix_str(text)
        elif n >= self.total or time.time() - self.last_line >= 2.0:  # plain lines, throttled
            self.last_line = time.time()
            done = n - self.start_n
            rate = (time.time() - self.t0) / max(1, done)
            left = rate * (self.total - n)
            log.info("trial %d/%d  %s  (~%.0f s left)", n, self.total, text, left)
        self.n = n

    def close(self):
        if self.bar:
            self.bar.close()


def pretrain_progress(enabled: bool):
    """Progress of supernet pre-training: a bar on a terminal, a line every ~10 % otherwise."""
    state = {"bar": None, "last": -1}

    def cb(step: int, total: int, loss: float) -> None:
        if enabled and sys.stderr.isatty():
            if state["bar"] is None:
                from tqdm import tqdm

                state["bar"] = tqdm(
                    total=total, desc="pre-training supernet", unit="step", dynamic_ncols=True
                )
            state["bar"].update(step - state["bar"].n)
            state["bar"].set_postfix_str(f"loss {loss:.3f}")
            if step >= total:
                state["bar"].close()
        elif step * 10 // total != state["last"]:
            state["last"] = step * 10 // total
            log.info("pre-training supernet: step %d/%d, loss %.3f", step, total, loss)

    return cb
