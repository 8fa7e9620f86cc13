"""The PyTorch fallback latency provider: eager timing on this host, batch 1.

Every figure says where it came from (`latency_source`), so a run never passes PyTorch timing
off as tuned-kernel latency."""

from __future__ import annotations

import time

import torch
from torch import nn

from kernels.cores import core_lock
from kernels.provider import LatencyProvider, summary
from spaces.layers import input_channels


class TorchLatency(LatencyProvider):
    """Median wall time of `repeats` batch-1 forward passes after `warmup` runs."""

    name = "torch"

    def __init__(self, repeats: int = 30, warmup: int = 5, threads: int | None = None):
        self.repeats, self.warmup, self.threads = repeats, warmup, threads

    @classmethod
    def from_config(cls, cfg, cache_dir) -> TorchLatency:
        return cls(repeats=cfg.repeats, warmup=cfg.warmup, threads=cfg.threads)

    @torch.no_grad()
    def measure(self, model: nn.Module, resolution: int) -> dict[str, float | str]:
        was = model.training
        model.eval()
        old = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            x = torch.randn(1, input_channels(model), resolution, resolution)
            with core_lock().exclusive("measurement"):  # nothing else on these cores meanwhile
                for _ in range(self.warmup):
                    model(x)
                times = []
                for _ in range(self.repeats):
                    t = time.perf_counter()
                    model(x)
                    times.append((time.perf_counter() - t) * 1e3)
        finally:
            torch.set_num_threads(old)
            model.train(was)
        return {**summary(times), "latency_source": self.name}
