"""Evolutionary optimisers on DEAP: `ga` (weighted fitness as in Evolutionary compression,
arXiv 1707.08005, or NSGA-II), `aging` (regularised evolution for asynchronous workers) and
`coevolution` (several populations over a partition of the genome, as in Co-evolutionary
compression, arXiv 1907.10804).

All three are ask/tell, and every trial told counts, whichever optimiser or earlier run
produced it. `ga` and `coevolution` are synchronous by default: once a generation's (or a turn's)
trials are all handed out, they wait for them to report before breeding the next, and they
rank a generation's trials in genome order, not in the order they finished; so the same config
and seed give the same genomes with any number of workers. `synchronous: false` keeps every
worker busy instead (offspring of the current parents are bred as long as workers ask; the
genomes then depend on which trial finishes first), as `aging` always does. Constraints are
feasibility-first: a feasible trial beats an infeasible one; infeasible ones compare by total
violation. Variation uses the per-kind crossover and mutation that the space registers with DEAP
(`Space.deap_toolbox`); selection draws from the optimiser's own seeded generator, so the same
config and seed give the same genomes."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from search.optimizers.base import Optimizer
from search.optimizers.surrogate import Surrogate
from search.records import TrialRecord
from search.seeding import load_genomes
from spaces.errors import ConfigError

log = logging.getLogger(__name__)


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    population_size: int = Field(20, ge=2)
    selection: Literal["auto", "weighted", "nsga2"] = Field(
        "auto",
        description="weighted: first objective + lambda x compression; nsga2: all objectives; "
        "auto: nsga2 if several",
    )
    lam: float = Field(
        0.0,
        alias="lambda",
        ge=0,
        description="weight of the compression term (1 - cost / base cost)",
    )
    compression: Literal["flops", "params"] = "flops"
    crossover_prob: float = Field(0.9, ge=0, le=1)
    mutation_rate: float = Field(
        0.1, gt=0, le=1, description="chance that each dimension (each mask bit) mutates"
    )
    tournament: int = Field(2, ge=1)
    seeds: list[str] = Field(
        default_factory=list,
        description="genome files or run folders the first population starts from",
    )
    surrogate: int = Field(
        10,
        ge=0,
        description="children bred per ask and ranked by a ridge model of the fitness fitted "
        "on the trials so far; the best predicted one is evaluated (0 or 1: off; weighted "
        "selection only)",
    )


SYNC = Field(
    True,
    description="wait at a generation's end for its trials, so that the genomes do not depend "
    "on which worker finishes first (false: workers never wait)",
)


class GAOptions(_Opts):
    synchronous: bool = SYNC
    offspring: int | None = Field(
        None, ge=1, description="trials between two selections (default: population_size)"
    )


class AgingOptions(_Opts):
    sample_size: int = Field(5, ge=1, description="tournament size of regularised evolution")


class CoevolutionOptions(_Opts):
    synchronous: bool = SYNC
    population_size: int = Field(10, ge=2)
    surrogate: int = Field(0, ge=0, description="as ga's; off: the populations follow the paper")
    offspring: int | None = Field(
        None,
        ge=1,
        description="trials per population before the turn passes (default: population_size)",
    )
    fitness: dict[str, str] = Field(
        default_factory=dict,
        description="population -> metric it maximises (default: the run's objectives)",
    )


class Ranking:
    """Orders trial records best first, feasibility first: by a weighted fitness, or by NSGA-II
    (non-dominated rank, then crowding distance, `tools.selNSGA2` for survivors)."""

    def __init__(
        self, opt: Optimizer, mode: str, metric_signs: list[tuple[str, float]] | None = None
    ):
        self.opt, self.mode = opt, mode
        self.metric_signs = (
            metric_signs  # objectives to rank by: (metric, +1/-1); default the run's
        )
        self._ratio: dict[str, float] = {}
        base = opt.space.full()
        self.base_cost = (
            float(opt.space.cost(base).get(opt.options.compression, 0) or 0)
            if opt.options.lam
            else 0.0
        )

    def values(self, r: TrialRecord) -> list[float]:
        """Objective values, each signed so that larger is better."""
        if self.metric_signs is None:
            return [s * v for s, v in zip(self.opt.signs, r.values)]
        return [s * float(r.metrics[m]) for m, s in self.metric_signs]

    def compression(self, r: TrialRecord) -> float:
        if r.genome_id not in self._ratio:
            key = self.opt.options.compression
            cost = r.metrics.get(key)
            if cost is None:
                cost = self.opt.space.cost(r.genome).get(key, self.base_cost)
            self._ratio[r.genome_id] = 1.0 - float(cost) / self.base_cost if self.base_cost else 0.0
        return self._ratio[r.genome_id]

    def fitness(self, r: TrialRecord) -> float:
        """Evolutionary compression's fitness: accuracy term + lambda x fraction of cost removed."""
        return self.values(r)[0] + (
            self.opt.options.lam * self.compression(r) if self.opt.options.lam else 0.0
        )

    def keys(self, recs: list[TrialRecord]) -> dict[int, tuple]:
        """A sort key per record (smaller is better), by position in `recs`."""
        keys: dict[int, tuple] = {}
        feas = [i for i, r in enumerate(recs) if r.feasible]
        for i, r in enumerate(recs):
            if not r.feasible:
                keys[i] = (1, r.total_violation, 0, 0.0)
        if self.mode == "weighted":
            for i in feas:
                keys[i] = (0, 0.0, 0, -self.fitness(recs[i]))
            return keys
        from deap import tools

        inds = self._individuals([recs[i] for i in feas])
        from deap.tools.emo import assignCrowdingDist

        for rank, front in enumerate(tools.sortNondominated(inds, len(inds))):
            assignCrowdingDist(front)
            for ind in front:
                keys[feas[ind.pos]] = (0, 0.0, rank, -ind.fitness.crowding_dist)
        return keys

    def _individuals(self, recs):
        from deap import base

        class _Fit(base.Fitness):
            weights = (1.0,) * len(self.values(recs[0])) if recs else (1.0,)

        out = []
        for pos, r in enumerate(recs):
            ind = _Ind()
            ind.pos = pos
            ind.fitness = _Fit(self.values(r))
            out.append(ind)
        return out

    def survivors(self, recs: list[TrialRecord], k: int) -> list[TrialRecord]:
        """The k best: NSGA-II's environmental selection among the feasible ones (tools.selNSGA2),
        then the least-violating infeasible ones."""
        if len(recs) <= k:
            return list(recs)
        feas = [r for r in recs if r.feasible]
        if self.mode == "nsga2" and len(feas) > k:
            from deap import tools

            inds = self._individuals(feas)
            return [feas[ind.pos] for ind in tools.selNSGA2(inds, k)]
        keys = self.keys(recs)
        order = sorted(range(len(recs)), key=lambda i: (keys[i], i))
        return [recs[i] for i in order[:k]]


def in_genome_order(recs) -> list[TrialRecord]:
    """Trial records sorted by genome id: a generation ranked the same whichever trial of it
    finished first (ties in NSGA-II's sort and crowding keep their input order)."""
    return sorted(recs, key=lambda r: r.genome_id)


class _Ind(list):
    """A DEAP individual standing for one trial record (its position and fitness)."""


class _Evolution(Optimizer):
    """What the evolutionary optimisers share: seeds, ranking, tournaments and variation."""

    def __init__(self, space, objectives, constraints, seed, options=None):
        super().__init__(space, objectives, constraints, seed, options)
        self.mode = self.options.selection
        if self.mode == "auto":
            self.mode = "nsga2" if len(objectives) > 1 else "weighted"
        self.tb = space.deap_toolbox([1.0], self.rng, self.options.mutation_rate)
        self.seeds = [
            g
            for src in self.options.seeds
            for g in load_genomes(src, space, None, "optimizer.options.seeds")
        ]
        self.children: list = []
        self._model = (
            Surrogate(space, extra=self.known_features) if self.options.surrogate > 1 else None
        )
        self._fitted: tuple | None = None  # what the model was last fitted on
        self.sync = bool(getattr(self.options, "synchronous", False))
        self._pending: set[str] = set()  # asked, not yet told
        self._fit_on: list[TrialRecord] = []  # synchronous: complete trials at the last selection

    def ask(self):
        g = self._ask()
        if g is not None:
            self._pending.add(self.space.genome_id(g))
        return g

    def _ask(self):
        raise NotImplementedError

    def waiting(self) -> bool:
        return self.sync and len(self._pending) >= self._open_slots()

    def _open_slots(self) -> int:
        """Synchronous: how many trials of the current generation may be in flight."""
        raise NotImplementedError

    def dropped(self, genome_id: str) -> None:
        self._pending.discard(genome_id)

    def tell(self, record: TrialRecord) -> None:
        super().tell(record)
        self._pending.discard(record.genome_id)

    def _selected(self) -> None:
        """After a selection: what the surrogate fits on until the next one (synchronous)."""
        self._fit_on = in_genome_order(r for r in self.history if r.complete)

    @classmethod
    def check_options(cls, space, options, file):
        for src in options.seeds:
            load_genomes(src, space, file, "optimizer.options.seeds")

    def _next_seed(self):
        while self.seeds:
            g = self.seeds.pop(0)
            gid = self.space.genome_id(g)
            if gid not in self.seen:
                self.seen.add(gid)
                return g
        return None

    def tournament(self, pop: list[TrialRecord], keys: dict[int, tuple], k: int) -> TrialRecord:
        picks = [self.rng.randrange(len(pop)) for _ in range(min(k, len(pop)))]
        return pop[min(picks, key=lambda i: (keys[i], i))]

    def breed(
        self, mom: TrialRecord, dad: TrialRecord | None, dims: list[str] | None = None
    ) -> list[dict]:
        """Children of two parents by the space's DEAP operators (crossover, then mutation)."""
        a = self.tb.from_genome(mom.genome)
        b = self.tb.from_genome(dad.genome if dad is not None else mom.genome)
        if dad is not None and self.rng.random() < self.options.crossover_prob:
            a, b = self.tb.mate(a, b)
        kids = []
        for ind in (a, b):
            (ind,) = self.tb.mutate(ind)
            g = self.tb.genome(ind)
            if dims is not None:  # co-evolution: only this population's dimensions change
                g = self.space.canonical({**mom.genome, **{n: g[n] for n in dims}})
            kids.append(g)
        return kids

    def _fresh_child(self, make) -> dict:
        """A child not seen before and within the constraints known before evaluation; with a
        surrogate, the best predicted of several such children. A random genome if variation
        keeps repeating."""
        model = self._surrogate()
        if model is None:
            g = self._new_child(make, set())
        else:
            kids: list[dict] = []
            ids: set[str] = set()
            while len(kids) < self.options.surrogate and (g := self._new_child(make, ids)):
                kids.append(g)
                ids.add(self.space.genome_id(g))
            g = kids[int(np.argmax(model.predict(kids)))] if kids else None
        if g is None:
            return self.fresh(self.sample_feasible)
        self.seen.add(self.space.genome_id(g))
        return g

    def _new_child(self, make, taken: set[str], tries: int = 200) -> dict | None:
        """A child of `make()` not seen nor in `taken`, feasible as far as is known before
        evaluation (else the least violating one bred)."""

        def draw():
            if not self.children:
                self.children = make()
            g = self.children.pop(0)
            gid = self.space.genome_id(g)
            return None if gid in self.seen or gid in taken else g

        return self.first_feasible(draw, tries if self._known_fn is not None else 50)

    @property
    def _ranking(self) -> Ranking:
        return self.rank

    def _surrogate(self) -> Surrogate | None:
        """The fitness model fitted on the complete trials, once there are a population's worth
        (weighted selection; None when off)."""
        done = self._fit_on if self.sync else [r for r in self.history if r.complete]
        if (
            self.options.surrogate <= 1
            or self.mode != "weighted"
            or len(done) < self.options.population_size
        ):
            return None
        fitted = (len(done), id(self._ranking))  # asks between two tells reuse the fit
        if self._fitted != fitted:
            self._model.fit([r.genome for r in done], [self._ranking.fitness(r) for r in done])
            self._fitted = fitted
        return self._model


class GA(_Evolution):
    """(mu + lambda) genetic algorithm: weighted fitness (Evolutionary compression) for one
    objective, NSGA-II for several; elitist, since parents compete with their offspring."""

    name = "ga"
    Options = GAOptions

    def __init__(self, space, objectives, constraints, seed, options=None):
        super().__init__(space, objectives, constraints, seed, options)
        self.rank = Ranking(self, self.mode)
        self.pop: list[TrialRecord] = []
        self.new: list[TrialRecord] = []
        self.generation = 0
        self._keys: dict[int, tuple] = {}

    @property
    def lam_(self) -> int:
        return self.options.offspring or self.options.population_size

    def _open_slots(self) -> int:
        if not self.pop:
            return self.options.population_size - sum(r.complete for r in self.new)
        return self.lam_ - len(self.new)

    def _ask(self):
        if not self.pop:  # the first population: seeds, then random genomes
            return self._next_seed() or self.fresh(self.sample_feasible)

        def make():
            mom = self.tournament(self.pop, self._keys, self.options.tournament)
            dad = self.tournament(self.pop, self._keys, self.options.tournament)
            return self.breed(mom, dad)

        return self._fresh_child(make)

    def tell(self, record: TrialRecord) -> None:
        super().tell(record)
        self.new.append(record)
        P = self.options.population_size
        if (
            not self.pop
            and sum(r.complete for r in self.new) >= P
            or self.pop
            and len(self.new) >= self.lam_
        ):
            pool = self.pop + in_genome_order(r for r in self.new if r.complete)
            self.pop = self.rank.survivors(pool, P)
            self._keys = self.rank.keys(self.pop)
            self.new, self.children = [], []
            self.generation += 1
            self._selected()
            log.debug("ga generation %d: %d parents", self.generation, len(self.pop))


class Aging(_Evolution):
    """Regularised (aging) evolution (Real et al. 2019): a queue of the last `population_size`
    trials; each ask mutates the winner of a random sample; the oldest trial dies. Naturally
    asynchronous: no generation to wait for."""

    name = "aging"
    Options = AgingOptions

    def __init__(self, space, objectives, constraints, seed, options=None):
        super().__init__(space, objectives, constraints, seed, options)
        self.rank = Ranking(self, self.mode)
        self.pop: list[TrialRecord] = []

    def _ask(self):
        if len(self.pop) < self.options.population_size:
            return self._next_seed() or self.fresh(self.sample_feasible)

        def make():
            sample = [
                self.pop[self.rng.randrange(len(self.pop))] for _ in range(self.options.sample_size)
            ]
            keys = self.rank.keys(sample)
            parent = sample[min(range(len(sample)), key=lambda i: (keys[i], i))]
            return self.breed(parent, None)[:1]

        return self._fresh_child(make)

    def tell(self, record: TrialRecord) -> None:
        super().tell(record)
        if record.complete:
            self.pop.append(record)
            if len(self.pop) > self.options.population_size:
                self.pop.pop(0)


def resolve_groups(space) -> dict[str, list[str]]:
    """The space's `groups:` as population -> dimension names; dimensions no group names form
    a last population `rest`."""
    out: dict[str, list[str]] = {}
    taken: set[str] = set()
    for gname, members in (space.groups or {}).items():
        names = [
            n
            for n in space.dims
            if n not in taken and any(n == m or n.startswith(f"{m}.") for m in members)
        ]
        taken.update(names)
        if names:
            out[gname] = names
    rest = [n for n in space.dims if n not in taken]
    if rest and out:
        out["rest"] = rest
    return out


class Coevolution(_Evolution):
    """Cooperative co-evolution: one population per group of dimensions. Populations take turns;
    a candidate of population k is its own dimensions joined with the current best
    representative of every other population, and its fitness (`fitness: {group: metric}`, by
    default the run's objectives) is that of the joined genome."""

    name = "coevolution"
    Options = CoevolutionOptions

    @classmethod
    def check_space(cls, space, file):
        if len(resolve_groups(space)) < 2:
            raise ConfigError(
                file,
                "groups",
                f"coevolution needs `groups:` in space {space.name!r} that split its dimensions "
                "into two or more populations",
            )

    @classmethod
    def check_options(cls, space, options, file):
        super().check_options(space, options, file)
        groups = resolve_groups(space)
        for g in options.fitness:
            if g not in groups:
                raise ConfigError(
                    file,
                    f"optimizer.options.fitness.{g}",
                    f"not a population; the space's are {', '.join(groups)}",
                )

    def __init__(self, space, objectives, constraints, seed, options=None):
        super().__init__(space, objectives, constraints, seed, options)
        self.check_space(space, None)
        self.groups = resolve_groups(space)
        self.names = list(self.groups)
        self.rank = {
            g: Ranking(
                self,
                self.mode,
                [(self.options.fitness[g], 1.0)] if g in self.options.fitness else None,
            )
            for g in self.names
        }
        self.pops: dict[str, list[TrialRecord]] = {g: [] for g in self.names}  # parents
        self.pool: dict[str, list[TrialRecord]] = {
            g: [] for g in self.names
        }  # told since the last selection
        self.keys: dict[str, dict[int, tuple]] = {g: {} for g in self.names}
        self.reps: dict[str, TrialRecord] = {}
        self.turn = 0
        self.told_in_turn = 0
        self.origin: dict[str, str] = {}  # genome id -> the population whose candidate it is

    @property
    def _per_turn(self) -> int:
        return self.options.offspring or self.options.population_size

    @property
    def _ranking(self) -> Ranking:
        return self.rank[self.names[self.turn]]

    def _base(self) -> dict:
        """The representatives joined: every population's best dimensions."""
        g = dict(self.space.full())
        for name, rep in self.reps.items():
            g.update({n: rep.genome[n] for n in self.groups[name]})
        return g

    def _open_slots(self) -> int:
        if not self.reps:
            return self.options.population_size - len(self.pool[self.names[0]])
        return self._per_turn - self.told_in_turn

    def _ask(self):
        if not self.reps:  # a first, shared population of whole genomes
            return self._next_seed() or self.fresh(self.sample_feasible)
        name = self.names[self.turn]
        dims = self.groups[name]
        pop, keys = self.pops[name], self.keys[name]
        base = self._base()

        def make():
            mom = self.tournament(pop, keys, self.options.tournament)
            dad = self.tournament(pop, keys, self.options.tournament)
            joined = [
                TrialRecord(
                    0,
                    self.space.canonical({**base, **{n: p.genome[n] for n in dims}}),
                    "",
                    "complete",
                )
                for p in (mom, dad)
            ]
            return self.breed(joined[0], joined[1], dims)

        g = self._fresh_child(make)
        self.origin[self.space.genome_id(g)] = name
        return g

    def tell(self, record: TrialRecord) -> None:
        super().tell(record)
        owner = self.origin.pop(record.genome_id, None)
        P = self.options.population_size
        if not self.reps:
            if record.complete:
                for g in self.names:
                    self.pool[g].append(record)
            if all(len(p) >= P for p in self.pool.values()):
                for g in self.names:
                    self._select(g)
                self._selected()
            return
        targets = (
            [owner] if owner else self.names
        )  # a trial from elsewhere informs every population
        if record.complete:
            for g in targets:
                self.pool[g].append(record)
        if owner is None or owner == self.names[self.turn]:
            self.told_in_turn += 1
        if self.told_in_turn >= self._per_turn:
            name = self.names[self.turn]
            self._select(name)
            self.turn = (self.turn + 1) % len(self.names)
            self.told_in_turn = 0
            self.children = []
            self._selected()

    def _select(self, g: str) -> None:
        self.pops[g] = self.rank[g].survivors(
            self.pops[g] + in_genome_order(self.pool[g]), self.options.population_size
        )
        self.pool[g] = []
        self.keys[g] = self.rank[g].keys(self.pops[g])
        best = min(range(len(self.pops[g])), key=lambda i: (self.keys[g][i], i))
        self.reps[g] = self.pops[g][best]
