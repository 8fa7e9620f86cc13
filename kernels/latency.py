"""The latency providers a run can name (`latency.provider`), by name:

- `tvm`, `tvm-transfer`, `tvm-model`: MetaSchedule-tuned TVM kernels, every candidate measured
  with its own kernels tuned, or measured with the schedules of a few tuned networks' kernels
  transferred to its own, or priced by a latency model fitted on tuned measurements
  (`kernels.tvm_provider`);
- `torch`: PyTorch eager timing, a fallback never passed off as tuned kernels
  (`kernels.torch_timing`);
- `onnxruntime`: the candidate exported to ONNX and timed in onnxruntime (`kernels.onnx_timing`);
- `none`: no latency.

Every figure carries `latency_source`. Measurements and tuning hold the machine's core lock
(`kernels.cores`), so they never overlap training on the same cores. A new provider is one
file with a `LatencyProvider` subclass (`kernels.provider`) and one entry below."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from kernels.onnx_timing import OnnxRuntimeLatency
from kernels.provider import LatencyProvider
from kernels.torch_timing import TorchLatency
from kernels.tvm_provider import TVMLatency, TVMModelLatency, TVMTransferLatency

PROVIDERS: dict[str, type[LatencyProvider]] = {
    p.name: p
    for p in (TVMLatency, TVMTransferLatency, TVMModelLatency, TorchLatency, OnnxRuntimeLatency)
}
NONE = "none"

# the `latency:` section's defaults, for callers that name a provider only
_DEFAULTS = dict(
    repeats=20,
    warmup=3,
    threads=None,
    target=None,
    trials_per_task=32,
    focus_trials=0,
    focus_share=0.8,
    focus_budget=0,
    light_trials=None,
    strategy="replay-trace",
    database=None,
    fit_networks=12,
    holdout=4,
    check_front=8,
    rounds=5,
    seed_networks=3,
    transfer_pick="fastest",
    transfer_tries=3,
    transfer_share=1.0,
    check_transfer=True,
)


def make_latency(cfg, cache_dir: str | Path | None = None) -> LatencyProvider | None:
    """The configured provider (a `LatencyCfg`, or a provider's name), None for `none`. Raises
    ValueError for an unknown provider or a setting this host cannot honour."""
    if isinstance(cfg, str):
        cfg = SimpleNamespace(provider=cfg, **_DEFAULTS)
    if cfg.provider == NONE:
        return None
    if cfg.provider not in PROVIDERS:
        raise ValueError(
            f"unknown latency provider {cfg.provider!r}; expected one of "
            f"{', '.join([*PROVIDERS, NONE])}"
        )
    cache = Path(cache_dir or Path.home() / ".cache" / "archsearch")
    return PROVIDERS[cfg.provider].from_config(cfg, cache)


__all__ = [
    "PROVIDERS",
    "LatencyProvider",
    "OnnxRuntimeLatency",
    "TVMLatency",
    "TVMModelLatency",
    "TVMTransferLatency",
    "TorchLatency",
    "make_latency",
]
