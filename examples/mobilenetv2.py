"""A MobileNetV2-style network in plain PyTorch (no torchvision): inverted residual blocks
(1x1 expansion, 3x3 depthwise, 1x1 linear projection), residual sums where the shape allows,
a 1x1 head and a linear classifier, for 32x32 images.

Its channel groups show what a dependency graph has to get right: a depthwise conv ties its
input and output channels to the expansion before it, and residual sums tie the projections of
a stage together."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = conv_bn(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, 3, stride, groups=mid)
        self.project = conv_bn(mid, cout, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_res else out


# (expansion, channels, blocks, first stride) per stage, as MobileNetV2, for 32x32 inputs
STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2))


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0, head: int = 1280):
        super().__init__()
        c = lambda n: max(8, int(n * width + 4) // 8 * 8)  # noqa: E731 - channels at this width
        cin = c(32)
        layers = [conv_bn(3, cin, 3, 1)]
        for t, ch, n, s in STAGES:
            for i in range(n):
                layers.append(InvertedResidual(cin, c(ch), s if i == 0 else 1, t))
                cin = c(ch)
        layers.append(conv_bn(cin, c(head), 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c(head), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def mobilenetv2(num_classes: int = 10, width: float = 1.0, head: int = 1280) -> MobileNetV2:
    """MobileNetV2 for 32x32 images (stride 1 in the stem and the second stage)."""
    return MobileNetV2(num_classes, width, head)
