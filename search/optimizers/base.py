"""The optimiser contract: ask for a genome, be told its trial. Optimisers see a Space and
trial records; one that needs the trained network (DCP) declares `needs_model` and gets it in
`prepare`. Every hook but `ask` has a documented default. Registration: one line in
`search.optimizers.OPTIMIZERS`."""

from __future__ import annotations

import logging
import math
import random
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from search.records import TrialRecord
from spaces.errors import ConfigError
from spaces.space import Genome, Space

if TYPE_CHECKING:
    from evaluators.base import TrainedModel


log = logging.getLogger(__name__)


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Optimizer:
    """Ask/tell over a Space with objectives (signs +1 maximise, -1 minimise) and constraints.

    The engine calls, in order: `attach(run_dir)`, `prepare(model)` if `needs_model`, `tell`
    for every stored trial (resume), then `ask` / `tell` until the budget, then `finish`."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    # prunes a trained network: the run hands it the evaluator's `trained_model()` in `prepare`
    needs_model: ClassVar[bool] = False

    def __init__(
        self, space: Space, objectives: list, constraints: list, seed: int, options: Any = None
    ):
        self.space, self.objectives, self.constraints, self.seed = (
            space,
            objectives,
            constraints,
            seed,
        )
        self.signs = [o.sign for o in objectives]
        self.options = options if options is not None else self.Options()
        self.rng = random.Random(seed)
        self.history: list[TrialRecord] = []
        self.seen: set[str] = set()
        self._known_fn = None  # the evaluator's `known` when a constraint's metric is known early
        self._known_all: tuple[tuple[str, ...], Any] | None = None  # every metric known early
        self._known_cons: list = []
        self._violation: dict[str, float] = {}

    def know(self, metrics: tuple[str, ...], known) -> None:
        """Told by the run which metrics the evaluator gives before evaluating (`known(genome)`):
        the constraints on them can be checked on a proposal before it costs an evaluation."""
        self._known_cons = [c for c in self.constraints if c.metric in metrics]
        self._known_fn = known if self._known_cons else None
        cheap = self.space.family.cheap_cost  # read for every child a surrogate ranks
        self._known_all = (tuple(metrics), known) if metrics and cheap else None

    def known_features(self, genome: Genome) -> list[float]:
        """The log of each metric known before evaluation (FLOPs, parameters, a table's
        latency; 0 where a genome lacks one): what a model of the fitness may use besides the
        genome's encoding. Empty until `know`, and where the family's cost is slow to
        compute (a user's own network)."""
        if self._known_all is None:
            return []
        names, known = self._known_all
        m = known(genome, frozenset(names))
        return [math.log(max(float(m[k]), 1e-12)) if k in m else 0.0 for k in names]

    def known_violation(self, genome: Genome) -> float:
        """Total violation of the constraints checkable before evaluation (0: none violated)."""
        if self._known_fn is None:
            return 0.0
        gid = self.space.genome_id(genome)
        if gid not in self._violation:
            m = self._known_fn(genome, frozenset(c.metric for c in self._known_cons))
            self._violation[gid] = sum(
                max(0.0, c.violation(float(m[c.metric]))) for c in self._known_cons if c.metric in m
            )
        return self._violation[gid]

    def first_feasible(self, draw, tries: int) -> Genome | None:
        """The first of `tries` draws (None: a draw that does not count) within the constraints
        known before evaluation, else the least violating one."""
        best, worst = None, float("inf")
        for _ in range(tries):
            g = draw()
            if g is None:
                continue
            v = self.known_violation(g)
            if v <= 0:
                return g
            if v < worst:
                best, worst = g, v
        return best

    def sample_feasible(self, tries: int = 200) -> Genome:
        """A random genome within the constraints known before evaluation (the least violating
        of `tries` draws if none is)."""
        return self.first_feasible(lambda: self.space.sample(self.rng), tries)

    @classmethod
    def parse_options(cls, options: dict[str, Any], file: str | None) -> BaseModel:
        try:
            return cls.Options.model_validate(options)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in ("optimizer", "options", *first["loc"]))
            msg = (
                "unknown option of optimizer " + repr(cls.name)
                if first["type"] == "extra_forbidden"
                else first["msg"]
            )
            raise ConfigError(file, loc, msg) from None

    @classmethod
    def check_space(cls, space: Space, file: str | None) -> None:
        """Raise ConfigError if the optimiser cannot search this space (before any work)."""

    @classmethod
    def check_options(cls, space: Space, options: BaseModel, file: str | None) -> None:
        """Raise ConfigError if the options do not fit the space (files they name, etc.)."""

    def attach(self, run_dir) -> None:
        """Told the run folder before the first tell/ask (optimisers that checkpoint state use
        it)."""

    def prepare(self, model: TrainedModel) -> None:
        """With `needs_model`: the pre-trained network and data, before the first ask (default:
        not called)."""

    def finish(self, run_dir) -> None:
        """Write the optimiser's own artefacts (plots, fitted models) into the run folder."""

    def ask(self) -> Genome | None:
        """The next genome to evaluate, or None when the optimiser has nothing more to ask."""
        raise NotImplementedError

    def waiting(self) -> bool:
        """True while the next ask would depend on trials still in flight (a generation's end):
        the engine then holds its workers until they report, so the genomes asked do not depend
        on which trial finishes first. Advisory: `ask` still answers if called."""
        return False

    def dropped(self, genome_id: str) -> None:
        """A genome this optimiser asked for will never be told (the engine had it already, or
        its evaluation was abandoned)."""

    def tell(self, record: TrialRecord) -> None:
        """Hear of a stored trial (also every stored trial on resume, in order)."""
        self.history.append(record)
        self.seen.add(record.genome_id)

    def fresh(self, sample, tries: int = 1000) -> Genome | None:
        """A genome not seen before, drawn by `sample()`; None once `tries` more draws than twice
        the genomes seen found none (the space, or what `sample` reaches of it, is exhausted:
        the run then stops). On resume a seeded `sample` first replays the draws that made the
        stored trials: those are the genomes seen, hence the allowance."""
        tries += 2 * len(self.seen)
        for _ in range(tries + 1):
            g = sample()
            gid = self.space.genome_id(g)
            if gid not in self.seen:
                self.seen.add(gid)
                return g
        log.warning(
            "%s: every genome of %d draws was evaluated already; the space (or the part of it "
            "this optimiser reaches) is exhausted: stopping",
            self.name,
            tries + 1,
        )
        return None
