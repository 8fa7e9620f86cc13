"""The run store is an Optuna study: every trial of every optimiser, with its genome, metrics,
timings and status, recorded durably before the optimiser hears of it."""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState, create_trial

from search.records import TrialRecord, make_record
from spaces.space import Space

log = logging.getLogger(__name__)
STUDY_NAME = "archsearch"
JOURNAL = "study.journal"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_storage(run_dir: Path, url: str | None):
    """Journal file under the run folder by default (its absolute path: Optuna's lock is a
    symlink to it, which must resolve from anywhere); any Optuna storage URL otherwise."""
    if url:
        return url
    return JournalStorage(JournalFileBackend(str((Path(run_dir) / JOURNAL).resolve())))


def repair_journal(path: Path) -> dict | None:
    """Cut a torn tail off a journal (what a full disk or a power cut leaves: a last record
    without its end, which the next append would run into): the file is cut back to its last
    complete record and the cut bytes are kept beside it. Returns what was cut, or None."""
    if not path.exists():
        return None
    data = path.read_bytes()
    good, pos = 0, 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break
        try:
            json.loads(data[pos:end])
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        good = pos = end + 1
    if good == len(data):
        return None
    cut = data[good:]
    kept = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
    kept.write_bytes(cut)
    with open(path, "r+b") as fh:
        fh.truncate(good)
        fh.flush()
        os.fsync(fh.fileno())
    trials = cut.count(b'"op_code":4')
    info = {
        "bytes": len(cut),
        "records": cut.count(b"\n") + (not cut.endswith(b"\n")),
        "trials": max(trials, 1),
        "kept": str(kept),
    }
    log.warning(
        "study journal %s had a torn tail (%d bytes, about %d trial%s): cut back to its "
        "last complete record; the cut bytes are in %s",
        path,
        info["bytes"],
        info["trials"],
        "" if info["trials"] == 1 else "s",
        kept,
    )
    return info


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MemoryStore:
    """Trials kept in memory only: for the tabular simulation, tests and a bare Tune searcher."""

    def __init__(self, space: Space, objectives: list, constraints: list):
        self.space, self.objectives, self.constraints = space, objectives, constraints
        self._records: list[TrialRecord] = []

    def record(
        self,
        genome: dict,
        status: str,
        metrics: dict,
        reason: str | None = None,
        node: str = "",
        curve: list[dict] | None = None,
    ) -> TrialRecord:
        """Store one trial; returns the record the optimiser is then told. `curve`: validation
        metrics after each training epoch (kept by the study as intermediate values)."""
        rec = make_record(
            self._count(),
            self.space,
            genome,
            status,
            metrics,
            self.objectives,
            self.constraints,
            reason,
            node,
        )
        self._keep(rec, genome, metrics, curve)
        return rec

    def _count(self) -> int:
        """The next trial's number: the trials stored so far."""
        return len(self._records)

    def _keep(
        self, rec: TrialRecord, genome: dict, metrics: dict, curve: list[dict] | None
    ) -> None:
        self._records.append(rec)

    def save_weights(self, genome_id: str, state: dict) -> None:
        """Weights are not kept in memory."""

    def records(self) -> list[TrialRecord]:
        return list(self._records)


class RunStore(MemoryStore):
    """The run folder's study: each trial written durably (with its genome and metrics as user
    attributes) when it is recorded, its weights under `trials/`."""

    def __init__(
        self,
        run_dir: Path,
        space: Space,
        objectives: list,
        constraints: list,
        storage_url: str | None = None,
    ):
        super().__init__(space, objectives, constraints)
        self.dir = Path(run_dir)
        self.repaired = None
        if not storage_url:
            self.repaired = repair_journal(self.dir / JOURNAL)
            lock = self.dir / (JOURNAL + ".lock")
            if lock.is_symlink() or lock.exists():  # the run lock is ours: a journal lock is stale
                log.warning("removing the stale journal lock %s (left by a killed process)", lock)
                lock.unlink()
        self.storage = open_storage(run_dir, storage_url)
        self.study = optuna.create_study(
            study_name=STUDY_NAME,
            storage=self.storage,
            load_if_exists=True,
            directions=[o.direction for o in objectives],
        )
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still the way to name them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.set_metric_names([o.metric for o in objectives])
        self._n = len(self.study.get_trials(deepcopy=False))

    def _count(self) -> int:
        return self._n

    def _keep(
        self, rec: TrialRecord, genome: dict, metrics: dict, curve: list[dict] | None
    ) -> None:
        """The trial into the study, durably, with its genome, metrics and learning curve."""
        params, dists = self.space.to_optuna(genome)
        attrs = {
            "genome": self.space.to_json(genome),
            "genome_id": rec.genome_id,
            "metrics": {k: _jsonable(v) for k, v in metrics.items()},
            "node": rec.node,
        }
        if rec.reason:
            attrs["fail_reason"] = rec.reason
        if curve:
            attrs["curve"] = curve
        trial = create_trial(
            state=TrialState.COMPLETE if rec.complete else TrialState.FAIL,
            values=rec.values,
            params=params,
            distributions=dists,
            user_attrs=attrs,
            constraints=dict(rec.violations) or None,
            intermediate_values=self._intermediate(curve),
        )
        self.study.add_trial(trial)
        self._n += 1

    def _intermediate(self, curve: list[dict] | None) -> dict[int, float] | None:
        """epoch -> the first objective (or val_acc) after that epoch: what optuna-dashboard and
        Optuna's pruners read as a trial's learning curve."""
        if not curve:
            return None
        metric = self.objectives[0].metric
        key = metric if all(metric in c for c in curve) else "val_acc"
        return {int(c["epoch"]): float(c[key]) for c in curve if key in c}

    def save_weights(self, genome_id: str, state: dict) -> None:
        """trials/<genome id>.pt, written atomically."""
        import torch

        wdir = self.dir / "trials"
        wdir.mkdir(exist_ok=True)
        tmp = wdir / f"{genome_id}.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, wdir / f"{genome_id}.pt")

    def records(self) -> list[TrialRecord]:
        """Every finished trial in the order it was stored."""
        return [
            trial_record(self.space, self.objectives, self.constraints, t)
            for t in self.study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)
            )
        ]


def trial_record(space: Space, objectives: list, constraints: list, t) -> TrialRecord:
    ua = t.user_attrs
    genome = space.from_json(ua["genome"]) if "genome" in ua else space.from_optuna(t.params)
    metrics = ua.get("metrics", {})
    complete = t.state == TrialState.COMPLETE
    violations = (
        {
            c.metric: c.violation(float(metrics[c.metric]))
            for c in constraints
            if c.metric in metrics
        }
        if complete
        else {}
    )
    return TrialRecord(
        t.number,
        genome,
        ua.get("genome_id", space.genome_id(genome)),
        "complete" if complete else "failed",
        metrics,
        list(t.values) if complete else None,
        violations,
        ua.get("fail_reason"),
        ua.get("node", ""),
    )


def load_records(
    run_dir: Path, storage_url: str | None, space: Space, objectives: list, constraints: list
) -> list[TrialRecord]:
    """Read a run's trials (also while it is still running)."""
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir, storage_url))
    return [
        trial_record(space, objectives, constraints, t)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    ]
