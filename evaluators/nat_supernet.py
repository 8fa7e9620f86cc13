"""NAT's shared weights (Neural Architecture Transformer, NeurIPS 2019; the authors'
`train_search.py` and `search_model.py`): a cell super-network that holds every op of every
edge, trained on sampled cells (and their sampled transformations), and the accuracy of any
cell measured with those weights on validation images, the reward NAT's policy learns from.

The super-network is the space's own cell network, usually with fewer cells per stage than the
space's networks (the authors search with 8 layers and evaluate with 20): only the ops of the
cell being run are used, so one batch trains the shared weights of that cell alone. Batch norm
always normalises with the batch's own statistics (as weight-sharing searches do: running
statistics would mix every cell ever sampled). Everything is seeded: the batch order by the
seed, the cells by the caller."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evaluators.base import resolve_device
from evaluators.data import Splits
from kernels.cores import core_lock
from spaces.families.cell import Cell
from spaces.space import Space

Ops = dict[str, str]


class SharedCellWeights:
    """The super-network, its SGD (cosine from `lr` to `lr_min` over `total_steps`) and the
    seeded streams of training and validation batches."""

    def __init__(
        self,
        space: Space,
        data: Splits,
        *,
        total_steps: int,
        cells: int = 1,
        channels: int | None = None,
        seed: int = 0,
        lr: float = 0.01,
        lr_min: float = 0.001,
        momentum: float = 0.9,
        weight_decay: float = 3e-4,
        batch_size: int = 64,
        reward_images: int = 64,
        grad_clip: float = 5.0,
        augment: str = "crop-flip",
        device: str = "auto",
    ):
        spec = space.family.spec.model_copy(
            update={
                "cells": cells,
                "channels": channels or space.family.spec.channels,
                "num_classes": data.num_classes,
            }
        )
        fam = type(space.family)(spec)
        fam.supernet_ops = dict(space.family.supernet_ops)
        self.arch = fam.resolve(list(space.dims.values()), space.canonical(space.full()))
        self.device = torch.device(resolve_device(device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = fam.module(self.arch, supernet=True).to(self.device)
        self.net.train()
        self.cells = [m for m in self.net.modules() if isinstance(m, Cell)]
        self.data, self.seed = data, seed
        self.total_steps, self.steps = max(1, total_steps), 0
        self.lr, self.lr_min, self.grad_clip = lr, lr_min, grad_clip
        self.batch_size, self.reward_images, self.augment = batch_size, reward_images, augment
        self.opt = torch.optim.SGD(
            self.net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        self._train: Iterator | None = None
        self._val: Iterator | None = None
        self.val_batches = 0  # validation batches drawn: where the stream stands

    # --- batches --------------------------------------------------------------------------------
    def _stream(self, split, batch_size: int, tag: int, augment: str, skip: int = 0) -> Iterator:
        """Endless seeded passes over a split; the first `skip` batches are drawn and dropped
        (a resumed run goes on where it stopped)."""
        epoch, n = 0, 0
        while True:
            gen = torch.Generator().manual_seed(self.seed * 1000 + tag * 100_000 + epoch)
            for xb, yb in split.batches(
                batch_size, shuffle=True, gen=gen, augment=augment, drop_last=True
            ):
                n += 1
                if n > skip:
                    yield xb.to(self.device), yb.to(self.device)
            epoch += 1

    def train_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._train is None:
            self._train = self._stream(
                self.data.train, self.batch_size, 1, self.augment, skip=self.steps
            )
        return next(self._train)

    def val_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next validation batch (`reward_images` images, not augmented)."""
        if self._val is None:
            self._val = self._stream(
                self.data.val, self.reward_images, 2, "none", skip=self.val_batches
            )
        self.val_batches += 1
        return next(self._val)

    # --- the network ----------------------------------------------------------------------------
    def use(self, ops: Ops) -> None:
        """Run `ops` in every cell of the super-network."""
        for c in self.cells:
            c.ops = dict(ops)

    def forward(self, ops: Ops, x: torch.Tensor) -> torch.Tensor:
        self.use(ops)
        return self.net(x)

    def train_step(self, cells: list[Ops]) -> float:
        """One SGD step on the next training batch: the mean cross-entropy of `cells` (each run
        on the whole batch, gradients summed into the shared weights they use). Returns it."""
        x, y = self.train_batch()
        lr = self.lr_min + 0.5 * (self.lr - self.lr_min) * (
            1 + math.cos(math.pi * min(self.steps, self.total_steps) / self.total_steps)
        )
        for g in self.opt.param_groups:
            g["lr"] = lr
        with core_lock().shared():
            self.opt.zero_grad(set_to_none=True)
            total = 0.0
            for ops in cells:
                loss = F.cross_entropy(self.forward(ops, x), y) / len(cells)
                loss.backward()
                total += float(loss.detach())
            nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
            self.opt.step()
        self.steps += 1
        return total

    @torch.no_grad()
    def accuracy(self, ops: Ops, x: torch.Tensor, y: torch.Tensor, chunk: int = 256) -> float:
        """Top-1 accuracy (percent) of `ops` with the shared weights on (x, y)."""
        correct = 0
        with core_lock().shared():
            for i in range(0, len(x), chunk):
                logits = self.forward(ops, x[i : i + chunk])
                correct += int((logits.argmax(1) == y[i : i + chunk]).sum())
        return 100.0 * correct / max(1, len(x))

    def images(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` validation images in memory (a seeded choice): what inference selects on."""
        x, y = self.data.val.take(n, seed=seed)
        return x.to(self.device), y.to(self.device)

    def fingerprint(self) -> float:
        """A number that changes whenever the shared weights do (tests, logs)."""
        return float(sum(p.detach().double().abs().sum() for p in self.net.parameters()))

    # --- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "opt": self.opt.state_dict(),
            "steps": self.steps,
            "val_batches": self.val_batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.steps, self.val_batches = int(state["steps"]), int(state["val_batches"])
        self._train = self._val = None  # the streams go on from the restored counts
