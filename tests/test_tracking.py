"""What a user reads and tracks: per-epoch curves in the study and TensorBoard, the base
network as a reference in show / report, the data's normalisation in data.json and exports,
presets over the run file, and CUDA asked for where there is none."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from search.store import STUDY_NAME, open_storage
from tests.conftest import TINY, run_cli


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("tracked") / "run"
    r = run_cli(
        "run",
        TINY,
        "--budget",
        2,
        "--out",
        out,
        "--no-progress",
        "--set",
        f"cache={cache_dir}",
        "--set",
        "evaluator.finetune.steps=null",
        "--set",
        "evaluator.finetune.epochs=2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_per_epoch_values_are_in_the_study_and_in_tensorboard(tracked_run):
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(tracked_run, None))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        assert sorted(t.intermediate_values) == [1, 2]  # val_acc after each epoch
        assert t.intermediate_values[2] == pytest.approx(t.user_attrs["metrics"]["val_acc"])
        assert [c["epoch"] for c in t.user_attrs["curve"]] == [1, 2]
    events = list((tracked_run / "tensorboard").glob("trial-*/events.out.tfevents.*"))
    assert len(events) == 2


def test_show_and_the_report_compare_the_front_with_the_base(tracked_run):
    ref = json.loads((tracked_run / "reference.json").read_text())
    assert ref["genome_id"] and "val_acc" in ref["metrics"] and "latency_ms" in ref["metrics"]
    r = run_cli("show", tracked_run)
    assert r.returncode == 0 and "base (the full network" in r.stdout, r.stdout
    assert "x fewer" in r.stdout and " pts" in r.stdout
    html = (tracked_run / "report.html").read_text()
    assert "<td>base</td>" in html and "vs base" in html
    assert "no finished session yet" not in html  # the report is written after timings.json


def test_the_data_normalisation_is_recorded_and_exported(tracked_run):
    data = json.loads((tracked_run / "data.json").read_text())
    assert (
        data["input_shape"] == [3, 16, 16] and len(data["mean"]) == 3 and data["name"] == "digits"
    )
    r = run_cli("export", tracked_run, "--format", "onnx")
    assert r.returncode == 0, r.stderr[-2000:]
    entry = json.loads((tracked_run / "export" / "manifest.json").read_text())[0]
    assert entry["input"]["mean"] == data["mean"] and entry["input"]["shape"][1] == 3


def test_cuda_where_there_is_none_is_exit_2(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = run_cli("run", TINY, "--set", "device=cuda", "--out", tmp_path / "run", timeout=120)
    assert r.returncode == 2 and "device" in r.stderr and "no CUDA device" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()
    r = run_cli("run", TINY, "--set", "device=tpu", "--out", tmp_path / "run", timeout=120)
    assert r.returncode == 2 and "device" in r.stderr


def test_the_table_evaluator_device_was_renamed(tmp_path):
    r = run_cli(
        "run", TINY, "--set", "evaluator.device=raspi4", "--out", tmp_path / "run", timeout=120
    )
    assert r.returncode == 2 and "table_latency" in r.stderr, r.stderr


def test_a_preset_overrides_the_run_file_and_set_overrides_the_preset(tmp_path):
    from search.config import load_run_config

    cfg, _, _ = load_run_config(TINY, ["preset=fast"])
    assert cfg.pretrain.epochs == 3 and cfg.budget == 8  # the file says 8 epochs, budget 4
    cfg, _, _ = load_run_config(TINY, ["preset=fast", "budget=5"], {"seed": 3})
    assert cfg.budget == 5 and cfg.seed == 3
    assert yaml.safe_load(TINY.read_text())["pretrain"]["epochs"] == 8
