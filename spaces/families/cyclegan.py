"""A pair of small CycleGAN generators (A -> B and B -> A) as one family, the base of
co-evolutionary compression (arXiv 1907.10804): each generator's channels are their own groups,
so a space can give each generator its own population.

A generator: conv 3x3 (c1) -> strided conv (c2, the residual trunk) -> residual blocks (inner
channels r<j>) -> nearest upsampling + conv (c3) -> conv to the image (tanh). Groups of the A -> B
generator are `ab.c1`, `ab.c2`, `ab.r0`, ..., `ab.c3`; of B -> A `ba.*`. The module's forward is
A -> B (what latency and export time and trace); `.ab` and `.ba` are the generators. FLOPs and
params count both generators."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from spaces.families.base import Arch, Family, FamilySpec, bn_params, conv_cost
from spaces.layers import GBatchNorm2d, GConv2d

DIRECTIONS = ("ab", "ba")


class CycleGANSpec(FamilySpec):
    kind: Literal["cyclegan"] = "cyclegan"
    resolution: int = Field(16, ge=8)
    c1: int = Field(16, ge=1)
    c2: int = Field(32, ge=1)
    c3: int = Field(16, ge=1)
    res_blocks: int = Field(2, ge=1)


class CycleGANFamily(Family):
    kind = "cyclegan"
    task = "translate"
    Spec = CycleGANSpec
    targets = ("filters", "weights")

    def groups(self):
        s, g = self.spec, {}
        for d in DIRECTIONS:
            g[f"{d}.c1"], g[f"{d}.c2"], g[f"{d}.c3"] = s.c1, s.c2, s.c3
            for j in range(s.res_blocks):
                g[f"{d}.r{j}"] = s.c2
        return g

    def stage_blocks(self):
        return {d: self.spec.res_blocks for d in DIRECTIONS}

    def stage_groups(self):
        return {d: f"{d}.c2" for d in DIRECTIONS}

    def block_groups(self):
        return {f"{d}.b{j}": f"{d}.r{j}" for d in DIRECTIONS for j in range(self.spec.res_blocks)}

    def default_kernel(self, block):
        return 3

    def costed_forward(self, model, x):
        """FLOPs and params count both generators (what the genome compresses)."""
        model.ba(x)
        return model(x)

    def output_shape(self, arch: Arch) -> tuple[int, ...]:
        return (3, arch.resolution, arch.resolution)

    def module(self, arch, supernet=False):
        return CycleGANPair(self, arch)

    def cost(self, arch):
        f = p = 0
        for d in DIRECTIONS:
            s, h = arch.sizes, arch.resolution
            c1, c2, c3 = s[f"{d}.c1"], s[f"{d}.c2"], s[f"{d}.c3"]
            layers = [conv_cost(3, c1, 3, h), conv_cost(c1, c2, 3, h, 2)]
            h2 = layers[-1][2]
            for j in range(self.spec.res_blocks):
                r = s[f"{d}.r{j}"]
                layers += [conv_cost(c2, r, 3, h2), conv_cost(r, c2, 3, h2)]
                p += bn_params(r) + bn_params(c2)
            layers += [conv_cost(c2, c3, 3, 2 * h2), conv_cost(c3, 3, 3, 2 * h2, bias=True)]
            f += sum(x[0] for x in layers)
            p += sum(x[1] for x in layers) + bn_params(c1) + bn_params(c2) + bn_params(c3)
        return f, p


def _cbr(cin, cout, stride, gin, gout, q):
    return nn.Sequential(
        GConv2d(cin, cout, 3, stride, gin=gin, gout=gout, qgroup=q),
        GBatchNorm2d(cout, group=gout),
        nn.ReLU(inplace=True),
    )


class ResBlock(nn.Module):
    def __init__(self, s, d, j):
        super().__init__()
        trunk, inner, q = f"{d}.c2", f"{d}.r{j}", f"{d}.b{j}"
        self.conv1 = GConv2d(s[trunk], s[inner], 3, gin=trunk, gout=inner, qgroup=q)
        self.bn1 = GBatchNorm2d(s[inner], group=inner)
        self.conv2 = GConv2d(s[inner], s[trunk], 3, gin=inner, gout=trunk, qgroup=q)
        self.bn2 = GBatchNorm2d(s[trunk], group=trunk)

    def forward(self, x):
        return x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class Generator(nn.Module):
    def __init__(self, fam: CycleGANFamily, arch: Arch, d: str):
        super().__init__()
        s = arch.sizes
        self.enc = _cbr(3, s[f"{d}.c1"], 1, "input", f"{d}.c1", None)
        self.down = _cbr(s[f"{d}.c1"], s[f"{d}.c2"], 2, f"{d}.c1", f"{d}.c2", None)
        self.res = nn.Sequential(*[ResBlock(s, d, j) for j in range(fam.spec.res_blocks)])
        self.up = _cbr(s[f"{d}.c2"], s[f"{d}.c3"], 1, f"{d}.c2", f"{d}.c3", None)
        self.out = GConv2d(s[f"{d}.c3"], 3, 3, gin=f"{d}.c3", gout="image", bias=True)

    def forward(self, x):
        h = self.res(self.down(self.enc(x)))
        h = self.up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return torch.tanh(self.out(h))


class CycleGANPair(nn.Module):
    """Both generators; forward translates A -> B (what export and latency time)."""

    def __init__(self, fam: CycleGANFamily, arch: Arch):
        super().__init__()
        self.arch = arch
        self.ab = Generator(fam, arch, "ab")
        self.ba = Generator(fam, arch, "ba")

    def forward(self, x):
        return self.ab(x)
