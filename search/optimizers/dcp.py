"""DCP: discrimination-aware channel pruning (Zhuang et al., NeurIPS 2018; journal version with
the adaptive stopping rule) on the `resnet` family.

DCP needs gradients, so it declares `needs_model` and the run hands it the trained network and
the data (`prepare(model)`, after the supernet is ready); the training and the layer surgery
are `evaluators.dcp`'s. It prunes the full network, then asks for the one genome it found,
which the evaluator fine-tunes and scores like any other trial. What it does, stage by stage
(P = the family's stages):

1. A discrimination-aware loss at the end of stage p: batch norm, ReLU, global pooling and a
   linear classifier on the stage's output. The pruned model and that head are fine-tuned with
   L_f + L_S^p (the final and the stage's cross-entropy), `stage_epochs` epochs.
2. For each block of the stage, the channels entering its second conv (the block's inner
   channel group) are chosen greedily: starting from none, add the channel whose weights have
   the largest gradient norm of L = L_M + lambda * L_S^p (L_M: mean squared distance between the
   conv's output and the baseline network's), re-optimise the selected weights by SGD
   (`inner_steps`), and stop when |L(W^{t-1}) - L(W^t)| / L(W^0) <= epsilon (the adaptive rule
   of the journal version) or at `max_keep` of the channels.

DKP (`granularity: kernel`, the journal version's kernel pruning) makes the same greedy choice
over the conv's single kernels W[o, i, :, :] (input-output channel pairs) instead of its input
channels: the kernels are ranked by the norm of their gradient of the same L, the selected ones
re-optimised after each addition, and the same adaptive rule (or `max_keep` of the kernels)
stops. One kernel per step over cout x cin pairs would take thousands of steps, so each step adds
the top `kernel_batch` fraction of the layer's kernels (2.5 %: at most 40 steps a layer); the rule
compares whole steps, so at one epsilon a larger batch keeps more kernels. Input
channels none of whose kernels are kept leave the genome's mask (a physically smaller network,
as DCP); the pruned kernels of the channels that stay are a `kernel_mask` buffer on the conv
(spaces.layers.GConv2d), which the forward pass applies (they get no gradient, so fine-tuning
keeps them at zero), which the builder slices with the weight, and which every state dict
carries (the supernet, the trial's weights, exports). `dcp.json` gives the genome's dense cost
(`cost`, as `space.cost` and the trial's `flops` count it) and its kernel-sparse cost
(`sparse_cost`, the pruned kernels' weights and multiply-adds not counted).

The pruned model's weights (the re-optimised convs and the stage fine-tuning) are written into
the run's supernet in memory, so the trial inherits exactly DCP's weights; they are also saved
as `dcp_supernet.pt` in the run folder (a resumed run reloads them). `dcp.json` records every
layer's selection: channels kept, the loss curve, why it stopped. The residual-tied stage
groups are not pruned (as in the paper's ResNets)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from evaluators.base import TrainedModel
from evaluators.dcp import DCPSettings, prune
from search.optimizers.base import Optimizer
from spaces.errors import ConfigError

log = logging.getLogger(__name__)

STATE_FILE = "dcp_supernet.pt"


class DCPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epsilon: float = Field(
        0.01, gt=0, description="adaptive stopping: |L(W^{t-1}) - L(W^t)| / L(W^0) <= epsilon"
    )
    max_keep: float = Field(
        1.0, gt=0, le=1, description="at most this fraction of a layer's channels"
    )
    discrimination_weight: float = Field(1.0, ge=0, description="lambda in L = L_M + lambda * L_S")
    stage_epochs: float = Field(
        1.0,
        ge=0,
        description="fine-tuning with the stage's discrimination loss before its selection",
    )
    stage_lr: float = Field(0.01, gt=0)
    head_epochs: int = Field(
        10, ge=0, description="passes training each stage's classifier alone, on cached features"
    )
    head_images: int = Field(2048, ge=16, description="training images those passes use")
    select_images: int = Field(
        256, ge=8, description="training images the selection's losses are computed on"
    )
    inner_steps: int = Field(
        3,
        ge=0,
        description="Adam steps re-optimising the selected channels' weights after each addition",
    )
    inner_lr: float = Field(0.005, gt=0, description="Adam's learning rate for the re-optimisation")
    inner_retries: int = Field(
        3,
        ge=0,
        description="times a re-optimisation that lowers nothing is retried "
        "with a 4x smaller learning rate",
    )
    batch_size: int = Field(128, ge=1)
    granularity: Literal["channel", "kernel"] = Field(
        "channel",
        description="channel: DCP; kernel: DKP, the same selection over single kernels W[o, i]",
    )
    kernel_batch: float = Field(
        0.025,
        gt=0,
        le=1,
        description="kernel granularity: the fraction of a layer's "
        "cout x cin kernels added per greedy step (at least one): at most 1 / kernel_batch steps",
    )


class DCP(Optimizer):
    """Prune the full network with DCP once, then ask for the result."""

    name = "dcp"
    Options = DCPOptions
    needs_model = True

    @classmethod
    def check_space(cls, space, file):
        if space.family.kind != "resnet":
            raise ConfigError(
                file,
                "optimizer.name",
                f"dcp prunes the resnet family's blocks; space {space.name!r} is "
                f"{space.family.kind}",
            )
        inner = [n for n in space.dims if n.startswith("mask.") and ".b" in n]
        if not inner:
            raise ConfigError(
                file,
                "optimizer.name",
                "dcp needs filter masks on the blocks' inner groups (mask per: group) in space "
                f"{space.name!r}",
            )

    @classmethod
    def check_options(cls, space, options, file):
        if "kernel_batch" in options.model_fields_set and options.granularity != "kernel":
            raise ConfigError(
                file, "optimizer.options.kernel_batch", "applies to granularity: kernel (DKP) only"
            )

    def __init__(self, space, objectives, constraints, seed, options=None):
        super().__init__(space, objectives, constraints, seed, options)
        self.check_space(space, None)
        self.result: dict[str, Any] | None = None
        self.genome = None
        self.run_dir: Path | None = None
        self.asked = False

    def attach(self, run_dir) -> None:
        self.run_dir = Path(run_dir)

    def prepare(self, model: TrainedModel) -> None:
        """Run DCP on the pre-trained network and data (or reload a finished run's result); the
        pruned weights go into its supernet."""
        space, sup = model.space, model.supernet
        saved = self.run_dir / STATE_FILE if self.run_dir else None
        if saved is not None and saved.exists() and (self.run_dir / "dcp.json").exists():
            sup.load_state_dict(torch.load(saved, weights_only=True))
            self.result = json.loads((self.run_dir / "dcp.json").read_text())
            self.genome = space.from_json(self.result["genome"])
            log.info("dcp: reloaded the pruned network from %s", saved)
            return
        self.genome, self.result = prune(model, DCPSettings(**self.options.model_dump()))
        if self.run_dir is not None:
            torch.save(sup.state_dict(), saved)
            (self.run_dir / "dcp.json").write_text(json.dumps(self.result, indent=2))

    def ask(self):
        if self.genome is None:
            raise RuntimeError("dcp: prepare(model) was not called; the run calls it before asking")
        if self.asked or self.space.genome_id(self.genome) in self.seen:
            return None
        self.asked = True
        self.seen.add(self.space.genome_id(self.genome))
        return self.genome

    def tell(self, record) -> None:
        super().tell(record)
        self.seen.add(record.genome_id)

    def finish(self, run_dir) -> None:
        if self.result is not None:
            (Path(run_dir) / "dcp.json").write_text(json.dumps(self.result, indent=2))
