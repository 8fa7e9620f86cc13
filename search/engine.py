"""The engine: one trial's life, whoever drives it.

    ask the optimiser -> skip genomes evaluated or in flight -> give the trial its seed ->
    (the driver evaluates) -> record it in the store -> tell the optimiser

The loop runner (`search.loop`), the Ray Tune searcher (`search.tune_search`) and the tabular
simulation (`search.simulate`) each drive this in a few lines: `next()` hands out a `Ticket`
(or WAIT while the budget is taken by trials in flight or the optimiser waits for them to
finish a generation, or DONE), `complete()` takes the
evaluation's result back. The budget counts complete trials; failed ones are recorded and
told too, up to `max_failures`."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from search.errors import RunFailed
from search.records import TrialRecord, best

log = logging.getLogger(__name__)

WAIT = "wait"  # the budget's slots are taken by trials in flight, or the optimiser waits on them
DONE = "done"  # the budget is met, the optimiser has nothing more to ask, or too many failures
MAX_REPEATS = 1000  # consecutive already-evaluated genomes before an optimiser counts as exhausted


def trial_seed(seed: int, genome_id: str) -> int:
    """The seed a trial trains with: the run's seed and the genome, nothing else."""
    return int(hashlib.sha256(f"{seed}:{genome_id}".encode()).hexdigest()[:8], 16)


@dataclass
class Ticket:
    """A genome handed out for evaluation."""

    genome_id: str
    genome: dict[str, Any]
    seed: int


class Engine:
    """Budget, duplicate check, trial seeds, the durable record and the tell, in that order.

    `store` is a `RunStore` (the run folder's study) or a `MemoryStore`; `signs` rank the first
    objective for progress lines. `max_failures` None means no limit."""

    def __init__(
        self, optimizer, store, budget: int, seed: int = 0, max_failures: int | None = None
    ):
        self.opt, self.store, self.budget, self.seed = optimizer, store, budget, seed
        self.max_failures = max_failures
        self.signs = [o.sign for o in optimizer.objectives]
        self.records: list[TrialRecord] = []
        self.done_ids: set[str] = set()
        self.in_flight: dict[str, Ticket] = {}
        self.failures = 0  # in this session
        self.exhausted = False
        self.last: TrialRecord | None = None
        self.on_record: list = []  # (record, curve) hooks after each stored trial (tracking)

    def replay(self) -> int:
        """Tell the optimiser every stored trial, in order (resume); returns the complete ones."""
        for rec in self.store.records():
            self.opt.tell(rec)
            self.records.append(rec)
            if rec.complete:
                self.done_ids.add(rec.genome_id)
        return self.n_done

    @property
    def n_done(self) -> int:
        return len(self.done_ids)

    @property
    def failed_out(self) -> bool:
        return self.max_failures is not None and self.failures > self.max_failures

    def next(self) -> Ticket | str:
        """The next genome to evaluate; WAIT while trials in flight take the rest of the budget
        (one may fail and free its slot); DONE once nothing more will be handed out (trials in
        flight still report)."""
        if self.failed_out or self.exhausted or self.n_done >= self.budget:
            return DONE
        if self.n_done + len(self.in_flight) >= self.budget:
            return WAIT
        for _ in range(MAX_REPEATS):
            if self.opt.waiting():
                if self.in_flight:
                    return WAIT
                log.warning("optimizer %s waits with no trial in flight; asking", self.opt.name)
            genome = self.opt.ask()
            if genome is None:
                log.info(
                    "optimizer %s asks for nothing more (%d complete trials of a budget of %s)",
                    self.opt.name,
                    self.n_done,
                    self.budget,
                )
                break
            gid = self.opt.space.genome_id(genome)
            if gid in self.done_ids or gid in self.in_flight:  # never evaluate a genome twice
                self.opt.dropped(gid)
                continue
            ticket = Ticket(gid, genome, trial_seed(self.seed, gid))
            self.in_flight[gid] = ticket
            return ticket
        else:
            log.warning("optimizer %s keeps proposing evaluated genomes; stopping", self.opt.name)
        self.exhausted = True
        return DONE

    def complete(
        self,
        genome_id: str,
        status: str,
        metrics: dict,
        reason: str | None = None,
        node: str = "",
        state_dict: dict | None = None,
        curve: list[dict] | None = None,
    ) -> TrialRecord:
        """Record a finished evaluation (weights first, then the trial with its learning
        `curve`), then tell the optimiser."""
        ticket = self.in_flight.pop(genome_id)
        if state_dict is not None:
            self.store.save_weights(genome_id, state_dict)
        rec = self.store.record(ticket.genome, status, metrics, reason, node, curve)
        for hook in self.on_record:
            hook(rec, curve or [])
        self.opt.tell(rec)
        self.records.append(rec)
        self.last = rec
        if rec.complete:
            self.done_ids.add(rec.genome_id)
        else:
            self.failures += 1
        return rec

    def abandon(self, genome_id: str) -> None:
        """Forget a ticket whose evaluation will never report (nothing is recorded or told)."""
        if self.in_flight.pop(genome_id, None) is not None:
            self.opt.dropped(genome_id)

    def raise_if_failed_out(self) -> None:
        if self.failed_out:
            last = self.last.reason if self.last else None
            raise RunFailed(
                f"{self.failures} failed trials (max_failures {self.max_failures}); last: {last}"
            )

    def best(self) -> TrialRecord | None:
        return best(self.records, self.signs)

    def status_line(self) -> str:
        """The first objective's best so far, for progress bars."""
        b = self.best()
        return (
            f"best {self.opt.objectives[0].metric} {b.values[0]:.4g}"
            if b
            else "no complete trial yet"
        )
