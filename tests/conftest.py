"""Shared fixtures. Ray tests share one session-wide embedded Ray (see `ray_session`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["tinynet", "resnet20", "nb201"]

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


def run_cli(*args, timeout=600, **kw):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "search.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, **kw)
