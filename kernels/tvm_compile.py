"""TVM compilation of a PyTorch module: `torch.export` -> Relax (`from_exported_program`) ->
`tvm.compile` for a target (default: this host's CPU), and the Relax VM to run the result.

This is the compile path that export uses. Kernels here are TVM's defaults, not tuned: such a
library is a correct deployable artefact, but its timing is no latency signal on CPU."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


def host_target(target: str | dict | None = None):
    """A TVM target: the given one (JSON dict or its string form), else LLVM for this host's
    CPU (its `mcpu`) with as many cores as the machine has."""
    import json

    import tvm
    from tvm.target import codegen

    if target is None:
        target = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1}
    elif isinstance(target, str) and target.strip().startswith("{"):
        target = json.loads(target)
    return tvm.target.Target(target)


def import_module(model: nn.Module, shape: tuple[int, ...]):
    """The model (in eval mode) as a Relax IRModule with its weights bound as constants."""
    from tvm.relax.frontend.torch import from_exported_program

    model = model.eval()
    with torch.no_grad():
        ep = torch.export.export(model, (torch.randn(*shape),))
    return from_exported_program(ep, keep_params_as_input=False)


def compile_module(model: nn.Module, shape: tuple[int, ...], target=None):
    """Compile for `target`; returns the executable (`export_library` writes a shared library)."""
    import tvm

    mod = import_module(model, shape)
    return tvm.compile(mod, target=host_target(target))


def _first(out):
    while not hasattr(out, "numpy"):
        out = out[0]
    return out.numpy()


def run_library(path: Path, x: np.ndarray) -> np.ndarray:
    """Load a library written by `export_library` and run its `main` on the Relax VM (CPU)."""
    import tvm
    from tvm import relax

    lib = tvm.runtime.load_module(str(path))
    vm = relax.VirtualMachine(lib, tvm.cpu())
    return _first(vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32))))
