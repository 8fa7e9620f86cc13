"""NAT (Neural Architecture Transformer, NeurIPS 2019) as an optimiser: train the graph-
convolution agent of `agents.nat` on cells of the space, then transform given cells.

Every metric the agent learns from comes through ask/tell: an episode asks for its original
cell and for the transformation the policy sampled, and its reward is
metric(transformed) - metric(original) (less a penalty for breaking the run's constraints).
Results are cached by genome id, so no cell is evaluated twice and a transformation that
changes nothing costs nothing. Everything is seeded: episode k of batch b is sampled from the
policy after b updates with a generator seeded by (seed, b), so a resumed run rebuilds the
same agent from its stored trials (or reloads it from the checkpoint) and goes on."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from agents.nat.cell import (
    TRANSITIONS,
    cell_ops,
    check_cell_space,
    guarded_transform,
    nat_reward,
    observe,
    relative_violation,
)
from agents.nat.policy import NATAgent
from evaluators.data import load_dataset
from evaluators.nat_supernet import SharedCellWeights
from search.config import DatasetCfg
from search.optimizers.base import Optimizer
from search.records import TrialRecord
from search.seeding import load_genomes
from spaces.errors import ConfigError
from spaces.families.cell import EDGES, arch_str
from spaces.space import Genome

log = logging.getLogger(__name__)

POLICY_FILE = "nat_policy.pt"
SUPERNET_FILE = "nat_supernet.pt"
CIFAR10_ZIP = "../shared/data/cifar10_jpg.zip"


class NATData(DatasetCfg):
    """The images of the shared weights: a dataset as a run names one, by default CIFAR-10's
    training images, 40 % for the weights and 60 % for the rewards (the authors' split)."""

    name: Literal["digits", "imagefolder", "cifar10"] = "imagefolder"
    path: str | None = CIFAR10_ZIP
    val_fraction: float = Field(0.6, gt=0, lt=0.9)


class SupernetOptions(BaseModel):
    """The shared weights and the alternation (`reward: supernet`). Sources: the authors'
    `train_search.py` (SGD lr 0.01 cosine to 0.001, momentum 0.9, weight decay 3e-4, batch 64,
    gradient clip 5, 40 % of CIFAR-10's training images for the weights and 60 % for the
    policy, 8 layers) and `search_model.py` (one validation batch per policy episode, reward =
    accuracy of the transformed cell minus the original's); where these defaults differ, the
    README says why."""

    model_config = ConfigDict(extra="forbid")
    cells: int = Field(1, ge=1, description="cells per stage of the super-network")
    channels: int | None = Field(
        None, ge=1, description="its first stage's channels (default: the space's)"
    )
    epochs: int = Field(12, ge=1, description="alternations: weight steps, then policy updates")
    steps: int = Field(100, ge=1, description="SGD steps on the shared weights per epoch")
    updates: int = Field(20, ge=0, description="REINFORCE updates of the policy per epoch")
    lr: float = Field(0.01, gt=0, description="the shared weights' SGD learning rate")
    lr_min: float = Field(0.001, ge=0, description="where its cosine schedule ends")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(3e-4, ge=0)
    batch_size: int = Field(64, ge=1, description="training images per weight step")
    grad_clip: float = Field(5.0, gt=0)
    train_transformed: bool = Field(
        True,
        description="each weight step also trains the policy's transformation of its cell, "
        "not only the sampled cell",
    )
    reward_images: int = Field(64, ge=1, description="validation images per episode's reward")
    samples: int = Field(
        8, ge=0, description="inference: sampled transformations per cell, besides the greedy one"
    )
    select_images: int = Field(
        500, ge=1, description="inference: validation images the best transformation is picked on"
    )
    augment: Literal["none", "crop-flip"] = "crop-flip"
    device: str = Field("auto", description="auto: CUDA when present, else the CPU")


class NATOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reward: Literal["supernet", "evaluator"] = Field(
        "supernet",
        description="supernet: the paper's shared weights, trained alternately with the policy "
        "on `data`, give the rewards; evaluator: the run's evaluator scores every cell "
        "(the table: a fast surrogate)",
    )
    data: NATData = Field(
        NATData(),
        description="reward: supernet: the images the shared weights train on (the training "
        "split) and the rewards are measured on (the validation split)",
    )
    supernet: SupernetOptions = SupernetOptions()
    reward_metric: str | None = Field(
        None,
        description="reward: evaluator: the metric the agent learns from (default: the run's "
        "objective)",
    )
    judge_metric: str = Field(
        "test_acc",
        description="the metric the transformed cells are judged by in nat.json (never the one "
        "the agent learned from, when the evaluator reports it)",
    )
    train_archs: int = Field(
        200, ge=0, description="cells the agent trains on (sampled, or the first of train_from)"
    )
    epochs: int = Field(10, ge=1, description="reward: evaluator: passes over the training cells")
    batch: int = Field(10, ge=1, description="cells per REINFORCE update")
    train_from: str | None = Field(None, description="train on the genomes of a file or run folder")
    transform: str | None = Field(
        None,
        description="transform the genomes of a file or run folder "
        "(default: holdout sampled cells)",
    )
    transform_top: int | None = Field(
        None, ge=1, description="only the first N genomes of `transform` (a run folder: its best)"
    )
    holdout: int = Field(
        20,
        ge=0,
        description="sampled cells, none of them trained on, to transform when `transform` "
        "is not given",
    )
    init_policy: str | None = Field(
        None, description="start from a saved policy (a nat_policy.pt or a run folder holding one)"
    )
    checkpoint: str | None = Field(
        None, description="also save the agent here after every update, and resume from it"
    )
    lr: float | None = Field(
        None,
        gt=0,
        description="the policy's Adam learning rate (default: the paper's 3e-4 with "
        "reward: evaluator, 3e-3 with reward: supernet, whose CPU budget allows ~100x "
        "fewer updates)",
    )
    baseline_decay: float = Field(
        0.99, ge=0, lt=1, description="moving-average baseline decay (the paper's)"
    )
    entropy_weight: float = Field(0.003, ge=0, description="entropy bonus (the paper's)")
    hidden: int = Field(64, ge=1, description="GCN width")
    penalty: float = Field(
        1.0,
        ge=0,
        description="reward penalty, in the objective's units, per unit of relative "
        "constraint violation",
    )


@dataclass
class Episode:
    """One cell and the transformation asked for it; `version` is the policy update it was
    sampled after."""

    index: int  # into the training pool or the transform targets
    arch: Genome
    gid: str
    action: list[int]
    target: Genome
    tgid: str
    version: int
    kind: str = "greedy"  # or "best": the best of the sampled ones on validation images


def _seed(*parts: Any) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def _policy_path(source: str) -> Path:
    p = Path(source).expanduser()
    return p / POLICY_FILE if p.is_dir() else p


class NAT(Optimizer):
    """Train NAT's agent on cells of the space by REINFORCE, then ask for the greedy
    transformation of each cell to transform; writes nat.json and nat_policy.pt."""

    name = "nat"
    Options = NATOptions

    @classmethod
    def check_space(cls, space, file):
        try:
            check_cell_space(space)
        except ValueError as e:
            raise ConfigError(file, "optimizer.name", str(e)) from None

    @classmethod
    def check_options(cls, space, options, file):
        for field in ("train_from", "transform"):
            if getattr(options, field):
                load_genomes(getattr(options, field), space, file, f"optimizer.options.{field}")
        if options.reward == "supernet":
            d = options.data
            if d.name != "digits" and not (d.path and Path(d.path).expanduser().exists()):
                raise ConfigError(
                    file,
                    "optimizer.options.data.path",
                    f"{d.path!r} does not exist: NAT trains its shared weights on these images "
                    "(set optimizer.options.data, or reward: evaluator to learn from the run's "
                    "evaluator)",
                )
        if options.init_policy and not _policy_path(options.init_policy).is_file():
            raise ConfigError(
                file,
                "optimizer.options.init_policy",
                f"{options.init_policy!r} holds no saved policy",
            )

    def __init__(self, space, objectives, constraints, seed, options=None):
        super().__init__(space, objectives, constraints, seed, options)
        self.check_space(space, None)
        o = self.options
        self.supernet_mode = o.reward == "supernet"
        self.metric, self.sign = objectives[0].metric, self.signs[0]
        if o.reward_metric and o.reward_metric != self.metric:
            self.metric, self.sign = o.reward_metric, 1.0
        self.run_dir: Path | None = None
        # the cells: fixed up front and disjoint, so a resume sees the same ones
        given = None
        if o.transform:
            given = load_genomes(o.transform, space, None, "optimizer.options.transform")[
                : o.transform_top
            ]
        if self.supernet_mode:  # the policy trains on cells sampled afresh, never a target
            self.pool = []
        elif o.train_from:
            self.pool = load_genomes(o.train_from, space, None, "optimizer.options.train_from")[
                : o.train_archs
            ]
        else:
            avoid = {space.genome_id(g) for g in given or []}
            self.pool = self._distinct(o.train_archs, avoid)
        self.targets = (
            given
            if given is not None
            else self._distinct(o.holdout, {space.genome_id(g) for g in self.pool})
        )
        self.target_ids = {space.genome_id(g) for g in self.targets}
        per_epoch = math.ceil(len(self.pool) / o.batch) if self.pool else 0
        self.per_epoch, self.n_batches = per_epoch, per_epoch * o.epochs
        start = NATAgent.load(_policy_path(o.init_policy)) if o.init_policy else None
        lr = o.lr or (3e-3 if self.supernet_mode else 3e-4)
        self.agent = NATAgent(
            seed, start.hidden if start else o.hidden, lr, o.baseline_decay, o.entropy_weight
        )
        if start is not None:  # its weights; Adam, the baseline and the count start afresh
            self.agent.load_state_dict(start.state_dict(), policy_only=True)
        elif not self.pool and not self.supernet_mode:
            log.warning(
                "nat: no training cells and no init_policy; the policy transforms untrained"
            )
        # progress
        self.results: dict[str, TrialRecord] = {}
        self.asked: set[str] = set()
        self.batches: dict[int, list[Episode]] = {}
        self.done_batches = 0
        self.transforms: list[Episode] | None = None
        self.curve: list[dict[str, Any]] = []
        self._obs: dict[str, dict[str, np.ndarray]] = {}
        self._prefetch_at = 0
        self._started = False
        # reward: supernet
        self.shared = None  # evaluators.nat_supernet.SharedCellWeights, built on the first ask
        self.sn_epoch = 0
        self.inference: list[dict[str, Any]] | None = None

    # --- set-up --------------------------------------------------------------------------------
    def _distinct(self, n: int, avoid: set[str]) -> list[Genome]:
        out, ids = [], set(avoid)
        for _ in range(50 * n + 100):
            if len(out) >= n:
                break
            g = self.space.sample(self.rng)
            gid = self.space.genome_id(g)
            if gid not in ids:
                ids.add(gid)
                out.append(g)
        if len(out) < n:
            log.warning("nat: the space gave only %d distinct cells of %d asked", len(out), n)
        return out

    def attach(self, run_dir: str | Path) -> None:
        """Name the run folder, so the agent is saved there after every update (and, on resume,
        reloaded from there before the stored trials are replayed into it)."""
        self.run_dir = Path(run_dir)

    def _checkpoints(self) -> list[Path]:
        paths = [Path(self.options.checkpoint).expanduser()] if self.options.checkpoint else []
        if self.run_dir is not None:
            paths.append(self.run_dir / POLICY_FILE)
        return paths

    def fingerprint(self) -> str:
        """What the agent's training depends on: a checkpoint with another is not this run's."""
        opts = self.options.model_dump(
            exclude={"checkpoint", "transform", "transform_top", "holdout"}
        )
        cons = [c.model_dump() for c in self.constraints]
        payload = {
            "seed": self.seed,
            "space": self.space.name,
            "metric": self.metric,
            "sign": self.sign,
            "constraints": cons,
            "options": opts,
            "pool": [self.space.genome_id(g) for g in self.pool],
        }
        if self.supernet_mode:  # its training cells are sampled avoiding the targets
            payload["targets"] = sorted(self.target_ids)
        return hashlib.sha256(
            json.dumps(payload, sort_keys=True, default=str).encode()
        ).hexdigest()[:16]

    def _start(self) -> None:
        """Once, before the first ask: on resume, reload a checkpoint of this training; the
        stored trials (already told) then replay the rest without evaluating anything."""
        if self._started:
            return
        self._started = True
        if self.supernet_mode:
            self._supernet_phase()
            return
        if not self.history:
            return
        for path in self._checkpoints():
            if path.is_file() and self._restore(path):
                log.info("nat: resumed the agent from %s at update %d", path, self.done_batches)
                return

    def _restore(self, path: Path) -> bool:
        try:
            state = torch.load(path, weights_only=True)
        except (OSError, RuntimeError, EOFError) as e:
            log.warning(
                "nat: cannot read checkpoint %s (%s); rebuilding the agent from the trials", path, e
            )
            return False
        nat = state.get("nat", {})
        if (
            nat.get("fingerprint") != self.fingerprint()
            or nat.get("done_batches", 0) > self.n_batches
        ):
            return False
        self.agent.load_state_dict(state["agent"])
        self.done_batches, self.curve = nat["done_batches"], list(nat["curve"])
        self.batches = {
            int(b): [self._episode(self.pool, i, a, v) for i, a, v in eps]
            for b, eps in nat["batches"].items()
        }
        return True

    def _state(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint(),
            "done_batches": self.done_batches,
            "curve": self.curve,
            "batches": {
                str(b): [[e.index, e.action, e.version] for e in eps]
                for b, eps in self.batches.items()
                if b >= self.done_batches
            },
        }

    def save(self, path: str | Path) -> None:
        """The agent and the training progress: `NATAgent.load(path)` gives the policy back."""
        self.agent.save(path, {"nat": self._state()})

    # --- reward: supernet (the paper's alternation of shared weights and policy) ---------------
    def _build_shared(self) -> SharedCellWeights:
        o, sn = self.options, self.options.supernet
        res = self.space.arch(self.space.full()).resolution
        data = load_dataset(o.data, res, self.seed, None)
        same = set(SupernetOptions.model_fields) - {"epochs", "steps", "updates", "samples"}
        same -= {"select_images", "train_transformed"}  # the optimiser's, not the weights'
        return SharedCellWeights(
            self.space,
            data,
            total_steps=sn.epochs * sn.steps,
            seed=self.seed,
            **sn.model_dump(include=same),
        )

    def _supernet_phase(self) -> None:
        """Train the shared weights and the policy alternately (each epoch: `steps` SGD steps on
        cells sampled uniformly and their sampled transformations, then `updates` REINFORCE
        updates whose rewards the shared weights measure on validation images), saving both
        after every epoch; then transform the targets (the greedy transformation and the best of
        `samples` sampled ones on validation images)."""
        sn = self.options.supernet
        self.shared = self._build_shared()
        self._restore_supernet()
        if self.sn_epoch < sn.epochs:
            d = self.shared.data
            log.info(
                "nat: training the shared weights and the policy alternately on %s (%d training, "
                "%d validation images): %d epochs of %d weight steps and %d policy updates%s",
                self.options.data.path or d.name,
                len(d.train),
                len(d.val),
                sn.epochs,
                sn.steps,
                sn.updates,
                f", from epoch {self.sn_epoch}" if self.sn_epoch else "",
            )
        while self.sn_epoch < sn.epochs:
            self._supernet_epoch(self.sn_epoch)
            self.sn_epoch += 1
            self._save_supernet()
        if self.inference is None:
            self.inference = self._infer()
            self._save_supernet()

    def _sample_cell(self, rng: random.Random) -> Genome:
        """A cell sampled uniformly from the space, never one of the targets."""
        for _ in range(10_000):
            g = self.space.sample(rng)
            if self.space.genome_id(g) not in self.target_ids:
                return g
        raise RuntimeError("nat: the space has no cell that is not a target")

    def _weight_cells(self, epoch: int, k: int) -> list[dict[str, str]]:
        """Weight step k of an epoch trains a sampled cell and the policy's sampled
        transformation of it."""
        g = self._sample_cell(random.Random(_seed(self.seed, "w", epoch, k)))
        cells = [cell_ops(self.space, g)]
        if self.options.supernet.train_transformed:
            act = self.agent.act([observe(self.space, g)], seed=_seed(self.seed, "wt", epoch, k))
            t, _ = guarded_transform(self.space, g, act[0])
            if self.space.genome_id(t) != self.space.genome_id(g):
                cells.append(cell_ops(self.space, t))
        return cells

    def rewards(self, cells: list[Genome], actions) -> list[dict[str, float]]:
        """Each cell and its transformation scored by the shared weights on the next validation
        batch (the same batch for both): the reward is the transformed cell's accuracy minus the
        original's, in points, less the constraint penalty."""
        out = []
        for g, a in zip(cells, actions):
            t, _ = guarded_transform(self.space, g, a)
            x, y = self.shared.val_batch()
            ra = self.shared.accuracy(cell_ops(self.space, g), x, y)
            same = self.space.genome_id(t) == self.space.genome_id(g)
            rb = ra if same else self.shared.accuracy(cell_ops(self.space, t), x, y)
            before = {"acc": ra, **self.space.cost(g)}
            after = {"acc": rb, **self.space.cost(t)}
            r = nat_reward(before, after, "acc", 1.0, self.constraints, self.options.penalty)
            out.append({"before": ra, "after": rb, "reward": r})
        return out

    def _policy_update(self, epoch: int, u: int) -> dict[str, float]:
        rng = random.Random(_seed(self.seed, "p", epoch, u))
        cells = [self._sample_cell(rng) for _ in range(self.options.batch)]
        obs = [observe(self.space, g) for g in cells]
        acts = self.agent.act(obs, seed=_seed(self.seed, "pa", epoch, u))
        scored = self.rewards(cells, acts)
        stats = self.agent.update(obs, np.asarray(acts), [r["reward"] for r in scored])
        stats["mean_before"] = statistics.mean(r["before"] for r in scored)
        stats["weights"] = self.shared.fingerprint()
        return stats

    def _supernet_epoch(self, epoch: int) -> None:
        sn = self.options.supernet
        t0 = time.time()
        losses = [self.shared.train_step(self._weight_cells(epoch, k)) for k in range(sn.steps)]
        t1 = time.time()
        updates = [self._policy_update(epoch, u) for u in range(sn.updates)]
        entry: dict[str, Any] = {
            "epoch": epoch,
            "weight_steps": sn.steps,
            "train_loss": round(statistics.mean(losses), 6),
            "weights_s": round(t1 - t0, 2),
            "policy_s": round(time.time() - t1, 2),
            "updates": [{k: round(v, 6) for k, v in u.items()} for u in updates],
        }
        if updates:
            entry["mean_reward"] = round(statistics.mean(u["mean_reward"] for u in updates), 4)
            entry["entropy"] = round(updates[-1]["entropy"], 4)
            entry["mean_acc_sampled"] = round(statistics.mean(u["mean_before"] for u in updates), 3)
        self.curve.append(entry)
        log.info(
            "nat: epoch %d/%d: %d weight steps (loss %.3f, %.0f s), %d policy updates (mean "
            "reward %+.2f points, sampled cells at %.1f %%, %.0f s)",
            epoch + 1,
            sn.epochs,
            sn.steps,
            entry["train_loss"],
            entry["weights_s"],
            len(updates),
            entry.get("mean_reward", float("nan")),
            entry.get("mean_acc_sampled", float("nan")),
            entry["policy_s"],
        )

    def _infer(self) -> list[dict[str, Any]]:
        """Per target: its greedy transformation, and the best of the greedy one and `samples`
        sampled ones by the shared weights' accuracy on `select_images` validation images."""
        sn = self.options.supernet
        t0 = time.time()
        x, y = self.shared.images(sn.select_images, seed=self.seed)
        acc: dict[str, float] = {}

        def score(g: Genome) -> float:
            gid = self.space.genome_id(g)
            if gid not in acc:
                acc[gid] = self.shared.accuracy(cell_ops(self.space, g), x, y)
            return acc[gid]

        rows = []
        for i, g in enumerate(self.targets):
            obs = observe(self.space, g)
            cands = [self.agent.act([obs], greedy=True)[0]]
            if sn.samples:
                cands += list(self.agent.act([obs] * sn.samples, seed=_seed(self.seed, "infer", i)))
            cells = [guarded_transform(self.space, g, a)[0] for a in cands]
            scores = [score(c) for c in cells]
            best = int(np.argmax(scores))  # the first best: the greedy one wins a tie
            rows.append(
                {
                    "original_acc": score(g),
                    "greedy": [int(v) for v in cands[0]],
                    "greedy_acc": scores[0],
                    "best": [int(v) for v in cands[best]],
                    "best_acc": scores[best],
                    "distinct": len({self.space.genome_id(c) for c in cells}),
                }
            )
        log.info(
            "nat: transformed %d cells (greedy, and the best of %d samples on %d validation "
            "images) in %.0f s",
            len(rows),
            sn.samples,
            len(y),
            time.time() - t0,
        )
        return rows

    def _save_supernet(self) -> None:
        if self.run_dir is None:
            return
        state = {
            "fingerprint": self.fingerprint(),
            "epoch": self.sn_epoch,
            "curve": self.curve,
            "shared": self.shared.state_dict(),
            "inference": self.inference,
        }
        self.agent.save(self.run_dir / SUPERNET_FILE, {"nat": state})

    def _restore_supernet(self) -> None:
        path = self.run_dir / SUPERNET_FILE if self.run_dir is not None else None
        if path is None or not path.is_file():
            return
        try:
            state = torch.load(path, weights_only=True)
        except (OSError, RuntimeError, EOFError) as e:
            log.warning("nat: cannot read %s (%s); training afresh", path, e)
            return
        nat = state.get("nat", {})
        if nat.get("fingerprint") != self.fingerprint():
            log.warning("nat: %s is another training's (other options); training afresh", path)
            return
        self.agent.load_state_dict(state["agent"])
        self.shared.load_state_dict(nat["shared"])
        self.sn_epoch, self.curve, self.inference = (
            nat["epoch"],
            list(nat["curve"]),
            nat["inference"],
        )
        log.info("nat: resumed the shared weights and the policy after epoch %d", self.sn_epoch)

    # --- episodes ------------------------------------------------------------------------------
    def _observe(self, g: Genome, gid: str) -> dict[str, np.ndarray]:
        if gid not in self._obs:
            self._obs[gid] = observe(self.space, g)
        return self._obs[gid]

    def _episode(
        self, cells: list[Genome], i: int, action, version: int, kind: str = "greedy"
    ) -> Episode:
        g = cells[i]
        t, _ = guarded_transform(self.space, g, action)
        return Episode(
            i,
            g,
            self.space.genome_id(g),
            [int(a) for a in action],
            t,
            self.space.genome_id(t),
            version,
            kind,
        )

    def _batch(self, b: int) -> list[Episode]:
        """Batch b of training: its cells in the epoch's seeded order, transformations sampled
        from the policy as it is now (after b updates, unless sampled ahead)."""
        if b not in self.batches:
            epoch, pos = divmod(b, self.per_epoch)
            order = list(range(len(self.pool)))
            random.Random(_seed(self.seed, "epoch", epoch)).shuffle(order)
            idx = order[pos * self.options.batch : (pos + 1) * self.options.batch]
            obs = [self._observe(self.pool[i], self.space.genome_id(self.pool[i])) for i in idx]
            acts = self.agent.act(obs, seed=_seed(self.seed, "batch", b))
            self.batches[b] = [
                self._episode(self.pool, i, a, self.done_batches) for i, a in zip(idx, acts)
            ]
        return self.batches[b]

    def _transform_episodes(self) -> list[Episode]:
        """The greedy (most probable) transformation of every target, by the latest policy."""
        if self.transforms is None and self.supernet_mode:
            self.transforms = [
                self._episode(self.targets, i, r[kind], self.sn_epoch, kind)
                for i, r in enumerate(self.inference or [])
                for kind in ("greedy", "best")
            ]
        if self.transforms is None:
            obs = [self._observe(g, self.space.genome_id(g)) for g in self.targets]
            acts = self.agent.act(obs, greedy=True) if obs else []
            self.transforms = [
                self._episode(self.targets, i, a, self.done_batches) for i, a in enumerate(acts)
            ]
            if self.targets:
                log.info(
                    "nat: transforming %d cells with the policy after %d updates%s",
                    len(self.targets),
                    self.done_batches,
                    f" of {self.options.init_policy}" if self.options.init_policy else "",
                )
        return self.transforms

    def _want(self, g: Genome, gid: str) -> Genome | None:
        if gid in self.results or gid in self.asked:
            return None
        self.asked.add(gid)
        self.seen.add(gid)
        return g

    def _next(self, episodes: list[Episode]) -> Genome | None:
        """The first genome of these episodes that is neither evaluated nor asked."""
        for e in episodes:
            g = self._want(e.arch, e.gid)
            if g is not None:
                return g
            orig = self.results.get(e.gid)
            if orig is not None and not orig.complete:
                continue  # no reward without the original's metric
            g = self._want(e.target, e.tgid)
            if g is not None:
                return g
        return None

    def _resolved(self, e: Episode) -> bool:
        orig = self.results.get(e.gid)
        return orig is not None and (not orig.complete or e.tgid in self.results)

    def _reward(self, e: Episode) -> float | None:
        a, b = self.results.get(e.gid), self.results.get(e.tgid)
        if a is None or b is None or not (a.complete and b.complete):
            return None
        return nat_reward(
            a.metrics, b.metrics, self.metric, self.sign, self.constraints, self.options.penalty
        )

    def _learn(self, b: int) -> None:
        """The REINFORCE update of batch b (episodes whose cells failed are left out)."""
        eps = self.batches.pop(b)
        done = [(e, r) for e in eps if (r := self._reward(e)) is not None]
        entry: dict[str, Any] = {
            "batch": b,
            "episodes": len(done),
            "stale": sum(e.version < b for e in eps),
        }
        if done:
            obs = [self._observe(e.arch, e.gid) for e, _ in done]
            stats = self.agent.update(
                obs, np.array([e.action for e, _ in done]), [r for _, r in done]
            )
            entry.update({k: round(v, 6) for k, v in stats.items()})
        self.curve.append(entry)
        self.done_batches = b + 1
        if self.done_batches % 10 == 0 or self.done_batches == self.n_batches:
            recent = [c["mean_reward"] for c in self.curve[-10:] if "mean_reward" in c]
            log.info(
                "nat: update %d/%d, mean reward of the last %d: %.4g",
                self.done_batches,
                self.n_batches,
                len(recent),
                statistics.mean(recent) if recent else float("nan"),
            )
        for path in self._checkpoints():
            self.save(path)

    def _advance(self) -> None:
        """Make every update the evaluated trials allow (on resume: replay them)."""
        while self.done_batches < self.n_batches and all(
            self._resolved(e) for e in self._batch(self.done_batches)
        ):
            self._learn(self.done_batches)

    def _prefetch(self) -> Genome | None:
        """Originals (training cells, then targets) do not depend on the policy: ask them while
        a batch waits for its results."""
        cells = self.pool + self.targets
        while self._prefetch_at < len(cells):
            g = cells[self._prefetch_at]
            self._prefetch_at += 1
            if self._want(g, self.space.genome_id(g)) is not None:
                return g
        return None

    # --- ask / tell ----------------------------------------------------------------------------
    def ask(self) -> Genome | None:
        self._start()
        self._advance()
        if self.done_batches < self.n_batches:
            g = self._next(self._batch(self.done_batches))
            if g is not None:
                return g
            g = self._prefetch()  # the batch waits for results: keep free workers busy
            if g is not None:
                return g
            for b in range(self.done_batches + 1, self.n_batches):  # asynchronous: sample ahead
                g = self._next(self._batch(b))
                if g is not None:
                    return g
        return self._next(self._transform_episodes())  # None: nothing left to ask

    def tell(self, record: TrialRecord) -> None:
        super().tell(record)
        self.asked.discard(record.genome_id)
        old = self.results.get(record.genome_id)
        if old is None or not old.complete:
            self.results[record.genome_id] = record

    # --- results -------------------------------------------------------------------------------
    def _cell(self, g: Genome, gid: str) -> dict[str, Any]:
        rec = self.results.get(gid)
        out: dict[str, Any] = {
            "genome_id": gid,
            "cell": arch_str(cell_ops(self.space, g)),
            **self.space.cost(g),
            "genome": self.space.to_json(g),
        }
        if rec is not None and rec.complete:
            for m in dict.fromkeys((self.metric, self.options.judge_metric)):
                if m in rec.metrics:
                    out[m] = float(rec.metrics[m])
            out["feasible"] = relative_violation(rec.metrics, self.constraints) == 0
        elif rec is not None:
            out["failed"] = rec.reason
        return out

    def _judged(self, a: dict[str, Any], b: dict[str, Any]) -> str | None:
        """The metric a transformation is judged by: `judge_metric` where the evaluator reports
        it, else the one the agent learned from (reward: evaluator)."""
        j = self.options.judge_metric
        if j in a and j in b:
            return j
        if not self.supernet_mode and self.metric in a and self.metric in b:
            return self.metric
        return None

    def _transform_row(self, e: Episode) -> dict[str, Any]:
        """A target before and after its transformation: changes, costs, gain and reward."""
        a, b = self._cell(e.arch, e.gid), self._cell(e.target, e.tgid)
        before, after = cell_ops(self.space, e.arch), cell_ops(self.space, e.target)
        row: dict[str, Any] = {
            "kind": e.kind,
            "original": a,
            "transformed": b,
            "changes": {k: f"{before[k]} -> {after[k]}" for k in EDGES if before[k] != after[k]},
            "action": [TRANSITIONS[t] for t in e.action],
            "flops_change": b["flops"] - a["flops"],
            "params_change": b["params"] - a["params"],
        }
        if self.supernet_mode and self.inference:
            inf = self.inference[e.index]
            row["supernet_acc"] = {"before": inf["original_acc"], "after": inf[f"{e.kind}_acc"]}
        j = self._judged(a, b)
        if j is not None:
            sign = self.sign if j == self.metric else 1.0
            row["judged_by"] = j
            row["gain"] = sign * (b[j] - a[j])
        if not self.supernet_mode and self.metric in a and self.metric in b:
            row["reward"] = self._reward(e)
        return row

    def _summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        done = [r for r in rows if "gain" in r]
        summary: dict[str, Any] = {"targets": len(self.targets), "transformed": len(done)}
        if not done:
            return summary
        gains, j = [r["gain"] for r in done], done[0]["judged_by"]
        same = [r["original"]["genome_id"] == r["transformed"]["genome_id"] for r in done]
        summary.update(
            {
                "judged_by": j,
                f"mean_{j}_before": statistics.mean(r["original"][j] for r in done),
                f"mean_{j}_after": statistics.mean(r["transformed"][j] for r in done),
                "mean_gain": statistics.mean(gains),
                "improved": sum(g > 0 for g in gains) / len(gains),
                "unchanged": sum(same) / len(done),
                "worse": sum(g < 0 for g in gains) / len(gains),
                "max_flops_change": max(r["flops_change"] for r in rows),
                "max_params_change": max(r["params_change"] for r in rows),
            }
        )
        return summary

    def _reward_source(self) -> dict[str, Any]:
        """What the agent learned from, and whether that is also what it is judged by."""
        if self.supernet_mode:
            return {
                "reward": "supernet",
                "data": self.options.data.model_dump(),
                "reward_metric": "validation accuracy of the transformed cell minus the "
                "original's, measured with the shared weights",
            }
        out: dict[str, Any] = {"reward": "evaluator", "reward_metric": self.metric}
        recs = [r for r in self.results.values() if r.complete]
        j = self.options.judge_metric
        pairs = [(r.metrics[self.metric], r.metrics[j]) for r in recs if j in r.metrics]
        if j == self.metric or (pairs and all(abs(a - b) < 1e-12 for a, b in pairs)):
            out["warning"] = (
                f"the judged metric {j!r} equals the reward metric {self.metric!r} on every cell: "
                "the agent is judged on what it trained on"
            )
        return out

    def report(self) -> dict[str, Any]:
        """nat.json: the training curve, and what each target became, with its gain and costs."""
        rows = [self._transform_row(e) for e in self.transforms or []]
        if self.supernet_mode:
            sn = self.options.supernet
            training: dict[str, Any] = {
                "reward": "supernet",
                "epochs": sn.epochs,
                "done_epochs": self.sn_epoch,
                "complete": self.sn_epoch == sn.epochs,
                "weight_steps": self.shared.steps if self.shared else 0,
                "policy_updates": self.agent.updates,
                "seconds": round(sum(c["weights_s"] + c["policy_s"] for c in self.curve), 1),
                "curve": self.curve,
            }
        else:
            training = {
                "cells": len(self.pool),
                "epochs": self.options.epochs,
                "batch": self.options.batch,
                "updates": self.done_batches,
                "of": self.n_batches,
                "complete": self.done_batches == self.n_batches,
                "curve": self.curve,
            }
        out = {
            "metric": self.metric,
            "direction": self.objectives[0].direction,
            "constraints": [c.model_dump() for c in self.constraints],
            **self._reward_source(),
            "judge_metric": self.options.judge_metric,
            "training": training,
            "summary": self._summary([r for r in rows if r["kind"] == "greedy"]),
            "transforms": rows,
        }
        if self.supernet_mode:
            out["summary_best_of_samples"] = self._summary([r for r in rows if r["kind"] == "best"])
        if "warning" in out:
            log.warning("nat: %s", out["warning"])
        return out

    def finish(self, run_dir) -> None:
        """Save the agent (nat_policy.pt) and write nat.json into the run folder."""
        self._start()
        self._advance()
        if self.done_batches == self.n_batches:
            self._transform_episodes()
        run_dir = Path(run_dir)
        self.save(run_dir / POLICY_FILE)
        if self.options.checkpoint:
            self.save(Path(self.options.checkpoint).expanduser())
        (run_dir / "nat.json").write_text(json.dumps(self.report(), indent=2, default=str))
