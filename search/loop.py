"""The run loop: ask, evaluate, store durably, tell; resume by replaying the store.

A run folder holds the resolved `config.yaml`, the study (`study.journal`), the weights of every
trained trial (`trials/`), `pareto.json` and `best/`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from spaces.errors import ArchsearchError, ConfigError
from spaces.space import Space

from search.config import RunCfg, load_run_config
from search.errors import RunFailed
from search.optimizers import optimizer_class
from search.records import TrialRecord, best, pareto_front
from search.store import RunStore

log = logging.getLogger("archsearch.run")


def make_evaluator(cfg: RunCfg, space: Space, file: str | None):
    from evaluators.evaluator import TableEvaluator, TrainEvaluator, make_latency
    from evaluators.train import TrainRecipe

    if cfg.evaluator.kind == "table":
        return TableEvaluator(space, cfg.evaluator.table, cfg.evaluator.dataset, cfg.evaluator.device, file)
    try:
        lat = make_latency(cfg.latency, cfg.cache_dir())
    except ValueError as e:
        raise ConfigError(file, "latency.target", str(e)) from None
    if cfg.evaluator.kind == "cyclegan":
        from evaluators.cyclegan import CycleGANEvaluator

        return CycleGANEvaluator(space, cfg.evaluator.cyclegan, cfg.seed, cfg.cache_dir(), lat, file)
    if space.family.kind == "cyclegan":
        raise ConfigError(file, "evaluator.kind", f"space {space.name!r} holds CycleGAN generators; use evaluator kind cyclegan")
    ft = TrainRecipe(**cfg.evaluator.finetune.model_dump())
    pt = cfg.pretrain.model_dump()
    sandwich = pt.pop("sandwich")
    return TrainEvaluator(space, cfg.dataset, ft, TrainRecipe(**pt), sandwich, cfg.seed, cfg.cache_dir(), lat, file)


def check_metrics(cfg: RunCfg, evaluator, file: str | None) -> None:
    known = set(evaluator.metrics)
    if cfg.latency.provider == "none" and evaluator.kind != "table":  # the table has its own latencies
        known -= {"latency_ms", "latency_spread_ms"}
    for i, o in enumerate(cfg.objectives):
        if o.metric not in known:
            raise ConfigError(file, f"objectives.{i}.metric", f"unknown metric {o.metric!r}; the {evaluator.kind} evaluator gives {', '.join(sorted(known))}")
    for i, c in enumerate(cfg.constraints):
        if c.metric not in known:
            raise ConfigError(file, f"constraints.{i}.metric", f"unknown metric {c.metric!r}; the {evaluator.kind} evaluator gives {', '.join(sorted(known))}")


def trial_seed(seed: int, gid: str) -> int:
    return int(hashlib.sha256(f"{seed}:{gid}".encode()).hexdigest()[:8], 16)


class Progress:
    """A progress bar on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, initial: int, enabled: bool = True):
        self.tty = enabled and sys.stderr.isatty()
        self.total, self.n, self.t0, self.bar = total, initial, time.time(), None
        self.start_n, self.last_line = initial, 0.0
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="trial", dynamic_ncols=True)

    def update(self, n: int, text: str) -> None:
        if self.bar:
            self.bar.update(n - self.bar.n)
            self.bar.set_postfix_str(text)
        elif n >= self.total or time.time() - self.last_line >= 2.0:  # plain lines, throttled
            self.last_line = time.time()
            done = n - self.start_n
            rate = (time.time() - self.t0) / max(1, done)
            left = rate * (self.total - n)
            log.info("trial %d/%d  %s  (~%.0f s left)", n, self.total, text, left)
        self.n = n

    def close(self):
        if self.bar:
            self.bar.close()


def _pretrain_progress(enabled: bool):
    """Progress of supernet pre-training: a bar on a terminal, a line every ~10 % otherwise."""
    state = {"bar": None, "last": -1}

    def cb(step: int, total: int, loss: float) -> None:
        if enabled and sys.stderr.isatty():
            if state["bar"] is None:
                from tqdm import tqdm

                state["bar"] = tqdm(total=total, desc="pre-training supernet", unit="step", dynamic_ncols=True)
            state["bar"].update(step - state["bar"].n)
            state["bar"].set_postfix_str(f"loss {loss:.3f}")
            if step >= total:
                state["bar"].close()
        elif step * 10 // total != state["last"]:
            state["last"] = step * 10 // total
            log.info("pre-training supernet: step %d/%d, loss %.3f", step, total, loss)

    return cb


class Run:
    """A run folder and everything needed to go on with it."""

    def __init__(self, run_dir: Path, cfg: RunCfg, space: Space, file: str | None):
        self.dir, self.cfg, self.space, self.file = Path(run_dir), cfg, space, file
        self.executor = None  # while executing: where evaluations run
        self.evaluator = make_evaluator(cfg, space, file)
        check_metrics(cfg, self.evaluator, file)
        opt_cls = optimizer_class(cfg.optimizer.name, file)
        self.opt_options = opt_cls.parse_options(cfg.optimizer.options, file)
        opt_cls.check_space(space, file)
        opt_cls.check_options(space, self.opt_options, file)
        self.opt_cls = opt_cls
        if getattr(opt_cls, "needs_model", False) and self.evaluator.kind != "train":
            raise ConfigError(file, "optimizer.name", f"{opt_cls.name} prunes a trained network; it needs evaluator.kind train")
        if cfg.runner == "tune" and self.evaluator.kind != "train":
            raise ConfigError(file, "runner", "the tune runner fine-tunes candidates; it needs evaluator.kind train")

    def workers(self) -> int | None:
        """0 (in-process), N, or None (one per core on Ray)."""
        if self.cfg.workers is not None:
            return self.cfg.workers
        if self.cfg.evaluator.kind != "train" or (os.cpu_count() or 1) == 1 and not self.cfg.address:
            return 0  # look-ups gain nothing from workers
        return None

    @classmethod
    def create(cls, config: str, out: str | None, sets: list[str], flags: dict[str, Any]) -> "Run":
        cfg, space, resolved = load_run_config(config, sets, flags)
        run_dir = Path(out) if out else Path("runs") / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if run_dir.exists() and (run_dir / "config.yaml").exists():
            raise ConfigError(str(run_dir), "--out", "already holds a run; use `search resume` or another folder")
        run = cls(run_dir, cfg, space, config)
        run.dir.mkdir(parents=True, exist_ok=True)
        (run.dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        return run

    @classmethod
    def open(cls, run_dir: str, sets: list[str] | None = None, flags: dict[str, Any] | None = None) -> "Run":
        path = Path(run_dir)
        cfg_file = path / "config.yaml"
        if not cfg_file.exists():
            raise ConfigError(str(path), None, "not a run folder (no config.yaml)")
        cfg, space, resolved = load_run_config(cfg_file, sets, flags)
        run = cls(path, cfg, space, str(cfg_file))
        if sets or any(v is not None for v in (flags or {}).values()):
            cfg_file.write_text(yaml.safe_dump(resolved, sort_keys=False))
        return run

    def store(self) -> RunStore:
        return RunStore(self.dir, self.evaluator.space, self.cfg.objectives, self.cfg.constraints, self.cfg.storage)

    def execute(self, progress: bool = True) -> int:
        cfg = self.cfg
        signs = [1.0 if o.direction == "maximize" else -1.0 for o in cfg.objectives]
        t_setup = time.time()
        self.evaluator.setup(progress=_pretrain_progress(progress))
        space = self.evaluator.space  # with the dataset's classes
        self._write_supernet_point(space)
        self._prepare_latency(space)
        store = RunStore(self.dir, space, cfg.objectives, cfg.constraints, cfg.storage)
        opt = self.opt_cls(space, cfg.objectives, cfg.constraints, cfg.seed, self.opt_options)
        opt.attach(self.dir)
        prepare = getattr(opt, "prepare", None)
        if prepare is not None:  # DCP: needs the model and the data, not only scores
            prepare(self.evaluator)
        records = store.records()
        for r in records:  # resume: replay every stored trial into the optimiser
            opt.tell(r)
        done_ids = {r.genome_id for r in records if r.complete}
        n_done = len(done_ids)
        failures, repeats = 0, 0
        max_failures = cfg.max_failures if cfg.max_failures is not None else max(10, cfg.budget)
        if records:
            log.info("resuming %s: %d complete trials of %d", self.dir, n_done, cfg.budget)
        setup_s = time.time() - t_setup
        n_done0 = n_done
        log.info("setup %.1f s; searching %s with %s, budget %d", setup_s, space.name, opt.name, cfg.budget)
        if cfg.runner == "tune":
            return self._execute_tune(opt, store, records, signs, n_done, progress)
        from evaluators.executor import make_executor

        ex = self.executor = make_executor(self.evaluator, self.workers(), cfg.address, **cfg.ray.model_dump())
        bar = Progress(cfg.budget, n_done, progress)
        t0 = time.time()
        in_flight: dict[str, dict] = {}
        exhausted = False
        t_last = t0
        try:
            while True:
                while not exhausted and len(in_flight) < ex.slots and n_done + len(in_flight) < cfg.budget:
                    genome = opt.ask()
                    if genome is None:
                        log.info("optimizer %s has nothing more to ask", opt.name)
                        exhausted = True
                        break
                    gid = space.genome_id(genome)
                    if gid in done_ids or gid in in_flight:  # never evaluate a genome twice
                        repeats += 1
                        if repeats > 1000:
                            log.warning("optimizer %s keeps proposing evaluated genomes; stopping", opt.name)
                            exhausted = True
                        continue
                    repeats = 0
                    in_flight[gid] = genome
                    ex.submit(gid, genome, trial_seed(cfg.seed, gid))
                if not in_flight:
                    break
                gid, res = ex.next_result()
                genome = in_flight.pop(gid)
                if res.state_dict is not None:
                    wdir = self.dir / "trials"
                    wdir.mkdir(exist_ok=True)
                    tmp = wdir / f"{gid}.pt.tmp"
                    torch.save(res.state_dict, tmp)
                    os.replace(tmp, wdir / f"{gid}.pt")
                rec = store.record(genome, res.status, res.metrics, res.reason, res.node or os.uname().nodename)
                opt.tell(rec)
                records.append(rec)
                if rec.complete:
                    n_done += 1
                    done_ids.add(gid)
                else:
                    failures += 1
                    if failures > max_failures:
                        raise RunFailed(f"{failures} failed trials (max_failures {max_failures}); last: {rec.reason}")
                b = best(records, signs)
                text = f"best {cfg.objectives[0].metric} {b.values[0]:.4g}" if b else "no complete trial yet"
                bar.update(n_done, text)
                t_last = time.time()
        finally:
            bar.close()
            t_fin = time.time()
            self._finish_latency(records, signs)  # before the executor stops: it may own the latency service
            ex.close()
            self.write_outputs(store.records() if records else records, signs)
            opt.finish(self.dir)
            self.report()
        t_search = t_last - t0
        finish_s = time.time() - t_fin
        self._write_timings({"runner": "loop", "executor": ex.kind, "workers": ex.slots, "setup_s": setup_s,
                             "executor_startup_s": ex.startup_s, "search_s": t_search, "finish_s": finish_s,
                             "trials": n_done - n_done0 + failures})
        log.info("done: %d complete trials, %d failed, %.1f s searching (%s, %d worker%s)", n_done, failures,
                 t_search, ex.kind, ex.slots, "" if ex.slots == 1 else "s")
        return 0

    def _prepare_latency(self, space) -> None:
        """Providers that need the space before the search (tvm-model fits its latency model)."""
        lat = getattr(self.evaluator, "latency", None)
        if lat is not None and hasattr(lat, "prepare_run"):
            lat.prepare_run(space, self.evaluator.supernet, self.dir, self.cfg.seed)

    def _finish_latency(self, records: list[TrialRecord], signs: list[float]) -> None:
        """latency.json: what the provider did (tvm-model: its error on the measured front)."""
        lat = getattr(self.evaluator, "latency", None)
        if lat is None or not hasattr(lat, "finish_run"):
            return
        try:
            front = pareto_front([r for r in records if r.complete], signs)
            lat.finish_run(self.evaluator.space, self.evaluator.supernet, self.dir, front)
        except Exception as e:  # noqa: BLE001 - a check never loses the run's results
            log.warning("could not check the latency of the front: %s", e)

    def _write_supernet_point(self, space) -> None:
        """supernet.json: the full network's cost and pre-trained accuracy, for the report."""
        info = getattr(self.evaluator, "supernet_info", {}) or {}
        point = {**space.cost(space.full()), "genome_id": space.genome_id(space.full())}
        if "full_val_acc" in info:
            point["val_acc"] = info["full_val_acc"]
        (self.dir / "supernet.json").write_text(json.dumps(point, indent=2))

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
        sessions.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **{k: round(v, 3) if isinstance(v, float) else v
                                                                      for k, v in entry.items()}})
        path.write_text(json.dumps(sessions, indent=2))

    def _execute_tune(self, opt, store, records, signs, n_done, progress) -> int:
        from search.tune_search import run_tune

        cfg = self.cfg
        bar = Progress(cfg.budget, n_done, progress)
        count = {"done": n_done}

        def on_trial(rec):
            count["done"] += rec.complete
            b = best(records, signs)
            bar.update(count["done"], f"best {cfg.objectives[0].metric} {b.values[0]:.4g}" if b else "no complete trial yet")

        t0 = time.time()
        try:
            done, failed = run_tune(self, opt, store, records, on_trial)
        finally:
            bar.close()
            t_search, t_fin = time.time() - t0, time.time()
            stored = store.records()  # read the journal once for both
            self._finish_latency(stored, signs)
            self.write_outputs(stored, signs)
            opt.finish(self.dir)
            self.report()
        self._write_timings({"runner": "tune", "scheduler": cfg.tune.scheduler, "search_s": t_search,
                             "finish_s": time.time() - t_fin, "trials": done + failed})
        log.info("done (Ray Tune): %d complete trials, %d failed, %.1f s searching", done, failed, t_search)
        return 0

    def write_outputs(self, records: list[TrialRecord], signs: list[float]) -> None:
        """pareto.json and best/ (genome, metrics, state dict and TorchScript of the best model)."""
        space = self.evaluator.space
        front = pareto_front(records, signs)

        def entry(r: TrialRecord) -> dict:
            return {"trial": r.number, "genome_id": r.genome_id, "values": r.values, "feasible": r.feasible,
                    "metrics": {k: v for k, v in r.metrics.items()}, "genome": space.to_json(r.genome)}

        (self.dir / "pareto.json").write_text(json.dumps(
            {"objectives": [o.model_dump() for o in self.cfg.objectives], "front": [entry(r) for r in front]},
            indent=2, default=str))
        b = best(records, signs)
        if b is None:
            return
        bdir = self.dir / "best"
        bdir.mkdir(exist_ok=True)
        (bdir / "genome.json").write_text(json.dumps(space.to_json(b.genome), indent=2))
        (bdir / "metrics.json").write_text(json.dumps(entry(b), indent=2, default=str))
        weights = self.dir / "trials" / f"{b.genome_id}.pt"
        if weights.exists():
            model = space.family.module(space.arch(b.genome))
            model.load_state_dict(torch.load(weights, weights_only=True))
            model.eval()
            torch.save(model.state_dict(), bdir / "model.pt")
            r = space.arch(b.genome).resolution
            with torch.no_grad():
                ts = torch.jit.trace(model, torch.randn(1, 3, r, r))
            ts.save(str(bdir / "model.ts"))
        summarize = getattr(self.evaluator, "summarize", None)
        if summarize is not None:  # the evaluator's own view of the best candidate (samples, comparisons)
            try:
                summarize(self.dir, b.genome)
            except Exception as e:  # noqa: BLE001 - a summary never loses the run's results
                log.warning("could not summarise the best candidate: %s", e)
