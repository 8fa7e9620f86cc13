"""A run: its folder, its config, its evaluator and optimiser, and the engine between them.

A run folder holds the resolved `config.yaml`, the study (`study.journal`), the weights of every
trained trial (`trials/`), `supernet.json`, `pareto.json`, `best/`, `timings.json` and the
report. `Run.execute` sets the evaluator and the optimiser up, replays the stored trials
(resume), hands the engine to a runner (`search.loop` or `search.tune_search`) and writes the
outputs, also when the search stops early."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from evaluators.registry import make_evaluator
from search.config import RunCfg, load_run_config, resolve_run_config
from search.engine import Engine, trial_seed
from search.optimizers import optimizer_class
from search.progress import pretrain_progress
from search.records import TrialRecord, best, pareto_front
from search.runlock import LOCK_FILE, RunLock
from search.runs import REFERENCE, front_checks
from search.store import JOURNAL, RunStore, load_records
from search.tracking import TensorBoardLog
from spaces.errors import ArchsearchError, ConfigError
from spaces.layers import input_channels
from spaces.space import Space

log = logging.getLogger("archsearch.run")


def _fresh_folder(name: str) -> Path:
    """runs/<space>-<time>, with a suffix if another run started in the same second."""
    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    n, path = 1, base
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _write_atomic(path: Path, text: str) -> None:
    """Write a file so that it is never seen half-written (a full disk keeps the old one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_metrics(cfg: RunCfg, evaluator, file: str | None) -> None:
    """Every objective and constraint names a metric the evaluator gives."""
    known = set(evaluator.metrics)
    fields = [(f"objectives.{i}.metric", o.metric) for i, o in enumerate(cfg.objectives)]
    fields += [(f"constraints.{i}.metric", c.metric) for i, c in enumerate(cfg.constraints)]
    for field, metric in fields:
        if metric not in known:
            raise ConfigError(
                file,
                field,
                f"unknown metric {metric!r}; the {evaluator.kind} evaluator gives "
                f"{', '.join(sorted(known))}",
            )


class Run:
    """A run folder and everything needed to go on with it."""

    def __init__(self, run_dir: Path, cfg: RunCfg, space: Space, file: str | None):
        self.dir, self.cfg, self.space, self.file = Path(run_dir), cfg, space, file
        self.executor = None  # while the loop runner executes: where evaluations run
        self.lock: RunLock | None = None  # the folder's lock while this process owns it
        self.created = False  # this process made the folder
        self.evaluator = make_evaluator(cfg, space, file)
        check_metrics(cfg, self.evaluator, file)
        opt_cls = optimizer_class(cfg.optimizer.name, file)
        self.opt_options = opt_cls.parse_options(cfg.optimizer.options, file)
        opt_cls.check_space(space, file)
        opt_cls.check_options(space, self.opt_options, file)
        self.opt_cls = opt_cls
        kind = self.evaluator.kind
        if opt_cls.needs_model and not self.evaluator.provides_model:
            raise ConfigError(
                file,
                "optimizer.name",
                f"{opt_cls.name} prunes a trained network; the {kind} "
                "evaluator has none (it needs evaluator.kind train)",
            )
        self._check_places(file)
        if cfg.runner == "tune" and not self.evaluator.fine_tunes:
            raise ConfigError(
                file,
                "runner",
                f"the tune runner fine-tunes candidates; the {kind} evaluator does "
                "not (it needs evaluator.kind train)",
            )

    def _check_places(self, file: str | None) -> None:
        """Where the run will store and compute must answer now, not hang later: an Optuna storage
        URL must name a known database, a Ray cluster's address must accept a connection."""
        cfg = self.cfg
        if cfg.storage:
            from sqlalchemy.engine import make_url

            try:
                make_url(cfg.storage).get_dialect()
            except Exception as e:  # noqa: BLE001 - sqlalchemy raises several kinds
                raise ConfigError(
                    file, "storage", f"not a database URL Optuna can use ({e})"
                ) from None
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if address and (cfg.runner == "tune" or self.workers() != 0):
            from evaluators.executor import check_ray_address

            check_ray_address(address, cfg.ray.connect_timeout, file)

    def workers(self) -> int | None:
        """0 (in-process), N, or None (one per core on Ray)."""
        if self.cfg.workers is not None:
            return self.cfg.workers
        if not self.evaluator.fine_tunes or (os.cpu_count() or 1) == 1 and not self.cfg.address:
            return 0  # look-ups gain nothing from workers
        return None

    @classmethod
    def create(
        cls,
        config: str,
        out: str | None,
        sets: list[str],
        flags: dict[str, Any],
        overwrite: bool = False,
        **objects,
    ) -> Run:
        """A new run of a run file (`objects`: what Python hands the family, `model=`)."""
        cfg, space, resolved = load_run_config(config, sets, flags, **objects)
        return cls._new(cfg, space, resolved, out, config, overwrite)

    @classmethod
    def create_from(
        cls, data: dict[str, Any], out: str | None, file: str = "<python>", **objects
    ) -> Run:
        """A new run of a run file's mapping, from Python."""
        cfg, space, resolved = resolve_run_config(data, file, **objects)
        return cls._new(cfg, space, resolved, out, file)

    @classmethod
    def _new(
        cls,
        cfg: RunCfg,
        space: Space,
        resolved: dict,
        out: str | None,
        file: str,
        overwrite: bool = False,
    ) -> Run:
        """The run's folder created and locked, its config written, once everything is valid."""
        run_dir = Path(out) if out else _fresh_folder(space.name)
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(str(run_dir), "--out", "is a file, not a folder")
        run = cls(run_dir, cfg, space, file)  # every check of the config, before any writing
        created = not run_dir.exists()
        try:
            run.dir.mkdir(parents=True, exist_ok=True)
            run.lock = RunLock(run.dir).acquire()
        except PermissionError:
            raise ConfigError(
                str(run_dir), "--out", "cannot be written (permission denied)"
            ) from None
        try:
            if (run.dir / "config.yaml").exists():
                raise ConfigError(
                    str(run_dir),
                    "--out",
                    "already holds a run; use `search resume` or another folder",
                )
            others = [p.name for p in run.dir.iterdir() if p.name != LOCK_FILE]
            if others and not overwrite:
                raise ConfigError(
                    str(run_dir),
                    "--out",
                    f"is not empty ({', '.join(sorted(others)[:3])}...); another folder, or "
                    "--overwrite to write into it",
                )
            (run.dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        except BaseException:
            run.close(remove=created)
            raise
        run.created = created
        return run

    @classmethod
    def open(
        cls,
        run_dir: str,
        sets: list[str] | None = None,
        flags: dict[str, Any] | None = None,
        **objects,
    ) -> Run:
        """An existing run, locked; a changed config (`--set`, flags) is checked against the stored
        trials before it replaces config.yaml (the old one kept as config.N.yaml)."""
        path = Path(run_dir)
        cfg_file = path / "config.yaml"
        if not cfg_file.exists():
            raise ConfigError(str(path), None, "not a run folder (no config.yaml)")
        try:
            lock = RunLock(path).acquire()
        except PermissionError:
            raise ConfigError(str(path), None, "cannot be written (permission denied)") from None
        try:
            cfg, space, resolved = load_run_config(cfg_file, sets, flags, **objects)
            run = cls(path, cfg, space, str(cfg_file))
            run.lock = lock
            if sets or any(v is not None for v in (flags or {}).values()):
                run._check_change(resolved)
                keep = next(
                    path / f"config.{n}.yaml"
                    for n in range(1, 10**6)
                    if not (path / f"config.{n}.yaml").exists()
                )
                os.replace(cfg_file, keep)
                _write_atomic(cfg_file, yaml.safe_dump(resolved, sort_keys=False))
                log.info("config changed; the previous one is %s", keep.name)
        except BaseException:
            lock.release()
            raise
        return run

    def _check_change(self, resolved: dict) -> None:
        """A changed config must fit the stored trials: their genomes in its space, its objectives
        the study's, its budget no lower than the trials already complete."""
        import optuna

        from search.store import STUDY_NAME, open_storage

        field = "--set"
        try:
            study = optuna.load_study(
                study_name=STUDY_NAME, storage=open_storage(self.dir, self.cfg.storage)
            )
        except KeyError:
            return  # nothing stored yet
        dirs = [d.name.lower() for d in study.directions]
        if dirs != [o.direction for o in self.cfg.objectives]:
            raise ConfigError(
                str(self.dir),
                "objectives",
                f"the stored study has objectives {dirs}; "
                f"the changed config has {[o.direction for o in self.cfg.objectives]}",
            )
        try:
            records = load_records(
                self.dir, self.cfg.storage, self.space, self.cfg.objectives, self.cfg.constraints
            )
        except (ArchsearchError, KeyError, ValueError, TypeError) as e:
            raise ConfigError(
                str(self.dir),
                field,
                f"the stored trials do not fit the changed config ({type(e).__name__}: {e})",
            ) from None
        done = len({r.genome_id for r in records if r.complete})
        if self.cfg.budget < done:
            raise ConfigError(
                str(self.dir),
                "--budget",
                f"{self.cfg.budget} is below the {done} trials already complete",
            )

    def close(self, remove: bool = False) -> None:
        """Release the run folder (and remove it, if this process made it and it failed)."""
        lock, self.lock = getattr(self, "lock", None), None
        if lock is not None:
            lock.release()
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- the search ------------------------------------------------------------------------------
    def execute(self, progress: bool = True) -> int:
        """Set up, search until the budget (or the optimiser stops), write the outputs; the
        folder is released at the end. A new run whose set-up finds bad input (a dataset that
        does not load, say) leaves no folder behind, so the same `--out` can be used again."""
        try:
            return self._execute(progress)
        except ConfigError:
            self.close(remove=self.created and not self._has_trials())
            raise
        finally:
            self.close()

    def _has_trials(self) -> bool:
        journal = self.dir / JOURNAL
        return self.cfg.storage is not None or (
            journal.exists() and b'"op_code":4' in journal.read_bytes()
        )

    def _execute(self, progress: bool) -> int:
        t0 = time.time()
        engine = self.start(progress)
        setup_s, n0 = time.time() - t0, engine.n_done
        log.info(
            "setup %.1f s; searching %s with %s, budget %d",
            setup_s,
            engine.opt.space.name,
            engine.opt.name,
            engine.budget,
        )
        if self.cfg.runner == "tune":
            from search.tune_search import run_tune as runner
        else:
            from search.loop import run_loop as runner
        t_fin = None
        try:
            timings = runner(self, engine, progress)
            t_fin = time.time()
        finally:
            self.write_outputs(self.evaluator.space, engine.store.records())
            engine.opt.finish(self.dir)
            if t_fin is not None:  # a session that ended as it should
                trials = engine.n_done - n0 + engine.failures
                self._write_timings(
                    {
                        **timings,
                        "setup_s": setup_s,
                        "finish_s": time.time() - t_fin,
                        "trials": trials,
                    }
                )
            self.report()
        log.info(
            "done: %d complete trials, %d failed in this session (%s)",
            engine.n_done,
            engine.failures,
            timings["runner"],
        )
        return 0

    def start(self, progress: bool) -> Engine:
        """The evaluator set up, the optimiser prepared and told every stored trial (resume)."""
        cfg = self.cfg
        self.evaluator.run_starting(cfg.seed)  # the latency's preparation may begin in setup
        self.evaluator.setup(progress=pretrain_progress(progress))
        space = self.evaluator.space  # with the dataset's classes
        self._write_supernet_point(space)
        info = self.evaluator.data_info()
        if info:  # data.json: the dataset, its input shape and normalisation (exports need them)
            _write_atomic(self.dir / "data.json", json.dumps(info, indent=2))
        self.evaluator.run_started(self.dir, cfg.seed)
        self._reference(space)
        store = RunStore(self.dir, space, cfg.objectives, cfg.constraints, cfg.storage)
        opt = self.opt_cls(space, cfg.objectives, cfg.constraints, cfg.seed, self.opt_options)
        opt.know(self.evaluator.known_metrics, self.evaluator.known)
        opt.attach(self.dir)
        if opt.needs_model:
            opt.prepare(self.evaluator.trained_model())
        max_failures = cfg.max_failures if cfg.max_failures is not None else max(10, cfg.budget)
        engine = Engine(opt, store, cfg.budget, cfg.seed, max_failures)
        engine.on_record.append(TensorBoardLog(self.dir))
        if engine.replay():
            log.info("resuming %s: %d complete trials of %d", self.dir, engine.n_done, cfg.budget)
        return engine

    def _reference(self, space: Space) -> None:
        """reference.json: the base network (the full genome) evaluated like every candidate
        (fine-tuned with the same recipe, timed by the same latency provider), once per run, so
        that show and the report can say how the front compares with it."""
        path = self.dir / REFERENCE
        if not self.cfg.reference or path.exists():
            return
        full = space.full()
        gid = space.genome_id(full)
        log.info("evaluating the base network (the full genome) as the run's reference")
        res = self.evaluator.evaluate(full, trial_seed(self.cfg.seed, gid))
        if res.status != "complete":
            log.warning("the base network could not be evaluated: %s", res.reason)
            return
        ref = {"genome_id": gid, "metrics": res.metrics, "curve": res.curve}
        _write_atomic(path, json.dumps(ref, indent=2, default=str))

    def finish_trials(self, engine: Engine) -> None:
        """After the last trial, once the workers, the latency service and embedded Ray have
        stopped (with them up, the run's check read 10 and 17 % above the same compiled networks
        timed later in a quiet process; an idle Ray alone slowed timings by 3-5 % here): the
        evaluator's own check of the front (tvm-model and tvm-transfer measure it); never fails
        the run."""
        try:
            front = pareto_front([r for r in engine.store.records() if r.complete], engine.signs)
            self.evaluator.run_finished(self.dir, front)
        except Exception as e:  # noqa: BLE001 - a check never loses the run's results
            log.warning("could not check the latency of the front: %s", e)

    # --- outputs ---------------------------------------------------------------------------------
    def _write_supernet_point(self, space) -> None:
        """supernet.json: the full network's cost and what the evaluator knows of it, for the
        report."""
        point = {
            **space.cost(space.full()),
            "genome_id": space.genome_id(space.full()),
            **self.evaluator.base_point(),
        }
        _write_atomic(self.dir / "supernet.json", json.dumps(point, indent=2))

    def report(self) -> None:
        """report.html and its PNGs; a failure here never fails the run."""
        try:
            from search.report import write_report

            log.info("report: %s", write_report(self.dir))
        except Exception as e:  # noqa: BLE001
            log.warning("could not write the report: %s", e)

    def _write_timings(self, entry: dict) -> None:
        """timings.json: one entry per session of this run (run, then each resume)."""
        path = self.dir / "timings.json"
        try:
            sessions = json.loads(path.read_text()) if path.exists() else []
        except json.JSONDecodeError:
            sessions = []
        rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in entry.items()}
        sessions.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **rounded})
        _write_atomic(path, json.dumps(sessions, indent=2))

    def write_outputs(self, space: Space, records: list[TrialRecord]) -> None:
        """pareto.json and best/ (genome, metrics, state dict and TorchScript of the best model)."""
        signs = [o.sign for o in self.cfg.objectives]
        front = pareto_front(records, signs)

        def entry(r: TrialRecord) -> dict:
            return {
                "trial": r.number,
                "genome_id": r.genome_id,
                "values": r.values,
                "feasible": r.feasible,
                "metrics": dict(r.metrics),
                "genome": space.to_json(r.genome),
            }

        objectives = [o.model_dump() for o in self.cfg.objectives]
        entries = [entry(r) for r in front]
        self._add_front_checks(entries)
        front_json = {"objectives": objectives, "front": entries}
        _write_atomic(self.dir / "pareto.json", json.dumps(front_json, indent=2, default=str))
        b = best(records, signs)
        if b is None:
            return
        bdir = self.dir / "best"
        bdir.mkdir(exist_ok=True)
        _write_atomic(bdir / "genome.json", json.dumps(space.to_json(b.genome), indent=2))
        _write_atomic(bdir / "metrics.json", json.dumps(entry(b), indent=2, default=str))
        self._write_best_model(space, b, bdir)
        try:  # the evaluator's own view of the best candidate (samples, comparisons)
            self.evaluator.summarize(self.dir, b.genome)
        except Exception as e:  # noqa: BLE001 - a summary never loses the run's results
            log.warning("could not summarise the best candidate: %s", e)

    def _add_front_checks(self, entries: list[dict]) -> None:
        """The front's networks measured again at the end with their own kernels tuned get that
        figure as `metrics.latency_tuned_ms`, beside the figure the search ranked them by."""
        checks = front_checks(self.dir)
        for e in entries:
            e["metrics"].update(checks.get(e["genome_id"], {}))

    def _write_best_model(self, space: Space, b: TrialRecord, bdir: Path) -> None:
        weights = self.dir / "trials" / f"{b.genome_id}.pt"
        if not weights.exists():
            return
        arch = space.arch(b.genome)
        model = space.family.module(arch)
        model.load_state_dict(torch.load(weights, weights_only=True))
        model.eval()
        torch.save(model.state_dict(), bdir / "model.pt")
        r = arch.resolution
        with torch.no_grad():
            ts = torch.jit.trace(model, torch.randn(1, input_channels(model), r, r))
        ts.save(str(bdir / "model.ts"))
