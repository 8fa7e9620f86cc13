"""CIFAR ResNet-20 / ResNet-56 of basic blocks: the base for channel pruning.

Stage transitions use a 1x1 projection shortcut (option B), so every residual sum ties one
named group (`s1` holds the stem and all of stage 1; `s2`, `s3` their stages) and a block's
inner channels form a group of their own (`s2.b0`)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from spaces.families.base import Arch, Family, FamilySpec, bn_params, conv_cost
from spaces.layers import GBatchNorm2d, GConv2d, GLinear


class ResNetSpec(FamilySpec):
    kind: Literal["resnet"] = "resnet"
    depth: int = Field(20, description="6n+2: 20, 32, 44, 56, 110")
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)

    @model_validator(mode="after")
    def _depth_6n2(self):
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110), got {self.depth}")
        return self


class ResNetFamily(Family):
    kind = "resnet"
    Spec = ResNetSpec
    targets = ("resolution", "depth", "width", "filters", "weights")

    @property
    def n(self) -> int:
        return (self.spec.depth - 2) // 6

    def groups(self):
        g = {}
        for i, c in enumerate(self.spec.channels, 1):
            g[f"s{i}"] = c
            for j in range(self.n):
                g[f"s{i}.b{j}"] = c
        return g

    def stage_blocks(self):
        return {f"s{i}": self.n for i in range(1, len(self.spec.channels) + 1)}

    def stage_groups(self):
        return {s: s for s in self.stage_blocks()}

    def block_groups(self):
        return {b: b for _, _, b in self.blocks()}

    def default_kernel(self, block):
        return 3

    def module(self, arch, supernet=False):
        return ResNet(self, arch)

    def cost(self, arch):
        s, h = arch.sizes, arch.resolution
        f, p, h = conv_cost(3, s["s1"], 3, h)
        p += bn_params(s["s1"])
        prev = "s1"
        for i in range(1, len(self.spec.channels) + 1):
            g = f"s{i}"
            for j in range(arch.depths[g]):
                mid, stride = s[f"{g}.b{j}"], 2 if (j == 0 and i > 1) else 1
                f1, p1, ho = conv_cost(s[prev], mid, 3, h, stride)
                f2, p2, _ = conv_cost(mid, s[g], 3, ho)
                f, p = f + f1 + f2, p + p1 + p2 + bn_params(mid) + bn_params(s[g])
                if prev != g:
                    f3, p3, _ = conv_cost(s[prev], s[g], 1, h, stride)
                    f, p = f + f3, p + p3 + bn_params(s[g])
                prev, h = g, ho
        f += 2 * s[prev] * arch.num_classes
        p += s[prev] * arch.num_classes + arch.num_classes
        return f, p


class BasicBlock(nn.Module):
    def __init__(self, s, gin, gmid, gout, stride, q):
        super().__init__()
        self.conv1 = GConv2d(s[gin], s[gmid], 3, stride, gin=gin, gout=gmid, qgroup=q)
        self.bn1 = GBatchNorm2d(s[gmid], group=gmid)
        self.conv2 = GConv2d(s[gmid], s[gout], 3, 1, gin=gmid, gout=gout, qgroup=q)
        self.bn2 = GBatchNorm2d(s[gout], group=gout)
        self.shortcut = None
        if gin != gout:
            self.shortcut = nn.Sequential(
                GConv2d(s[gin], s[gout], 1, stride, gin=gin, gout=gout, qgroup=q),
                GBatchNorm2d(s[gout], group=gout),
            )

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    def __init__(self, fam: ResNetFamily, arch: Arch):
        super().__init__()
        s = arch.sizes
        self.arch = arch
        self.conv = GConv2d(3, s["s1"], 3, gin="input", gout="s1")
        self.bn = GBatchNorm2d(s["s1"], group="s1")
        stages, prev = [], "s1"
        for i in range(1, len(fam.spec.channels) + 1):
            g, blocks = f"s{i}", []
            for j in range(arch.depths[g]):
                blocks.append(
                    BasicBlock(s, prev, f"{g}.b{j}", g, 2 if (j == 0 and i > 1) else 1, f"{g}.b{j}")
                )
                prev = g
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self.classifier = GLinear(s[prev], arch.num_classes, gin=prev)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.classifier(x.mean((2, 3)))
