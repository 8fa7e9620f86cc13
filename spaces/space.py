"""The unified search space: an ordered, named set of dimensions over one supernet family.

A genome is a plain dict name -> value. Dimensions that a depth scale cuts are inactive: they
are set to their default (the canonical form), left out of the id and out of Optuna's params.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from spaces.dims import Dimension
from spaces.errors import GenomeError
from spaces.families.base import Arch, Family

Genome = dict[str, Any]


def _rng(seed_or_rng: int | random.Random | None) -> random.Random:
    return seed_or_rng if isinstance(seed_or_rng, random.Random) else random.Random(seed_or_rng)


class Space:
    """Dimensions + family: sampling, variation, ids, encodings, cost and building."""

    def __init__(
        self,
        name: str,
        family: Family,
        dims: Iterable[Dimension],
        *,
        source: str | None = None,
        groups: dict[str, list[str]] | None = None,
        description: str = "",
    ):
        # dimensions with a condition come after those they may depend on
        ordered = sorted(dims, key=lambda d: d.condition is not None)
        self.name, self.family, self.source, self.description = name, family, source, description
        self.dims: dict[str, Dimension] = {d.name: d for d in ordered}
        self.groups = groups or {}
        # what Python made it from (search.api): the space file's mapping, and the objects
        # handed to its family (a user's network)
        self.config: dict[str, Any] | None = None
        self.objects: dict[str, Any] = {}
        family.supernet_ops = {d.scope: tuple(d.options) for d in ordered if d.target == "op"}

    def __repr__(self) -> str:
        return f"Space({self.name!r}, family={self.family.kind}, {len(self.dims)} dimensions)"

    def __len__(self) -> int:
        return len(self.dims)

    def with_classes(self, num_classes: int) -> Space:
        """The same space with a classifier for `num_classes` (set by the dataset)."""
        fam = self.family.with_classes(num_classes)
        return Space(
            self.name,
            fam,
            [copy.copy(d) for d in self.dims.values()],
            source=self.source,
            groups=self.groups,
            description=self.description,
        )

    # --- genomes ---------------------------------------------------------------------------------
    def is_active(self, name: str, genome: Genome) -> bool:
        c = self.dims[name].condition
        return c is None or c.holds(genome)

    def active(self, genome: Genome) -> list[str]:
        return [n for n in self.dims if self.is_active(n, genome)]

    def canonical(self, genome: Genome) -> Genome:
        return {
            n: (genome[n] if self.is_active(n, genome) else d.default) for n, d in self.dims.items()
        }

    def validate(self, genome: Genome) -> Genome:
        """Check every field and return the canonical genome; GenomeError names the field."""
        if not isinstance(genome, dict):
            raise GenomeError("<genome>", f"a genome is a mapping, got {type(genome).__name__}")
        unknown = [k for k in genome if k not in self.dims]
        if unknown:
            raise GenomeError(unknown[0], f"not a dimension of space '{self.name}'")
        out = {}
        for n, d in self.dims.items():
            if n not in genome:
                raise GenomeError(n, "missing")
            out[n] = d.validate(genome[n])
        return self.canonical(out)

    def full(self) -> Genome:
        """The genome that keeps everything: the supernet itself."""
        return {n: d.default for n, d in self.dims.items()}

    def sample(self, seed: int | random.Random | None = None) -> Genome:
        rng = _rng(seed)
        return self.canonical({n: d.sample(rng) for n, d in self.dims.items()})

    def genome_id(self, genome: Genome) -> str:
        """A stable digest of the active part of the genome: the candidate's id."""
        g = self.canonical(genome)
        payload = {n: self.dims[n].to_json(g[n]) for n in self.active(g)}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self, genome: Genome) -> dict[str, Any]:
        return {n: d.to_json(genome[n]) for n, d in self.dims.items()}

    def from_json(self, obj: dict[str, Any] | str) -> Genome:
        return self.validate(json.loads(obj) if isinstance(obj, str) else obj)

    # --- DEAP ------------------------------------------------------------------------------------
    def _slices(self) -> list[tuple[Dimension, slice]]:
        out, i = [], 0
        for d in self.dims.values():
            out.append((d, slice(i, i + d.n_genes())))
            i += d.n_genes()
        return out

    def to_genes(self, genome: Genome) -> list:
        return [x for d in self.dims.values() for x in d.to_genes(genome[d.name])]

    def from_genes(self, genes: Sequence) -> Genome:
        return self.canonical({d.name: d.from_genes(genes[s]) for d, s in self._slices()})

    def deap_mate(self, ind1: list, ind2: list, rng: random.Random) -> tuple[list, list]:
        """DEAP crossover: each dimension crosses over by its own kind, in place."""
        for d, s in self._slices():
            a, b = d.crossover(d.from_genes(ind1[s]), d.from_genes(ind2[s]), rng)
            ind1[s], ind2[s] = d.to_genes(a), d.to_genes(b)
        return ind1, ind2

    def deap_mutate(self, ind: list, rng: random.Random, rate: float = 0.1) -> tuple[list]:
        """DEAP mutation: each dimension mutates by its own kind, in place."""
        for d, s in self._slices():
            ind[s] = d.to_genes(d.mutate(d.from_genes(ind[s]), rng, rate))
        return (ind,)

    def deap_toolbox(
        self,
        weights: Sequence[float],
        seed: int | random.Random | None = None,
        mutation_rate: float = 0.1,
    ):
        """A DEAP toolbox with `individual`, `population`, `mate`, `mutate`, `genome` registered."""
        from deap import base, creator

        rng = _rng(seed)
        tag = hashlib.sha1(repr(tuple(weights)).encode()).hexdigest()[:8]
        fit, ind = f"Fitness_{tag}", f"Individual_{tag}"
        if not hasattr(creator, fit):
            creator.create(fit, base.Fitness, weights=tuple(weights))
            creator.create(ind, list, fitness=getattr(creator, fit))
        Ind = getattr(creator, ind)
        tb = base.Toolbox()
        tb.register("individual", lambda: Ind(self.to_genes(self.sample(rng))))
        tb.register("from_genome", lambda g: Ind(self.to_genes(g)))
        tb.register("population", lambda n: [tb.individual() for _ in range(n)])
        tb.register("mate", self.deap_mate, rng=rng)
        tb.register("mutate", self.deap_mutate, rng=rng, rate=mutation_rate)
        tb.register("genome", self.from_genes)
        tb.rng = rng
        return tb

    # --- Optuna ----------------------------------------------------------------------------------
    def suggest(self, trial) -> Genome:
        """Suggest a genome from an Optuna trial; inactive dimensions are not suggested."""
        g: Genome = {}
        for n, d in self.dims.items():
            g[n] = d.suggest(trial) if (d.condition is None or d.condition.holds(g)) else d.default
        return self.canonical(g)

    def to_optuna(self, genome: Genome) -> tuple[dict[str, Any], dict[str, Any]]:
        """Params and distributions of any genome, so it can be recorded as an Optuna trial."""
        g = self.canonical(genome)
        params, dists = {}, {}
        for n in self.active(g):
            params.update(self.dims[n].to_optuna(g[n]))
            dists.update(self.dims[n].optuna_distributions())
        return params, dists

    def from_optuna(self, params: dict[str, Any]) -> Genome:
        g: Genome = {}
        for n, d in self.dims.items():
            try:
                g[n] = d.from_optuna(params)
            except KeyError:
                g[n] = d.default
        return self.validate(g)

    # --- gymnasium / Ray Tune --------------------------------------------------------------------
    def gym_space(self, seed: int | None = None):
        from gymnasium import spaces

        return spaces.Dict({n: d.gym_space() for n, d in self.dims.items()}, seed=seed)

    def to_gym(self, genome: Genome) -> dict[str, Any]:
        return {n: d.to_gym(genome[n]) for n, d in self.dims.items()}

    def from_gym(self, sample: dict[str, Any]) -> Genome:
        return self.canonical({n: d.from_gym(sample[n]) for n, d in self.dims.items()})

    def tune_param_space(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in self.dims.values():
            out.update(d.tune_space())
        return out

    def from_tune(self, config: dict[str, Any]) -> Genome:
        return self.validate({n: d.from_tune(config) for n, d in self.dims.items()})

    # --- architecture, cost, models --------------------------------------------------------------
    def arch(self, genome: Genome) -> Arch:
        return self.family.resolve(list(self.dims.values()), self.canonical(genome))

    def cost(self, genome: Genome) -> dict[str, int]:
        """FLOPs (2 x MACs of convs and linears, as torch's flop counter) and parameters."""
        flops, params = self.family.cost(self.arch(genome))
        return {"flops": flops, "params": params}

    def supernet(self, seed: int = 0) -> nn.Module:
        """A freshly initialised supernet (pre-training lives in evaluators/)."""
        torch.manual_seed(seed)
        return self.family.module(self.arch(self.full()), supernet=True)

    def build(self, genome: Genome, supernet: nn.Module) -> nn.Module:
        """The genome's physically smaller sub-network with weights inherited from `supernet`."""
        return self.family.build(self.arch(genome), supernet)

    def resolution(self, genome: Genome) -> int:
        return self.arch(genome).resolution
