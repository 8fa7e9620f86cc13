"""Ray Tune as the second way in: any archsearch optimiser as a Tune `Searcher` (the engine's
`next` / `complete` behind suggest / on_trial_complete), and `search run ... --runner tune`,
which fine-tunes with the per-epoch trainable under a Tune scheduler (ASHA by default) and
records every trial in the run store like the loop does."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

from ray.tune.search import Searcher

from search.engine import DONE, WAIT, Engine
from search.progress import Progress
from search.records import TrialRecord
from search.store import MemoryStore

log = logging.getLogger(__name__)

# what Tune adds to every result, not a metric of the candidate's
TUNE_KEYS = (
    "done",
    "training_iteration",
    "date",
    "hostname",
    "node_ip",
    "iterations_since_restore",
    "checkpoint_dir_name",
    "config",
)


class OptimizerSearcher(Searcher):
    """An archsearch optimiser behind Tune's Searcher interface, through an `Engine` (the run's, or
    one over an in-memory store for `budget` complete trials). `on_record(record)` hears every
    recorded trial."""

    def __init__(
        self,
        optimizer,
        budget: int | None = None,
        engine: Engine | None = None,
        extra_config: dict | None = None,
        on_record: Callable[[TrialRecord], None] | None = None,
    ):
        obj = optimizer.objectives[0]
        super().__init__(metric=obj.metric, mode=obj.mode)
        self.opt = optimizer
        self.engine = engine or Engine(
            optimizer,
            MemoryStore(optimizer.space, optimizer.objectives, optimizer.constraints),
            budget if budget is not None else math.inf,
        )
        self.extra, self.on_record = dict(extra_config or {}), on_record
        self.trials: dict[str, str] = {}  # Tune trial id -> genome id
        self.curves: dict[str, list[dict]] = {}  # Tune trial id -> its per-epoch reports

    @property
    def n_done(self) -> int:
        return self.engine.n_done

    @property
    def n_failed(self) -> int:
        return self.engine.failures

    def suggest(self, trial_id: str):
        ticket = self.engine.next()
        if ticket == DONE:
            return Searcher.FINISHED
        if ticket == WAIT:
            return None
        self.trials[trial_id] = ticket.genome_id
        return {
            "genome": self.opt.space.to_json(ticket.genome),
            "genome_id": ticket.genome_id,
            "seed": ticket.seed,
            **self.extra,
        }

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the run store holds every trial and resume replays it."""

    def restore(self, checkpoint_path: str) -> None:
        """See `save`."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """An epoch's report: kept as the trial's learning curve."""
        if "epoch" in result and "val_acc" in result:
            curve = self.curves.setdefault(trial_id, [])
            epoch = max(int(result["epoch"]), curve[-1]["epoch"] + 1 if curve else 1)
            point = {"epoch": epoch}
            point.update({k: float(result[k]) for k in ("val_acc", "val_loss") if k in result})
            curve.append(point)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        gid = self.trials.pop(trial_id, None)
        if gid is None:
            return
        metrics = {
            k: v
            for k, v in (result or {}).items()
            if isinstance(v, (int, float, str))
            and not k.startswith(("time_", "timestamp", "pid", "trial_"))
            and k not in TUNE_KEYS
        }
        node = str(metrics.pop("node", ""))
        final = bool(metrics.pop("final", False))
        if error or result is None or self.opt.objectives[0].metric not in metrics:
            status, reason = (
                "failed",
                "the Tune trial raised (its error.txt is under the run's tune/ folder)",
            )
        else:
            status, reason = "complete", None
            if not final:
                metrics["stopped_early"] = 1  # by the scheduler, after `epoch` epochs
        curve = self.curves.pop(trial_id, [])
        rec = self.engine.complete(gid, status, metrics, reason, node, curve=curve)
        if self.on_record is not None:
            self.on_record(rec)


def _scheduler(cfg, epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.tune.scheduler == "asha" and epochs > 1:
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=epochs,
            grace_period=cfg.tune.grace_period,
            reduction_factor=cfg.tune.reduction_factor,
        )
    return FIFOScheduler()


def _tuner(run, searcher: OptimizerSearcher, workers: int, cpus: float):
    """The Tuner: the per-epoch trainable (evaluator and supernet shipped once), the scheduler,
    `workers` concurrent trials of `cpus` CPUs, actors reused."""
    from ray import tune

    from evaluators.executor import gpu_share
    from evaluators.tune_trainable import finetune_trainable

    cfg, ev = run.cfg, run.evaluator
    epochs = max(1, math.ceil(ev.finetune.epochs))
    sched = _scheduler(cfg, epochs)
    trainable = tune.with_resources(
        tune.with_parameters(
            finetune_trainable, evaluator=ev.detached(), supernet_state=ev.supernet_state()
        ),
        {"cpu": cpus, "gpu": gpu_share(ev, workers, cfg.ray.gpus_per_worker)},
    )
    obj = cfg.objectives[0]
    config = tune.TuneConfig(
        metric=obj.metric,
        mode=obj.mode,
        search_alg=searcher,
        scheduler=sched,
        num_samples=-1,
        max_concurrent_trials=workers,
        reuse_actors=True,
    )
    log.info(
        "Ray Tune: %d concurrent trials (%g CPU each), scheduler %s, %d epochs per candidate",
        workers,
        cpus,
        type(sched).__name__,
        epochs,
    )
    return tune.Tuner(
        trainable,
        tune_config=config,
        run_config=tune.RunConfig(
            name="tune", storage_path=str(run.dir.resolve()), verbose=0, log_to_file=True
        ),
    )


def run_tune(run, engine: Engine, progress: bool = True) -> dict:
    """`--runner tune`: the engine as Searcher, the per-epoch trainable, ASHA (or FIFO),
    `reuse_actors=True`. Returns the session's timings."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter honours verbose=0
    import ray

    from evaluators.executor import connect_ray

    cfg, ev = run.cfg, run.evaluator
    bar = Progress(engine.budget, engine.n_done, progress)
    started = connect_ray(cfg.address, cfg.ray.object_store_memory)
    t0 = time.time()
    try:
        ev.start_workers()  # tvm latency: one process on this node measures for every trial
        total = int(ray.cluster_resources().get("CPU", 1))
        workers = run.workers() or max(1, int(total // (cfg.ray.cpus_per_worker or 1)))
        cpus = cfg.ray.cpus_per_worker or max(1, total // workers)
        weights = run.dir / "trials"
        weights.mkdir(exist_ok=True)
        searcher = OptimizerSearcher(
            engine.opt,
            engine=engine,
            extra_config={"weights_dir": str(weights.resolve())},
            on_record=lambda rec: bar.update(engine.n_done, engine.status_line()),
        )
        _tuner(run, searcher, workers, cpus).fit()
        search_s = time.time() - t0
    finally:
        bar.close()
        try:
            ev.stop_workers()
            if started:
                ray.shutdown()
        finally:  # the front's latency check on a quiet machine: workers and Ray stopped
            run.finish_trials(engine)
    engine.raise_if_failed_out()
    return {"runner": "tune", "scheduler": cfg.tune.scheduler, "search_s": search_s}
