"""A user's own network as a search space (`kind: model`): generated dimensions, physically
pruned candidates with inherited weights, exact cost, every optimiser that searches masks,
exports, the Python API, and clear errors for networks that cannot be traced."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spaces import load_space
from tests.conftest import ROOT, run_cli

UNSEEN = ROOT / "tests" / "data" / "unseen.yaml"


def _flops(net: nn.Module, r: int) -> int:
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 3, r, r))
    return int(fc.get_total_flops())


def test_groups_follow_the_networks_couplings():
    space = load_space(UNSEEN)
    groups = {g.name: g for g in space.family.analysis.groups}
    # the residual add ties stem and res; the concatenation and the depthwise conv tie both
    # branches to dw; the linear head's outputs are never pruned
    assert set(groups) == {"stem.0", "left.0", "pw.0"}
    assert groups["stem.0"].writers == ["stem.0", "res.0"] and groups["stem.0"].channels == 16
    assert set(groups["left.0"].writers) == {"left.0", "right.0", "dw.0"}
    assert groups["left.0"].channels == 24
    assert space.family.analysis.head == "head"
    assert {d.target for d in space.dims.values()} == {"filters", "weights", "resolution"}


def test_pruned_candidates_inherit_weights_and_cost_exactly():
    space = load_space(UNSEEN)
    torch.manual_seed(0)
    sup = space.supernet(0)
    for seed in range(6):
        g = space.sample(seed)
        g["weights.stem.0"] = "float"  # int8 would round the inherited weights
        arch = space.arch(g)
        net = space.build(g, sup)
        cost = space.cost(g)
        assert sum(p.numel() for p in net.parameters()) == cost["params"]
        assert _flops(net, arch.resolution) == cost["flops"]  # torch's flop counter agrees
        kept = [i for i, k in enumerate(g["mask.stem.0"]) if k]
        if len(kept) == arch.sizes["stem.0"]:  # the mask's channels, with their trained weights
            assert torch.equal(net.stem[0].weight, sup.stem[0].weight[kept])
        out = net.eval()(torch.randn(2, 3, arch.resolution, arch.resolution))
        assert out.shape == (2, 10)
    assert space.cost(space.full())["params"] == sum(p.numel() for p in sup.parameters())


@pytest.mark.slow
def test_search_on_an_unseen_network_and_a_checked_onnx_export(tmp_path, cache_dir):
    out = tmp_path / "run"
    r = run_cli(
        "run",
        UNSEEN,
        "--out",
        out,
        "--no-progress",
        "--set",
        f"cache={cache_dir}",
        "--set",
        "population_size=4",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    front = json.loads((out / "pareto.json").read_text())["front"]
    done = [t for t in front if t["metrics"].get("val_acc") is not None]
    assert done
    r = run_cli("export", out, "--pareto", "--format", "onnx", "--format", "torchscript")
    assert r.returncode == 0, r.stdout + r.stderr
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert all(e["ok"] for e in manifest)
    space = load_space(out / "config.yaml")
    for e in [e for e in manifest if e["format"] == "onnx"]:
        trial = next(t for t in front if t["trial"] == e["trial"])
        genome = space.from_json(trial["genome"])
        net = space.family.module(space.arch(genome))
        assert sum(p.numel() for p in net.parameters()) == trial["metrics"]["params"]
        assert _flops(net, space.arch(genome).resolution) == trial["metrics"]["flops"]
        # a low-bit conv's weight is dequantised in the graph: its shape by shape inference
        graph = onnx.shape_inference.infer_shapes(onnx.load(out / "export" / e["file"])).graph
        shapes = {i.name: list(i.dims) for i in graph.initializer}
        shapes |= {
            v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info
        }
        onnx_conv = sum(
            int(torch.tensor(shapes[n.input[1]]).prod()) for n in graph.node if n.op_type == "Conv"
        )
        assert onnx_conv == sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Conv2d))


@pytest.fixture(scope="module")
def unseen_evaluator(cache_dir):
    from evaluators.registry import make_evaluator
    from search.config import load_run_config

    cfg, space, _ = load_run_config(UNSEEN, [f"cache={cache_dir}", "evaluator.finetune.steps=3"])
    ev = make_evaluator(cfg, space, str(UNSEEN))
    ev.setup()
    return cfg, ev


@pytest.mark.parametrize(
    "name,options",
    [
        ("random", {}),
        ("ga", {"population_size": 2, "selection": "weighted", "lambda": 0.5}),  # the paper's
        ("aging", {"population_size": 2, "sample_size": 2}),
        ("optuna", {"n_startup_trials": 2}),
    ],
)
def test_every_mask_optimiser_searches_the_generated_space(name, options, unseen_evaluator):
    from search.config import Objective
    from search.optimizers import OPTIMIZERS
    from search.simulate import simulate

    cfg, ev = unseen_evaluator
    cls = OPTIMIZERS[name]
    opt = cls(ev.space, [Objective(metric="val_acc")], [], 0, cls.Options(**options))
    recs = simulate(opt, ev, 4)
    assert sum(r.complete for r in recs) == 4, [r.reason for r in recs]
    assert len({r.genome_id for r in recs}) == 4


def test_coevolution_and_given_on_the_generated_space(tmp_path, unseen_evaluator):
    from search.config import Objective
    from search.optimizers import OPTIMIZERS
    from search.simulate import simulate
    from spaces.config import read_yaml, space_from_dict

    _, ev = unseen_evaluator
    data = read_yaml(UNSEEN)
    data["groups"] = {
        "early": ["mask.stem.0", "weights.stem.0"],
        "late": ["mask.left.0", "mask.pw.0"],
    }
    grouped = space_from_dict(data, str(UNSEEN)).with_classes(10)
    ev.space = grouped
    try:
        cls = OPTIMIZERS["coevolution"]
        opt = cls(grouped, [Objective(metric="val_acc")], [], 0, cls.Options(population_size=2))
        assert sum(r.complete for r in simulate(opt, ev, 4)) == 4
    finally:
        ev.space = ev.base_space.with_classes(10)
    genomes = tmp_path / "g.json"
    space = ev.space
    genomes.write_text(json.dumps([space.to_json(space.sample(s)) for s in range(3)]))
    cls = OPTIMIZERS["given"]
    opt = cls(space, [Objective(metric="val_acc")], [], 0, cls.Options(genomes=str(genomes)))
    assert sum(r.complete for r in simulate(opt, ev, 10)) == 3


def test_dcp_on_a_users_network_is_refused_with_why():
    r = run_cli("run", UNSEEN, "--optimizer", "dcp", "--out", "/nonexistent/never", timeout=120)
    assert r.returncode == 2 and "optimizer.name" in r.stderr and "resnet" in r.stderr, r.stderr


def test_a_network_that_cannot_be_traced_is_exit_2_naming_file_and_layer(tmp_path):
    r = run_cli("space", ROOT / "tests" / "data" / "untraceable.yaml", timeout=120)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "untraceable.yaml" in lines[0] and "family.model" in lines[0] and "'probe'" in lines[0]
    r = run_cli(
        "run", ROOT / "tests" / "data" / "untraceable.yaml", "--out", tmp_path / "x", timeout=120
    )
    assert r.returncode == 2 and not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "family,field",
    [
        ({"model": "no_such_module:net"}, "family.model"),
        ({"model": "unseen_net.py:nothing"}, "family.model"),
        ({"model": "unseen_net.py:unseen", "kwargs": {"depth": 3}}, "family.kwargs"),
        ({"model": "unseen_net.py:unseen", "weights": "missing.pt"}, "family.weights"),
        ({"model": "unseen_net.py:unseen", "exclude": ["nothing"]}, "family.exclude.0"),
    ],
)
def test_bad_network_settings_name_the_field(tmp_path, family, field):
    f = tmp_path / "bad.yaml"
    (tmp_path / "unseen_net.py").write_text((ROOT / "tests" / "data" / "unseen_net.py").read_text())
    f.write_text(
        json.dumps(
            {"name": "bad", "family": {"kind": "model", "input_shape": [3, 16, 16], **family}}
        )
    )
    r = run_cli("space", f, timeout=120)
    assert r.returncode == 2 and field in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_weights_that_do_not_fit_and_excluded_layers(tmp_path):
    from spaces.config import space_from_dict
    from spaces.errors import ConfigError

    src = ROOT / "tests" / "data" / "unseen_net.py"
    fam = {"kind": "model", "model": f"{src}:unseen", "input_shape": [3, 16, 16]}
    space = space_from_dict({"name": "x", "family": {**fam, "exclude": ["left", "right", "dw"]}})
    assert set(space.family.groups()) == {"stem.0", "pw.0"}  # the concatenation's group is left out
    bad = tmp_path / "w.pt"
    torch.save({"stem.0.weight": torch.zeros(3, 3, 3, 3)}, bad)
    with pytest.raises(ConfigError, match="family.weights"):
        space_from_dict({"name": "x", "family": {**fam, "weights": str(bad)}})


def test_python_api_searches_a_network_object(tmp_path, cache_dir):
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "data"))
    try:
        from unseen_net import UnseenNet
    finally:
        sys.path.pop(0)
    from search.api import model_space, result, search

    net = UnseenNet(width=8)
    space = model_space(net, input_shape=(3, 16, 16), pretrained=False)
    assert any(n.startswith("mask.") for n in space.dims)
    res = search(
        space,
        optimizer="random",
        budget=3,
        out=tmp_path / "run",
        cache=str(cache_dir),
        pretrain={"epochs": 1},
        evaluator={"finetune": {"steps": 3}},
        latency={"provider": "none"},
    )
    assert len([t for t in res.trials if t.complete]) == 3 and res.best is not None
    best = res.model()
    assert sum(p.numel() for p in best.parameters()) == res.best.metrics["params"]
    # the folder reads without the network (show, report); its models need it
    assert len(result(tmp_path / "run").trials) == 3
    r = run_cli("show", tmp_path / "run")
    assert r.returncode == 0, r.stderr


def test_the_surrogate_leaves_out_a_slow_cost(unseen_evaluator):
    """A user's network is pruned and counted to know its FLOPs (~1 s): the surrogate, which
    would read them for every child it ranks, keeps to the genome's encoding."""
    from search.config import Objective
    from search.optimizers import OPTIMIZERS

    _, ev = unseen_evaluator
    opt = OPTIMIZERS["ga"](ev.space, [Objective(metric="val_acc")], [], 0)
    opt.know(ev.known_metrics, ev.known)
    assert not ev.space.family.cheap_cost
    assert opt.known_features(ev.space.full()) == []
