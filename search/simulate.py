"""Drive an optimiser against an evaluator in memory, without a run folder: for tests and
benchmarks on the tabular evaluator, where thousands of trials take seconds."""

from __future__ import annotations

from search.records import TrialRecord


def simulate(opt, evaluator, budget: int, constraints: list | None = None) -> list[TrialRecord]:
    """Ask/evaluate/tell until `budget` complete trials (or the optimiser stops asking)."""
    space, records, n = opt.space, [], 0
    constraints = constraints or []
    while n < budget:
        g = opt.ask()
        if g is None:
            break
        res = evaluator.evaluate(g)
        values = [float(res.metrics[o.metric]) for o in opt.objectives] if res.status == "complete" else None
        viol = {c.metric: c.violation(float(res.metrics[c.metric])) for c in constraints} if values else {}
        rec = TrialRecord(len(records), space.canonical(g), space.genome_id(g), res.status, res.metrics, values,
                          viol, res.reason)
        opt.tell(rec)
        records.append(rec)
        n += rec.complete
    return records
