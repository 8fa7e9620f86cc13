"""Shared fixtures. Ray tests share one session-wide embedded Ray (see `ray_session`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["tinynet", "resnet20", "nb201", "cyclegan_digits"]

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def space_path(name: str) -> Path:
    return ROOT / "spaces" / f"{name}.yaml"


TINY = ROOT / "tests" / "data" / "tiny.yaml"
NB201_CSV = ROOT.parent / "shared" / "data" / "nb201_merged.csv"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One supernet cache for the whole test session (pre-training happens once)."""
    return tmp_path_factory.mktemp("archsearch-cache")


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for the tests that need it (address="local": never a cluster that
    RAY_ADDRESS names), stopped at the end; yields its address for `search --address`."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=200 * 1024**2,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def run_cli(*args, timeout=600, **kw):
    """`search ARGS` in a subprocess. Runs evaluate in-process (`--workers 0`) unless the test
    names workers or a Ray address: only the Ray tests pay for starting Ray."""
    import subprocess
    import sys

    args = [str(a) for a in args]
    if args and args[0] in ("run", "resume") and not {"--workers", "--address"} & set(args):
        args += ["--workers", "0"]
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def search_best(
    name, space, evaluator, seed, budget=100, metric="c10_test", constraints=(), **options
):
    """Best value of `metric` that optimiser `name` finds in `budget` tabular trials (in memory)."""
    from search.config import Objective
    from search.optimizers import OPTIMIZERS
    from search.simulate import simulate

    cls = OPTIMIZERS[name]
    opt = cls(space, [Objective(metric=metric)], list(constraints), seed, cls.Options(**options))
    recs = simulate(opt, evaluator, budget, list(constraints))
    assert sum(r.complete for r in recs) == budget
    assert len({r.genome_id for r in recs}) == len(recs)  # never the same genome twice
    return max(r.values[0] for r in recs if r.complete)
