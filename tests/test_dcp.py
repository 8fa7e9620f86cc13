"""DCP: discrimination-aware channel pruning with the adaptive stopping rule, on a real
pre-trained ResNet-20 (digits, short recipes)."""

from __future__ import annotations

import json

import pytest

from evaluators.dcp import DCPSettings, discrimination_aware_pruning
from tests.conftest import run_cli, space_path

FAST = [
    "--set",
    "pretrain.epochs=2",
    "--set",
    "evaluator.finetune.epochs=1",
    "--set",
    "latency=none",
]


@pytest.fixture(scope="module")
def dcp_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("dcp") / "run"
    r = run_cli(
        "run",
        space_path("resnet20"),
        "--optimizer",
        "dcp",
        "--set",
        "epsilon=0.005",
        "--set",
        "stage_epochs=0.5",
        "--set",
        "select_images=64",
        *FAST,
        "--set",
        f"cache={cache_dir}",
        "--out",
        out,
        "--no-progress",
        timeout=1500,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_dcp_run_records_its_pruned_network_as_a_trial(dcp_run):
    report = json.loads((dcp_run / "dcp.json").read_text())
    trials = json.loads((dcp_run / "pareto.json").read_text())["front"]
    assert len(trials) == 1 and trials[0]["trial"] == 0
    assert report["genome"] == trials[0]["genome"]
    layers = report["layers"]
    assert len(layers) == 9  # every block's inner group
    assert sum(v["kept"] for v in layers.values()) < sum(v["channels"] for v in layers.values())
    assert trials[0]["metrics"]["flops"] < report["full_cost"]["flops"]
    assert trials[0]["metrics"]["val_acc"] > 0.5  # digits, chance is 0.1
    # the adaptive rule, exactly: a layer stopped by epsilon made its last step's relative change
    # <= epsilon and every earlier one (past min_keep) > epsilon
    for name, v in layers.items():
        loss, l0 = v["loss"], v["loss"][0]
        changes = [abs(a - b) / l0 for a, b in zip(loss, loss[1:])]
        assert len(changes) == v["kept"]
        if v["stopped"] == "epsilon":
            assert changes[-1] <= 0.005 + 1e-4, name
            assert all(c > 0.005 - 1e-4 for c in changes[2:-1]), (name, changes)
    # resumable: the pruned supernet is kept beside the run
    assert (dcp_run / "dcp_supernet.pt").exists()


def test_the_result_seeds_other_optimisers(dcp_run, tmp_path, cache_dir):
    out = tmp_path / "ga"
    r = run_cli(
        "run",
        space_path("resnet20"),
        "--optimizer",
        "given",
        "--set",
        f"genomes={dcp_run}",
        "--budget",
        1,
        *FAST,
        "--set",
        f"cache={cache_dir}",
        "--out",
        out,
        "--no-progress",
        timeout=1500,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((out / "pareto.json").read_text())["front"][0]
    assert got["genome"] == json.loads((dcp_run / "dcp.json").read_text())["genome"]


def _prune_pretrained(cache_dir, epsilons, **options):
    """DCP / DKP at each epsilon on copies of one pre-trained ResNet-20 supernet: yields
    (epsilon, (evaluator, genome, report))."""
    from evaluators.registry import make_evaluator
    from search.config import load_run_config

    cfg, space, _ = load_run_config(
        space_path("resnet20"), ["pretrain.epochs=2", "latency=none", f"cache={cache_dir}"]
    )
    ev = make_evaluator(cfg, space, None)
    ev.setup()
    for eps in epsilons:
        sup = ev.space.supernet(0)
        sup.load_state_dict(ev.supernet.state_dict())
        g, _, rep = discrimination_aware_pruning(
            ev.space, sup, ev.data, DCPSettings(epsilon=eps, **options), seed=0
        )
        yield eps, (ev, g, rep)


def test_larger_epsilon_prunes_more(cache_dir):
    """The paper's trend on one pre-trained network: a larger epsilon stops earlier."""
    kept = {}
    for eps, (ev, g, rep) in _prune_pretrained(
        cache_dir, (0.2, 0.005), stage_epochs=0, select_images=96, inner_steps=2
    ):
        kept[eps] = sum(v["kept"] for v in rep["layers"].values())
        assert ev.space.genome_id(g)
    assert kept[0.2] < kept[0.005], kept


def test_dcp_needs_a_resnet_space_and_valid_options(tmp_path):
    r = run_cli("run", space_path("nb201"), "--optimizer", "dcp", "--out", tmp_path / "a")
    assert r.returncode == 2 and "resnet" in r.stderr
    r = run_cli(
        "run",
        space_path("resnet20"),
        "--optimizer",
        "dcp",
        "--set",
        "epsilon=-1",
        "--out",
        tmp_path / "b",
    )
    assert r.returncode == 2 and "epsilon" in r.stderr


# --- DKP: the same selection over single kernels (granularity: kernel) ---------------------------

DKP = [
    "--set",
    "granularity=kernel",
    "--set",
    "kernel_batch=0.1",
    "--set",
    "stage_epochs=0",
    "--set",
    "head_epochs=3",
    "--set",
    "head_images=512",
    "--set",
    "select_images=64",
    "--set",
    "inner_steps=2",
]


@pytest.fixture(scope="module")
def dkp_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("dkp") / "run"
    r = run_cli(
        "run",
        space_path("resnet20"),
        "--optimizer",
        "dcp",
        "--set",
        "epsilon=0.05",
        *DKP,
        *FAST,
        "--set",
        f"cache={cache_dir}",
        "--out",
        out,
        "--no-progress",
        timeout=1500,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _kernel_masks(state):
    return {
        k.removesuffix(".kernel_mask"): v for k, v in state.items() if k.endswith(".kernel_mask")
    }


def test_kernel_masks_are_sliced_carried_and_counted():
    """A conv's kernel mask is sliced with its weight, adopted by any load_state_dict, keeps its
    kernels at zero through training, and the sparse cost leaves exactly its zeros out."""
    import torch

    from spaces import load_space
    from spaces.builder import kernel_sparse_cost

    space = load_space(space_path("resnet20"))
    sup = space.supernet(0).eval()
    conv = sup.stages[1][1].conv2
    km = (
        torch.rand(conv.out_channels, conv.in_channels, generator=torch.Generator().manual_seed(0))
        > 0.6
    ).float()
    conv.kernel_mask = km
    worker = space.supernet(1)  # a Ray worker's fresh supernet loads the driver's state
    worker.load_state_dict(sup.state_dict())
    assert (
        torch.equal(worker.stages[1][1].conv2.kernel_mask, km)
        and worker.stages[1][0].conv2.kernel_mask is None
    )
    g = space.full()
    g["mask.s2.b1"] = tuple(0 if i in (0, 5) else 1 for i in range(32))
    g = space.validate(g)
    sub = space.build(g, sup)
    sm = sub.stages[1][1].conv2.kernel_mask
    assert torch.equal(sm, km[:, [i for i in range(32) if i not in (0, 5)]])
    assert (sub.stages[1][1].conv2.weight[sm == 0] == 0).all()  # the builder zeroes them
    assert all(
        m.kernel_mask is None
        for n, m in sub.named_modules()
        if n != "stages.1.1.conv2" and hasattr(m, "kernel_mask")
    )
    fresh = space.family.module(space.arch(g))
    fresh.load_state_dict(sub.state_dict())  # a fresh module adopts the mask (workers, exports)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), sub.eval()(x))
    opt = torch.optim.SGD(sub.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    sub.train()
    for _ in range(3):
        loss = sub(x).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = sub.stages[1][1].conv2.weight
    assert (w[sm == 0] == 0).all() and (w[sm == 1] != 0).all()
    dense, sparse = space.cost(g), kernel_sparse_cost(space, g, sub)
    pruned = int((sm == 0).sum())
    assert dense["params"] - sparse["params"] == pruned * 9
    assert dense["flops"] - sparse["flops"] == 2 * pruned * 9 * 16 * 16  # stage 2: 16 x 16 outputs
    plain = space.build(g, space.supernet(0))  # no mask anywhere: a plain conv, the dense cost
    assert kernel_sparse_cost(space, g, plain) == dense


@pytest.mark.slow
def test_dkp_run_keeps_pruned_kernels_at_zero_and_counts_sparse_flops(dkp_run):
    import torch

    report = json.loads((dkp_run / "dcp.json").read_text())
    trial = json.loads((dkp_run / "pareto.json").read_text())["front"][0]
    assert report["granularity"] == "kernel" and report["genome"] == trial["genome"]
    layers = report["layers"]
    assert len(layers) == 9
    assert report["kept_kernels"] < report["kernels"]
    # (b) after the evaluator's fine-tuning, the stored weights' pruned kernels are exactly zero
    state = torch.load(dkp_run / "trials" / f"{trial['genome_id']}.pt", weights_only=True)
    masks = _kernel_masks(state)
    assert len(masks) == 9
    zeros = 0
    for si in range(3):
        for bj in range(3):
            info, m = layers[f"s{si + 1}.b{bj}"], masks[f"stages.{si}.{bj}.conv2"]
            full = torch.tensor(
                [[int(c) for c in row] for row in info["kernel_mask"]], dtype=m.dtype
            )
            assert torch.equal(m, full[:, info["kept_channels"]])  # dcp.json's selection, sliced
            assert len(info["kept_channels"]) == info["kept"] == m.shape[1]
            w = state[f"stages.{si}.{bj}.conv2.weight"]
            assert (w[m == 0] == 0).all()
            assert (w[m == 1].flatten(1).abs().sum(1) > 0).all()  # the kept kernels were trained
            zeros += int((m == 0).sum())
    assert zeros > 0  # kernels pruned inside kept channels, not only whole channels
    best = torch.load(dkp_run / "best" / "model.pt", weights_only=True)
    assert all((best[f"{k}.weight"][m == 0] == 0).all() for k, m in _kernel_masks(best).items())
    # (c) the kernel-sparse cost is below the dense cost, which is what the trial's flops count
    assert report["cost"]["flops"] == trial["metrics"]["flops"]
    assert report["sparse_cost"]["flops"] < report["cost"]["flops"] < report["full_cost"]["flops"]
    assert report["sparse_cost"]["params"] < report["cost"]["params"]
    assert trial["metrics"]["val_acc"] > 0.5  # digits, chance is 0.1


@pytest.mark.slow
def test_larger_epsilon_keeps_fewer_kernels(cache_dir):
    """(a) the adaptive rule stops DKP's selection: a larger epsilon keeps fewer kernels."""
    kept = {}
    for eps, (ev, g, rep) in _prune_pretrained(
        cache_dir,
        (0.1, 0.02),
        granularity="kernel",
        kernel_batch=0.1,
        stage_epochs=0,
        head_epochs=3,
        head_images=512,
        select_images=64,
        inner_steps=2,
    ):
        kept[eps] = rep["kept_kernels"]
        stopped = [v for v in rep["layers"].values() if v["stopped"] == "epsilon"]
        assert stopped, rep["layers"]
        # the rule pruned: it stopped some layer before all its kernels were kept (it may also fire
        # on the step that fills a layer: which layers do depends on the CPU's float rounding)
        assert any(v["kept_kernels"] < v["kernels"] for v in stopped), rep["layers"]
        for v in stopped:  # the rule, exactly: the last step's relative change <= epsilon
            loss = v["loss"]
            assert abs(loss[-1] - loss[-2]) / loss[0] <= eps + 1e-4
            assert len(loss) == v["steps"] + 1
        for v in rep["layers"].values():  # batches of kernel_batch x the layer's kernels
            assert v["steps"] <= 10 and v["kept"] >= 2
        assert ev.space.genome_id(g)
    assert kept[0.1] < kept[0.02], kept


def test_kernel_batch_needs_kernel_granularity(tmp_path):
    r = run_cli(
        "run",
        space_path("resnet20"),
        "--optimizer",
        "dcp",
        "--set",
        "kernel_batch=0.1",
        "--out",
        tmp_path / "a",
    )
    assert r.returncode == 2 and "kernel_batch" in r.stderr and "granularity" in r.stderr
    r = run_cli(
        "run",
        space_path("resnet20"),
        "--optimizer",
        "dcp",
        "--set",
        "granularity=filter",
        "--out",
        tmp_path / "b",
    )
    assert r.returncode == 2 and "granularity" in r.stderr


def test_a_stalled_reoptimisation_is_retried_with_smaller_steps():
    """Adam's first steps move every weight by about the learning rate: on a sharp loss that
    overshoots, and the addition would look like convergence to the stopping rule. The retry with
    a smaller rate must find the lower loss; with no retries the loss stays where it started."""
    import torch

    from evaluators.dcp import _reoptimise

    target = torch.full((2, 3, 1, 1), 0.001)

    def loss_at(w, m):
        loss = 1e4 * (w - target).pow(2).sum()
        return loss, loss, loss

    w, keep, ones = torch.zeros(2, 3, 1, 1), torch.ones(1, 3, 1, 1), torch.ones(3)
    start = float(loss_at(w, ones)[0])
    stalled, _ = _reoptimise(w, keep, start, loss_at, ones, DCPSettings(inner_retries=0))
    assert stalled == start  # 0.005 a step overshoots 0.001 from both sides
    lower, w2 = _reoptimise(w, keep, start, loss_at, ones, DCPSettings())
    assert lower < 0.2 * start
    assert abs(lower - float(loss_at(w2, ones)[0])) < 1e-9
    keep[0, 2] = 0  # unselected channels keep zero weights
    _, w3 = _reoptimise(w, keep, start, loss_at, ones, DCPSettings())
    assert w3[:, 2].abs().max() == 0 and w3[:, :2].abs().max() > 0
