"""Searching for Low-Bit Weights (SLB, arXiv 2009.08695): train a conv's weights as a choice
among the discrete values of its weight set.

Every weight holds logits over the set's values v (with one scale per output channel, alpha);
the weight in use is the softmax-weighted value alpha * sum_k softmax(T * logits)_k v_k. The
temperature T rises during training (soft at first, one-hot at the end), and at the end every
weight becomes alpha * v[argmax]: it lies in its set exactly, and the batch-norm statistics
are re-estimated for these hard weights (`evaluators.train.fine_tune`). The logits start from
the float weights (the nearest value most likely), so training starts from the pre-trained
network."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from spaces.layers import GConv2d, set_levels, weight_set_group


def set_values(weight_set: str) -> torch.Tensor:
    """The normalised values of a weight set (the scale alpha multiplies them):
    linspace(-1, 1, levels) as `spaces.layers.set_levels` defines them for the whole project,
    `intN` with 2**N levels as in SLB's authors' code (int2: {-1, -1/3, 1/3, 1})."""
    try:
        return set_levels(weight_set)
    except ValueError:
        raise ValueError(f"SLB has no value set for {weight_set!r}") from None


def initial_scale(w: torch.Tensor, weight_set: str) -> torch.Tensor:
    """Per-output-channel alpha, as the post-training quantiser (`spaces.layers.quantized`)
    chooses it: binary the mean magnitude, ternary TWN's, `intN` the largest magnitude (the
    outermost levels are +-1)."""
    flat = w.detach().reshape(w.shape[0], -1).abs()
    if weight_set == "binary":
        return flat.mean(1)
    if weight_set == "ternary":
        delta = 0.7 * flat.mean(1, keepdim=True)
        keep = flat > delta
        return (flat * keep).sum(1) / keep.sum(1).clamp(min=1)
    return flat.amax(1)


class SLBWeight(nn.Module):
    """A parametrisation of a conv weight by logits over a value set and a channel scale."""

    def __init__(self, w: torch.Tensor, weight_set: str, sharpness: float = 1.0):
        super().__init__()
        v = set_values(weight_set)
        self.register_buffer("values", v)
        alpha = initial_scale(w, weight_set).clamp(min=1e-8)
        self.log_alpha = nn.Parameter(alpha.log())
        spacing = float(v[1] - v[0])
        z = (w.detach() / alpha.view(-1, *([1] * (w.dim() - 1)))).unsqueeze(-1)  # (..., 1)
        # closer values get larger logits: a Gaussian kernel of one value spacing
        self.logits = nn.Parameter(-sharpness * ((z - v) / spacing) ** 2)
        self.temperature = 1.0
        self.hard = False

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        alpha = self.log_alpha.exp().view(-1, *([1] * (self.logits.dim() - 2)))
        if self.hard:
            return alpha * self.values[self.logits.argmax(-1)]
        p = torch.softmax(self.logits * self.temperature, dim=-1)
        return alpha * (p * self.values).sum(-1)


def slb_layers(
    model: nn.Module, quant: dict[str, str], max_values: int = 16
) -> list[tuple[GConv2d, str]]:
    """The convs SLB trains: those whose weight set has at most `max_values` values (int8's 256
    values would multiply the memory of the weights by 256; it trains straight-through)."""
    out = []
    for m in model.modules():
        if weight_set_group(m) is not None:
            ws = quant.get(weight_set_group(m), "float")
            if ws != "float" and len(set_values(ws)) <= max_values:
                out.append((m, ws))
    return out


class SLBTrainer:
    """Attach SLB to a model's low-bit convs, raise the temperature, make the weights hard."""

    def __init__(
        self, layers: list[tuple[GConv2d, str]], t_start: float = 1.0, t_end: float = 100.0
    ):
        self.layers, self.t_start, self.t_end = layers, t_start, t_end
        self.params: list[SLBWeight] = []
        for m, ws in layers:
            p = SLBWeight(m.weight, ws)
            parametrize.register_parametrization(m, "weight", p)
            m.parametrizations.weight.original.requires_grad_(False)  # the logits are trained
            self.params.append(p)

    def set_progress(self, frac: float) -> None:
        """Exponential temperature schedule from t_start to t_end over training."""
        t = self.t_start * math.exp(math.log(self.t_end / self.t_start) * min(1.0, max(0.0, frac)))
        for p in self.params:
            p.temperature = t

    @torch.no_grad()
    def finalize(self) -> None:
        """Every weight to alpha * v[argmax]: the plain conv keeps exactly these values. The
        batch-norm statistics, gathered with soft weights, no longer fit: the caller re-estimates
        them on training batches next (`evaluators.train.fine_tune` does)."""
        for (m, _), p in zip(self.layers, self.params):
            p.hard = True
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            m.weight.requires_grad_(True)


def in_set(w: torch.Tensor, weight_set: str, tol: float = 1e-5) -> bool:
    """Whether every output channel of `w` is alpha * (values of the set) for one alpha > 0
    (within `tol` of alpha): the channel's largest magnitude is alpha times one of the set's
    positive values, so each of those is tried."""
    v = set_values(weight_set)
    top = len(v) - 1
    rows = w.detach().reshape(w.shape[0], -1).double()
    peak = rows.abs().amax(1, keepdim=True)
    ok = peak.squeeze(1) == 0  # an all-zero channel is alpha = 0
    for k in v[v > 0].double().tolist():
        z = rows * (k / peak.clamp(min=1e-300))  # the weights over alpha = peak / k
        nearest = torch.round((z + 1) * (top / 2)).clamp(0, top) * (2 / top) - 1
        ok |= (z - nearest).abs().amax(1) <= tol
    return bool(ok.all())
