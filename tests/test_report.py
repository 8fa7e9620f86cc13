"""Reports (report.html and PNGs, rebuilt by `search report`) and checked exports."""

import json

import numpy as np
import pytest
import torch

from tests.conftest import NB201_CSV, TINY, run_cli

TABLE = ["--set", "preset=nb201-table", "--set", f"evaluator.table={NB201_CSV}", "--no-progress"]


@pytest.mark.skipif(not NB201_CSV.exists(), reason="no NB201 table")
def test_every_run_writes_a_report_and_report_rebuilds_it(tmp_path):
    out = tmp_path / "run"
    r = run_cli(
        "run",
        "spaces/nb201.yaml",
        "--optimizer",
        "ga",
        "--budget",
        60,
        "--out",
        out,
        *TABLE,
        "--set",
        "objectives=[{metric: val_acc}, {metric: latency_ms, direction: minimize}]",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for f in (
        "report.html",
        "front_latency.png",
        "front_flops.png",
        "progress.png",
        "dimensions.png",
    ):
        assert (out / f).stat().st_size > 2000, f
    page = (out / "report.html").read_text()
    assert (
        "Pareto front" in page and "front_latency.png" in page and "60</b> complete trials" in page
    )
    for f in out.glob("*.png"):
        f.unlink()
    r = run_cli("report", out)
    assert r.returncode == 0 and (out / "progress.png").exists()
    r = run_cli("report", tmp_path / "nothing")
    assert r.returncode == 2 and "not a run folder" in r.stderr
    # a table run has no weights to export
    r = run_cli("export", out)
    assert r.returncode == 2 and "no stored weights" in r.stderr


@pytest.mark.slow
def test_export_pareto_models_in_onnx_and_torchscript(tmp_path, cache_dir):
    import onnxruntime as ort

    out = tmp_path / "run"
    r = run_cli(
        "run", TINY, "--budget", 5, "--out", out, "--no-progress", "--set", f"cache={cache_dir}"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("export", out, "--pareto", "--format", "onnx", "--format", "torchscript")
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    front = json.loads((out / "pareto.json").read_text())["front"]
    assert len(manifest) == 2 * len(front)
    assert all(e["ok"] and e["max_abs_diff"] <= 1e-4 for e in manifest)
    assert "max |diff|" in r.stdout
    for e in manifest:  # each loads in its own runtime
        f = out / "export" / e["file"]
        x = torch.randn(2, 3, e["resolution"], e["resolution"])
        if e["format"] == "onnx":
            y = ort.InferenceSession(str(f)).run(None, {"input": x.numpy()})[0]
        else:
            y = torch.jit.load(str(f))(x).detach().numpy()
        assert y.shape[0] == 2 and np.isfinite(y).all()
    # three models in each of the three formats, each loaded in its own runtime
    from kernels.tvm_compile import run_library

    r = run_cli(
        "export",
        out,
        "--trial",
        0,
        "--trial",
        1,
        "--trial",
        2,
        "--format",
        "tvm",
        "--format",
        "onnx",
        "--format",
        "torchscript",
        "--out",
        tmp_path / "three",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    three = json.loads((tmp_path / "three" / "manifest.json").read_text())
    assert sorted((e["trial"], e["format"]) for e in three) == sorted(
        (t, f) for t in (0, 1, 2) for f in ("tvm", "onnx", "torchscript")
    )
    assert all(e["max_abs_diff"] <= 1e-4 for e in three)
    for e in (e for e in three if e["format"] == "tvm"):
        y = run_library(
            tmp_path / "three" / e["file"],
            np.random.randn(1, 3, e["resolution"], e["resolution"]).astype("float32"),
        )
        assert np.isfinite(y).all()
    r = run_cli("export", out, "--trial", 999)
    assert r.returncode == 2 and "--trial" in r.stderr
