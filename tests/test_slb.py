"""SLB (Searching for Low-Bit Weights): weights trained as choices among their set's values end
exactly in their sets (intN: 2**N levels), batch norm is re-estimated for the hard weights, the
training really moves them, model size in bits is a metric, and an ONNX export holds the low-bit
weights in low-bit form, exactly as many bits as the metric counts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from evaluators.data import digits
from evaluators.evaluator import low_bit_bits, model_bits
from evaluators.slb import SLBTrainer, SLBWeight, in_set, set_values, slb_layers
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
    """intN is 2**N levels, linspace(-1, 1, 2**N), as SLB's authors' code has it."""
    assert set_values("binary").tolist() == [-1.0, 1.0]
    assert set_values("ternary").tolist() == [-1.0, 0.0, 1.0]
    torch.testing.assert_close(set_values("int2"), torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))
    for n in (4, 8):
        torch.testing.assert_close(set_values(f"int{n}"), torch.linspace(-1, 1, 2**n))
    with pytest.raises(ValueError):
        set_values("float")


def test_int2_has_four_levels_and_slb_ends_on_them():
    """Rounding and SLB's final weights both lie in alpha * {-1, -1/3, 1/3, 1} per channel."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, 3, 3, generator=gen)
    q = quantized(w, "int2")
    for row, a in zip(q.flatten(1), w.flatten(1).abs().amax(1)):
        assert set(torch.unique(torch.round(row / a * 3)).tolist()) <= {-3.0, -1.0, 1.0, 3.0}
    assert in_set(q, "int2") and not in_set(quantized(w, "ternary"), "int2")
    conv = GConv2d(4, 6, 3, gin="a", gout="b", qgroup="g")
    with torch.no_grad():
        conv.weight.copy_(w)
    slb = SLBTrainer([(conv, "int2")])
    opt = torch.optim.Adam([p for q_ in slb.params for p in q_.parameters()], lr=0.1)
    x, target = torch.randn(8, 4, 5, 5, generator=gen), torch.randn(8, 6, 5, 5, generator=gen)
    for step in range(10):
        slb.set_progress(step / 9)
        opt.zero_grad()
        ((conv(x) - target) ** 2).mean().backward()
        opt.step()
    slb.finalize()
    assert in_set(conv.weight, "int2")
    assert max(len(torch.unique(r)) for r in conv.weight.detach().flatten(1)) <= 4


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
    for t in (1.0, 10.0, 1e5):  # int2's even levels: a weight near 0 sits between two of them
        p.temperature = t
        gaps.append(float((p(w) - quantized(w, "int2")).detach().abs().max()))
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
    """Low-bit weights at their code's bits (binary 1, ternary 2, int4 4), packed to whole
    bytes, plus a float32 scale per output channel; every other parameter at 32 bits."""
    space, data, arch, before, model, info = trained
    bits = model_bits(model, arch.quant)
    float_bits = model_bits(model, {q: "float" for q in arch.quant})
    assert float_bits == 32 * sum(p.numel() for p in model.parameters())
    assert bits < float_bits / 4
    code_bits = {"binary": 1, "ternary": 2, "int4": 4}
    saved = 0
    for m in model.modules():
        if isinstance(m, GConv2d) and m.qgroup is not None:
            n = m.weight.numel()
            stored = 8 * -(-n * code_bits[arch.quant[m.qgroup]] // 8) + 32 * m.weight.shape[0]
            saved += 32 * n - stored
    assert float_bits - bits == saved
    assert low_bit_bits(model, arch.quant) == bits - (
        float_bits
        - 32 * sum(m.weight.numel() for m in model.modules() if isinstance(m, GConv2d) and m.qgroup)
    )


def test_bn_statistics_are_re_estimated_for_the_hard_weights(monkeypatch):
    """After the hard assignment, fine-tuning re-estimates batch norm on training batches: the
    running statistics change, and they are the hard-weight network's own on those batches."""
    import evaluators.train as train

    space = resnet_with_weight_sets()
    data = digits(16, 0, 0.2, 0.2)  # 16 pixels: cheap
    space = space.with_classes(data.num_classes)
    g = space.full()
    for stage, ws in SETS.items():
        g[f"weights.{stage}"] = ws
    model, quant = space.build(g, space.supernet(0)), space.arch(g).quant
    calls = []

    def spy(m, *a):  # what batch norm held when the weights had just become hard
        convs = [c for c in m.modules() if isinstance(c, GConv2d) and c.qgroup is not None]
        assert all(in_set(c.weight, quant[c.qgroup]) for c in convs)
        calls.append([b.running_mean.clone() for b in bns])
        return real(m, *a)

    real, bns = (
        train.recalibrate_bn,
        [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)],
    )
    monkeypatch.setattr(train, "recalibrate_bn", spy)
    recipe = TrainRecipe(steps=2, batch_size=16, lr=0.05, bn_batches=3)
    fine_tune(model, data, 16, recipe, seed=0, quant=quant)
    assert len(calls) == 1
    x = data.train.take(3 * 16, seed=0)[0]  # the batches the re-estimation uses
    probe = copy.deepcopy(model).train()  # the hard-weight network, its BN inputs recorded
    seen: list[list[torch.Tensor]] = [[] for _ in bns]
    hooks = [
        m.register_forward_pre_hook(lambda _m, i, k=k: seen[k].append(i[0]))
        for k, m in enumerate(m for m in probe.modules() if isinstance(m, torch.nn.BatchNorm2d))
    ]
    with torch.no_grad():
        for i in range(0, len(x), 16):
            probe(x[i : i + 16])
    for h in hooks:
        h.remove()
    for m, inputs in zip(bns, seen):  # momentum None: the average of the batches' statistics
        means = torch.stack([t.mean((0, 2, 3)) for t in inputs]).mean(0)
        variances = torch.stack([t.var((0, 2, 3)) for t in inputs]).mean(0)
        torch.testing.assert_close(m.running_mean, means, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(m.running_var, variances, atol=1e-5, rtol=1e-4)
    assert any(not torch.allclose(m.running_mean, old) for m, old in zip(bns, calls[0]))


@pytest.mark.parametrize(
    "sets", [("binary", "int2", "int4"), ("ternary", "int8", "float")], ids=lambda s: "-".join(s)
)
def test_low_bit_onnx_export_is_smaller_matches_and_holds_model_bits(tmp_path, sets):
    """The ONNX file holds low-bit conv weights as packed uint8 codes and float32 scales: it is
    smaller than the float export of the same network, onnxruntime matches PyTorch within the
    export tolerance, and its code and scale initializers hold exactly `low_bit_bits`."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from kernels.export import to_onnx
    from search.export import TOLERANCE

    space = resnet_with_weight_sets()
    g = space.full()
    for stage, ws in zip(("s1", "s2", "s3"), sets):
        g[f"weights.{stage}"] = ws
    arch = space.arch(g)
    model = space.build(g, space.supernet(0)).eval()  # built weights are rounded onto their sets
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():  # batch norm that torch.onnx folds into the convs' scales
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.data.normal_(generator=gen)
    x = torch.randn(3, 3, 32, 32, generator=gen)
    float_diff, none = to_onnx(model, x, tmp_path / "float.onnx")
    diff, info = to_onnx(model, x, tmp_path / "low.onnx", arch.quant)
    assert none == {} and float_diff <= TOLERANCE and diff <= TOLERANCE, (float_diff, diff)
    low_convs = [
        m
        for m in model.modules()
        if isinstance(m, GConv2d) and arch.quant.get(m.qgroup, "float") != "float"
    ]
    assert info["low_bit_convs"] == len(low_convs) and not info["float_convs"]
    # smaller by the float weights gone less the codes and scales come (and graph overhead)
    n_low = sum(m.weight.numel() for m in low_convs)
    saved = (tmp_path / "float.onnx").stat().st_size - (tmp_path / "low.onnx").stat().st_size
    assert 0 < 4 * n_low - info["low_bit_bits"] // 8 - saved < 1000 * len(low_convs), saved
    proto = onnx.load(tmp_path / "low.onnx")
    held = 0
    for t in proto.graph.initializer:
        a = numpy_helper.to_array(t)
        if t.name.endswith(".codes"):
            assert a.dtype == np.uint8
            held += 8 * a.size
        elif t.name.endswith(".scale"):
            assert a.dtype == np.float32
            held += 32 * a.size
        else:  # no float copy of a low-bit weight is left, only small shared constants
            assert t.name.startswith("lowbit.") or a.dtype == np.float32
            assert not any(a.shape == m.weight.shape for m in low_convs if a.ndim == 4)
    assert held == info["low_bit_bits"] == low_bit_bits(model, arch.quant)
    y = ort.InferenceSession(str(tmp_path / "low.onnx")).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(y - model(x).numpy()).max() <= TOLERANCE


def test_int8_trains_straight_through():
    space = resnet_with_weight_sets()
    model = space.build(space.full(), space.supernet(0))
    assert slb_layers(model, {q: "int8" for q in space.arch(space.full()).quant}) == []
    assert len(slb_layers(model, {q: "int4" for q in space.arch(space.full()).quant})) > 0
