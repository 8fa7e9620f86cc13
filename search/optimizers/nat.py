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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from search.optimizers.base import Optimizer
from search.records import TrialRecord
from search.seeding import load_genomes
from spaces.errors import ConfigError
from spaces.families.cell import EDGES, arch_str
from spaces.space import Genome

log = logging.getLogger(__name__)

POLICY_FILE = "nat_policy.pt"


class NATOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train_archs: int = Field(
        200, ge=0, description="cells the agent trains on (sampled, or the first of train_from)"
    )
    epochs: int = Field(10, ge=1, description="passes over the training cells")
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
    lr: float = Field(3e-4, gt=0, description="Adam's learning rate (the paper's)")
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
        self.metric, self.sign = objectives[0].metric, self.signs[0]
        self.run_dir: Path | None = None
        # the cells: fixed up front and disjoint, so a resume sees the same ones
        given = None
        if o.transform:
            given = load_genomes(o.transform, space, None, "optimizer.options.transform")[
                : o.transform_top
            ]
        if o.train_from:
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
        per_epoch = math.ceil(len(self.pool) / o.batch) if self.pool else 0
        self.per_epoch, self.n_batches = per_epoch, per_epoch * o.epochs
        start = NATAgent.load(_policy_path(o.init_policy)) if o.init_policy else None
        self.agent = NATAgent(
            seed, start.hidden if start else o.hidden, o.lr, o.baseline_decay, o.entropy_weight
        )
        if start is not None:  # its weights; Adam, the baseline and the count start afresh
            self.agent.load_state_dict(start.state_dict(), policy_only=True)
        elif not self.pool:
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
        return hashlib.sha256(
            json.dumps(payload, sort_keys=True, default=str).encode()
        ).hexdigest()[:16]

    def _start(self) -> None:
        """Once, before the first ask: on resume, reload a checkpoint of this training; the
        stored trials (already told) then replay the rest without evaluating anything."""
        if self._started:
            return
        self._started = True
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

    # --- episodes ------------------------------------------------------------------------------
    def _observe(self, g: Genome, gid: str) -> dict[str, np.ndarray]:
        if gid not in self._obs:
            self._obs[gid] = observe(self.space, g)
        return self._obs[gid]

    def _episode(self, cells: list[Genome], i: int, action, version: int) -> Episode:
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
            out[self.metric] = float(rec.metrics[self.metric])
            out["feasible"] = relative_violation(rec.metrics, self.constraints) == 0
        elif rec is not None:
            out["failed"] = rec.reason
        return out

    def _transform_row(self, e: Episode) -> dict[str, Any]:
        """A target before and after its transformation: changes, costs, gain and reward."""
        a, b = self._cell(e.arch, e.gid), self._cell(e.target, e.tgid)
        before, after = cell_ops(self.space, e.arch), cell_ops(self.space, e.target)
        row: dict[str, Any] = {
            "original": a,
            "transformed": b,
            "changes": {k: f"{before[k]} -> {after[k]}" for k in EDGES if before[k] != after[k]},
            "action": [TRANSITIONS[t] for t in e.action],
            "flops_change": b["flops"] - a["flops"],
            "params_change": b["params"] - a["params"],
        }
        if self.metric in a and self.metric in b:
            row["gain"] = self.sign * (b[self.metric] - a[self.metric])
            row["reward"] = self._reward(e)
        return row

    def _summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        done = [r for r in rows if "gain" in r]
        summary: dict[str, Any] = {"targets": len(self.targets), "transformed": len(done)}
        if not done:
            return summary
        gains, m = [r["gain"] for r in done], self.metric
        same = [r["original"]["genome_id"] == r["transformed"]["genome_id"] for r in done]
        summary.update(
            {
                f"mean_{m}_before": statistics.mean(r["original"][m] for r in done),
                f"mean_{m}_after": statistics.mean(r["transformed"][m] for r in done),
                "mean_gain": statistics.mean(gains),
                "improved": sum(g > 0 for g in gains) / len(gains),
                "unchanged": sum(same) / len(done),
                "worse": sum(g < 0 for g in gains) / len(gains),
                "max_flops_change": max(r["flops_change"] for r in rows),
                "max_params_change": max(r["params_change"] for r in rows),
            }
        )
        return summary

    def report(self) -> dict[str, Any]:
        """nat.json: the training curve, and what each target became, with its gain and costs."""
        rows = [self._transform_row(e) for e in self.transforms or []]
        training = {
            "cells": len(self.pool),
            "epochs": self.options.epochs,
            "batch": self.options.batch,
            "updates": self.done_batches,
            "of": self.n_batches,
            "complete": self.done_batches == self.n_batches,
            "curve": self.curve,
        }
        return {
            "metric": self.metric,
            "direction": self.objectives[0].direction,
            "constraints": [c.model_dump() for c in self.constraints],
            "training": training,
            "summary": self._summary(rows),
            "transforms": rows,
        }

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
