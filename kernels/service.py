"""The latency service: one long-lived process on the target machine that owns TVM (its start-up
paid once, its tuning database loaded once) and that Ray workers send their candidates to, so
that every latency of a run is measured on the same machine, under the machine's core lock."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class LatencyServiceActor:
    """Wraps a provider that measures in-process (its own `service` unset)."""

    def __init__(self, provider):
        provider.service = None
        self.provider = provider

    def measure(self, model, resolution: int) -> dict:
        return self.provider.measure(model, resolution)

    def stats(self) -> dict:
        # its CPU priority beside the workers' (`evaluators.executor.worker_nice`)
        return {**self.provider.stats(), "service_nice": os.getpriority(os.PRIO_PROCESS, 0)}


def start_service(provider):
    """Start the service for `provider` on this (the driver's) node; returns its actor handle.
    Needs a connected Ray."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    cls = ray.remote(LatencyServiceActor).options(
        num_cpus=0,
        max_restarts=1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
    )
    handle = cls.remote(provider)
    log.info("latency service (%s) started on node %s", provider.name, node[:12])
    return handle


def stop_service(handle) -> dict:
    """Stop the service; returns its last stats (empty if it cannot say)."""
    import ray

    stats = {}
    try:
        stats = ray.get(handle.stats.remote(), timeout=60)
    except Exception:  # noqa: BLE001 - stopping never fails the run
        pass
    try:
        ray.kill(handle)
    except Exception:  # noqa: BLE001
        pass
    return stats
