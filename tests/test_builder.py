"""Genome -> physically smaller module: cost is analytic and exact, weights are inherited."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from spaces import load_space
from spaces.builder import importance, kept_indices
from spaces.layers import FIXED_GROUPS, GConv2d
from tests.conftest import SHIPPED, space_path


@pytest.fixture(scope="module", params=SHIPPED)
def space_and_supernet(request):
    space = load_space(space_path(request.param))
    sup = space.supernet(seed=0)
    with torch.no_grad():  # give batch norm non-trivial statistics so inheritance is tested
        for m in sup.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return space, sup.eval()


@pytest.mark.slow
def test_200_random_genomes_run_and_match_analytic_cost(space_and_supernet):
    space, sup = space_and_supernet
    for s in range(200):
        g = space.sample(s)
        model = space.build(g, sup).eval()
        r = space.resolution(g)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            y = space.family.costed_forward(model, torch.randn(1, 3, r, r))
        assert y.shape == (1, *space.family.output_shape(space.arch(g)))
        assert torch.isfinite(y).all()
        cost = space.cost(g)
        assert cost["params"] == sum(p.numel() for p in model.parameters()), g
        assert abs(cost["flops"] - fc.get_total_flops()) <= 0.01 * fc.get_total_flops(), g


def test_full_genome_reproduces_supernet(space_and_supernet):
    space, sup = space_and_supernet
    model = space.build(space.full(), sup).eval()
    r = space.resolution(space.full())
    x = torch.randn(4, 3, r, r)
    with torch.no_grad():
        assert (model(x) - sup(x)).abs().max().item() < 1e-5


def test_pruned_filters_equal_supernet_filters(space_and_supernet):
    space, sup = space_and_supernet
    g = space.sample(11)
    arch = space.arch(g)
    idx = kept_indices(arch, space.family.groups(), importance(sup))
    for g_name, mask in arch.masks.items():  # masks alone (width 1) keep exactly their ones
        if arch.sizes[g_name] == sum(mask):
            assert idx[g_name].tolist() == [i for i, b in enumerate(mask) if b]
    model = space.build(g, sup)
    src = dict(sup.named_modules())
    checked = 0
    for name, m in model.named_modules():
        if (
            isinstance(m, GConv2d)
            and m.qgroup is None
            or (isinstance(m, GConv2d) and arch.quant.get(m.qgroup) == "float")
        ):
            w = src[name].weight
            if m.gout not in FIXED_GROUPS:
                w = w[idx[m.gout]]
            if not m.depthwise and m.gin != "input":
                w = w[:, idx[m.gin]]
            k, ks = m.kernel_size[0], w.shape[-1]
            o = (ks - k) // 2
            assert torch.equal(m.weight, w[:, :, o : o + k, o : o + k])
            checked += 1
    assert checked > 0
    # and the network is physically smaller
    assert sum(p.numel() for p in model.parameters()) <= sum(p.numel() for p in sup.parameters())


def test_mask_really_removes_channels():
    space = load_space(space_path("resnet20"))
    sup = space.supernet(0)
    g = space.full()
    g["mask.s2"] = tuple([1, 0] * 16)
    model = space.build(g, sup)
    assert model.stages[1][0].conv2.out_channels == 16
    assert model.stages[1][1].conv1.in_channels == 16
    assert model.stages[2][0].conv1.in_channels == 16


def test_weight_sets_quantise_inherited_weights():
    space = load_space(space_path("tinynet"))
    sup = space.supernet(0)
    g = space.full()
    for n in space.dims:
        if n.startswith("weights."):
            g[n] = "int2"
    model = space.build(g, sup)
    conv = model.stages[2][0].project[0]
    for row in conv.weight.detach().flatten(1):
        assert len(torch.unique(row)) <= 4  # {-a, -a/3, a/3, a} per output channel
        a = row.abs().max()
        assert set(torch.round(row / a * 3).tolist()) <= {-3.0, -1.0, 1.0, 3.0}
        torch.testing.assert_close(row, torch.round(row / a * 3) * a / 3)


def test_channel_multiple_rounds_kept_counts_within_the_mask_and_costs_stay_exact():
    """`channel_multiple` collapses masks and widths onto hardware-friendly channel counts (fewer
    kernels to tune); the mask still bounds what is kept and the analytic cost stays exact."""
    from spaces.config import read_yaml, space_from_dict

    d = read_yaml(space_path("tinynet"))
    d["family"]["channel_multiple"] = 8
    space = space_from_dict(d, "tinynet.yaml")
    d1 = read_yaml(space_path("tinynet"))
    d1["family"]["channel_multiple"] = 1  # tinynet.yaml itself asks for 8
    plain = space_from_dict(d1, "tinynet.yaml")
    sup = space.supernet(seed=0).eval()
    shapes, plain_shapes = set(), set()
    for s in range(40):
        g = space.sample(s)
        arch = space.arch(g)
        for grp, k in arch.sizes.items():
            assert k < 8 or k % 8 == 0 or k == space.family.groups()[grp], (grp, k)
            if grp in arch.masks:
                assert k <= sum(arch.masks[grp])
        shapes |= set(arch.sizes.items())
        plain_shapes |= set(plain.arch(g).sizes.items())
        model = space.build(g, sup).eval()
        r = space.resolution(g)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(torch.randn(1, 3, r, r))
        assert space.cost(g)["params"] == sum(p.numel() for p in model.parameters())
        assert abs(space.cost(g)["flops"] - fc.get_total_flops()) <= 0.01 * fc.get_total_flops()
    assert len(shapes) < 0.7 * len(plain_shapes)  # 117 vs 205 (group, count) pairs when written
