"""Drive an optimiser against an evaluator in memory, without a run folder: for tests and
benchmarks on the tabular evaluator, where thousands of trials take seconds."""

from __future__ import annotations

import random

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
    workers: int = 1,
    finish_order: int | None = None,
) -> list[TrialRecord]:
    """The engine's trials until `budget` complete trials (or the optimiser stops asking).
    With `seed`, trial n is evaluated with seed `seed + n` (else the evaluator's default);
    `on_trial(n, result)` hears each result (progress). `workers` trials are in flight at once
    (as many as the engine hands out); the oldest finishes first, or, with `finish_order`, one
    drawn by a generator seeded with it: how parallel workers that finish in any order look to
    the optimiser."""
    opt.know(evaluator.known_metrics, evaluator.known)
    engine = Engine(opt, MemoryStore(opt.space, opt.objectives, list(constraints or [])), budget)
    draw = random.Random(finish_order) if finish_order is not None else None
    flight: list = []
    n = 0
    while True:
        while len(flight) < workers and isinstance(ticket := engine.next(), Ticket):
            flight.append(ticket)
        if not flight:
            return engine.records
        ticket = flight.pop(draw.randrange(len(flight)) if draw else 0)
        res = (
            evaluator.evaluate(ticket.genome)
            if seed is None
            else evaluator.evaluate(ticket.genome, seed=seed + n)
        )
        if on_trial is not None:
            on_trial(n, res)
        n += 1
        engine.complete(ticket.genome_id, res.status, res.metrics, res.reason)
