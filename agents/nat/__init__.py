"""NAT (Neural Architecture Transformer, NeurIPS 2019) on gymnasium: an environment whose
observation is a cell's DAG and whose action rewrites each edge's op (keep, skip_connect,
none), and a graph-convolution policy trained by REINFORCE."""

from agents.nat.cell import (
    KEEP,
    NONE,
    SKIP,
    TRANSITIONS,
    cell_graph,
    check_cell_space,
    guarded_transform,
    nat_reward,
    never_costlier,
    observe,
    transform,
    valid_mask,
)
from agents.nat.env import NATEnv
from agents.nat.policy import GCNPolicy, NATAgent

__all__ = [
    "NATEnv",
    "NATAgent",
    "GCNPolicy",
    "TRANSITIONS",
    "KEEP",
    "SKIP",
    "NONE",
    "cell_graph",
    "check_cell_space",
    "guarded_transform",
    "nat_reward",
    "never_costlier",
    "observe",
    "transform",
    "valid_mask",
]
