"""Optimisers by name."""

from __future__ import annotations

from search.optimizers.base import Optimizer
from search.optimizers.dcp import DCP
from search.optimizers.evolution import GA, Aging, Coevolution
from search.optimizers.given import Given
from search.optimizers.nat import NAT
from search.optimizers.optuna_search import OptunaSearch
from search.optimizers.random_search import RandomSearch
from search.optimizers.tinynet import TinyNetFormula
from spaces.errors import ConfigError

OPTIMIZERS: dict[str, type[Optimizer]] = {
    o.name: o
    for o in (RandomSearch, GA, Aging, Coevolution, OptunaSearch, TinyNetFormula, Given, NAT, DCP)
}


def optimizer_class(name: str, file: str | None = None) -> type[Optimizer]:
    if name not in OPTIMIZERS:
        raise ConfigError(
            file,
            "optimizer.name",
            f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}",
        )
    return OPTIMIZERS[name]


__all__ = ["Optimizer", "OPTIMIZERS", "optimizer_class"]
