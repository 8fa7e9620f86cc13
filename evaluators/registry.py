"""Evaluators by `evaluator.kind`. A new one is a file with an `Evaluator` subclass
(`evaluators.base`) and one entry below."""

from __future__ import annotations

from evaluators.base import Evaluator
from evaluators.cyclegan import CycleGANEvaluator
from evaluators.evaluator import TrainEvaluator
from evaluators.table import TableEvaluator
from spaces.errors import ConfigError
from spaces.space import Space

EVALUATORS: dict[str, type[Evaluator]] = {
    e.kind: e for e in (TrainEvaluator, TableEvaluator, CycleGANEvaluator)
}


def make_evaluator(cfg, space: Space, file: str | None) -> Evaluator:
    """The run's evaluator (`cfg`: a validated `search.config.RunCfg`)."""
    kind = cfg.evaluator.kind
    if kind not in EVALUATORS:
        raise ConfigError(
            file,
            "evaluator.kind",
            f"unknown evaluator {kind!r}; expected one of {', '.join(EVALUATORS)}",
        )
    return EVALUATORS[kind].from_config(cfg, space, file)
