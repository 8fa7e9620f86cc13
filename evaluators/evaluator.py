"""The fine-tuning evaluator: inherit from the pre-trained supernet, fine-tune, score, time."""

from __future__ import annotations

import logging
import math
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from evaluators import cache as supernet_cache
from evaluators.base import (
    EvalResult,
    Evaluator,
    TrainedModel,
    check_device,
    detached_copy,
    latency_provider,
    resolve_device,
)
from evaluators.data import Splits, load_dataset
from evaluators.train import TrainRecipe, evaluate, fine_tune, recalibrate_bn
from kernels.cores import core_lock
from spaces.dims import bits_of
from spaces.errors import ConfigError
from spaces.layers import weight_set_group
from spaces.space import Genome, Space

log = logging.getLogger(__name__)


def low_bit_bits(model: torch.nn.Module, quant: dict[str, str]) -> int:
    """Bits of the low-bit conv weights as the ONNX export stores them (`kernels.export`): per
    conv whose set is not float, its n weights as b-bit codes (b = `bits_of`: ceil(log2 of the
    set's size)), 8 / b codes per byte and the tensor padded to whole bytes (8 * ceil(n b / 8)),
    plus one float32 scale per output channel. The exported file's code and scale initializers
    hold exactly these bits."""
    total = 0
    for m in model.modules():
        ws = quant.get(weight_set_group(m), "float") if weight_set_group(m) is not None else None
        if ws is not None and ws != "float":
            b = int(bits_of(ws))
            total += 8 * math.ceil(m.weight.numel() * b / 8) + 32 * m.weight.shape[0]
    return total


def model_bits(model: torch.nn.Module, quant: dict[str, str]) -> int:
    """Size of the parameters in bits: the low-bit conv weights as stored (`low_bit_bits`:
    packed codes plus a float32 scale per output channel), every other parameter (float convs,
    conv biases, batch norm, the classifier) at 32 bits."""
    total = low_bit_bits(model, quant)
    for m in model.modules():
        ws = quant.get(weight_set_group(m), "float") if weight_set_group(m) is not None else None
        for name, p in m.named_parameters(recurse=False):
            if not (name == "weight" and ws is not None and ws != "float"):
                total += 32 * p.numel()
    return total


class TrainEvaluator(Evaluator):
    """Fine-tuning evaluator over a pre-trained, cached supernet."""

    kind = "train"
    fine_tunes = True
    provides_model = True
    METRICS = (
        "val_acc",
        "val_loss",
        "test_acc",
        "test_loss",
        "inherited_val_acc",
        "flops",
        "params",
        "model_bits",
        "latency_ms",
        "latency_spread_ms",
        "train_time_s",
        "wall_time_s",
    )

    def __init__(
        self,
        space: Space,
        dataset_cfg,
        finetune: TrainRecipe,
        pretrain: TrainRecipe,
        sandwich: int,
        seed: int,
        cache_dir: Path,
        latency=None,
        config_file: str | None = None,
        device: str = "cpu",
    ):
        self.device_request = device  # resolved where training runs (setup)
        self.base_space, self.dataset_cfg, self.finetune, self.pretrain = (
            space,
            dataset_cfg,
            finetune,
            pretrain,
        )
        self.sandwich, self.seed, self.cache_dir, self.latency = (
            sandwich,
            seed,
            Path(cache_dir),
            latency,
        )
        self.config_file = config_file
        if dataset_cfg.name != "digits":  # fail before any work starts, not after pre-training
            if not dataset_cfg.path:
                raise ConfigError(
                    config_file, "dataset.path", f"dataset {dataset_cfg.name!r} needs a path"
                )
            if not Path(dataset_cfg.path).expanduser().exists():
                raise ConfigError(
                    config_file, "dataset.path", f"{dataset_cfg.path!r} does not exist"
                )
        self.data: Splits | None = None
        self.supernet = None
        self.space = space
        self.supernet_info: dict = {}

    @classmethod
    def from_config(cls, cfg, space: Space, file: str | None) -> TrainEvaluator:
        if space.family.task != "classify":
            raise ConfigError(
                file,
                "evaluator.kind",
                f"space {space.name!r} is no classifier (family "
                f"{space.family.kind!r}); use an evaluator of its task",
            )
        latency = latency_provider(cfg, file)
        device = check_device(cfg.device, file, on_cluster=bool(cfg.address))
        augment = cfg.dataset.augment
        if augment == "auto":
            augment = "none" if cfg.dataset.name == "digits" else "crop-flip"
        run = {"augment": augment, "amp": cfg.amp, "channels_last": space.family.channels_last}
        ft = TrainRecipe(**cfg.evaluator.finetune.model_dump(), **run)
        pt = cfg.pretrain.model_dump()
        sandwich = pt.pop("sandwich")
        return cls(
            space,
            cfg.dataset,
            ft,
            TrainRecipe(**pt, **run),
            sandwich,
            cfg.seed,
            cfg.cache_dir(),
            latency,
            file,
            device,
        )

    @property
    def metrics(self) -> tuple[str, ...]:
        if self.latency is None:
            return tuple(m for m in self.METRICS if not m.startswith("latency_"))
        return self.METRICS

    def setup(self, progress=None, supernet_state: dict | None = None) -> None:
        """Load the data and the pre-trained supernet: from `supernet_state` (a worker gets the
        driver's), else from the cache, training and caching it if needed."""
        if self.supernet is not None:
            return
        self.finetune.device = self.pretrain.device = resolve_device(self.device_request)
        fam = self.base_space.family
        self.data = load_dataset(
            self.dataset_cfg, fam.spec.resolution, self.seed, self.config_file, fam.in_channels
        )
        self.space = self.base_space.with_classes(self.data.num_classes)
        if supernet_state is not None:
            self.supernet = self.space.supernet(self.seed)
            self.supernet.load_state_dict(supernet_state)
        else:
            with self._beside_setup():
                self.supernet, self.supernet_info = supernet_cache.get_or_train(
                    self.space,
                    self.data,
                    self.pretrain,
                    self.sandwich,
                    self.seed,
                    self.cache_dir,
                    progress,
                )
        self.supernet.eval()

    def supernet_state(self) -> dict:
        """The pre-trained weights, for workers that cannot read this machine's cache."""
        self.setup()
        return {k: v.detach().clone() for k, v in self.supernet.state_dict().items()}

    def detached(self) -> TrainEvaluator:
        """This evaluator without its data and supernet: what is shipped to a worker."""
        c = detached_copy(self, ("data", "supernet"))
        c.space = self.base_space
        return c

    def worker_key(self) -> tuple:
        return (type(self).__name__, self.seed, self.base_space.name)

    def wants_gpu(self) -> bool:
        req = self.device_request
        return req.startswith("cuda") or (req == "auto" and torch.cuda.is_available())

    def data_info(self) -> dict[str, Any]:
        return self.data.describe() if self.data is not None else {}

    def base_point(self) -> dict[str, Any]:
        return (
            {"val_acc": self.supernet_info["full_val_acc"]}
            if "full_val_acc" in self.supernet_info
            else {}
        )

    def trained_model(self) -> TrainedModel:
        self.setup()
        return TrainedModel(self.space, self.supernet, self.data, self.seed, self.finetune.device)

    def evaluate(self, genome: Genome, seed: int = 0, report=None) -> EvalResult:
        """Inherit, fine-tune, score. `report(metrics)`, if given, hears the validation metrics
        after every fine-tuning epoch but the last (with cost and latency, which do not change),
        so a scheduler such as ASHA can stop the candidate early."""
        self.setup()
        gid = self.space.genome_id(genome)
        t0 = time.time()
        try:
            arch, model, m, latency = self._inherit(genome)
            if report is not None:  # every report carries the latency
                m.update(latency())
            curve: list[dict] = []
            on_epoch = self._epoch_reporter(report, m, arch.resolution, curve)
            t1 = time.time()
            fine_tune(
                model,
                self.data,
                arch.resolution,
                self.finetune,
                seed,
                arch.quant,
                on_epoch=on_epoch,
                skip_last_epoch_callback=True,
            )
            m["train_time_s"] = time.time() - t1
            m.update(latency())  # measured meanwhile where a service measures
            m.update(self._score(model, arch.resolution))
            last = curve[-1]["epoch"] + 1 if curve else 1
            curve.append({"epoch": last, "val_acc": m["val_acc"], "val_loss": m["val_loss"]})
            m["wall_time_s"] = time.time() - t0
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            return EvalResult(gid, "complete", m, state_dict=state, curve=curve)
        except ConfigError:  # bad input (an image that does not decode): the run stops, exit 2
            raise
        except Exception as e:  # a candidate that raises becomes a failed trial; the run goes on
            log.warning("trial %s failed: %s", gid, e)
            log.debug("%s", traceback.format_exc())
            reason = f"{type(e).__name__}: {e}"
            return EvalResult(gid, "failed", {"wall_time_s": time.time() - t0}, reason=reason)

    def _inherit(self, genome: Genome):
        """The sub-network with inherited weights and recalibrated batch norm, what is known of it
        before training (inherited accuracy, cost, size), and a call giving its latency (which
        does not depend on the weights' values): started now, so that a latency service compiles
        and times the candidate while this worker fine-tunes it."""
        arch = self.space.arch(genome)
        model = self.space.build(genome, self.supernet)
        m: dict[str, Any] = {
            **self.space.cost(genome),
            "model_bits": model_bits(model, arch.quant),
            "resolution": arch.resolution,
        }
        latency = dict
        if self.latency is not None:  # on this machine's CPU, whatever device trains
            latency = self.latency.measure_later(model, arch.resolution)
        model.to(self.finetune.device)
        recalibrate_bn(model, self.data.train, arch.resolution)
        m["inherited_val_acc"] = evaluate(model, self.data.val, arch.resolution)[0]
        return arch, model, m, latency

    def _epoch_reporter(self, report, known: dict, resolution: int, curve: list[dict]):
        """The fine-tuning's epoch callback: validation metrics after each epoch but the last,
        kept in `curve` (the trial's learning curve) and told to `report` if given; it evaluates
        under the core lock and reports outside it (a report may block)."""

        def on_epoch(epoch, net):
            with core_lock().shared():
                acc, loss = evaluate(net, self.data.val, resolution)
            net.train()
            curve.append({"epoch": epoch, "val_acc": acc, "val_loss": loss})
            if report is not None:
                report({**known, "val_acc": acc, "val_loss": loss, "epoch": epoch})

        return on_epoch

    def _score(self, model, resolution: int) -> dict[str, float]:
        val_acc, val_loss = evaluate(model, self.data.val, resolution)
        test_acc, test_loss = evaluate(model, self.data.test, resolution)
        if not all(math.isfinite(v) for v in (val_loss, test_loss)):
            raise FloatingPointError(f"non-finite loss (val {val_loss}, test {test_loss})")
        return {
            "val_acc": val_acc,
            "val_loss": val_loss,
            "test_acc": test_acc,
            "test_loss": test_loss,
        }
