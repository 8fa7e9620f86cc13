"""The co-evolution showcase: two CycleGAN generators (digits <-> inverted, thickened digits),
pre-trained for real, compressed by co-evolving one population per generator."""

import json
import statistics

import optuna
import pytest
import torch

from search.store import STUDY_NAME, open_storage
from tests.conftest import run_cli, space_path

pytestmark = pytest.mark.slow


def test_coevolution_compresses_both_generators(tmp_path, cache_dir):
    out = tmp_path / "cg"
    r = run_cli(
        "run",
        space_path("cyclegan_digits"),
        "--budget",
        40,
        "--out",
        out,
        "--no-progress",
        "--set",
        f"cache={cache_dir}",
        "--set",
        "evaluator.cyclegan.pretrain_steps=400",
        "--set",
        "population_size=4",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # the pre-trained CycleGAN really translates A -> B and back
    manifest = json.loads(
        next(cache_dir.glob("supernets/cyclegan_digits-*/manifest.json")).read_text()
    )
    assert manifest["val_cycle_l1_a"] < 0.25, manifest
    assert manifest["val_mean_gap_ab"] < 0.2, (
        manifest
    )  # A is mostly -1, B mostly +1: a gap of ~1.3 untranslated
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out, None))
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 40
    ms = [t.user_attrs["metrics"] for t in trials]
    for key in ("fitness_ab", "fitness_ba", "dis_ab", "cyc_a", "kept_ab", "kept_ba"):
        assert all(key in m for m in ms)
    # both populations evolved: each generator's masks took several values
    g = [t.user_attrs["genome"] for t in trials]
    assert len({json.dumps({k: v for k, v in x.items() if k.startswith("mask.ab")}) for x in g}) > 4
    assert len({json.dumps({k: v for k, v in x.items() if k.startswith("mask.ba")}) for x in g}) > 4
    first = statistics.median(m["fitness"] for m in ms[:8])  # the shared first population
    best = max(ms, key=lambda m: m["fitness"])
    assert best["fitness"] > first
    assert best["kept_ab"] < 1 and best["kept_ba"] < 1
    # the pruned generators are exported like any other model
    ts = torch.jit.load(str(out / "best" / "model.ts"))
    with torch.no_grad():
        y = ts(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert y.shape == (2, 3, 16, 16) and torch.isfinite(y).all()
    front = json.loads((out / "pareto.json").read_text())["front"]
    assert len(front) >= 3
    # the best pair against the full generators: FLOPs, cycle loss, sample translations
    summary = json.loads((out / "cyclegan.json").read_text())
    assert (
        summary["genome_id"] == json.loads((out / "best" / "metrics.json").read_text())["genome_id"]
    )
    for d in ("ab", "ba"):
        assert (
            summary[d]["flops_reduction"] > 1.0
            and summary[d]["pruned"]["flops"] < summary[d]["full"]["flops"]
        )
        assert summary[d]["pruned"]["cycle_l1"] < 0.5
    assert (out / "cyclegan_samples.png").stat().st_size > 5000
