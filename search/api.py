"""archsearch from Python, without YAML: a space from a network object (or a space file's
mapping), a search with an optimiser and a budget, its front and trials back.

    from search.api import model_space, search
    space = model_space(net, input_shape=(3, 32, 32))       # net: any nn.Module
    result = search(space, optimizer="ga", budget=20, out="runs/mine")
    result.front, result.trials, result.best
    model = result.model()                                  # the best network, fine-tuned

Every run is a run folder like the CLI's (`search show` / `report` / `export` read it); a run of a
network handed over as an object is resumed from Python (`resume(run_dir, model=net)`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.records import TrialRecord
from search.run import Run
from search.runs import open_run
from spaces.config import family_from_dict, space_of_family
from spaces.space import Space

SOURCE = "<python>"


@dataclass
class Result:
    """A finished (or stopped) run: its folder and its trials."""

    dir: Path
    trials: list[TrialRecord]
    front: list[TrialRecord]
    best: TrialRecord | None
    space: Space

    def model(self, trial: TrialRecord | int | None = None) -> nn.Module:
        """A trial's network (default: the best) with its fine-tuned weights, in eval mode."""
        rec = self.best if trial is None else trial
        if isinstance(rec, int):
            rec = next(r for r in self.trials if r.number == rec)
        if rec is None:
            raise ValueError("the run has no complete trial")
        state = torch.load(self.dir / "trials" / f"{rec.genome_id}.pt", weights_only=True)
        head = state.get(self.space.family.head_key)
        space = self.space.with_classes(head.shape[0]) if head is not None else self.space
        net = space.family.module(space.arch(rec.genome))
        net.load_state_dict(state)
        return net.eval()


def model_space(
    model: nn.Module,
    *,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    name: str = "model",
    dimensions: dict[str, Any] | None = None,
    exclude: list[str] | tuple[str, ...] = (),
    pretrained: bool = True,
    **family: Any,
) -> Space:
    """The search space of a network object: its coupled channel groups as filter masks (and
    a resolution scale if it runs at other sizes), or the `dimensions` templates given (as in a
    space file). `pretrained`: its weights are trained (it is then not trained again if its
    classifier fits the data); `family`: other `family:` fields (`channel_multiple`, `head`)."""
    fam = {
        "kind": "model",
        "input_shape": list(input_shape),
        "exclude": list(exclude),
        "pretrained": pretrained,
        **family,
    }
    data = {"name": name, "family": fam, "dimensions": dimensions}
    space = space_of_family(data, family_from_dict(fam, SOURCE, model=model), SOURCE)
    space.config, space.objects = data, {"model": model}
    return space


def load(config: dict[str, Any] | str | Path) -> Space:
    """The space of a space file's mapping, or of a file."""
    from spaces.config import load_space, space_from_dict

    if isinstance(config, dict):
        space = space_from_dict(config, SOURCE)
        space.config = copy.deepcopy(config)
        return space
    return load_space(config)


def search(
    space: Space | dict[str, Any] | str | Path,
    *,
    optimizer: str = "random",
    budget: int = 20,
    options: dict[str, Any] | None = None,
    objectives: list[dict[str, str]] | None = None,
    constraints: list[dict[str, Any]] | None = None,
    dataset: dict[str, Any] | None = None,
    out: str | Path | None = None,
    workers: int | None = 0,
    seed: int = 0,
    progress: bool = False,
    **settings: Any,
) -> Result:
    """Run a search and return its result. `settings`: any other run field (`pretrain`,
    `evaluator`, `latency`, `cache`, ...), as in a run file. `workers`: 0 evaluates in this
    process (the default here), N on N Ray workers, None one per core."""
    if isinstance(space, (str, Path)):
        run = Run.create(str(space), None if out is None else str(out), [], {})
    else:
        if isinstance(space, dict):
            space = load(space)
        data = dict(space.config or {})
        if not data:
            raise ValueError("a Space made by model_space() or load(), or a space file's mapping")
        data.update(
            optimizer={"name": optimizer, "options": options or {}},
            budget=budget,
            seed=seed,
            workers=workers,
            **settings,
        )
        for key, value in (
            ("objectives", objectives),
            ("constraints", constraints),
            ("dataset", dataset),
        ):
            if value is not None:
                data[key] = value
        run = Run.create_from(data, None if out is None else str(out), SOURCE, **space.objects)
        run.space.objects = space.objects
    run.execute(progress=progress)
    return result(run.dir, **run.space.objects)


def resume(
    run_dir: str | Path, *, model: nn.Module | None = None, progress: bool = False
) -> Result:
    """Finish a stopped run (`model`: the network it was made of, if handed over from Python)."""
    objects = {"model": model} if model is not None else {}
    run = Run.open(str(run_dir), **objects)
    run.execute(progress=progress)
    return result(run.dir, **objects)


def result(run_dir: str | Path, **objects: Any) -> Result:
    """A run folder's trials, front and best (`model=`: the network it was made of, if handed
    over from Python)."""
    run = open_run(run_dir, **objects)
    return Result(run.dir, run.records, run.front(), run.best(), run.space)
