"""Drive an optimiser against an evaluator in memory, without a run folder: for tests and
benchmarks on the tabular evaluator, where thousands of trials take seconds."""

from __future__ import annotations

from search.engine import Engine, Ticket
from search.records import TrialRecord
from search.store import MemoryStore


def simulate(
    opt,
    evaluator,
    budget: int,
    constraints: list | None = None,
    seed: int | None = None,
    on_trial=None,
) -> list[TrialRecord]:
    """The engine's trials, evaluated one at a time, until `budget` complete trials (or the
    optimiser stops asking). With `seed`, trial n is evaluated with seed `seed + n` (else the
    evaluator's default); `on_trial(n, result)`
    hears each result (progress)."""
    opt.know(evaluator.known_metrics, evaluator.known)
    engine = Engine(opt, MemoryStore(opt.space, opt.objectives, list(constraints or [])), budget)
    n = 0
    while isinstance(ticket := engine.next(), Ticket):
        res = (
            evaluator.evaluate(ticket.genome)
            if seed is None
            else evaluator.evaluate(ticket.genome, seed=seed + n)
        )
        if on_trial is not None:
            on_trial(n, res)
        n += 1
        engine.complete(ticket.genome_id, res.status, res.metrics, res.reason)
    return engine.records
