"""The latency-provider contract: how a candidate network gets its latency.

A subclass sets `name`, implements `measure` (and `from_config` when it takes settings), and
overrides the run hooks it needs; each has a documented no-op default. Registration: one line
in `kernels.latency.PROVIDERS`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn


def summary(times_ms) -> dict[str, float]:
    """Median and interquartile spread (ms) of repeated timings: how every provider reports."""
    q1, med, q3 = np.percentile(np.asarray(times_ms, dtype=float), [25, 50, 75])
    return {"latency_ms": float(med), "latency_spread_ms": float(q3 - q1)}


def rounds_summary(rounds_ms) -> dict[str, float]:
    """A network timed in interleaved rounds (each round's figure the median of repeated runs):
    its quietest round's figure, and the interquartile spread over the rounds. This machine's
    slow spells last seconds and run 1.3-2x (benchmarks/results/timing_noise.md): the median
    over a few rounds follows a spell that covers half of them, the least only one that covers
    them all."""
    return {**summary(rounds_ms), "latency_ms": float(min(rounds_ms))}


class LatencyProvider:
    """Measures a candidate; every figure carries `latency_source`, so a run never passes one
    provider's figures off as another's."""

    name: ClassVar[str] = ""

    @classmethod
    def from_config(cls, cfg, cache_dir: Path) -> LatencyProvider:
        """Build from the run's `latency:` section (`search.config.LatencyCfg`); raise ValueError
        for a setting this host cannot honour."""
        return cls()

    def measure(self, model: nn.Module, resolution: int) -> dict[str, Any]:
        """`latency_ms` and `latency_source` (and `latency_spread_ms` where it times repeats) of
        one batch-1 forward pass at `resolution`."""
        raise NotImplementedError

    def measure_later(self, model: nn.Module, resolution: int) -> Callable[[], dict[str, Any]]:
        """`measure` started now, its result given by calling what this returns: a provider that
        measures in another process (the TVM latency service) measures while the caller goes on
        (the candidate fine-tunes meanwhile). Default: measured now."""
        out = self.measure(model, resolution)
        return lambda: out

    def beside_setup(self, space, seed: int) -> contextlib.AbstractContextManager:
        """Around the supernet's pre-training, when a run's `prepare_run` (with this `seed`)
        follows: a provider may begin that preparation beside it (default: nothing)."""
        return contextlib.nullcontext()

    def prepare_run(self, space, supernet: nn.Module | None, run_dir: Path, seed: int) -> None:
        """Before the first trial, with the pre-trained supernet (default: nothing to prepare)."""

    def finish_run(self, space, supernet: nn.Module | None, run_dir: Path, front: list) -> None:
        """After the last trial, with the run's Pareto front (records with `genome`, `metrics`,
        `number`, `genome_id`); may write `latency.json` (default: nothing)."""

    def start_service(self) -> None:
        """Ray is connected on the driver: a provider that measures every candidate in one process
        on the target starts that process here (default: workers measure themselves)."""

    def stop_service(self) -> None:
        """Stop what `start_service` started, keeping its `stats()`."""

    def stats(self) -> dict[str, Any]:
        """What the provider did so far (kernels tuned, time spent), for latency.json."""
        return {}
