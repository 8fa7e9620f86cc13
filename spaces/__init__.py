"""The unified search space: dimension kinds, genomes, encodings, supernet families, builder."""

from spaces.config import load_space, shipped_spaces
from spaces.dims import Choice, Condition, Dimension, Mask, Scale, WeightSet
from spaces.errors import ArchsearchError, ConfigError, GenomeError
from spaces.space import Genome, Space

__all__ = [
    "Space",
    "Genome",
    "Dimension",
    "Mask",
    "Choice",
    "Scale",
    "WeightSet",
    "Condition",
    "load_space",
    "shipped_spaces",
    "ArchsearchError",
    "ConfigError",
    "GenomeError",
]
