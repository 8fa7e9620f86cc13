"""The TVM latency providers:

- `tvm`: every candidate compiled with MetaSchedule-tuned kernels (its missing kernels tuned
  first, so the first candidates are slow and later ones reuse) and timed on the Relax VM.
- `tvm-transfer`: the kernels of a few networks spread over the space tuned at the run's start;
  every candidate compiled with those and, for kernels never tuned, the schedule of the nearest
  tuned kernel of the same operator (`kernels.tvm_transfer`), and timed; at the end the Pareto
  front is measured with its own kernels tuned and the transferred figures' error reported.
- `tvm-model`: every candidate priced by the latency model, fitted at the run's start on tuned
  whole-network measurements of a spread sample (cached per target, so later runs reuse them);
  at the end the Pareto front is measured for real and the model's error on it is reported.

TVM itself is imported only where a backend is made (`kernels.tvm_latency`)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
from torch import nn

from kernels.provider import LatencyProvider

log = logging.getLogger(__name__)


class TVMLatency(LatencyProvider):
    """`tvm`: tuned-kernel latency of every candidate. TVM lives in one long-lived process: this
    one (in-process runs), or the latency service actor on the driver's node that Ray workers
    send their candidates to (`start_service`), so every latency is measured on one machine."""

    name = "tvm"
    transfer: ClassVar[bool] = False  # tune a candidate's missing kernels; else transfer them

    def __init__(
        self,
        folder: str | Path,
        target: str | dict | None = None,
        trials_per_task: int = 32,
        strategy: str = "replay-trace",
        repeats: int = 20,
        check: bool = True,
        focus_trials: int = 0,
        focus_share: float = 0.8,
        light_trials: int | None = None,
        focus_budget: int = 0,
    ):
        self.folder = Path(folder).expanduser()
        # the tuning passes' settings: focus (second pass) and light (first pass)
        self.passes = dict(
            focus_trials=focus_trials,
            focus_share=focus_share,
            light_trials=light_trials,
            focus_budget=focus_budget,
        )
        self.target, self.trials_per_task, self.strategy = target, trials_per_task, strategy
        self.repeats, self.check = repeats, check
        self.service = None  # the latency service's actor handle while workers run
        self._backend = None
        self._stats: dict = {}  # the service's, kept when it stops
        self._served = False  # a service measured the search's candidates (its stats are those)

    @classmethod
    def from_config(cls, cfg, cache_dir) -> TVMLatency:
        return cls(database_folder(cfg, cache_dir), **tvm_settings(cfg))

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_backend"] = None  # TVM state stays in its process
        return d

    def backend(self):
        if self._backend is None:
            from kernels.tvm_latency import TVMBackend

            t0 = time.time()
            self._backend = TVMBackend(
                self.folder,
                self.target,
                self.trials_per_task,
                self.strategy,
                self.repeats,
                **self.passes,
            )
            log.info(
                "TVM ready for %s in %.1f s (tuning database %s)",
                self._backend.target,
                time.time() - t0,
                self._backend.db.dir,
            )
        return self._backend

    def measure(self, model: nn.Module, resolution: int) -> dict:
        if self.service is not None:
            return self.measure_later(model, resolution)()
        return self.backend().measure(
            model, resolution, tune=not self.transfer, check=self.check, transfer=self.transfer
        )

    def measure_later(self, model: nn.Module, resolution: int):
        """With the service (Ray workers), the candidate is sent now (a copy: the caller may
        train it meanwhile) and compiled and timed while the worker fine-tunes it."""
        if self.service is None:
            return super().measure_later(model, resolution)
        import ray

        ref = self.service.measure.remote(model, resolution)
        return lambda: ray.get(ref)

    def start_service(self) -> None:
        from kernels.service import start_service

        if self.service is None:
            self.service = start_service(self)

    def stop_service(self) -> None:
        from kernels.service import stop_service

        if self.service is not None:
            self._stats = stop_service(self.service) or self._stats
            self.service, self._served = None, True

    def finish_run(self, space, supernet, run_dir: Path, front: list) -> None:
        """latency.json: the target, the kernels seen and tuned (reuse) and the time spent."""
        (Path(run_dir) / "latency.json").write_text(
            json.dumps({"provider": self.name, **self.stats()}, indent=2)
        )

    def stats(self) -> dict:
        if self.service is not None:
            import ray

            return ray.get(self.service.stats.remote())
        if self._served or self._backend is None:
            return dict(self._stats)
        b = self._backend
        return {"target": str(b.target), "database": str(b.db.dir), **b.db.stats, **b.quiet}


class TVMModelLatency(TVMLatency):
    """`tvm-model`: candidates priced by the latency model (one PyTorch forward pass each, no TVM
    in the workers); the model is fitted at the run's start, checked on held-out networks and, at
    the end, on the run's Pareto front, all measured with tuned kernels in `rounds` interleaved
    rounds (a single timing on a busy shared machine strays from its median by more than the
    differences between candidates; benchmarks/results/latency.md measures by how much)."""

    name = "tvm-model"

    def __init__(
        self,
        folder,
        target=None,
        trials_per_task: int = 32,
        strategy: str = "replay-trace",
        repeats: int = 20,
        check: bool = True,
        fit_networks: int = 12,
        holdout: int = 4,
        check_front: int = 8,
        rounds: int = 5,
        **focus,
    ):
        super().__init__(folder, target, trials_per_task, strategy, repeats, check, **focus)
        self.fit_networks, self.holdout, self.check_front, self.rounds = (
            fit_networks,
            holdout,
            check_front,
            rounds,
        )
        self.model = None

    @classmethod
    def from_config(cls, cfg, cache_dir) -> TVMModelLatency:
        return cls(
            database_folder(cfg, cache_dir),
            **tvm_settings(cfg),
            fit_networks=cfg.fit_networks,
            holdout=cfg.holdout,
            check_front=cfg.check_front,
            rounds=cfg.rounds,
        )

    def start_service(self) -> None:
        """Candidates are priced by the model in each worker: no service."""

    def measure(self, model: nn.Module, resolution: int) -> dict:
        from kernels.latency_model import torch_ops

        if self.model is None:
            raise RuntimeError("the latency model is not fitted (prepare_run was not called)")
        return {
            "latency_ms": self.model.predict_ms(torch_ops(model, resolution)),
            "latency_source": self.name,
        }

    def prepare_run(self, space, supernet, run_dir: Path, seed: int) -> None:
        """Measure (or find measured) a spread sample of the space with tuned kernels, fit the
        model on all of it but the held-out networks, and report its error on those."""
        from kernels.latency_model import LatencyModel
        from kernels.tvm_latency import row_ms, spread_genomes

        b, t0 = self.backend(), time.time()
        genomes = spread_genomes(space, self.fit_networks + self.holdout, seed)
        step = max(1, len(genomes) // max(1, self.holdout))
        holdout_ids = {space.genome_id(g) for g in genomes[1:][::step][: self.holdout]}
        rows = self._measured(space, supernet, genomes)
        hold = [(gid, n) for gid, n in rows if gid in holdout_ids]
        hold_keys = {n["key"] for _, n in hold}
        # this run's sample only, so that the same config and seed price candidates the same way
        fit = [n for _, n in rows if n["key"] not in hold_keys]
        self.model = b.fit_model(fit)
        errors = []
        for gid, n in hold:
            pred = self.model.predict_ms(LatencyModel.ops_from_json(n["ops"]))
            errors.append(
                {
                    "genome_id": gid,
                    "measured_ms": row_ms(n),
                    "predicted_ms": pred,
                    "error_pct": 100 * abs(pred - row_ms(n)) / row_ms(n),
                }
            )
        mape = float(np.mean([e["error_pct"] for e in errors])) if errors else None
        report = {
            "provider": self.name,
            "target": str(b.target),
            "database": str(b.db.dir),
            "model": self.model.describe(),
            "fit_networks": len(fit),
            "rounds": self.rounds,
            "holdout": errors,
            "holdout_mape": mape,
            "prepare_s": time.time() - t0,
            **b.db.stats,
        }
        (Path(run_dir) / "latency.json").write_text(json.dumps(report, indent=2))
        log.info(
            "latency model: fitted on %d networks, held-out error %s %%",
            len(fit),
            f"{mape:.1f}" if errors else "n/a",
        )

    def _measured(self, space, supernet, genomes) -> list[tuple[str, dict]]:
        """(genome id, networks.jsonl row) of each genome measured in `rounds` rounds with tuned
        kernels, measuring those the database lacks; networks that could not be fully tuned are
        left out."""
        from kernels.latency_model import torch_ops
        from kernels.tvm_latency import network_key

        b = self.backend()
        known, keys, todo = b.networks(), [], []
        for g in genomes:
            model = space.build(g, supernet)
            r = space.arch(g).resolution
            keys.append(network_key(torch_ops(model, r), r))
            row = known.get(keys[-1])
            if row is None or len(row.get("rounds_ms") or [row["ms"]]) < self.rounds:
                todo.append((model, r))  # not measured, or in fewer rounds
        if todo:
            log.info(
                "latency model: measuring %d of %d networks with tuned kernels, "
                "%d interleaved rounds",
                len(todo),
                len(genomes),
                self.rounds,
            )
            b.measure_rounds(
                todo,
                self.rounds,
                tune=True,
                progress=lambda i, n: log.info(
                    "latency model: network %d/%d tuned and compiled", i, n
                ),
            )
            known = b.networks()
        rows = []
        for g, key in zip(genomes, keys):
            if key in known:
                rows.append((space.genome_id(g), known[key]))
            else:
                log.warning(
                    "network %s could not be fully tuned; left out of the model", space.genome_id(g)
                )
        return rows

    def finish_run(self, space, supernet, run_dir: Path, front: list) -> None:
        """Measure the front's networks (up to `check_front`) with tuned kernels; add the model's
        error on them to latency.json."""
        path = Path(run_dir) / "latency.json"
        report = json.loads(path.read_text()) if path.exists() else {"provider": self.name}
        b = self.backend()
        checks = []
        for rec, m in measure_front(b, space, supernet, front, self.check_front, self.rounds):
            pred = rec.metrics["latency_ms"]
            checks.append(
                {
                    "trial": rec.number,
                    "genome_id": rec.genome_id,
                    "predicted_ms": pred,
                    "measured_ms": m["latency_ms"],
                    "source": m["latency_source"],
                    "error_pct": 100 * abs(pred - m["latency_ms"]) / m["latency_ms"],
                }
            )
        report["front"] = checks
        report["front_mape"] = float(np.mean([c["error_pct"] for c in checks])) if checks else None
        report.update(b.db.stats)
        path.write_text(json.dumps(report, indent=2))
        if checks:
            log.info(
                "latency model on the Pareto front: %.1f %% mean error over %d networks "
                "measured with tuned "
                "kernels",
                report["front_mape"],
                len(checks),
            )


class TVMTransferLatency(TVMLatency):
    """`tvm-transfer`: every candidate timed with tuned or transferred kernels (its
    `latency_source` says which: `tvm` when all its kernels were tuned, else
    `tvm-transferred-N-of-M`, or `tvm-untuned-...` for kernels no schedule replays on). Tuning
    happens at the run's start, on `seed_networks` networks spread over the space's FLOPs (the
    full network first), and at the end, on the front's networks (up to `check_front`)."""

    name = "tvm-transfer"
    transfer = True

    def __init__(
        self,
        folder,
        target=None,
        trials_per_task: int = 8,
        strategy: str = "replay-trace",
        repeats: int = 20,
        check: bool = True,
        seed_networks: int = 3,
        check_front: int = 4,
        rounds: int = 3,
        transfer_pick: str = "fastest",
        transfer_tries: int = 3,
        transfer_share: float = 1.0,
        check_transfer: bool = True,
        **focus,
    ):
        super().__init__(folder, target, trials_per_task, strategy, repeats, check, **focus)
        self.seed_networks, self.check_front, self.rounds = seed_networks, check_front, rounds
        self.transfer_options = dict(pick=transfer_pick, tries=transfer_tries, share=transfer_share)
        self.check_transfer = check_transfer
        self._report: dict = {}
        self._beside: _Beside | None = None  # the seed tuning begun beside the pre-training

    def backend(self):
        b = super().backend()
        if b.transfer is None:
            from kernels.tvm_transfer import Transfer

            b.transfer = Transfer(**self.transfer_options)
        return b

    @classmethod
    def from_config(cls, cfg, cache_dir) -> LatencyProvider:
        """The provider; on a host where TVM cannot be loaded, PyTorch eager timing instead, said
        once here and on every trial (`latency_source: torch`). A target TVM rejects is an error."""
        try:
            from kernels.tvm_compile import load_tvm

            load_tvm()
        except (ImportError, OSError, RuntimeError) as e:
            from kernels.torch_timing import TorchLatency

            log.warning(
                "latency: TVM cannot be loaded on this host (%s); candidates are timed with "
                "PyTorch eager instead (latency_source: torch)",
                str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__,
            )
            return TorchLatency.from_config(cfg, cache_dir)
        return cls(
            database_folder(cfg, cache_dir),
            **tvm_settings(cfg),
            seed_networks=cfg.seed_networks,
            check_front=cfg.check_front,
            rounds=cfg.rounds,
            transfer_pick=cfg.transfer_pick,
            transfer_tries=cfg.transfer_tries,
            transfer_share=cfg.transfer_share,
            check_transfer=cfg.check_transfer,
        )

    @contextlib.contextmanager
    def beside_setup(self, space, seed: int):
        """The seed tuning begun beside the block (the supernet's pre-training, whose sandwich
        threads leave about a fifth of 2 cores idle as they wait on each other): its candidates
        built in that idle time, on threads of the lowest priority, and timed once the block
        ends (`kernels.tvm_tuning.Quiet`); `prepare_run` then waits for it. The seed networks'
        kernels are found first, on this thread (torch.export is not run beside the training
        threads), from the space's untrained supernet: a kernel is its shapes, not its weights."""
        b = self.backend()
        if not b.db.runner.get("in_process"):  # MetaSchedule's runner process would time now
            yield
            return
        t0 = time.time()
        found = self._seed_kernels(space, space.supernet(seed), seed)
        self._beside = _Beside(seed, time.time() - t0)
        b.db.quiet = self._beside.quiet  # before the tuning starts: it must not hold the cores
        self._beside.start(lambda: self._seed_tuning(space, *found))
        ok = False
        try:
            yield
            ok = True
        finally:
            self._beside.quiet.open(abandoned=not ok)

    def prepare_run(self, space, supernet, run_dir: Path, seed: int) -> None:
        """Tune the kernels of the seed networks that the database lacks, all in one MetaSchedule
        session (each session starts its runner process and tuning contexts anew), or wait for
        that tuning where `beside_setup` began it."""
        beside, self._beside = self._beside, None
        if beside is not None:  # never two tunings of one database at once
            report, waited = beside.result()
            self.backend().db.quiet = None
        if beside is not None and beside.seed == seed:
            self._report = {**report, "seed_tuning_beside": True}
            self._report["prepare_s"] = beside.before_s + waited
        else:
            t0 = time.time()
            self._report = self._seed_tuning(space, *self._seed_kernels(space, supernet, seed))
            self._report.update(seed_tuning_beside=False, prepare_s=time.time() - t0)
        self._write(run_dir)

    def _seed_kernels(self, space, supernet, seed: int) -> tuple:
        """The seed networks, their kernels where the database lacks a measurement of the whole
        network, the kernel keys of those it has, and how many it has."""
        from kernels.tvm_latency import spread_genomes

        b = self.backend()
        genomes = spread_genomes(space, self.seed_networks, seed)
        kernels, known, before = [], set(), 0  # known: kernels of seed networks tuned before
        for g in genomes:
            model, r = space.build(g, supernet), space.arch(g).resolution
            keys = b.tuned_before(model, r)
            if keys is None:
                kernels += b.kernels_of(model, r)
            else:
                known, before = known | keys, before + 1
        return [space.genome_id(g) for g in genomes], kernels, known, before

    def _seed_tuning(self, space, genome_ids, kernels, known, before) -> dict:
        """`_seed_kernels`' kernels the database lacks tuned; the report's seed fields."""
        from kernels.tvm_tuning import still_beside

        b = self.backend()
        todo, tuning_s0 = len(b.db.missing(kernels)), b.db.stats["tuning_s"]
        distinct = len({k.key for k in kernels} | known)
        log.info(
            "latency: %d seed networks, %d distinct kernels, %d to tune (%d trials each)%s",
            len(genome_ids),
            distinct,
            todo,
            self.trials_per_task,
            ", built beside the pre-training" if still_beside(b.db.quiet) else "",
        )
        screened = b.db.stats["trials_screened"]
        b.db.tune(kernels, focus=False)  # transfer sources: more trials did not transfer better
        return {
            "provider": self.name,
            "target": str(b.target),
            "database": str(b.db.dir),
            "seed_networks": genome_ids,
            "seed_kernels": distinct,
            "seed_networks_tuned_before": before,
            "seed_kernels_tuned": todo,
            # from its start, with the time it built beside the pre-training
            "seed_tuning_s": b.db.stats["tuning_s"] - tuning_s0,
            # trials the tuning runner's brief first timing ruled out (kernels.tvm_tuning.RUNNER)
            "seed_trials_screened": b.db.stats["trials_screened"] - screened,
            "trials_per_task": self.trials_per_task,
        }

    def _write(self, run_dir: Path) -> None:
        report = {**self._report, **self.stats()}
        (Path(run_dir) / "latency.json").write_text(json.dumps(report, indent=2))

    def finish_run(self, space, supernet, run_dir: Path, front: list) -> None:
        """Measure the front's networks (up to `check_front`) with their own kernels tuned, in
        `rounds` interleaved rounds; the transferred figures' error on them into latency.json.
        With `check_transfer`, each new kernel's tuning also times its transferred schedules (the
        ones the search could pick from) and keeps the fastest of those and its trials; a network
        then timed over its search figure by more than `BOUND_SLACK` is timed in more rounds
        (`TVMBackend.time_rounds`: its check kernels include the ones it was priced with, so that
        reads a slow spell)."""
        b, t0 = self.backend(), time.time()
        before = {**b.db.stats, **b.quiet}
        measured = measure_front(
            b,
            space,
            supernet,
            front,
            self.check_front,
            self.rounds,
            one_session=True,
            reuse=True,
            seeds=b.transfer if self.check_transfer else None,
            bounded=self.check_transfer,
        )
        after = {**b.db.stats, **b.quiet}
        self._report.update({k: after[c] - before[c] for k, c in CHECK_COUNTS.items()})
        checks = []
        for rec, m in measured:
            got = rec.metrics["latency_ms"]
            checks.append(
                {
                    "trial": rec.number,
                    "genome_id": rec.genome_id,
                    "source": rec.metrics.get("latency_source"),
                    "reported_ms": got,
                    "tuned_ms": m["latency_ms"],
                    "tuned_source": m["latency_source"],
                    "error_pct": 100 * abs(got - m["latency_ms"]) / m["latency_ms"],
                    # timed in more than `rounds` when over its search figure (a slow spell)
                    "rounds": len(m.get("latency_rounds_ms") or []),
                }
            )
        self._report["front"] = checks
        self._report["front_mape"] = (
            float(np.mean([c["error_pct"] for c in checks])) if checks else None
        )
        self._report["front_s"] = time.time() - t0
        self._write(run_dir)
        if checks:
            log.info(
                "latency on the Pareto front: %.1f %% mean error against %d networks measured "
                "with their own kernels tuned",
                self._report["front_mape"],
                len(checks),
            )

    def stats(self) -> dict:
        out = super().stats()
        # served: the service's figures (its transfers), not this process's backend, which
        # only tuned the seeds and checked the front
        if not self._served and self._backend is not None and self._backend.transfer is not None:
            out.update(self._backend.transfer.stats)
        return out


# what latency.json says of the front check: the backend's counters (`TuningDB.stats`,
# `TVMBackend.quiet`) it moved
CHECK_COUNTS = {
    "front_kernels_tuned": "tasks_tuned",
    "front_kernels_focused": "tasks_focused",
    "front_kernels_over_budget": "tasks_over_budget",  # chosen, left out by `focus_budget`
    "front_kernels_light": "tasks_light",
    "front_trials_screened": "trials_screened",  # ruled out by their brief timing
    "front_transferred_candidates": "transferred_candidates",
    "front_picks_reused": "picks_reused",  # of those, the search's own picks (`TuningDB._seed`)
    # its timings waiting out the host's slow spells (`TVMBackend._await_quiet`)
    "front_host_slow_probes": "host_slow_probes",
    "front_host_wait_s": "host_wait_s",
    # its timings taken again for running beside other busy processes, or in a slow spell
    # (`TVMBackend.time`)
    "front_busy_timings": "busy_timings",
    "front_slow_timings": "slow_timings",
}


def measure_front(
    backend,
    space,
    supernet,
    front,
    n: int,
    rounds: int,
    one_session=False,
    reuse=False,
    seeds=None,
    bounded=False,
):
    """(record, measurement) of the first `n` front records with a latency, each network measured
    with its own kernels tuned, in `rounds` interleaved rounds (`TVMBackend.measure_rounds`;
    `reuse`: a network measured so before is not measured again; `seeds`: transferred schedules
    as tuning candidates; `bounded`: each network's reported figure is its bound, timed in more
    rounds while over it: with `seeds`, the schedules it was priced with are among the check's)."""
    recs = [r for r in front[:n] if r.metrics.get("latency_ms") is not None]
    items = [(space.build(r.genome, supernet), space.arch(r.genome).resolution) for r in recs]
    if not items:
        return []
    log.info(
        "latency: the front's first %d network%s, measured with their own kernels tuned "
        "(%d interleaved rounds; a network measured so before is not measured again)",
        len(items),
        "" if len(items) == 1 else "s",
        rounds,
    )
    return list(
        zip(
            recs,
            backend.measure_rounds(
                items,
                rounds,
                tune=True,
                one_session=one_session,
                reuse=reuse,
                seeds=seeds,
                bounds=[r.metrics["latency_ms"] for r in recs] if bounded else None,
            ),
        )
    )


def database_folder(cfg, cache_dir) -> Path:
    """The tuning databases' folder: `latency.database`, else <cache>/tvm."""
    return Path(cfg.database or Path(cache_dir) / "tvm")


def tvm_settings(cfg) -> dict:
    """The TVM settings of a `latency:` section, its target checked now, before any work."""
    from kernels.tvm_compile import host_target

    try:
        host_target(cfg.target)
    except Exception as e:  # noqa: BLE001 - TVM raises its own error types
        raise ValueError(f"not a TVM target: {str(e).strip().splitlines()[-1][:200]}") from None
    return dict(
        target=cfg.target,
        trials_per_task=cfg.trials_per_task,
        strategy=cfg.strategy,
        repeats=cfg.repeats,
        focus_trials=cfg.focus_trials,
        focus_share=cfg.focus_share,
        light_trials=cfg.light_trials,
        focus_budget=cfg.focus_budget,
    )


class _Beside:
    """A seed tuning run on its own thread from `beside_setup` on: `quiet` opens when the
    pre-training ends; `result` waits for the tuning and gives its report and the seconds waited.
    `before_s`: finding its kernels, before the pre-training began."""

    def __init__(self, seed: int, before_s: float):
        from kernels.tvm_tuning import Quiet

        self.seed, self.quiet, self.before_s = seed, Quiet(), before_s
        self.report, self.error, self.thread = None, None, None

    def start(self, tune) -> None:
        self.thread = threading.Thread(
            target=self._run, args=(tune,), name="archsearch-seed-tuning", daemon=False
        )  # not a daemon: the process ends once it does (an abandoned one at its first timing)
        self.thread.start()

    def _run(self, tune) -> None:
        try:
            self.report = tune()
        except BaseException as e:  # noqa: BLE001 - raised where the run waits for it
            self.error = e

    def result(self) -> tuple[dict, float]:
        t0 = time.time()
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.report, time.time() - t0
