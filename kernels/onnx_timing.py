"""The onnxruntime latency provider: the candidate exported to ONNX and timed in onnxruntime's
CPU provider, batch 1: the deployment baseline that tuned TVM kernels have to beat."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from kernels.cores import core_lock
from kernels.provider import LatencyProvider, summary
from spaces.layers import input_channels


class OnnxRuntimeLatency(LatencyProvider):
    """The candidate exported to ONNX (opset of torch.onnx's TorchScript exporter) and timed in
    onnxruntime's CPU provider, batch 1: the deployment baseline tuned TVM has to beat."""

    name = "onnxruntime"

    def __init__(self, repeats: int = 20, warmup: int = 3, threads: int | None = None):
        self.repeats, self.warmup, self.threads = repeats, warmup, threads

    @classmethod
    def from_config(cls, cfg, cache_dir) -> OnnxRuntimeLatency:
        return cls(repeats=cfg.repeats, warmup=cfg.warmup, threads=cfg.threads)

    def measure(self, model: nn.Module, resolution: int) -> dict:
        return self.time(self.session(model, resolution))

    def session(self, model: nn.Module, resolution: int):
        """An inference session of the candidate and its seeded input, ready to be timed again
        and again."""
        import onnxruntime as ort

        model = model.eval()
        x = torch.randn(
            1,
            input_channels(model),
            resolution,
            resolution,
            generator=torch.Generator().manual_seed(0),
        )
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "m.onnx"
            with torch.no_grad():
                torch.onnx.export(
                    model,
                    (x,),
                    str(path),
                    input_names=["input"],
                    output_names=["output"],
                    dynamo=False,
                )
            so = ort.SessionOptions()
            if self.threads:
                so.intra_op_num_threads = self.threads
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return sess, {"input": x.numpy()}

    def time(self, session) -> dict:
        sess, feed = session
        with core_lock().exclusive("measurement"):
            for _ in range(self.warmup):
                sess.run(None, feed)
            times = []
            for _ in range(self.repeats):
                t = time.perf_counter()
                sess.run(None, feed)
                times.append((time.perf_counter() - t) * 1e3)
        return {**summary(times), "latency_source": self.name}
