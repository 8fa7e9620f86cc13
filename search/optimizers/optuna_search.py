"""Optuna samplers over the unified space: TPE (one objective), NSGA-II (several), CMA-ES (for
scale dimensions), random, chosen in the config. The optimiser's study sees every trial of
the run, whichever optimiser produced it, also those of earlier runs (`warm_start`)."""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import optuna
from optuna.trial import TrialState, create_trial
from pydantic import BaseModel, ConfigDict, Field

from search.optimizers.base import Optimizer
from search.records import TrialRecord

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)


class OptunaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sampler: Literal["tpe", "nsga2", "cmaes", "random"] | None = Field(
        None, description="default: tpe for one objective, nsga2 for several"
    )
    n_startup_trials: int = Field(10, ge=0)
    multivariate: bool = True
    population_size: int = Field(20, ge=2)
    warm_start: list[str] = Field(
        default_factory=list, description="run folders whose trials are replayed first"
    )


class OptunaSearch(Optimizer):
    """Ask/tell on an Optuna study that is told every trial of the run."""

    name = "optuna"
    Options = OptunaOptions

    def __init__(self, space, objectives, constraints, seed, options=None):
        super().__init__(space, objectives, constraints, seed, options)
        self.study = optuna.create_study(
            directions=[o.direction for o in objectives], sampler=self._sampler()
        )
        self._pending: dict[str, optuna.Trial] = {}
        self._known: dict[str, TrialRecord] = {}
        for run_dir in self.options.warm_start:
            self._warm_start(run_dir)

    def _sampler(self):
        o, seed = self.options, self.seed
        kind = o.sampler or ("tpe" if len(self.objectives) == 1 else "nsga2")
        if kind == "tpe":
            warnings.filterwarnings(
                "ignore", message=".*``group``", category=optuna.exceptions.ExperimentalWarning
            )
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=o.n_startup_trials,
                multivariate=o.multivariate,
                group=o.multivariate,
            )
        if kind == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=o.population_size)
        if kind == "cmaes":
            return optuna.samplers.CmaEsSampler(
                seed=seed,
                n_startup_trials=o.n_startup_trials,
                independent_sampler=optuna.samplers.TPESampler(seed=seed),
                warn_independent_sampling=False,
            )
        return optuna.samplers.RandomSampler(seed=seed)

    def _warm_start(self, run_dir: str) -> None:
        from search.runs import open_run

        run = open_run(run_dir)
        if run.space.name != self.space.name:
            log.warning(
                "warm start from %s skipped: space %s, not %s",
                run_dir,
                run.space.name,
                self.space.name,
            )
            return
        recs = open_run(run_dir, self.space, self.objectives, self.constraints).records
        for r in recs:
            if all(o.metric in r.metrics for o in self.objectives) or not r.complete:
                r.values = (
                    [float(r.metrics[o.metric]) for o in self.objectives] if r.complete else None
                )
                self.tell(r)
        log.info("warm start: %d trials from %s", len(recs), run_dir)

    def ask(self):
        for _ in range(100):
            trial = self.study.ask()
            g = self.space.suggest(trial)
            gid = self.space.genome_id(g)
            if gid not in self.seen:
                self.seen.add(gid)
                self._pending[gid] = trial
                return g
            # a genome already evaluated: tell the sampler its known result and ask again
            known = self._known.get(gid)
            if known is not None and known.complete:
                self._tell_trial(trial, known)
            else:
                self.study.tell(trial, state=TrialState.FAIL)
        return self.fresh(lambda: self.space.sample(self.rng))

    def _tell_trial(self, trial, rec: TrialRecord) -> None:
        for c in self.constraints:
            if c.metric in rec.violations:
                trial.set_constraint(c.metric, rec.violations[c.metric])
        if rec.complete:
            self.study.tell(trial, rec.values)
        else:
            self.study.tell(trial, state=TrialState.FAIL)

    def tell(self, record: TrialRecord) -> None:
        super().tell(record)
        self._known[record.genome_id] = record
        trial = self._pending.pop(record.genome_id, None)
        if trial is not None:
            self._tell_trial(trial, record)
            return
        params, dists = self.space.to_optuna(record.genome)  # a trial another optimiser produced
        self.study.add_trial(
            create_trial(
                state=TrialState.COMPLETE if record.complete else TrialState.FAIL,
                values=record.values if record.complete else None,
                params=params,
                distributions=dists,
                constraints=dict(record.violations) or None,
            )
        )
