"""Export a sliced PyTorch model to a deployable format and check it in that format's runtime:
TorchScript (`torch.jit.load`), ONNX (onnxruntime), TVM (a compiled Relax library on the VM).
Every export returns the largest absolute difference to PyTorch on sample inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spaces.layers import input_channels

log = logging.getLogger(__name__)
EXT = {"torchscript": ".ts", "onnx": ".onnx", "tvm": ".so"}


def _reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).detach().numpy()


def to_torchscript(model: nn.Module, x: torch.Tensor, path: Path) -> float:
    with torch.no_grad():
        ts = torch.jit.trace(model, x[:1])
    ts.save(str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        y = loaded(x).numpy()
    return float(np.abs(y - _reference(model, x)).max())


def to_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> float:
    import onnxruntime as ort

    torch.onnx.export(
        model,
        (x[:1],),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        dynamo=False,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": x.numpy()})[0]
    return float(np.abs(y - _reference(model, x)).max())


def to_tvm(
    model: nn.Module,
    x: torch.Tensor,
    path: Path,
    target: str | dict | None = None,
    database: str | Path | None = None,
) -> tuple[float, dict]:
    """Compile with TVM (Relax, via torch.export, batch norm folded) for `target` (default: this
    host) with the tuned kernels the target's tuning database holds (`database`: the folder of
    tuning databases; kernels it lacks keep TVM's default schedule), and run the library on the
    Relax VM. Returns the max abs difference and how many kernels were tuned."""
    from kernels.tvm_compile import build, host_target, prepared_module, run_library
    from kernels.tvm_latency import fold_batch_norm
    from kernels.tvm_tuning import TuningDB, extract_kernels

    t = host_target(target)
    prepared = prepared_module(fold_batch_norm(model), tuple(x[:1].shape), t)
    db, info = None, {"kernels": None, "tuned_kernels": 0}
    if database is not None:
        db = TuningDB(database, t)
        kernels = extract_kernels(prepared, t)
        info = {
            "kernels": len(kernels),
            "tuned_kernels": sum(db.record(k) is not None for k in kernels),
        }
    lib = build(prepared, t, db.database if db is not None and info["tuned_kernels"] else None)
    lib.export_library(str(path))
    y = run_library(path, x[:1].numpy())
    ref = _reference(model, x[:1])
    return float(np.abs(y - ref).max()), info


EXPORTERS = {"torchscript": to_torchscript, "onnx": to_onnx, "tvm": to_tvm}


def export_model(
    model: nn.Module,
    resolution: int,
    fmt: str,
    path: Path,
    seed: int = 0,
    tvm_database: str | Path | None = None,
) -> tuple[float, dict]:
    """Write `model` in `fmt` to `path`; the max abs difference to PyTorch on seeded inputs, and
    what else the format reports (TVM: kernels tuned)."""
    model = model.eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, input_channels(model), resolution, resolution, generator=g)
    if fmt == "tvm":
        return to_tvm(model, x, path, database=tvm_database)
    return EXPORTERS[fmt](model, x, path), {}
