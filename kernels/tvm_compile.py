"""TVM compilation of a PyTorch module: `torch.export` -> Relax (`from_exported_program`) ->
batch norm folded into the convolutions -> the Relax preparation passes -> (tuned kernels from a
MetaSchedule database, when given) -> `tvm.compile` for a target (default: this host's CPU),
and the Relax VM to run the result.

Without a database the kernels are TVM's defaults: a correct deployable artefact, but on CPU its
timing is no latency signal (no tiling, no vectorisation)."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


def host_cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_THREADS_SET_BY_US = False


def runtime_threads(n: int | None = None) -> int:
    """Make TVM's runtime run kernels on `n` threads (default: all of this host's cores); returns
    the number it will use. Without TVM_NUM_THREADS, TVM takes OMP_NUM_THREADS (1 in a Ray worker)
    or, on x86, half the logical CPUs (it assumes hyper-threading, so a small VM without it runs
    on half its cores; benchmarks/results/latency.md measures the cost). It has to be in the
    environment before TVM's thread pool starts (its first parallel kernel), and MetaSchedule's
    runner processes inherit it, so kernels are tuned on the threads they will run on. A
    TVM_NUM_THREADS the user set is kept."""
    global _THREADS_SET_BY_US
    if "TVM_NUM_THREADS" not in os.environ or _THREADS_SET_BY_US:
        os.environ["TVM_NUM_THREADS"] = str(max(1, int(n or host_cores())))
        _THREADS_SET_BY_US = True
    return int(os.environ["TVM_NUM_THREADS"])


def load_tvm():
    """Import TVM with only this host's tensor intrinsics: `import tvm.s_tir.tensor_intrin`
    loads CUDA, ROCm, Hexagon and ARM ones too (tens of seconds on a small CPU), and every
    MetaSchedule tuning context and build worker imports it. Idempotent; also the build
    workers' initializer. TVM's runtime threads: `runtime_threads`."""
    if "TVM_NUM_THREADS" not in os.environ:
        runtime_threads()
    import tvm
    import tvm.s_tir

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(os.path.dirname(tvm.s_tir.__file__), "tensor_intrin")]
        sys.modules[name] = pkg
        tvm.s_tir.tensor_intrin = pkg
        import platform

        arch = platform.machine().lower()
        for sub in (
            ["x86"]
            if arch in ("x86_64", "amd64", "i686")
            else ["arm_cpu"]
            if arch in ("aarch64", "arm64")
            else []
        ):
            try:
                importlib.import_module(f"{name}.{sub}")
            except Exception as e:  # noqa: BLE001 - tensorisation is an optimisation, not a need
                log.debug("tensor intrinsics %s not loaded: %s", sub, e)
    return tvm


def host_target(target: str | dict | None = None):
    """A TVM target: the given one (JSON dict, its string form, or a TVM target string), else
    LLVM for this host's CPU (its `mcpu`) with as many cores as the machine has."""
    tvm = load_tvm()
    from tvm.target import codegen

    if target is None:
        target = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": host_cores()}
    elif isinstance(target, str) and target.strip().startswith("{"):
        target = json.loads(target)
    return target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)


# the form of the kernels a database holds: a database of another form is another folder (2:
# means' blocks named `mean_red`, not after a Relax variable: `named_mean_pass`)
KERNEL_FORM = 2


def target_key(target, threads: int | None = None) -> str:
    """A folder name for a target and the runtime threads its kernels are timed on: its kind, CPU,
    cores and threads, and a digest of the whole (kernels tuned on another thread count are
    another database)."""
    import hashlib

    s = str(target)
    d = json.loads(s) if s.startswith("{") else {"kind": s}
    tag = "-".join(str(d.get(k)) for k in ("kind", "mcpu", "num-cores") if d.get(k) is not None)
    if threads:
        tag += f"-t{threads}"
        s += f"|threads={threads}"
    s += f"|kernels={KERNEL_FORM}"
    return f"{tag}-{hashlib.sha256(s.encode()).hexdigest()[:8]}"


def import_module(model: nn.Module, shape: tuple[int, ...]):
    """The model (in eval mode) as a Relax IRModule with its weights bound as constants.

    PyTorch's decompositions re-trace the whole program: 1.2 s of a tinynet candidate's 1.8 s
    import and preparation here. The program is imported without them and given their form
    (`decomposed_form_pass`); where every operator it then calls is one that comes out so as the
    decompositions would give it (`SAME_UNDECOMPOSED`), that is the import: the same kernels,
    so a tuning database serves both (tests/test_latency.py checks it on tinynet and resnet20
    candidates). Any other program is imported with the decompositions."""
    load_tvm()
    from tvm.relax.frontend.torch import from_exported_program

    model = model.eval()
    with torch.no_grad():
        ep = torch.export.export(model, (torch.randn(*shape),))
    try:
        mod = from_exported_program(ep, keep_params_as_input=False, run_ep_decomposition=False)
        mod = decomposed_form_pass()(mod)
    except Exception as e:  # noqa: BLE001 - an operator taken only decomposed
        log.debug("importing with PyTorch's decompositions: %s", str(e).splitlines()[0][:200])
        mod = None
    if mod is not None and not (ops_of(mod) - SAME_UNDECOMPOSED):
        return mod
    with warnings.catch_warnings():  # torch's own deprecation, raised in its decompositions
        warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec", category=FutureWarning)
        return from_exported_program(ep, keep_params_as_input=False)


# Relax operators an import without PyTorch's decompositions, given their form by
# `decomposed_form_pass`, calls as an import with them would: checked kernel for kernel on the
# 19 networks of an 18-trial tinynet run and on 9 of each of resnet20 and the examples'
# MobileNetV2 and ResNet-18 (tests/test_latency.py: two of tinynet's and of resnet20's)
SAME_UNDECOMPOSED = frozenset(
    "relax." + op
    for op in (
        "add",
        "clip",
        "matmul",
        "mean",
        "multiply",
        "nn.conv2d",
        "nn.relu",
        "permute_dims",
        "reshape",
        "sigmoid",
    )
)


def ops_of(mod) -> set[str]:
    """The Relax operators `mod`'s main function calls."""
    from tvm import relax

    ops: set[str] = set()

    def visit(e):
        if isinstance(e, relax.Call) and hasattr(e.op, "name"):
            ops.add(e.op.name)

    relax.analysis.post_order_visit(mod["main"], visit)
    return ops


def _global_pool(call) -> bool:
    """An adaptive average pool over NCHW to 1 x 1."""
    size = call.attrs.output_size
    return (
        size is not None
        and all(int(v) == 1 for v in size)
        and str(call.attrs.layout) == "NCHW"
        and str(call.attrs.out_layout) == "NCHW"
    )


def call_rewrite_pass(name: str, rewrite):
    """A Relax module pass putting `rewrite(block_builder, call)` in place of every call in the
    module's Relax functions where it is not None."""
    tvm = load_tvm()
    from tvm import relax
    from tvm.relax import PyExprMutator, expr_functor

    @expr_functor.mutator
    class Mutator(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            new = rewrite(self.builder_, call)
            return call if new is None else new

    @tvm.transform.module_pass(opt_level=0, name=name)
    class Rewrite:
        def transform_module(self, mod, ctx):
            m = Mutator(mod)
            for gv, f in mod.functions_items():
                if isinstance(f, relax.Function):
                    m.builder_.update_func(gv, m.visit_expr(f))
            return m.builder_.get()

    return Rewrite()


_DECOMPOSED_FORM = None


def decomposed_form_pass():
    """What PyTorch's decompositions give, for the operators the importer takes whole: SiLU as
    x * sigmoid(x) (`aten.silu`'s decomposition), an adaptive average pool over NCHW to 1 x 1
    as a mean over the last two axes, and a constant added second as the constant plus the
    rest (`aten.linear` -> `addmm`: the bias first). Kernels then fuse and hash as an import
    with the decompositions makes them (`import_module`)."""
    global _DECOMPOSED_FORM
    if _DECOMPOSED_FORM is not None:
        return _DECOMPOSED_FORM
    tvm = load_tvm()
    from tvm import relax

    def rewrite(builder, call):
        name = getattr(call.op, "name", "")
        if name == "relax.nn.silu":
            x = call.args[0]
            return relax.op.multiply(x, builder.emit(relax.op.sigmoid(x)))
        if name == "relax.nn.adaptive_avg_pool2d" and _global_pool(call):
            return relax.op.mean(call.args[0], axis=[-1, -2], keepdims=True)
        if name == "relax.add" and isinstance(call.args[1], tvm.ir.Constant):
            if not isinstance(call.args[0], tvm.ir.Constant):
                return relax.op.add(call.args[1], call.args[0])
        return None

    _DECOMPOSED_FORM = call_rewrite_pass("DecomposedForm", rewrite)
    return _DECOMPOSED_FORM


_FAST_SIGMOID = None


def fast_sigmoid_pass():
    """sigmoid(x) as 1 / (1 + fast_exp(-x)): TVM's sigmoid calls the C library's exp per element,
    which no schedule vectorises, and in SiLU networks it dominated the tuned kernels (a 1x1 conv
    with SiLU at 32x32: 875 us with it, 70 us without). fast_exp is TVM's polynomial exp
    (relative error about 1e-7), the one its FastMathTransform uses for exp."""
    global _FAST_SIGMOID
    if _FAST_SIGMOID is not None:
        return _FAST_SIGMOID
    tvm = load_tvm()
    from tvm import topi

    def sigmoid(x):
        one = tvm.tirx.const(1.0, x.dtype)
        return topi.divide(one, topi.add(one, topi.fast_exp(topi.negative(x))))

    def rewrite(builder, call):
        if getattr(call.op, "name", "") != "relax.sigmoid":
            return None
        return builder.call_te(sigmoid, call.args[0], primfunc_name_hint="fast_sigmoid")

    _FAST_SIGMOID = call_rewrite_pass("FastSigmoid", rewrite)
    return _FAST_SIGMOID


_NAMED_MEAN = None


def named_mean_pass():
    """relax.mean as a sum whose block is named `mean_red`, then a division: TVM's own names the
    sum's block after the Relax variable it reads (`lv58_red`), so the same mean in two networks
    has other block names, while MetaSchedule's database matches kernels by structure, names
    aside, and replays a schedule by block name: the other network's record then fails to apply
    (and one tuned for each corrupts the database file)."""
    global _NAMED_MEAN
    if _NAMED_MEAN is not None:
        return _NAMED_MEAN
    tvm = load_tvm()
    from tvm import te, topi

    def mean(x, axis: list[int], keepdims: bool):
        nd = len(x.shape)
        axis = sorted({a % nd for a in axis})
        rs = {a: te.reduce_axis((0, x.shape[a]), name=f"k{a}") for a in axis}
        kept = [i for i in range(nd) if i not in rs]
        out = (
            [1 if i in rs else x.shape[i] for i in range(nd)]
            if keepdims
            else [x.shape[i] for i in kept]
        )

        def body(*idx):
            pos = dict(zip(range(nd), idx)) if keepdims else dict(zip(kept, idx))
            return te.sum(
                x[tuple(rs[i] if i in rs else pos[i] for i in range(nd))], axis=list(rs.values())
            )

        total = te.compute(out, body, name="mean_red")
        n = 1
        for a in axis:
            n *= int(x.shape[a])
        return topi.divide(total, tvm.tirx.const(n, x.dtype))

    def rewrite(builder, call):
        if getattr(call.op, "name", "") != "relax.mean" or call.attrs.axis is None:
            return None
        axis = [int(a) for a in call.attrs.axis]
        return builder.call_te(
            mean, call.args[0], axis, bool(call.attrs.keepdims), primfunc_name_hint="mean"
        )

    _NAMED_MEAN = call_rewrite_pass("NamedMean", rewrite)
    return _NAMED_MEAN


_FOLD_LAYOUT = None


def fold_layout_pass():
    """reshape and permute_dims of a constant (a convolution's bias, the classifier's weight)
    replaced by the constant they give, computed with numpy: Relax's FoldConstant compiles each
    such call into a kernel of its own to run it (about 1.3 s for a small network)."""
    global _FOLD_LAYOUT
    if _FOLD_LAYOUT is not None:
        return _FOLD_LAYOUT
    tvm = load_tvm()
    from tvm import relax

    def folded(call):
        name = getattr(call.op, "name", "")
        if name not in ("relax.reshape", "relax.permute_dims") or not isinstance(
            call.args[0], tvm.ir.Constant
        ):
            return None
        arr = call.args[0].value.numpy()
        if name == "relax.reshape":
            if not isinstance(call.args[1], relax.ShapeExpr):
                return None
            arr = arr.reshape([int(v) for v in call.args[1].values])
        else:
            axes = call.attrs.axes
            arr = arr.transpose(None if axes is None else [int(a) for a in axes])
        return relax.const(np.ascontiguousarray(arr), str(arr.dtype))

    _FOLD_LAYOUT = call_rewrite_pass("FoldLayoutOfConstants", lambda builder, call: folded(call))
    return _FOLD_LAYOUT


def prepare(mod, target):
    """Fold batch norm into the convolutions, vectorisable sigmoids, constants' reshapes folded
    with numpy, and the Relax preparation passes (decompose for inference, canonicalise
    bindings, legalise and fuse): the form whose fused kernels MetaSchedule extracts as tasks
    and whose kernels a database applies to."""
    tvm = load_tvm()
    from tvm import relax

    with target:
        return tvm.transform.Sequential(
            [
                relax.transform.FoldBatchnormToConv2D(),
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                fast_sigmoid_pass(),
                named_mean_pass(),
                fold_layout_pass(),
                relax.get_pipeline("zero"),
            ]
        )(mod)


def prepared_module(model: nn.Module, shape: tuple[int, ...], target):
    return prepare(import_module(model, shape), target)


def build(prepared, target, database=None):
    """Compile a prepared module; with a MetaSchedule database, its tuned kernels replace the
    defaults (tasks it does not hold keep the default schedule)."""
    tvm = load_tvm()
    return tvm.compile(with_database(prepared, target, database), target=target)


def with_database(prepared, target, database=None):
    """A prepared module with the schedules `database` (a MetaSchedule database, or None) holds
    applied to its kernels."""
    load_tvm()
    from tvm import relax

    if database is None:
        return prepared
    with target, database:
        return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(prepared)


# TIR's common-subexpression elimination, off for a candidate schedule's compile (a tuning trial,
# a transferred replay): it was 14 % of a trial's compile here (207 against 179 ms a candidate), and
# LLVM's own GVN does the same work, so the compiled kernels ran alike (128 candidates of 16 tinynet
# kernels: median time ratio 1.001, the same as timing the same build twice; 15 of 16 kernels kept
# the same best schedule). Networks compiled for export keep TVM's default pipeline.
CANDIDATE_BUILD = {"tirx.disable_cse_tir": True}


def candidate_build():
    """The pass context a candidate schedule is compiled in: this thread's, with `CANDIDATE_BUILD`
    (a pass context is per thread, so each compiling thread enters its own)."""
    tvm = load_tvm()
    now = tvm.transform.PassContext.current()
    return tvm.transform.PassContext(
        opt_level=now.opt_level,
        config={**dict(now.config), **CANDIDATE_BUILD},
        instruments=list(now.instruments),
    )


def first_output(out) -> np.ndarray:
    while not hasattr(out, "numpy"):
        out = out[0]
    return out.numpy()


def run_library(path: Path, x: np.ndarray) -> np.ndarray:
    """Load a library written by `export_library` and run its `main` on the Relax VM (CPU)."""
    tvm = load_tvm()
    from tvm import relax

    lib = tvm.runtime.load_module(str(path))
    vm = relax.VirtualMachine(lib, tvm.cpu())
    return first_output(vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32))))
