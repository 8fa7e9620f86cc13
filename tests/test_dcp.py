"""DCP: discrimination-aware channel pruning with the adaptive stopping rule, on a real
pre-trained ResNet-20 (digits, short recipes)."""

from __future__ import annotations

import json

import pytest

from search.optimizers.dcp import DCPOptions, discrimination_aware_pruning
from tests.conftest import run_cli, space_path

FAST = ["--set", "pretrain.epochs=2", "--set", "evaluator.finetune.epochs=1", "--set", "latency=none"]


@pytest.fixture(scope="module")
def dcp_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("dcp") / "run"
    r = run_cli("run", space_path("resnet20"), "--optimizer", "dcp", "--set", "epsilon=0.005",
                "--set", "stage_epochs=0.5", "--set", "select_images=64", *FAST, "--set", f"cache={cache_dir}", "--out", out,
                "--no-progress", timeout=1500)
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
    r = run_cli("run", space_path("resnet20"), "--optimizer", "given", "--set", f"genomes={dcp_run}",
                "--budget", 1, *FAST, "--set", f"cache={cache_dir}", "--out", out, "--no-progress",
                timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((out / "pareto.json").read_text())["front"][0]
    assert got["genome"] == json.loads((dcp_run / "dcp.json").read_text())["genome"]


def test_larger_epsilon_prunes_more(cache_dir):
    """The paper's trend on one pre-trained network: a larger epsilon stops earlier."""
    from search.config import load_run_config
    from search.loop import make_evaluator

    cfg, space, _ = load_run_config(space_path("resnet20"), ["pretrain.epochs=2", "latency=none", f"cache={cache_dir}"])
    ev = make_evaluator(cfg, space, None)
    ev.setup()
    kept = {}
    for eps in (0.2, 0.005):
        sup = ev.space.supernet(0)
        sup.load_state_dict(ev.supernet.state_dict())
        g, _, rep = discrimination_aware_pruning(ev.space, sup, ev.data, DCPOptions(
            epsilon=eps, stage_epochs=0, select_images=96, inner_steps=2), seed=0)
        kept[eps] = sum(v["kept"] for v in rep["layers"].values())
        assert ev.space.genome_id(g)
    assert kept[0.2] < kept[0.005], kept


def test_dcp_needs_a_resnet_space_and_valid_options(tmp_path):
    r = run_cli("run", space_path("nb201"), "--optimizer", "dcp", "--out", tmp_path / "a")
    assert r.returncode == 2 and "resnet" in r.stderr
    r = run_cli("run", space_path("resnet20"), "--optimizer", "dcp", "--set", "epsilon=-1", "--out", tmp_path / "b")
    assert r.returncode == 2 and "epsilon" in r.stderr
