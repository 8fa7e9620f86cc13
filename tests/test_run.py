"""The run end to end on real data: supernet pre-training and its cache, inherited sub-networks,
kill -9 and resume, failed trials, outputs."""

import json
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch

from evaluators import cache as supernet_cache
from evaluators.data import load_dataset
from evaluators.train import TrainRecipe, evaluate, recalibrate_bn
from search.config import load_run_config
from search.store import STUDY_NAME, open_storage
from tests.conftest import ROOT, TINY, run_cli

pytestmark = pytest.mark.slow


def _complete(run_dir) -> list:
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir, None))
    except Exception:
        return []
    return [
        t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
    ]


def test_inherited_subnets_score_well_above_chance(cache_dir):
    cfg, space, _ = load_run_config(TINY)
    data = load_dataset(cfg.dataset, space.family.spec.resolution, cfg.seed)
    space = space.with_classes(data.num_classes)
    pt = cfg.pretrain.model_dump()
    sandwich = pt.pop("sandwich")
    sup, info = supernet_cache.get_or_train(
        space, data, TrainRecipe(**pt), sandwich, cfg.seed, cache_dir
    )
    again, info2 = supernet_cache.get_or_train(
        space, data, TrainRecipe(**pt), sandwich, cfg.seed, cache_dir
    )
    assert info2["created"] == info["created"]  # the cache, not a second training
    assert all(
        torch.equal(a, b) for a, b in zip(sup.state_dict().values(), again.state_dict().values())
    )
    full = space.full()
    variants = [
        full,
        {**full, "width": 0.5},
        {**full, "depth": 0.5},
        {**full, "resolution": 0.5},
        {**full, "width": 0.5, "depth": 0.5, "resolution": 0.75},
    ]
    sizes, accs = [], []
    for g in variants:
        g = space.canonical(g)
        arch = space.arch(g)
        model = space.build(g, sup)
        recalibrate_bn(model, data.train, arch.resolution)
        acc, _ = evaluate(model, data.val, arch.resolution)
        sizes.append(space.cost(g)["flops"])
        accs.append(acc)
    assert len(set(sizes)) == len(sizes)  # really different sizes
    assert min(accs) > 0.5, accs  # chance is 0.1


def test_sigkill_then_resume_finishes_budget_without_duplicates(tmp_path, cache_dir):
    out = tmp_path / "run"
    budget = 7
    cmd = [
        sys.executable,
        "-m",
        "search.cli",
        "run",
        str(TINY),
        "--out",
        str(out),
        "--budget",
        str(budget),
        "--no-progress",
        "--workers",
        "0",
        "--set",
        f"cache={cache_dir}",
        "--set",
        "evaluator.finetune.steps=40",
    ]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(_complete(out)) < 3 and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = len(_complete(out))
    assert 3 <= killed_at < budget, killed_at
    r = run_cli("resume", out, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    trials = _complete(out)
    assert len(trials) == budget
    ids = [t.user_attrs["genome_id"] for t in trials]
    assert len(set(ids)) == budget
    # outputs
    front = json.loads((out / "pareto.json").read_text())["front"]
    assert front and all("genome" in e for e in front)
    best = json.loads((out / "best" / "metrics.json").read_text())
    model = torch.jit.load(str(out / "best" / "model.ts"))
    cfg, space, _ = load_run_config(out / "config.yaml")
    g = space.from_json(json.loads((out / "best" / "genome.json").read_text()))
    eager = space.with_classes(10).family.module(space.arch(g))
    eager.load_state_dict(torch.load(out / "best" / "model.pt", weights_only=True))
    eager.eval()
    r_ = space.arch(g).resolution
    x = torch.randn(2, 3, r_, r_)
    assert (model(x) - eager(x)).abs().max() < 1e-5
    assert best["genome_id"] == space.genome_id(g)
    show = run_cli("show", out)
    assert show.returncode == 0 and "Pareto front" in show.stdout


def test_nan_candidates_become_failed_trials(tmp_path, cache_dir):
    out = tmp_path / "nan"
    r = run_cli(
        "run",
        TINY,
        "--out",
        out,
        "--budget",
        2,
        "--no-progress",
        "--set",
        f"cache={cache_dir}",
        "--set",
        "evaluator.finetune.lr=1e12",
        "--set",
        "max_failures=2",
    )
    assert r.returncode == 1, r.stderr[-2000:]
    assert "run failed" in r.stderr and "Traceback" not in r.stderr
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out, None))
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 3  # the run went on past the first failures, then stopped at the bound
    assert all(
        "FloatingPointError" in t.user_attrs["fail_reason"]
        or "non-finite" in t.user_attrs["fail_reason"]
        for t in failed
    )
