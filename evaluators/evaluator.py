"""Evaluators turn a genome into metrics. `TrainEvaluator`: inherit from the pre-trained
supernet, fine-tune, score, time. `TableEvaluator`: look the genome up in NAS-Bench-201."""

from __future__ import annotations

import csv
import logging
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spaces.dims import bits_of
from spaces.errors import ConfigError
from spaces.families.cell import arch_str
from spaces.layers import GConv2d
from spaces.space import Genome, Space

from kernels.latency import make_latency  # noqa: F401  (the latency providers, re-exported)
from kernels.lock import core_lock

from evaluators import cache as supernet_cache
from evaluators.data import Splits, load_dataset
from evaluators.train import TrainRecipe, evaluate, fine_tune, recalibrate_bn

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """One evaluation: complete with metrics, or failed with a reason."""

    genome_id: str
    status: str  # "complete" | "failed"
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    state_dict: dict[str, torch.Tensor] | None = None
    node: str = ""


def model_bits(model: torch.nn.Module, quant: dict[str, str]) -> int:
    """Size of the weights in bits: each conv at its weight set, everything else float32."""
    total = 0
    for m in model.modules():
        own = [p for p in m.parameters(recurse=False)]
        if not own:
            continue
        if isinstance(m, GConv2d) and m.qgroup is not None:
            b = bits_of(quant.get(m.qgroup, "float"))
            total += int(m.weight.numel() * b) + 32 * (m.bias.numel() if m.bias is not None else 0)
            if b < 32:
                total += 32 * m.weight.shape[0]  # one scale per output channel
        else:
            total += 32 * sum(p.numel() for p in own)
    return total


class TrainEvaluator:
    """Fine-tuning evaluator over a pre-trained, cached supernet."""

    kind = "train"
    METRICS = ("val_acc", "val_loss", "test_acc", "test_loss", "inherited_val_acc", "flops", "params",
               "model_bits", "latency_ms", "latency_spread_ms", "train_time_s", "wall_time_s")

    def __init__(self, space: Space, dataset_cfg, finetune: TrainRecipe, pretrain: TrainRecipe,
                 sandwich: int, seed: int, cache_dir: Path, latency=None, config_file: str | None = None):
        self.base_space, self.dataset_cfg, self.finetune, self.pretrain = space, dataset_cfg, finetune, pretrain
        self.sandwich, self.seed, self.cache_dir, self.latency = sandwich, seed, Path(cache_dir), latency
        self.config_file = config_file
        if dataset_cfg.name != "digits":  # fail before any work starts, not after pre-training
            if not dataset_cfg.path:
                raise ConfigError(config_file, "dataset.path", f"dataset {dataset_cfg.name!r} needs a path")
            if not Path(dataset_cfg.path).expanduser().exists():
                raise ConfigError(config_file, "dataset.path", f"{dataset_cfg.path!r} does not exist")
        self.data: Splits | None = None
        self.supernet = None
        self.space = space
        self.supernet_info: dict = {}

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.METRICS

    def setup(self, progress=None, supernet_state: dict | None = None) -> None:
        """Load the data and the pre-trained supernet: from `supernet_state` (a worker gets the
        driver's), else from the cache, training and caching it if needed."""
        if self.supernet is not None:
            return
        self.data = load_dataset(self.dataset_cfg, self.base_space.family.spec.resolution, self.seed,
                                 self.config_file)
        self.space = self.base_space.with_classes(self.data.num_classes)
        if supernet_state is not None:
            self.supernet = self.space.supernet(self.seed)
            self.supernet.load_state_dict(supernet_state)
        else:
            self.supernet, self.supernet_info = supernet_cache.get_or_train(
                self.space, self.data, self.pretrain, self.sandwich, self.seed, self.cache_dir, progress)
        self.supernet.eval()

    def supernet_state(self) -> dict:
        """The pre-trained weights, for workers that cannot read this machine's cache."""
        self.setup()
        return {k: v.detach().clone() for k, v in self.supernet.state_dict().items()}

    def detached(self) -> "TrainEvaluator":
        """This evaluator without its data and supernet: what is shipped to a worker."""
        from evaluators.executor import detached_copy

        c = detached_copy(self, ("data", "supernet"))
        c.space = self.base_space
        return c

    def evaluate(self, genome: Genome, seed: int = 0, report=None) -> EvalResult:
        """Inherit, fine-tune, score. `report(metrics)`, if given, hears the validation metrics
        after every fine-tuning epoch but the last (with cost and latency, which do not change),
        so a scheduler such as ASHA can stop the candidate early."""
        self.setup()
        gid = self.space.genome_id(genome)
        t0 = time.time()
        try:
            arch = self.space.arch(genome)
            model = self.space.build(genome, self.supernet)
            recalibrate_bn(model, self.data.train[0], arch.resolution)
            inherited, _ = evaluate(model, self.data.val, arch.resolution)
            m: dict[str, Any] = {"inherited_val_acc": inherited, **self.space.cost(genome),
                                 "model_bits": model_bits(model, arch.quant), "resolution": arch.resolution}
            if self.latency is not None:  # latency does not depend on the weights' values
                m.update(self.latency.measure(model, arch.resolution))
            on_epoch = None
            if report is not None:
                def on_epoch(epoch, net):
                    with core_lock().shared():  # the report below may block: not under the lock
                        acc, loss = evaluate(net, self.data.val, arch.resolution)
                    net.train()
                    report({**m, "val_acc": acc, "val_loss": loss, "epoch": epoch})
            t1 = time.time()
            fine_tune(model, self.data, arch.resolution, self.finetune, seed, arch.quant, on_epoch=on_epoch,
                      skip_last_epoch_callback=True)
            train_time = time.time() - t1
            val_acc, val_loss = evaluate(model, self.data.val, arch.resolution)
            test_acc, test_loss = evaluate(model, self.data.test, arch.resolution)
            if not all(math.isfinite(v) for v in (val_loss, test_loss)):
                raise FloatingPointError(f"non-finite loss (val {val_loss}, test {test_loss})")
            m.update({"val_acc": val_acc, "val_loss": val_loss, "test_acc": test_acc, "test_loss": test_loss,
                      "train_time_s": train_time})
            m["wall_time_s"] = time.time() - t0
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return EvalResult(gid, "complete", m, state_dict=state)
        except Exception as e:  # a candidate that raises becomes a failed trial; the run goes on
            log.warning("trial %s failed: %s", gid, e)
            log.debug("%s", traceback.format_exc())
            return EvalResult(gid, "failed", {"wall_time_s": time.time() - t0}, reason=f"{type(e).__name__}: {e}")


NB201_ACC = {"cifar10": "c10_test", "cifar100": "c100_test", "imagenet16": "in16_test"}


class TableEvaluator:
    """NAS-Bench-201 lookup: test accuracies and measured latencies, no training."""

    kind = "table"

    def __init__(self, space: Space, path: str, dataset: str = "cifar10", device: str = "raspi4",
                 config_file: str | None = None):
        if space.family.kind != "cell":
            raise ConfigError(config_file, "evaluator.kind", f"the table evaluator needs a cell space, {space.name!r} is {space.family.kind}")
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(config_file, "evaluator.table", f"table {str(p)!r} does not exist")
        if dataset not in NB201_ACC:
            raise ConfigError(config_file, "evaluator.dataset", f"unknown dataset {dataset!r}; expected one of {', '.join(NB201_ACC)}")
        with open(p, newline="") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            if "arch_str" not in cols:
                raise ConfigError(config_file, "evaluator.table", f"{str(p)!r} has no arch_str column")
            lat_col = f"lat_{device}"
            if lat_col not in cols:
                devs = sorted(c[4:] for c in cols if c.startswith("lat_"))
                raise ConfigError(config_file, "evaluator.device", f"unknown device {device!r}; the table has {', '.join(devs)}")
            keep = ["c10_test", "c100_test", "in16_test", lat_col]
            self.rows = {r["arch_str"]: {k: float(r[k]) for k in keep} for r in reader}
        self.space, self.acc_col, self.lat_col, self.device = space, NB201_ACC[dataset], lat_col, device
        self.supernet_info = {}
        self._cost: dict[str, dict] = {}

    metrics = ("val_acc", "test_acc", "c10_test", "c100_test", "in16_test", "latency_ms", "flops", "params")

    def setup(self, progress=None, supernet_state=None) -> None:
        pass

    def evaluate(self, genome: Genome, seed: int = 0) -> EvalResult:
        gid = self.space.genome_id(genome)
        arch = self.space.arch(genome)
        key = arch_str(arch.ops)
        row = self.rows.get(key)
        if row is None:
            return EvalResult(gid, "failed", reason=f"{key} is not in the table")
        if gid not in self._cost:
            self._cost[gid] = self.space.cost(genome)
        acc = row[self.acc_col] / 100.0
        m = {"val_acc": acc, "test_acc": acc, "c10_test": row["c10_test"], "c100_test": row["c100_test"],
             "in16_test": row["in16_test"], "latency_ms": row[self.lat_col], **self._cost[gid]}
        return EvalResult(gid, "complete", m)
