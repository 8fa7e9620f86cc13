"""The latency providers a run can name (`latency.provider`):

- `tvm`: every candidate compiled with MetaSchedule-tuned kernels (its missing kernels tuned
  first, so the first candidates are slow and later ones reuse) and timed on the Relax VM.
- `tvm-model`: every candidate priced by the latency model, fitted at the run's start on tuned
  whole-network measurements of a spread sample (cached per target, so later runs reuse them);
  at the end the Pareto front is measured for real and the model's error on it is reported.
- `torch`: PyTorch eager timing (a fallback, never passed off as tuned kernels).
- `onnxruntime`: the candidate exported to ONNX and timed in onnxruntime.
- `none`.

Every figure carries `latency_source`. Measurements and tuning hold the machine's core lock, so
they never overlap training on the same cores."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kernels.lock import core_lock
from kernels.torch_timing import TorchLatency, summary

log = logging.getLogger(__name__)

PROVIDERS = ("tvm", "tvm-model", "torch", "onnxruntime", "none")


class OnnxRuntimeLatency:
    """The candidate exported to ONNX (opset of torch.onnx's TorchScript exporter) and timed in
    onnxruntime's CPU provider, batch 1: the deployment baseline tuned TVM has to beat."""

    name = "onnxruntime"

    def __init__(self, repeats: int = 20, warmup: int = 3, threads: int | None = None):
        self.repeats, self.warmup, self.threads = repeats, warmup, threads

    def measure(self, model: nn.Module, resolution: int) -> dict:
        return self.time(self.session(model, resolution))

    def session(self, model: nn.Module, resolution: int):
        """An inference session of the candidate and its seeded input, ready to be timed again and again."""
        import onnxruntime as ort

        model = model.eval()
        x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "m.onnx"
            with torch.no_grad():
                torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["output"], dynamo=False)
            so = ort.SessionOptions()
            if self.threads:
                so.intra_op_num_threads = self.threads
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return sess, {"input": x.numpy()}

    def time(self, session) -> dict:
        sess, feed = session
        with core_lock().exclusive("measurement"):
            for _ in range(self.warmup):
                sess.run(None, feed)
            times = []
            for _ in range(self.repeats):
                t = time.perf_counter()
                sess.run(None, feed)
                times.append((time.perf_counter() - t) * 1e3)
        return {**summary(times), "latency_source": self.name}


class TVMLatency:
    """`tvm`: tuned-kernel latency of every candidate. TVM lives in one long-lived process: this
    one (in-process runs, the driver), or the latency service actor that Ray workers call."""

    name = "tvm"
    wants_service = True  # Ray workers send their candidates to one process on the target

    def __init__(self, folder: str | Path, target: str | dict | None = None, trials_per_task: int = 32,
                 strategy: str = "replay-trace", repeats: int = 20, check: bool = True):
        self.folder = Path(folder).expanduser()
        self.target, self.trials_per_task, self.strategy = target, trials_per_task, strategy
        self.repeats, self.check = repeats, check
        self.service = None  # a Ray actor handle, set by the executor
        self._backend = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_backend"] = None  # TVM state stays in its process
        return d

    def backend(self):
        if self._backend is None:
            from kernels.tvm_latency import TVMBackend

            t0 = time.time()
            self._backend = TVMBackend(self.folder, self.target, self.trials_per_task, self.strategy, self.repeats)
            log.info("TVM ready for %s in %.1f s (tuning database %s)", self._backend.target, time.time() - t0,
                     self._backend.db.dir)
        return self._backend

    def measure(self, model: nn.Module, resolution: int) -> dict:
        if self.service is not None:
            import ray

            return ray.get(self.service.measure.remote(model, resolution))
        return self.backend().measure(model, resolution, tune=True, check=self.check)

    # --- run hooks --------------------------------------------------------------------------
    def prepare_run(self, space, supernet, run_dir: Path, seed: int) -> None:
        """Nothing to fit: every candidate is measured."""

    def finish_run(self, space, supernet, run_dir: Path, front: list) -> None:
        """latency.json: the target, the kernels seen and tuned (reuse) and the time spent."""
        stats = self.service_stats()
        (Path(run_dir) / "latency.json").write_text(json.dumps({"provider": self.name, **stats}, indent=2))

    def service_stats(self) -> dict:
        if self.service is not None:
            import ray

            return ray.get(self.service.stats.remote())
        if self._backend is None:
            return getattr(self, "last_stats", {})
        b = self._backend
        return {"target": str(b.target), "database": str(b.db.dir), **b.db.stats}


class TVMModelLatency(TVMLatency):
    """`tvm-model`: candidates priced by the latency model (one PyTorch forward pass each, no TVM
    in the workers); the model is fitted at the run's start, checked on held-out networks and, at
    the end, on the run's Pareto front, all measured with tuned kernels in `rounds` interleaved
    rounds (one timing on a shared 2-core VM strays 13 % on average from its median)."""

    name = "tvm-model"
    wants_service = False

    def __init__(self, folder, target=None, trials_per_task: int = 32, strategy: str = "replay-trace",
                 repeats: int = 20, check: bool = True, fit_networks: int = 12, holdout: int = 4, check_front: int = 8,
                 rounds: int = 5):
        super().__init__(folder, target, trials_per_task, strategy, repeats, check)
        self.fit_networks, self.holdout, self.check_front, self.rounds = fit_networks, holdout, check_front, rounds
        self.model = None

    def measure(self, model: nn.Module, resolution: int) -> dict:
        from kernels.latency_model import torch_ops

        if self.model is None:
            raise RuntimeError("the latency model is not fitted (prepare_run was not called)")
        return {"latency_ms": self.model.predict_ms(torch_ops(model, resolution)), "latency_source": self.name}

    def prepare_run(self, space, supernet, run_dir: Path, seed: int) -> None:
        """Measure (or find measured) a spread sample of the space with tuned kernels, fit the
        model on all of it but the held-out networks, and report its error on those."""
        from kernels.latency_model import LatencyModel, torch_ops
        from kernels.tvm_latency import network_key, spread_genomes

        b = self.backend()
        genomes = spread_genomes(space, self.fit_networks + self.holdout, seed)
        holdout_ids = {space.genome_id(g) for g in genomes[1:][::max(1, len(genomes) // max(1, self.holdout))][:self.holdout]}
        known, t0 = b.networks(), time.time()
        keys, todo = [], []
        for g in genomes:
            model = space.build(g, supernet)
            r = space.arch(g).resolution
            keys.append(network_key(torch_ops(model, r), r))
            row = known.get(keys[-1])
            if row is None or len(row.get("rounds_ms") or [row["ms"]]) < self.rounds:  # not measured (in enough rounds)
                todo.append((model, r))
        if todo:
            log.info("latency model: measuring %d of %d networks with tuned kernels, %d interleaved rounds",
                     len(todo), len(genomes), self.rounds)
            b.measure_rounds(todo, self.rounds, tune=True,
                             progress=lambda i, n: log.info("latency model: network %d/%d tuned and compiled", i, n))
            known = b.networks()
        rows = []
        for g, key in zip(genomes, keys):
            if key not in known:
                log.warning("network %s could not be fully tuned; left out of the model", space.genome_id(g))
                continue
            rows.append((space.genome_id(g), known[key]))
        hold = [(gid, n) for gid, n in rows if gid in holdout_ids]
        hold_keys = {n["key"] for _, n in hold}
        # this run's sample only, so that the same config and seed price candidates the same way
        fit = [n for _, n in rows if n["key"] not in hold_keys]
        self.model = b.fit_model(fit)
        errors = [{"genome_id": gid, "measured_ms": n["ms"],
                   "predicted_ms": self.model.predict_ms(LatencyModel.ops_from_json(n["ops"]))} for gid, n in hold]
        for e in errors:
            e["error_pct"] = 100 * abs(e["predicted_ms"] - e["measured_ms"]) / e["measured_ms"]
        report = {"provider": self.name, "target": str(b.target), "database": str(b.db.dir),
                  "model": self.model.describe(), "fit_networks": len(fit), "rounds": self.rounds, "holdout": errors,
                  "holdout_mape": float(np.mean([e["error_pct"] for e in errors])) if errors else None,
                  "prepare_s": time.time() - t0, **b.db.stats}
        (Path(run_dir) / "latency.json").write_text(json.dumps(report, indent=2))
        log.info("latency model: fitted on %d networks, held-out error %s %%", len(fit),
                 f"{report['holdout_mape']:.1f}" if errors else "n/a")

    def finish_run(self, space, supernet, run_dir: Path, front: list) -> None:
        """Measure the front's networks (up to `check_front`) with tuned kernels; add the model's
        error on them to latency.json."""
        path = Path(run_dir) / "latency.json"
        report = json.loads(path.read_text()) if path.exists() else {"provider": self.name}
        b = self.backend()
        recs = [rec for rec in front[: self.check_front] if rec.metrics.get("latency_ms") is not None]
        items = [(space.build(rec.genome, supernet), space.arch(rec.genome).resolution) for rec in recs]
        checks = []
        for rec, m in zip(recs, b.measure_rounds(items, self.rounds, tune=True) if items else []):
            pred = rec.metrics["latency_ms"]
            checks.append({"trial": rec.number, "genome_id": rec.genome_id, "predicted_ms": pred,
                           "measured_ms": m["latency_ms"], "source": m["latency_source"],
                           "error_pct": 100 * abs(pred - m["latency_ms"]) / m["latency_ms"]})
        report["front"] = checks
        report["front_mape"] = float(np.mean([c["error_pct"] for c in checks])) if checks else None
        report.update(b.db.stats)
        path.write_text(json.dumps(report, indent=2))
        if checks:
            log.info("latency model on the Pareto front: %.1f %% mean error over %d networks measured with tuned "
                     "kernels", report["front_mape"], len(checks))


def make_latency(cfg, cache_dir: str | Path | None = None):
    """The configured latency provider (a `LatencyCfg`, or a provider name), None for `none`."""
    if isinstance(cfg, str):
        from types import SimpleNamespace

        cfg = SimpleNamespace(provider=cfg, repeats=20, warmup=3, threads=None, target=None, trials_per_task=32,
                              strategy="replay-trace", database=None, fit_networks=12, holdout=4,
                              check_front=8, rounds=5)
    p = cfg.provider
    if p == "none":
        return None
    if p == "torch":
        return TorchLatency(repeats=cfg.repeats, warmup=cfg.warmup, threads=cfg.threads)
    if p == "onnxruntime":
        return OnnxRuntimeLatency(repeats=cfg.repeats, warmup=cfg.warmup, threads=cfg.threads)
    cache = Path(cache_dir or Path.home() / ".cache" / "archsearch")
    folder = Path(getattr(cfg, "database", None) or cache / "tvm")
    if p in ("tvm", "tvm-model"):
        from kernels.tvm_compile import host_target

        try:  # a bad target fails now, before any work
            host_target(cfg.target)
        except Exception as e:  # noqa: BLE001 - TVM raises its own error types
            raise ValueError(f"not a TVM target: {str(e).strip().splitlines()[-1][:200]}") from None
    common = dict(target=cfg.target, trials_per_task=cfg.trials_per_task, strategy=cfg.strategy, repeats=cfg.repeats)
    if p == "tvm":
        return TVMLatency(folder, **common)
    if p == "tvm-model":
        return TVMModelLatency(folder, **common, fit_networks=cfg.fit_networks, holdout=cfg.holdout,
                               check_front=cfg.check_front, rounds=cfg.rounds)
    raise ValueError(f"unknown latency provider {p!r}; expected one of {', '.join(PROVIDERS)}")


__all__ = ["PROVIDERS", "OnnxRuntimeLatency", "TVMLatency", "TVMModelLatency", "TorchLatency", "make_latency"]
