"""The tiny formula end to end on real training: sample (r, d, w) variants, fit, build targets."""

import json

import pytest

from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.slow


def test_tiny_formula_builds_networks_near_the_flops_targets(tmp_path, cache_dir):
    out = tmp_path / "tn"
    r = run_cli(
        "run",
        TINY,
        "--optimizer",
        "tinynet",
        "--set",
        "samples=8",
        "--set",
        "target_flops=[0.3,0.6]",
        "--budget",
        20,
        "--out",
        out,
        "--no-progress",
        "--set",
        f"cache={cache_dir}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    formula = json.loads((out / "formula.json").read_text())
    assert len(formula["front"]) >= 2
    for t in formula["targets"]:
        r_, d_, w_ = t["rdw"]
        assert 0 < r_ <= 1 and 0 < d_ <= 1 and 0 < w_ <= 1
        assert abs(t["flops_ratio"] - t["c"]) < 0.15, t  # grids are coarse in the tiny space
    assert (out / "tinynet_formula.png").stat().st_size > 5000
    # the formula's networks can seed another optimiser
    from search.seeding import load_genomes
    from spaces import load_space

    space = load_space(TINY)
    assert [space.genome_id(g) for g in load_genomes(str(out / "formula.json"), space)] == [
        t["genome_id"] for t in formula["targets"]
    ]
    show = run_cli("show", out)
    assert show.returncode == 0 and "Pareto front" in show.stdout


def test_tinynet_needs_rdw_scales(tmp_path):
    r = run_cli("run", "spaces/nb201.yaml", "--optimizer", "tinynet", "--out", tmp_path / "x")
    assert r.returncode == 2 and "needs scale dimensions" in r.stderr
    r = run_cli(
        "run", TINY, "--optimizer", "tinynet", "--set", "samples=1", "--out", tmp_path / "y"
    )
    assert r.returncode == 2 and "optimizer.options.samples" in r.stderr
