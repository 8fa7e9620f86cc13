"""The evaluator contract: how a genome becomes metrics.

A subclass sets `kind`, implements `from_config` and `evaluate`, and overrides the hooks it
needs; every hook has a documented default, so the run never probes an evaluator for what it
can do. Registration: one line in `evaluators.registry`."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from kernels.latency import make_latency
from kernels.provider import LatencyProvider
from spaces.errors import ConfigError
from spaces.space import Genome, Space


@dataclass
class EvalResult:
    """One evaluation: complete with metrics, or failed with a reason."""

    genome_id: str
    status: str  # "complete" | "failed"
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    state_dict: dict[str, torch.Tensor] | None = None
    node: str = ""
    curve: list[dict] = field(default_factory=list)  # validation metrics after each epoch


@dataclass
class TrainedModel:
    """What an optimiser that needs the trained network gets (DCP): the space with the dataset's
    classes, the pre-trained supernet (whose weights it may replace: candidates then inherit
    them), the data splits and the run's seed."""

    space: Space
    supernet: nn.Module
    data: Any
    seed: int
    device: str = "cpu"  # where its training may run


class Evaluator:
    """Turns genomes into metrics, on the driver or on Ray workers (a `detached` copy there)."""

    kind: ClassVar[str] = ""
    # fine-tunes every candidate for epochs: Ray workers pay off, and the tune runner can stop
    # candidates early on its per-epoch reports
    fine_tunes: ClassVar[bool] = False
    # `trained_model()` works: optimisers that prune a trained network (DCP) can run on it
    provides_model: ClassVar[bool] = False

    space: Space
    supernet: nn.Module | None = None
    latency: LatencyProvider | None = None

    @classmethod
    def from_config(cls, cfg, space: Space, file: str | None) -> Evaluator:
        """Build from a run's validated config (`search.config.RunCfg`); raise ConfigError, naming
        `file` and the field, for what does not fit, before any work starts."""
        raise NotImplementedError

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric `evaluate` gives (objectives and constraints are checked against it)."""
        return ()

    def setup(self, progress: Callable | None = None, supernet_state: dict | None = None) -> None:
        """Load data and models once before the first evaluation (default: nothing to load).
        `supernet_state`, on a worker, is the driver's `supernet_state()`."""

    def evaluate(self, genome: Genome, seed: int = 0, report: Callable | None = None) -> EvalResult:
        """Score one genome. `report(metrics)`, if given, hears the validation metrics after each
        training epoch but the last (a scheduler such as ASHA may then stop the trial)."""
        raise NotImplementedError

    @property
    def known_metrics(self) -> tuple[str, ...]:
        """Metrics `known` gives before a genome is evaluated (FLOPs and parameters are
        analytic); an optimiser keeps its proposals within the constraints on them."""
        return ("flops", "params")

    def known(self, genome: Genome, names: frozenset[str] | None = None) -> dict[str, float]:
        """The `known_metrics` of a genome (those in `names`, default all), without training or
        timing it."""
        return dict(self.space.cost(genome))

    def wants_gpu(self) -> bool:
        """Whether its workers should be given GPUs (training on CUDA); default: no."""
        return False

    def supernet_state(self) -> dict | None:
        """What workers load instead of the driver's cache (default: nothing)."""
        return None

    def detached(self) -> Evaluator:
        """The copy shipped to a worker, without data or models (default: this object)."""
        return self

    def worker_key(self) -> tuple:
        """Equal for evaluators a worker process may share once set up."""
        return (type(self).__name__, self.space.name)

    def data_info(self) -> dict[str, Any]:
        """What the run records of its data after `setup` (name, sizes, input shape and the
        normalisation an export's user must apply); default: nothing."""
        return {}

    def base_point(self) -> dict[str, Any]:
        """Metrics of the full network known after `setup` (e.g. its pre-trained accuracy), for the
        report's base marker (default: none)."""
        return {}

    def trained_model(self) -> TrainedModel:
        """The trained network and data, for optimisers that declare `needs_model`."""
        raise NotImplementedError(f"the {self.kind} evaluator has no trained model")

    def run_starting(self, seed: int) -> None:
        """Before `setup`, when a run follows (its `run_started` with this `seed`): `setup` may
        let the latency provider begin its preparation beside the pre-training
        (`_beside_setup`)."""
        self._run_seed = seed

    def _beside_setup(self) -> contextlib.AbstractContextManager:
        """Around `setup`'s pre-training of the supernet (`self.space` known): the latency
        provider's preparation for the run begun (once: a worker's `setup` begins nothing)."""
        seed, self._run_seed = getattr(self, "_run_seed", None), None
        if self.latency is None or seed is None:
            return contextlib.nullcontext()
        return self.latency.beside_setup(self.space, seed)

    def run_started(self, run_dir: Path, seed: int) -> None:
        """After `setup`, before the first trial: the latency provider prepares (tvm-model fits)."""
        if self.latency is not None:
            self.latency.prepare_run(self.space, self.supernet, run_dir, seed)

    def run_finished(self, run_dir: Path, front: list) -> None:
        """After the last trial: the latency provider reports (tvm-model checks the front)."""
        if self.latency is not None:
            self.latency.finish_run(self.space, self.supernet, run_dir, front)

    def start_workers(self) -> None:
        """Ray is connected on the driver and workers are about to start (the latency provider may
        start its one measuring process)."""
        if self.latency is not None:
            self.latency.start_service()

    def stop_workers(self) -> None:
        """The workers are gone; stop what `start_workers` started."""
        if self.latency is not None:
            self.latency.stop_service()

    def summarize(self, run_dir: Path, genome: Genome) -> None:
        """Write the evaluator's own view of the best candidate into the run folder (default:
        none)."""


def detached_copy(obj, heavy: tuple[str, ...]):
    """A shallow copy without the heavy attributes (data, supernet) to ship to a worker."""
    c = copy.copy(obj)
    for name in heavy:
        setattr(c, name, None)
    c._run_seed = None  # a worker's setup begins no preparation of the run (`run_starting`)
    return c


def latency_provider(cfg, file: str | None):
    """The run's latency provider, or a ConfigError naming the `latency` field that is wrong."""
    try:
        return make_latency(cfg.latency, cfg.cache_dir())
    except ValueError as e:
        field = "latency.provider" if "provider" in str(e) else "latency.target"
        raise ConfigError(file, field, str(e)) from None


def check_device(request: str, file: str | None, on_cluster: bool = False) -> str:
    """The run's `device:` (auto, cpu, cuda, cuda:N), checked on this machine: CUDA asked for
    where there is none is a ConfigError (on a cluster the workers' GPUs are checked when Ray
    places them)."""
    req = request.strip().lower()
    if req in ("auto", "cpu"):
        return req
    if req == "cuda" or (req.startswith("cuda:") and req[5:].isdigit()):
        if not on_cluster:
            if not torch.cuda.is_available():
                raise ConfigError(file, "device", f"{request!r}: this machine has no CUDA device")
            n = torch.cuda.device_count()
            if req != "cuda" and int(req[5:]) >= n:
                raise ConfigError(
                    file, "device", f"{request!r}: this machine has {n} CUDA device(s)"
                )
        return req
    raise ConfigError(file, "device", f"{request!r}: expected auto, cpu, cuda or cuda:N")


def resolve_device(request: str) -> str:
    """Where this process trains: auto is the first CUDA device if it sees one, else the CPU."""
    if request == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if request.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {request!r}: this process sees no CUDA device")
    if request.startswith("cuda:") and int(request[5:]) >= torch.cuda.device_count():
        return "cuda"  # a Ray worker sees only the GPU it was given, as cuda:0
    return request
