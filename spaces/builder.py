"""One builder for every family: genome -> physically smaller module with inherited weights.

Filters are chosen per channel group: a mask's ones, then (under a width multiplier) the most
important of them by L1 norm, summed over every layer that writes the group. Each layer of the
sub-network copies its slice of the same-named supernet layer; smaller kernels take the centre.
"""

from __future__ import annotations

import torch
from torch import nn

from spaces.arch import Arch
from spaces.layers import (
    FIXED_GROUPS,
    GBatchNorm2d,
    GConv2d,
    GLinear,
    input_channels,
    mask_kernels_,
    quantize_,
    weight_set_group,
)


@torch.no_grad()
def importance(model: nn.Module) -> dict[str, torch.Tensor]:
    """L1 norm of each group's filters, normalised per layer and summed over its writers."""
    imp: dict[str, torch.Tensor] = {}
    for m in model.modules():
        if isinstance(m, GConv2d) and m.gout not in FIXED_GROUPS:
            l1 = m.weight.detach().abs().flatten(1).sum(1)
            l1 = l1 / l1.mean().clamp(min=1e-12)
            imp[m.gout] = imp[m.gout] + l1 if m.gout in imp else l1
    return imp


def kept_indices(
    arch: Arch, full_sizes: dict[str, int], imp: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Indices into the supernet's channels that each group of `arch` keeps, ascending."""
    out = {}
    for g, n in full_sizes.items():
        mask = arch.masks.get(g)
        cand = [i for i in range(n) if mask is None or mask[i]]
        k = arch.sizes[g]
        if k < len(cand):
            score = imp[g][cand] if g in imp else torch.zeros(len(cand))
            order = sorted(range(len(cand)), key=lambda t: (-float(score[t]), cand[t]))
            cand = sorted(cand[t] for t in order[:k])
        out[g] = torch.tensor(cand, dtype=torch.long)
    return out


def _take(t: torch.Tensor, dim: int, group: str, idx: dict[str, torch.Tensor]) -> torch.Tensor:
    return t if group in FIXED_GROUPS else t.index_select(dim, idx[group])


def sliced_state(
    sub: nn.Module, supernet: nn.Module, idx: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """For every parameter and buffer of `sub`, its slice of the same-named supernet tensor.

    Differentiable: supernet training runs sub-networks on these slices (torch.func)."""
    src = dict(supernet.named_modules())
    out: dict[str, torch.Tensor] = {}
    for name, m in sub.named_modules():
        if not isinstance(m, (GConv2d, GBatchNorm2d, GLinear)):
            continue
        s = src.get(name)
        if type(s) is not type(m):
            raise KeyError(f"supernet has no {type(m).__name__} named {name!r}")
        pre = f"{name}." if name else ""
        if isinstance(m, GConv2d):
            w = _take(s.weight, 0, m.gout, idx)
            if not m.depthwise:
                w = _take(w, 1, m.gin, idx)
            k, ks = m.kernel_size[0], s.kernel_size[0]
            if k < ks:
                o = (ks - k) // 2
                w = w[:, :, o : o + k, o : o + k]
            out[pre + "weight"] = w
            if (
                s.kernel_mask is not None
            ):  # kernel-level pruning: the mask is sliced like the weight
                km = _take(s.kernel_mask, 0, m.gout, idx)
                out[pre + "kernel_mask"] = km if m.depthwise else _take(km, 1, m.gin, idx)
            if m.bias is not None:
                out[pre + "bias"] = _take(s.bias, 0, m.gout, idx)
        elif isinstance(m, GBatchNorm2d):
            for attr in ("weight", "bias", "running_mean", "running_var"):
                out[pre + attr] = _take(getattr(s, attr), 0, m.group, idx)
            out[pre + "num_batches_tracked"] = s.num_batches_tracked
        else:
            out[pre + "weight"] = _take(s.weight, 1, m.gin, idx)
            out[pre + "bias"] = s.bias
    return out


@torch.no_grad()
def inherit_(sub: nn.Module, supernet: nn.Module, idx: dict[str, torch.Tensor]) -> None:
    """Copy into every layer of `sub` its slice of the same-named supernet layer."""
    state = sliced_state(sub, supernet, idx)
    missing = [k for k in sub.state_dict() if k not in state]
    if missing:
        raise KeyError(f"no supernet weights for {missing[:3]}")
    sub.load_state_dict(state)


@torch.no_grad()
def quantize_model_(model: nn.Module, quant: dict[str, str]) -> None:
    """Apply each conv's weight set (by its qgroup); stem and classifier stay float."""
    for m in model.modules():
        if weight_set_group(m) is not None:
            quantize_(m.weight, quant.get(weight_set_group(m), "float"))


@torch.no_grad()
def kernel_sparse_cost(space, genome, model: nn.Module) -> dict[str, int]:
    """(FLOPs, params) of `genome` as `space.cost` counts them, less every kernel that a kernel
    mask of `model` (the genome's built sub-network) prunes: its weights and multiply-adds."""
    cost = dict(space.cost(genome))
    convs = [m for m in model.modules() if isinstance(m, GConv2d) and m.kernel_mask is not None]
    if not convs:
        return cost
    pixels: dict[int, int] = {}
    hooks = [
        m.register_forward_hook(
            lambda mod, _i, out: pixels.__setitem__(id(mod), out.shape[-2] * out.shape[-1])
        )
        for m in convs
    ]
    r, was = space.resolution(genome), model.training
    model.eval()
    try:
        space.family.costed_forward(model, torch.zeros(1, input_channels(model), r, r))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    for m in convs:
        pruned = int((m.kernel_mask == 0).sum())
        per_kernel = m.kernel_size[0] * m.kernel_size[1]
        cost["params"] -= pruned * per_kernel
        cost["flops"] -= 2 * pruned * per_kernel * pixels.get(id(m), 0)
    return cost


def build_subnet(family, arch: Arch, supernet: nn.Module) -> nn.Module:
    """The physically smaller module of `arch`, its weights inherited from `supernet`."""
    sub = family.module(arch)
    inherit_(sub, supernet, kept_indices(arch, family.groups(), importance(supernet)))
    quantize_model_(sub, arch.quant)
    mask_kernels_(sub)
    sub.train(supernet.training)
    return sub
