"""Export a sliced PyTorch model to a deployable format and check it in that format's runtime:
TorchScript (`torch.jit.load`), ONNX (onnxruntime), TVM (a compiled Relax library on the VM).
Every export returns the largest absolute difference to PyTorch on sample inputs."""

from __future__ import annotations

import logging
from collections import Counter
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


def to_onnx(
    model: nn.Module, x: torch.Tensor, path: Path, quant: dict[str, str] | None = None
) -> tuple[float, dict]:
    """ONNX (torch.onnx's TorchScript exporter, batch norm folded into the convs), run in
    onnxruntime. Convs with a low-bit weight set (`quant`, by weight-set group) hold their
    weights in low-bit form (`store_low_bit`); float exports are left as torch.onnx writes them.
    Returns the max abs difference and, for low-bit exports, what the weights take."""
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
    info = {}
    if quant and any(v != "float" for v in quant.values()):
        info = store_low_bit(model, x, path, quant)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": x.numpy()})[0]
    return float(np.abs(y - _reference(model, x)).max()), info


def _fit_codes(w: np.ndarray, levels: int, rtol: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Codes (0..levels-1) and a scale >= 0 per output channel such that every weight of
    row o is scale[o] * (2 c / (levels - 1) - 1) within `rtol` of the row's largest magnitude;
    raises ValueError when a row is not on the set. A row's largest magnitude is its scale times
    one of the set's positive values (the outermost first)."""
    top = levels - 1
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    peak = np.abs(flat).max(1)
    codes = np.zeros(flat.shape, np.uint8)
    scale = np.zeros(len(flat), np.float64)
    values = np.arange(levels) * (2 / top) - 1
    for o, row in enumerate(flat):
        if peak[o] == 0:  # an all-zero channel: scale 0
            continue
        for v in sorted(values[values > 0], reverse=True):
            a = peak[o] / v
            c = np.clip(np.round((row / a + 1) * (top / 2)), 0, top)
            if np.abs((c * (2 / top) - 1) * a - row).max() <= rtol * peak[o]:
                codes[o], scale[o] = c.astype(np.uint8), a
                break
        else:
            raise ValueError(f"output channel {o} is not on the {levels}-value set")
    return codes.reshape(-1), scale


def store_low_bit(model: nn.Module, x: torch.Tensor, path: Path, quant: dict[str, str]) -> dict:
    """Rewrite the ONNX file at `path` so that each low-bit conv's weight is stored as integer
    codes plus one float32 scale per output channel and dequantised in the graph before its Conv
    (`_codes_of`: the format; the scale absorbs the batch norm torch.onnx folded into the conv).
    `evaluators.evaluator.low_bit_bits` counts exactly the bits those initializers hold. A conv
    whose weights are not on its set stays float (logged, listed under `float_convs`). Returns
    {low_bit_convs, low_bit_bits, float_convs}."""
    import onnx
    from onnx import numpy_helper

    from spaces.layers import weight_set_group

    order = _conv_order(model, x)
    proto = onnx.load(str(path))
    graph = proto.graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    info = {"low_bit_convs": 0, "low_bit_bits": 0, "float_convs": []}
    if len(convs) != len(order):
        log.warning(
            "ONNX graph has %d convs, the model ran %d: weights stay float", len(convs), len(order)
        )
        info["float_convs"] = ["all (graph and model differ)"]
        return info
    inits = {t.name: t for t in graph.initializer}
    uses = Counter(i for n in graph.node for i in n.input)
    new_inits, new_nodes, shared = [], [], set()

    def const(name: str, arr: np.ndarray) -> str:
        if name not in shared:
            shared.add(name)
            new_inits.append(numpy_helper.from_array(arr, name))
        return name

    for node, m in zip(convs, order):
        group = weight_set_group(m)
        ws = quant.get(group, "float") if group is not None else "float"
        wname = node.input[1]
        if ws == "float" or wname not in inits or uses.get(wname, 0) != 1:
            if ws != "float":
                info["float_convs"].append(wname)
            continue
        stored = _codes_of(wname, numpy_helper.to_array(inits[wname]), ws, const)
        if stored is None:
            info["float_convs"].append(wname)
            continue
        nodes, bits = stored
        new_nodes += nodes
        node.input[1] = f"{wname}.dequantized"
        graph.initializer.remove(inits[wname])
        info["low_bit_convs"] += 1
        info["low_bit_bits"] += bits
    graph.initializer.extend(new_inits)
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + old_nodes)  # the dequantisation reads initializers only
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return info


def _codes_of(wname: str, w: np.ndarray, ws: str, const) -> tuple[list, int] | None:
    """A conv weight `w` of set `ws` as `<wname>.codes` and `<wname>.scale` (made by `const`)
    and the nodes that dequantise them; with the bits they hold. None (logged) when `w` is not
    on its set.

    A set with L = levels values stores b = ceil(log2 L) bits a weight (binary 1, ternary and
    int2 2, int4 4, int8 8): the codes c (0..L-1, value 2c / (L-1) - 1, `spaces.layers.set_levels`)
    are packed 8 / b to a uint8 byte (`_pack`), initializer `<weight>.codes`, shape (bytes, 1);
    the graph unpacks and maps them to values (`_dequantize`) and multiplies by `<weight>.scale`
    (float32, (out, 1, 1, 1))."""
    from spaces.dims import WEIGHT_SETS, bits_of

    levels, b = WEIGHT_SETS[ws], int(bits_of(ws))
    try:
        codes, scale = _fit_codes(w, levels)
    except ValueError as e:
        log.warning("conv %s (%s): %s; it stays float", wname, ws, e)
        return None
    packed = _pack(codes, b)
    const(f"{wname}.codes", packed)
    const(f"{wname}.scale", scale.astype(np.float32).reshape(-1, *[1] * (w.ndim - 1)))
    nodes = _dequantize(wname, w.shape, codes.size, packed.size, b, levels, const)
    return nodes, 8 * packed.size + 32 * scale.size


def _conv_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The model's convs in the order its forward pass (and so the exported graph) runs them."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return order


def _pack(codes: np.ndarray, b: int) -> np.ndarray:
    """b-bit codes packed 8 / b to a uint8 byte (code i at bits (i mod 8/b) * b of byte
    i // (8/b)), padded to whole bytes: shape (bytes, 1)."""
    per = 8 // b
    padded = np.zeros(-(-codes.size // per) * per, np.uint8)
    padded[: codes.size] = codes.reshape(-1)
    packed = (padded.reshape(-1, per).astype(np.uint16) << (np.arange(per) * b)).sum(1)
    return packed.astype(np.uint8).reshape(-1, 1)


def _dequantize(wname: str, shape, n: int, nbytes: int, b: int, levels: int, const) -> list:
    """The nodes that turn `<wname>.codes` and `<wname>.scale` into `<wname>.dequantized`:
    unpack (BitShift, Mod, Reshape, Slice off the padding), Cast, Mul by 2 / (L-1), Sub 1,
    Reshape to the weight's shape, Mul by the scale. `const(name, array)` names a shared
    constant."""
    import onnx
    from onnx import helper

    per, flat, nodes = 8 // b, f"{wname}.codes", []
    if per > 1:
        shifts = const(f"lowbit.shifts{b}", (np.arange(per) * b).astype(np.uint8))
        modulus = const(f"lowbit.modulus{b}", np.array(2**b, np.uint8))
        nodes += [
            helper.make_node("BitShift", [flat, shifts], [f"{wname}.shifted"], direction="RIGHT"),
            helper.make_node("Mod", [f"{wname}.shifted", modulus], [f"{wname}.unpacked"]),
            helper.make_node(
                "Reshape",
                [f"{wname}.unpacked", const("lowbit.flat", np.array([-1], np.int64))],
                [f"{wname}.flat"],
            ),
        ]
        flat = f"{wname}.flat"
        if nbytes * per != n:
            ends = const(f"lowbit.end{n}", np.array([n], np.int64))
            zero = const("lowbit.zero", np.array([0], np.int64))
            nodes.append(helper.make_node("Slice", [flat, zero, ends], [f"{wname}.cut"]))
            flat = f"{wname}.cut"
    step = const(f"lowbit.step{levels}", np.array(2 / (levels - 1), np.float32))
    one = const("lowbit.one", np.array(1, np.float32))
    dims = const(f"lowbit.shape{'x'.join(map(str, shape))}", np.array(shape, np.int64))
    return nodes + [
        helper.make_node("Cast", [flat], [f"{wname}.codef"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", [f"{wname}.codef", step], [f"{wname}.stepped"]),
        helper.make_node("Sub", [f"{wname}.stepped", one], [f"{wname}.values"]),
        helper.make_node("Reshape", [f"{wname}.values", dims], [f"{wname}.unit"]),
        helper.make_node("Mul", [f"{wname}.unit", f"{wname}.scale"], [f"{wname}.dequantized"]),
    ]


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


def export_model(
    model: nn.Module,
    resolution: int,
    fmt: str,
    path: Path,
    seed: int = 0,
    tvm_database: str | Path | None = None,
    quant: dict[str, str] | None = None,
) -> tuple[float, dict]:
    """Write `model` in `fmt` to `path`; the max abs difference to PyTorch on seeded inputs, and
    what else the format reports (TVM: kernels tuned; ONNX with low-bit weight sets `quant`:
    the low-bit convs and their bits)."""
    model = model.eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, input_channels(model), resolution, resolution, generator=g)
    if fmt == "tvm":
        return to_tvm(model, x, path, database=tvm_database)
    if fmt == "onnx":
        return to_onnx(model, x, path, quant)
    return to_torchscript(model, x, path), {}
