"""The loop runner: the engine's trials on an executor (in-process, or persistent Ray actors),
as many in flight as the executor has workers."""

from __future__ import annotations

import logging
import socket
import time

from evaluators.executor import make_executor
from search.engine import Engine, Ticket
from search.progress import Progress

log = logging.getLogger("archsearch.run")


def run_loop(run, engine: Engine, progress: bool = True) -> dict:
    """Fill the workers with the engine's tickets, complete each result, until the engine is
    done and nothing is in flight. Returns the session's timings."""
    cfg = run.cfg
    ex = run.executor = make_executor(
        run.evaluator, run.workers(), cfg.address, **cfg.ray.model_dump()
    )
    bar = Progress(engine.budget, engine.n_done, progress)
    host = socket.gethostname()
    t0 = t_last = time.time()
    try:
        while True:
            while len(engine.in_flight) < ex.slots and isinstance(ticket := engine.next(), Ticket):
                ex.submit(ticket.genome_id, ticket.genome, ticket.seed)
            if not engine.in_flight:
                break
            gid, res = ex.next_result()
            node = res.node or host
            engine.complete(
                gid, res.status, res.metrics, res.reason, node, res.state_dict, res.curve
            )
            engine.raise_if_failed_out()
            bar.update(engine.n_done, engine.status_line())
            t_last = time.time()
    finally:
        bar.close()
        try:
            ex.close()
        finally:  # the front's latency check on a quiet machine: workers and Ray stopped
            run.finish_trials(engine)
    log.info(
        "%.1f s searching (%s, %d worker%s)",
        t_last - t0,
        ex.kind,
        ex.slots,
        "" if ex.slots == 1 else "s",
    )
    return {
        "runner": "loop",
        "executor": ex.kind,
        "workers": ex.slots,
        "executor_startup_s": ex.startup_s,
        "search_s": t_last - t0,
    }
