"""The latency service: one long-lived process on the target machine that owns TVM (its start-up
paid once, its tuning database loaded once) and that Ray workers send their candidates to, so
that every latency of a run is measured on the same machine, under the machine's core lock."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class LatencyServiceActor:
    """Wraps a provider that measures in-process (its own `service` unset)."""

    def __init__(self, provider):
        provider.service = None
        self.provider = provider

    def measure(self, model, resolution: int) -> dict:
        return self.provider.measure(model, resolution)

    def stats(self) -> dict:
        return self.provider.service_stats()


def attach_service(evaluator):
    """Start the latency service on this (the driver's) node when the evaluator's provider wants
    one; returns its actor handle (or None). Needs a connected Ray."""
    lat = getattr(evaluator, "latency", None)
    if lat is None or not getattr(lat, "wants_service", False) or getattr(lat, "service", None) is not None:
        return getattr(lat, "service", None)
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    cls = ray.remote(LatencyServiceActor).options(
        num_cpus=0, max_restarts=1, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
    lat.service = cls.remote(lat)
    log.info("latency service (%s) started on node %s", lat.name, node[:12])
    return lat.service


def stop_service(evaluator) -> None:
    lat = getattr(evaluator, "latency", None)
    handle = getattr(lat, "service", None)
    if handle is None:
        return
    import ray

    try:
        lat.last_stats = ray.get(handle.stats.remote(), timeout=60)
    except Exception:  # noqa: BLE001
        pass
    try:
        ray.kill(handle)
    except Exception:  # noqa: BLE001
        pass
    lat.service = None
