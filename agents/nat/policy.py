"""NAT's policy and its trainer: a two-layer graph convolution network over the cell's DAG with a
categorical head per edge, trained by REINFORCE with a moving-average baseline and an entropy
bonus (NAT, NeurIPS 2019: baseline decay 0.99, entropy weight 0.003, Adam at 3e-4)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.nat.cell import N_CELL_NODES, N_EDGES, N_FEATURES, TRANSITIONS
from spaces.families.cell import OPS

Obs = dict[str, np.ndarray]


@contextmanager
def one_thread():
    """The policy's tensors are tiny: more threads only spin, and on a busy machine they make a
    step a hundred times slower. The evaluator keeps its own thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def normalized_adjacency(adj: torch.Tensor) -> torch.Tensor:
    """Kipf and Welling's D^-1/2 (A + A^T + I) D^-1/2: messages flow both ways along the DAG."""
    a = adj + adj.transpose(-1, -2) + torch.eye(adj.shape[-1], dtype=adj.dtype)
    a = a.clamp(max=1.0)
    d = a.sum(-1).rsqrt()
    return d.unsqueeze(-1) * a * d.unsqueeze(-2)


class GCNPolicy(nn.Module):
    """Two graph convolutions, then per edge node its embedding joined with the graph's mean
    embedding (two layers reach only two hops; the cell is six deep) and one categorical head
    per edge. Invalid transitions get no probability."""

    def __init__(self, hidden: int = 64, in_dim: int = N_FEATURES):
        super().__init__()
        self.hidden = hidden
        self.gc1 = nn.Linear(in_dim, hidden)
        self.gc2 = nn.Linear(hidden, hidden)
        self.mix = nn.Linear(2 * hidden + in_dim, hidden)
        # one head per edge position and one per current op: what a transition does depends on
        # the op it rewrites (removing a conv hurts, replacing a pooling may help) and on where
        self.head_w = nn.Parameter(
            torch.zeros(N_EDGES, hidden, len(TRANSITIONS))
        )  # uniform at start
        self.op_w = nn.Parameter(torch.zeros(len(OPS), hidden, len(TRANSITIONS)))
        self.op_b = nn.Parameter(torch.zeros(len(OPS), len(TRANSITIONS)))
        self.head_b = nn.Parameter(torch.zeros(N_EDGES, len(TRANSITIONS)))

    def forward(self, nodes: torch.Tensor, adj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked logits (batch, edges, transitions)."""
        a = normalized_adjacency(adj)
        h = torch.relu(a @ self.gc1(nodes))
        h = torch.relu(a @ self.gc2(h))
        g = h.mean(1, keepdim=True).expand(-1, N_EDGES, -1)
        e = torch.relu(self.mix(torch.cat([h[:, N_CELL_NODES:], g, nodes[:, N_CELL_NODES:]], -1)))
        op = nodes[:, N_CELL_NODES:, 2 : 2 + len(OPS)]  # the edges' op one-hots
        logits = (
            torch.einsum("beh,eht->bet", e, self.head_w)
            + self.head_b
            + (op.unsqueeze(-1) * torch.einsum("beh,oht->beot", e, self.op_w)).sum(2)
            + op @ self.op_b
        )
        return logits.masked_fill(~mask, -1e9)


def batch_obs(obs: Sequence[Obs]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    nodes = torch.as_tensor(np.stack([o["nodes"] for o in obs]), dtype=torch.float32)
    adj = torch.as_tensor(np.stack([o["adjacency"] for o in obs]), dtype=torch.float32)
    mask = torch.as_tensor(np.stack([o["mask"] for o in obs])).bool()
    return nodes, adj, mask


class NATAgent:
    """The policy, its Adam optimiser and the REINFORCE state (baseline, update count); seeded,
    saved and loaded whole so training can stop and go on."""

    def __init__(
        self,
        seed: int = 0,
        hidden: int = 64,
        lr: float = 3e-4,
        baseline_decay: float = 0.99,
        entropy_weight: float = 0.003,
    ):
        self.seed, self.hidden, self.lr = seed, hidden, lr
        self.baseline_decay, self.entropy_weight = baseline_decay, entropy_weight
        with torch.random.fork_rng(devices=[]):  # seeded weights, the global generator untouched
            torch.manual_seed(seed)
            self.policy = GCNPolicy(hidden)
        self.optim = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.baseline: float | None = None
        self.updates = 0

    @torch.no_grad()
    def probs(self, obs: Sequence[Obs]) -> np.ndarray:
        """Transition probabilities (batch, edges, 3)."""
        with one_thread():
            return torch.softmax(self.policy(*batch_obs(obs)), -1).numpy()

    @torch.no_grad()
    def act(self, obs: Sequence[Obs], greedy: bool = False, seed: int | None = None) -> np.ndarray:
        """Transitions (batch, edges): sampled with a generator seeded by `seed`, or the most
        probable ones (`greedy`)."""
        with one_thread():
            logits = self.policy(*batch_obs(obs))
            if greedy:
                return logits.argmax(-1).numpy()
            gen = torch.Generator().manual_seed(
                seed if seed is not None else int(torch.randint(2**62, ()))
            )
            p = torch.softmax(logits, -1).reshape(-1, len(TRANSITIONS))
            return torch.multinomial(p, 1, generator=gen).reshape(logits.shape[:2]).numpy()

    def update(
        self, obs: Sequence[Obs], actions: np.ndarray, rewards: Sequence[float]
    ) -> dict[str, float]:
        """One REINFORCE step over a batch of episodes: advantages against the moving-average
        baseline (started at the first batch's mean), plus the entropy bonus."""
        with one_thread():
            return self._update(obs, actions, rewards)

    def _update(
        self, obs: Sequence[Obs], actions: np.ndarray, rewards: Sequence[float]
    ) -> dict[str, float]:
        r = torch.as_tensor(np.asarray(rewards, dtype=np.float64), dtype=torch.float32)
        if self.baseline is None:
            self.baseline = float(r.mean())
        adv = r - self.baseline
        nodes, adj, mask = batch_obs(obs)
        logits = self.policy(nodes, adj, mask)
        logp = torch.log_softmax(logits, -1)
        a = torch.as_tensor(np.asarray(actions), dtype=torch.int64).unsqueeze(-1)
        lp = logp.gather(-1, a).squeeze(-1).sum(-1)
        ent = -torch.where(mask, logp.exp() * logp, torch.zeros_like(logp)).sum((-1, -2))
        loss = -(adv * lp).mean() - self.entropy_weight * ent.mean()
        self.optim.zero_grad()
        loss.backward()
        self.optim.step()
        for x in rewards:  # the baseline moves per episode, as in the paper
            self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * float(
                x
            )
        self.updates += 1
        return {
            "loss": float(loss.detach()),
            "mean_reward": float(r.mean()),
            "baseline": self.baseline,
            "entropy": float(ent.detach().mean()),
        }

    # --- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": {
                "seed": self.seed,
                "hidden": self.hidden,
                "lr": self.lr,
                "baseline_decay": self.baseline_decay,
                "entropy_weight": self.entropy_weight,
            },
            "policy": self.policy.state_dict(),
            "optim": self.optim.state_dict(),
            "baseline": self.baseline,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any], policy_only: bool = False) -> None:
        self.policy.load_state_dict(state["policy"])
        if not policy_only:
            self.optim.load_state_dict(state["optim"])
            self.baseline, self.updates = state["baseline"], state["updates"]

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write the agent (and `extra`, e.g. an optimiser's progress) atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"agent": self.state_dict(), **(extra or {})}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> NATAgent:
        """The agent saved at `path`, ready to act or to go on training."""
        state = torch.load(path, weights_only=True)["agent"]
        agent = cls(**state["config"])
        agent.load_state_dict(state)
        return agent
