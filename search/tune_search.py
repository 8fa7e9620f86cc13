"""Ray Tune as the second way in: any archsearch optimiser as a Tune `Searcher` (ask/tell mapped
onto suggest / on_trial_complete), and `search run ... --runner tune`, which fine-tunes with
the per-epoch trainable under a Tune scheduler (ASHA by default) and records every trial in the
run store like the loop does."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Callable

from ray.tune.search import Searcher

from search.records import TrialRecord

log = logging.getLogger(__name__)


class OptimizerSearcher(Searcher):
    """An archsearch optimiser behind Tune's Searcher interface. `record(genome, status,
    metrics, reason, node)` stores a finished trial and returns its TrialRecord (the run store
    does this in `--runner tune`); without it the optimiser is told an unstored record."""

    def __init__(self, optimizer, budget: int | None = None, record: Callable | None = None,
                 seed_of: Callable[[str], int] | None = None, done_ids: set[str] | None = None,
                 extra_config: dict | None = None):
        obj = optimizer.objectives[0]
        super().__init__(metric=obj.metric, mode="max" if obj.direction == "maximize" else "min")
        self.opt, self.space, self.budget = optimizer, optimizer.space, budget
        self.record, self.seed_of = record, seed_of or (lambda gid: 0)
        self.done_ids = set(done_ids or ())
        self.extra = dict(extra_config or {})
        self.pending: dict[str, tuple[str, dict]] = {}  # trial id -> (genome id, genome)
        self.n_done, self.n_failed, self.exhausted = len(self.done_ids), 0, False
        self._numbers = 0

    def suggest(self, trial_id: str):
        if self.budget is not None and self.n_done >= self.budget:
            return Searcher.FINISHED
        if self.exhausted or (self.budget is not None and self.n_done + len(self.pending) >= self.budget):
            return Searcher.FINISHED if not self.pending else None
        busy = {gid for gid, _ in self.pending.values()}
        for _ in range(1000):
            g = self.opt.ask()
            if g is None:
                self.exhausted = True
                return Searcher.FINISHED if not self.pending else None
            gid = self.space.genome_id(g)
            if gid not in self.done_ids and gid not in busy:
                self.pending[trial_id] = (gid, g)
                return {"genome": self.space.to_json(g), "genome_id": gid, "seed": self.seed_of(gid), **self.extra}
        self.exhausted = True
        return None

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the run store holds every trial and resume replays it."""

    def restore(self, checkpoint_path: str) -> None:
        """See `save`."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        gid, g = self.pending.pop(trial_id, (None, None))
        if gid is None:
            return
        metrics = {k: v for k, v in (result or {}).items()
                   if isinstance(v, (int, float, str)) and not k.startswith(("time_", "timestamp", "pid", "trial_"))
                   and k not in ("done", "training_iteration", "date", "hostname", "node_ip", "iterations_since_restore", "checkpoint_dir_name", "config")}
        node = str(metrics.pop("node", ""))
        final = bool(metrics.pop("final", False))
        if error or result is None or self.opt.objectives[0].metric not in metrics:
            status, reason = "failed", "the Tune trial raised (its error.txt is under the run's tune/ folder)"
        else:
            status, reason = "complete", None
            if not final:
                metrics["stopped_early"] = 1  # by the scheduler, after `epoch` epochs
        if self.record is not None:
            rec = self.record(g, status, metrics, reason, node)
        else:
            values = [float(metrics[o.metric]) for o in self.opt.objectives] if status == "complete" else None
            rec = TrialRecord(self._numbers, g, gid, status, metrics, values, {}, reason, node)
            self._numbers += 1
        if rec.complete:
            self.n_done += 1
            self.done_ids.add(gid)
        else:
            self.n_failed += 1
        self.opt.tell(rec)


def run_tune(run, opt, store, records: list[TrialRecord], progress_cb=None) -> tuple[int, int]:
    """`--runner tune`: the optimiser as Searcher, the per-epoch trainable, ASHA (or FIFO),
    `reuse_actors=True`. Returns (complete, failed) trial counts of this session."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter honours verbose=0
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from evaluators.executor import connect_ray
    from evaluators.tune_trainable import finetune_trainable
    from search.loop import trial_seed

    cfg, ev = run.cfg, run.evaluator
    from kernels.service import attach_service, stop_service

    started = connect_ray(cfg.address, cfg.ray.object_store_memory)
    try:
        attach_service(ev)  # tvm latency: one process on this node measures for every trial
        total = int(ray.cluster_resources().get("CPU", 1))
        workers = run.workers() or max(1, int(total // (cfg.ray.cpus_per_worker or 1)))
        cpw = cfg.ray.cpus_per_worker or max(1, total // workers)
        done_ids = {r.genome_id for r in records if r.complete}
        weights = run.dir / "trials"
        weights.mkdir(exist_ok=True)

        def record(g, status, metrics, reason, node):
            rec = store.record(g, status, metrics, reason, node)
            records.append(rec)
            if progress_cb:
                progress_cb(rec)
            return rec

        searcher = OptimizerSearcher(opt, cfg.budget, record, lambda gid: trial_seed(cfg.seed, gid), done_ids,
                                     {"weights_dir": str(weights.resolve())})
        epochs = max(1, math.ceil(ev.finetune.epochs))
        obj = cfg.objectives[0]
        if cfg.tune.scheduler == "asha" and epochs > 1:
            sched = ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=cfg.tune.grace_period,
                                  reduction_factor=cfg.tune.reduction_factor)
        else:
            sched = FIFOScheduler()
        trainable = tune.with_resources(
            tune.with_parameters(finetune_trainable, evaluator=ev.detached(), supernet_state=ev.supernet_state()),
            {"cpu": cpw})
        n0 = searcher.n_done
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(metric=obj.metric, mode="max" if obj.direction == "maximize" else "min",
                                        search_alg=searcher, scheduler=sched, num_samples=-1,
                                        max_concurrent_trials=workers, reuse_actors=True),
            run_config=tune.RunConfig(name="tune", storage_path=str(run.dir.resolve()), verbose=0,
                                      log_to_file=True))
        log.info("Ray Tune: %d concurrent trials (%g CPU each), scheduler %s, %d epochs per candidate",
                 workers, cpw, type(sched).__name__, epochs)
        tuner.fit()
        return searcher.n_done - n0, searcher.n_failed
    finally:
        stop_service(ev)
        if started:
            ray.shutdown()
