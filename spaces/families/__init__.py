"""Supernet families as data, all built by spaces.builder."""

from spaces.families.base import Arch, Family
from spaces.families.cell import CellFamily
from spaces.families.cyclegan import CycleGANFamily
from spaces.families.mbconv import MBConvFamily
from spaces.families.model import ModelFamily
from spaces.families.resnet import ResNetFamily

FAMILIES: dict[str, type[Family]] = {
    f.kind: f for f in (MBConvFamily, ResNetFamily, CellFamily, CycleGANFamily, ModelFamily)
}

__all__ = ["Arch", "Family", "FAMILIES"]
