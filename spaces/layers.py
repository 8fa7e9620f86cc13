"""Layers that know which channel group they read and write, so one builder can slice any family.

A group is a set of channels that must be pruned together (a layer's filters, or every filter
tied by residual additions). The group names `input`, `classes` and `image` (a generator's
output) are fixed, never sliced.
"""

from __future__ import annotations

import torch
from torch import nn

from spaces.dims import WEIGHT_SETS

FIXED_GROUPS = ("input", "classes", "image")


class GConv2d(nn.Conv2d):
    """A Conv2d tagged with its input/output channel groups and its weight-set group."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        *,
        gin: str,
        gout: str,
        depthwise: bool = False,
        bias: bool = False,
        qgroup: str | None = None,
    ):
        super().__init__(
            cin, cout, k, stride=stride, padding=k // 2, groups=cin if depthwise else 1, bias=bias
        )
        self.gin, self.gout, self.depthwise, self.qgroup = gin, gout, depthwise, qgroup
        # kernel-level pruning (DKP): (cout, cin) of 1 / 0, or None (every other path: a plain conv)
        self.register_buffer("kernel_mask", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_mask is None:
            return super().forward(x)
        # pruned kernels contribute nothing and get no gradient, so training keeps them at zero
        return self._conv_forward(x, self.weight * self.kernel_mask[:, :, None, None], self.bias)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # a state with a kernel mask (a DKP-pruned supernet, a sub-network's fine-tuned weights)
        # gives a freshly built layer its mask: every load_state_dict path carries it
        key = prefix + "kernel_mask"
        if self.kernel_mask is None and key in state_dict:
            self.kernel_mask = torch.empty_like(state_dict[key], device=self.weight.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def input_channels(model: nn.Module) -> int:
    """The channels a network's input has: its first convolution's (3 if it has none)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def weight_set_group(m: nn.Module) -> str | None:
    """The weight-set group of a conv: a GConv2d's `qgroup`, or the one a user's network's conv
    was tagged with when it was pruned (spaces.families.model); None for every other layer."""
    return getattr(m, "qgroup", None) if isinstance(m, nn.Conv2d) else None


@torch.no_grad()
def mask_kernels_(model: nn.Module) -> None:
    """Zero the pruned kernels of every conv with a kernel mask (after quantisation, which may
    move a zero weight onto a set's non-zero value)."""
    for m in model.modules():
        if isinstance(m, GConv2d) and m.kernel_mask is not None:
            w = m.weight
            w.mul_(m.kernel_mask[:, :, None, None].to(w.dtype))


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


def set_levels(weight_set: str) -> torch.Tensor:
    """The normalised values of a low-bit weight set, linspace(-1, 1, levels) (its output
    channel's scale multiplies them): binary {-1, 1}, ternary {-1, 0, 1}, `intN` 2**N evenly
    spaced levels (int2 {-1, -1/3, 1/3, 1}, as in SLB's authors' code). Code c of a set with L
    levels is the value 2c / (L - 1) - 1 (what the ONNX export stores and unpacks)."""
    levels = WEIGHT_SETS.get(weight_set)
    if levels is None:
        raise ValueError(f"{weight_set!r} is not a low-bit weight set")
    # code * step - 1, the very float32 operations of `quantized` and of the export's graph
    return torch.arange(levels, dtype=torch.float32) * (2 / (levels - 1)) - 1


def quantized(w: torch.Tensor, weight_set: str) -> torch.Tensor:
    """`w` projected onto a weight set, one scale per output channel: binary by sign with the
    mean magnitude (XNOR-Net), ternary by Ternary Weight Networks' threshold and scale, `intN`
    to the nearest of its 2**N levels times the channel's largest magnitude."""
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
        top = WEIGHT_SETS[weight_set] - 1  # codes 0..top, value 2c / top - 1
        alpha = flat.abs().amax(1, keepdim=True).clamp(min=1e-12)
        codes = torch.round((flat / alpha + 1) * (top / 2)).clamp(0, top)
        q = (codes * (2 / top) - 1) * alpha
    return q.reshape(w.shape)
