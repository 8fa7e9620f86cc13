"""Evaluate the genomes of a file or another run, in order: to re-score a front with another
evaluator, to compare hand-made networks, or to add chosen candidates to a run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from search.optimizers.base import Optimizer
from search.seeding import load_genomes


class GivenOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    genomes: str = Field(
        ..., description="a JSON / JSON-lines file of genomes, a pareto.json, or a run folder"
    )


class Given(Optimizer):
    """Ask for each genome of `genomes` once, then stop."""

    name = "given"
    Options = GivenOptions

    @classmethod
    def check_options(cls, space, options, file):
        load_genomes(options.genomes, space, file, "optimizer.options.genomes")

    def __init__(self, space, objectives, constraints, seed, options=None):
        super().__init__(space, objectives, constraints, seed, options)
        self.queue = load_genomes(self.options.genomes, space, None, "optimizer.options.genomes")

    def ask(self):
        while self.queue:
            g = self.queue.pop(0)
            gid = self.space.genome_id(g)
            if gid not in self.seen:
                self.seen.add(gid)
                return g
        return None
