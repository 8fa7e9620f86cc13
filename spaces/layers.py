"""Layers that know which channel group they read and write, so one builder can slice any family.

A group is a set of channels that must be pruned together (a layer's filters, or every filter
tied by residual additions). The group names `input`, `classes` and `image` (a generator's output) are fixed, never sliced.
"""

from __future__ import annotations

import torch
from torch import nn

FIXED_GROUPS = ("input", "classes", "image")


class GConv2d(nn.Conv2d):
    """A Conv2d tagged with its input/output channel groups and its weight-set group."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, *, gin: str, gout: str,
                 depthwise: bool = False, bias: bool = False, qgroup: str | None = None):
        super().__init__(cin, cout, k, stride=stride, padding=k // 2, groups=cin if depthwise else 1,
                         bias=bias)
        self.gin, self.gout, self.depthwise, self.qgroup = gin, gout, depthwise, qgroup


class GBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d over one channel group."""

    def __init__(self, c: int, *, group: str):
        super().__init__(c)
        self.group = group


class GLinear(nn.Linear):
    """The classifier: reads a group, writes the fixed `classes` group."""

    def __init__(self, cin: int, cout: int, *, gin: str):
        super().__init__(cin, cout)
        self.gin, self.gout = gin, "classes"


def quantize_(weight: torch.Tensor, weight_set: str) -> torch.Tensor:
    """Project a conv weight onto a discrete set with one scale per output channel (in place)."""
    if weight_set != "float":
        with torch.no_grad():
            weight.copy_(quantized(weight.detach(), weight_set))
    return weight


def quantized_ste(weight: torch.Tensor, weight_set: str) -> torch.Tensor:
    """The quantised weight forward, the identity backward (straight-through estimator)."""
    if weight_set == "float":
        return weight
    return weight + (quantized(weight.detach(), weight_set) - weight).detach()


def quantized(w: torch.Tensor, weight_set: str) -> torch.Tensor:
    """`w` projected onto a weight set, one scale per output channel."""
    if weight_set == "float":
        return w
    flat = w.reshape(w.shape[0], -1)
    if weight_set == "binary":
        alpha = flat.abs().mean(1, keepdim=True)
        q = torch.where(flat >= 0, alpha, -alpha)
    elif weight_set == "ternary":  # Ternary Weight Networks' threshold and scale
        delta = 0.7 * flat.abs().mean(1, keepdim=True)
        keep = flat.abs() > delta
        alpha = (flat.abs() * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)
        q = torch.sign(flat) * keep * alpha
    else:
        bits = int(weight_set.removeprefix("int"))
        levels = 2 ** (bits - 1) - 1
        scale = (flat.abs().amax(1, keepdim=True) / levels).clamp(min=1e-12)
        q = torch.round(flat / scale).clamp(-levels, levels) * scale
    return q.reshape(w.shape)
