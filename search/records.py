"""What the run loop, the store and the optimisers exchange about one trial."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrialRecord:
    """One stored trial: its genome, status, metrics, objective values and feasibility."""

    number: int
    genome: dict[str, Any]
    genome_id: str
    status: str  # "complete" | "failed"
    metrics: dict[str, Any] = field(default_factory=dict)
    values: list[float] | None = None
    violations: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    node: str = ""

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def feasible(self) -> bool:
        return self.complete and all(v <= 0 for v in self.violations.values())

    @property
    def total_violation(self) -> float:
        return sum(max(0.0, v) for v in self.violations.values())


def make_record(
    number: int,
    space,
    genome: dict,
    status: str,
    metrics: dict,
    objectives: list,
    constraints: list,
    reason: str | None = None,
    node: str = "",
) -> TrialRecord:
    """The record of one finished trial: objective values and constraint violations from its
    metrics; a complete trial with a non-finite objective counts as failed."""
    values, violations = None, {}
    if status == "complete":
        values = [float(metrics[o.metric]) for o in objectives]
        violations = {c.metric: c.violation(float(metrics[c.metric])) for c in constraints}
        if not all(math.isfinite(v) for v in values):
            status, reason, values, violations = (
                "failed",
                f"non-finite objective {values}",
                None,
                {},
            )
    return TrialRecord(
        number,
        space.canonical(genome),
        space.genome_id(genome),
        status,
        dict(metrics),
        values,
        violations,
        reason,
        node,
    )


def dominates(a: list[float], b: list[float], signs: list[float]) -> bool:
    """a dominates b; signs are +1 for maximise, -1 for minimise."""
    better = False
    for x, y, s in zip(a, b, signs):
        if s * x < s * y:
            return False
        if s * x > s * y:
            better = True
    return better


def pareto_front(records: list[TrialRecord], signs: list[float]) -> list[TrialRecord]:
    """Non-dominated feasible complete trials (all complete ones if none is feasible)."""
    pool = [r for r in records if r.feasible] or [r for r in records if r.complete]
    front = [
        r for r in pool if not any(dominates(o.values, r.values, signs) for o in pool if o is not r)
    ]
    seen, out = set(), []
    for r in sorted(front, key=lambda r: [-s * v for s, v in zip(signs, r.values)]):
        if r.genome_id not in seen:
            seen.add(r.genome_id)
            out.append(r)
    return out


def best(records: list[TrialRecord], signs: list[float]) -> TrialRecord | None:
    """Feasibility first, then the first objective."""
    done = [r for r in records if r.complete]
    if not done:
        return None
    return min(done, key=lambda r: (not r.feasible, r.total_violation, -signs[0] * r.values[0]))
