"""A latency model per operator kind, fitted on our own tuned-kernel measurements (the nn-Meter /
HELP idea), so that a search can price thousands of candidates without compiling each one.

Operators are described the same way on both sides: from a tuned TVM kernel (its TIR buffers'
shapes) when fitting, and from one PyTorch forward pass (the aten ops it dispatches) when
predicting, which needs neither TVM nor `torch.export`. Each operator's time is its kernel's
measured time where the latency table holds that exact shape, else the per-kind regression's
prediction; a network's latency is a linear calibration of the per-operator sum (plus a cost
per operator: the VM's dispatch and the elementwise kernels the sum leaves out), fitted on
whole-network measurements, because the sum alone misses what lies between the kernels
(benchmarks/results/latency.md gives its error with and without the calibration)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from spaces.layers import input_channels

log = logging.getLogger(__name__)

KINDS = ("conv", "dwconv", "matmul", "pool")
FEATURES = ("flops", "in", "out", "weights", "k", "stride", "cin", "cout", "hw")


@dataclass(frozen=True)
class Op:
    """One anchor operator: its kind and shape."""

    kind: str
    cin: int
    cout: int
    k: int = 1
    stride: int = 1
    groups: int = 1
    h: int = 1
    w: int = 1

    @property
    def key(self) -> str:
        shape = (self.kind, self.cin, self.cout, self.k, self.stride, self.groups)
        return ":".join(map(str, shape)) + f":{self.h}x{self.w}"

    def features(self) -> dict[str, float]:
        if self.kind in ("conv", "dwconv"):
            ho, wo = -(-self.h // self.stride), -(-self.w // self.stride)
            per_out = (self.cin // max(1, self.groups)) * self.k * self.k
            return {
                "flops": 2.0 * self.cout * per_out * ho * wo,
                "in": float(self.cin * self.h * self.w),
                "out": float(self.cout * ho * wo),
                "weights": float(self.cout * per_out),
                "k": float(self.k),
                "stride": float(self.stride),
                "cin": float(self.cin),
                "cout": float(self.cout),
                "hw": float(ho * wo),
            }
        if self.kind == "matmul":
            return {
                "flops": 2.0 * self.cin * self.cout,
                "in": float(self.cin),
                "out": float(self.cout),
                "weights": float(self.cin * self.cout),
                "k": 1.0,
                "stride": 1.0,
                "cin": float(self.cin),
                "cout": float(self.cout),
                "hw": 1.0,
            }
        # pool: a mean over h x w of cin channels
        n = float(self.cin * self.h * self.w)
        return {
            "flops": n,
            "in": n,
            "out": float(self.cin),
            "weights": 0.0,
            "k": 1.0,
            "stride": 1.0,
            "cin": float(self.cin),
            "cout": float(self.cin),
            "hw": float(self.h * self.w),
        }

    def vector(self) -> list[float]:
        f = self.features()
        return [math.log1p(f[n]) for n in FEATURES]


def conv_op(x_shape, w_shape, stride: int) -> Op:
    cin, groups = int(x_shape[1]), max(1, int(x_shape[1]) // max(1, int(w_shape[1])))
    kind = "dwconv" if groups == cin and cin > 1 else "conv"
    return Op(
        kind,
        cin,
        int(w_shape[0]),
        int(w_shape[2]),
        int(stride),
        groups,
        int(x_shape[2]),
        int(x_shape[3]),
    )


def op_of_kernel(name: str, shapes: list[list[int]]) -> Op | None:
    """The anchor operator of a fused TVM kernel from its buffers (input, weight, ..., output);
    None for kernels without one (pure elementwise)."""
    import re

    first = re.sub(r"\d+$", "", re.sub(r"^fused_", "", name).split("_")[0])
    if first == "conv2d" and len(shapes) >= 3 and len(shapes[0]) == 4 and len(shapes[1]) == 4:
        x, y = shapes[0], shapes[-1]
        stride = 1
        if (
            len(y) == 4 and 0 < y[2] < x[2]
        ):  # an output larger than the input is a broadcast epilogue
            stride = max(1, round(x[2] / y[2]))
        return conv_op(x, shapes[1], stride)
    if first in ("matmul", "dense") and len(shapes) >= 3:
        x, w = shapes[0], shapes[1]
        return Op("matmul", int(x[-1]), int(w[-1]) if w[0] == x[-1] else int(w[0]))
    if first == "mean" and len(shapes) >= 2 and len(shapes[0]) == 4:
        x = shapes[0]
        return Op("pool", int(x[1]), int(x[1]), h=int(x[2]), w=int(x[3]))
    return None


def torch_ops(model: torch.nn.Module, resolution: int) -> list[Op]:
    """The anchor operators of one batch-1 forward pass, in order (convolutions, matrix products,
    spatial means and average pools), captured from the aten ops PyTorch dispatches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    ops: list[Op] = []

    class Capture(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            p = func.overloadpacket
            if p is aten.convolution:
                x, w, stride = args[0], args[1], args[3]
                ops.append(conv_op(list(x.shape), list(w.shape), int(stride[0])))
            elif p in (aten.addmm, aten.mm):
                a, b = (args[1], args[2]) if p is aten.addmm else (args[0], args[1])
                ops.append(Op("matmul", int(a.shape[-1]), int(b.shape[-1])))
            elif p is aten.mean and args[0].dim() == 4:
                x = args[0]
                ops.append(
                    Op(
                        "pool",
                        int(x.shape[1]),
                        int(x.shape[1]),
                        h=int(x.shape[2]),
                        w=int(x.shape[3]),
                    )
                )
            elif (
                p in (aten.avg_pool2d, aten._adaptive_avg_pool2d, aten.adaptive_avg_pool2d)
                and args[0].dim() == 4
            ):
                x = args[0]
                ops.append(
                    Op(
                        "pool",
                        int(x.shape[1]),
                        int(x.shape[1]),
                        h=int(x.shape[2]),
                        w=int(x.shape[3]),
                    )
                )
            return func(*args, **kwargs)

    was = model.training
    model.eval()
    try:
        with torch.no_grad(), Capture():
            model(torch.zeros(1, input_channels(model), resolution, resolution))
    finally:
        model.train(was)
    return ops


class LatencyModel:
    """Per-kind regressions of log kernel time on log shape features, an exact-shape table, and
    a network calibration: latency = a * sum(op times) + b * ops + c (milliseconds)."""

    def __init__(self):
        self.table: dict[str, float] = {}
        self.regs: dict[str, object] = {}
        self.fallback: dict[str, float] = {}  # seconds per flop of each kind, when too few kernels
        self.calib = (1.0, 0.0, 0.0)
        self.fit_info: dict = {}

    # --- per operator ------------------------------------------------------------------------
    def fit_ops(self, rows: list[tuple[Op, float]]) -> None:
        """rows: (operator, measured seconds of its tuned kernel), in any order: the fit sorts them,
        so the same measurements give the same model (the regressions subsample rows)."""
        from sklearn.ensemble import GradientBoostingRegressor

        rows = sorted(rows, key=lambda r: (r[0].key, r[1]))

        by_key: dict[str, list[float]] = {}
        for op, s in rows:
            by_key.setdefault(op.key, []).append(s)
        self.table = {k: float(np.median(v)) for k, v in by_key.items()}
        for kind in KINDS:
            pts = [(op, s) for op, s in rows if op.kind == kind]
            uniq = {op.key: (op, s) for op, s in pts}
            if pts:
                self.fallback[kind] = float(
                    np.median([s / max(1.0, op.features()["flops"]) for op, s in pts])
                )
            if len(uniq) >= 8:
                X = np.array([op.vector() for op, _ in pts])
                y = np.log(np.array([s for _, s in pts]))
                reg = GradientBoostingRegressor(
                    n_estimators=300, max_depth=3, learning_rate=0.05, subsample=0.9, random_state=0
                )
                reg.fit(X, y)
                self.regs[kind] = reg
        self.fit_info["kernels"] = {k: sum(op.kind == k for op, _ in rows) for k in KINDS}

    def op_seconds(self, op: Op) -> float:
        s = self.table.get(op.key)
        if s is not None:
            return s
        reg = self.regs.get(op.kind)
        if reg is not None:
            return float(np.exp(reg.predict(np.array([op.vector()]))[0]))
        rate = self.fallback.get(op.kind) or (
            min(self.fallback.values()) if self.fallback else 1e-10
        )
        return rate * max(1.0, op.features()["flops"])

    def network_terms(self, ops: list[Op]) -> tuple[float, int]:
        return sum(self.op_seconds(o) for o in ops) * 1e3, len(ops)

    # --- per network -------------------------------------------------------------------------
    def fit_networks(self, nets: list[tuple[list[Op], float]]) -> None:
        """nets: (operators, measured whole-network milliseconds)."""
        if not nets:
            return
        S = np.array([self.network_terms(ops)[0] for ops, _ in nets])
        n = np.array([len(ops) for ops, _ in nets], dtype=float)
        y = np.array([ms for _, ms in nets])
        # relative errors matter: weight each network by 1 / its latency
        wts = 1.0 / np.maximum(y, 1e-6)
        calib = None
        if len(nets) >= 4:
            A = np.stack([S, n, np.ones_like(S)], 1) * wts[:, None]
            sol, *_ = np.linalg.lstsq(A, y * wts, rcond=None)
            if sol[0] > 0 and sol[1] >= 0:
                calib = tuple(float(v) for v in sol)
        if calib is None:
            a = float(np.sum(wts * wts * S * y) / max(1e-12, np.sum(wts * wts * S * S)))
            calib = (a, 0.0, 0.0)
        self.calib = calib
        self.fit_info["networks"] = len(nets)
        self.fit_info["fit_mape"] = self.mape(nets)

    def predict_ms(self, ops: list[Op]) -> float:
        s, n = self.network_terms(ops)
        a, b, c = self.calib
        return max(1e-6, a * s + b * n + c)

    def mape(self, nets: list[tuple[list[Op], float]]) -> float:
        if not nets:
            return float("nan")
        return float(np.mean([abs(self.predict_ms(ops) - ms) / ms for ops, ms in nets]) * 100)

    # --- persistence: the model is refitted from its data, so only the data is kept ------------
    @staticmethod
    def ops_to_json(ops: list[Op]) -> list[list]:
        return [[o.kind, o.cin, o.cout, o.k, o.stride, o.groups, o.h, o.w] for o in ops]

    @staticmethod
    def ops_from_json(rows: list[list]) -> list[Op]:
        return [Op(r[0], *map(int, r[1:])) for r in rows]

    def describe(self) -> dict:
        return {
            "calibration": {
                "a": self.calib[0],
                "b_ms_per_op": self.calib[1],
                "c_ms": self.calib[2],
            },
            "exact_shapes": len(self.table),
            "regressions": sorted(self.regs),
            **self.fit_info,
        }

    def __repr__(self) -> str:
        return f"LatencyModel({json.dumps(self.describe())})"
