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
