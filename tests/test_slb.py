"""SLB (Searching for Low-Bit Weights): weights trained as choices among their set's values end
exactly in their sets, the training really moves them, and model size in bits is a metric."""

from __future__ import annotations

import copy

import pytest
import torch

from evaluators.data import digits
from evaluators.evaluator import model_bits
from evaluators.slb import SLBWeight, in_set, set_values, slb_layers
from evaluators.train import TrainRecipe, evaluate, fine_tune
from spaces.config import read_yaml, space_from_dict
from spaces.layers import GConv2d, quantized
from tests.conftest import space_path

SETS = {"s1": "binary", "s2": "ternary", "s3": "int4"}


def resnet_with_weight_sets():
    d = read_yaml(space_path("resnet20"))
    d["dimensions"]["weights"] = {
        "kind": "weightset",
        "per": "stage",
        "options": ["float", "int8", "int4", "int2", "ternary", "binary"],
    }
    return space_from_dict(d)


def test_value_sets():
    assert set_values("binary").tolist() == [-1.0, 1.0]
    assert set_values("ternary").tolist() == [-1.0, 0.0, 1.0]
    assert set_values("int2").tolist() == [-1.0, 0.0, 1.0]
    assert len(set_values("int4")) == 15 and set_values("int4").max() == 1.0
    with pytest.raises(ValueError):
        set_values("float")


@pytest.mark.parametrize("ws", ["binary", "int2", "int4"])
def test_hard_weights_at_start_are_the_rounded_weights(ws):
    """Before any training, the argmax of the logits is the nearest value: SLB starts where
    post-training rounding would be."""
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    p = SLBWeight(w, ws)
    p.hard = True
    torch.testing.assert_close(p(w), quantized(w, ws))
    assert in_set(p(w), ws)
    assert not in_set(w, ws)


def test_soft_weight_sharpens_with_temperature():
    w = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    p = SLBWeight(w, "int2")
    gaps = []
    for t in (1.0, 10.0, 1000.0):
        p.temperature = t
        gaps.append(float((p(w) - quantized(w, "int2")).abs().max()))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3


@pytest.fixture(scope="module")
def trained():
    space = resnet_with_weight_sets()
    data = digits(32, 0, 0.2, 0.2)
    space = space.with_classes(data.num_classes)
    sup = space.supernet(0)
    g = space.full()
    for stage, ws in SETS.items():
        g[f"weights.{stage}"] = ws
    arch = space.arch(g)
    model = space.build(g, sup)
    before = copy.deepcopy(model)
    torch.set_num_threads(2)
    info = fine_tune(
        model, data, 32, TrainRecipe(epochs=3, batch_size=64, lr=0.05), seed=0, quant=arch.quant
    )
    return space, data, arch, before, model, info


def test_slb_weights_lie_in_their_sets_after_fine_tuning(trained):
    space, data, arch, before, model, info = trained
    convs = [m for m in model.modules() if isinstance(m, GConv2d) and m.qgroup is not None]
    assert convs and not any(torch.nn.utils.parametrize.is_parametrized(m) for m in convs)
    for m in convs:
        ws = arch.quant[m.qgroup]
        assert in_set(m.weight, ws), (m.qgroup, ws)
        assert max(len(torch.unique(r)) for r in m.weight.detach().flatten(1)) <= len(
            set_values(ws)
        )
    # the stem has no weight set: it stays float
    assert model.conv.qgroup is None and not in_set(model.conv.weight, "int4")


def test_slb_training_moves_weights_and_learns(trained):
    space, data, arch, before, model, info = trained
    changed = []
    for (_, a), (_, b) in zip(before.named_parameters(), model.named_parameters()):
        if a.dim() == 4 and a.shape == b.shape:
            sa, sb = torch.sign(a.detach()), torch.sign(b.detach())
            changed.append(float((sa != sb).float().mean()))
    assert max(changed) > 0.01  # value choices changed, not just scales
    acc_before, _ = evaluate(before, data.val, 32)
    acc_after, _ = evaluate(model, data.val, 32)
    assert acc_after > acc_before + 0.2, (acc_before, acc_after)


def test_model_bits_counts_each_set(trained):
    space, data, arch, before, model, info = trained
    bits = model_bits(model, arch.quant)
    float_bits = model_bits(model, {q: "float" for q in arch.quant})
    assert bits < float_bits / 4
    weights = {ws: 0 for ws in SETS.values()}
    for m in model.modules():
        if isinstance(m, GConv2d) and m.qgroup is not None:
            weights[arch.quant[m.qgroup]] += m.weight.numel()
    saved = sum(
        n * (32 - b)
        for n, b in (
            (weights["binary"], 1),
            (weights["ternary"], 1.584962500721156),
            (weights["int4"], 4),
        )
    )
    channels = sum(
        m.weight.shape[0]
        for m in model.modules()
        if isinstance(m, GConv2d) and m.qgroup is not None
    )
    assert abs(float_bits - bits - (saved - 32 * channels)) < 2 * len(weights) + 1


def test_int8_trains_straight_through():
    space = resnet_with_weight_sets()
    model = space.build(space.full(), space.supernet(0))
    assert slb_layers(model, {q: "int8" for q in space.arch(space.full()).quant}) == []
    assert len(slb_layers(model, {q: "int4" for q in space.arch(space.full()).quant})) > 0
