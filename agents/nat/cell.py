"""A cell genome as NAT sees it: a DAG (networkx) of feature maps and operations, NAT's three
transitions per edge, and the observation arrays the environment and the policy share.

Node order is fixed: the cell's feature maps 0..3, then one node per edge (EDGES order), so a
policy can read its per-edge outputs off the last six nodes. An edge whose op is `none` keeps
its node but loses its arcs: the adjacency is the cell's real connectivity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import networkx as nx
import numpy as np

from spaces.families.cell import EDGES, OPS, edge_nodes, live_edges
from spaces.space import Genome, Space

KEEP, SKIP, NONE = 0, 1, 2
TRANSITIONS = ("keep", "skip_connect", "none")
N_CELL_NODES = 4
N_EDGES = len(EDGES)
N_NODES = N_CELL_NODES + N_EDGES
# features: kind (feature map, op) + op one-hot + live + position one-hot
N_FEATURES = 2 + len(OPS) + 1 + N_NODES


def edge_dims(space: Space) -> dict[str, Any]:
    """Edge -> the space's op dimension for it (edges without one keep the family's op)."""
    return {d.scope: d for d in space.dims.values() if d.target == "op" and d.scope in EDGES}


def check_cell_space(space: Space) -> None:
    """Raise ValueError unless NAT can transform this space's genomes."""
    if space.family.kind != "cell":
        raise ValueError(f"NAT transforms cells; space {space.name!r} is {space.family.kind}")
    dims = edge_dims(space)
    if not dims:
        raise ValueError(f"space {space.name!r} has no op dimension per edge")
    if not any({"none", "skip_connect"} & set(d.options) for d in dims.values()):
        raise ValueError(f"space {space.name!r} offers neither skip_connect nor none on any edge")


def cell_ops(space: Space, genome: Genome) -> dict[str, str]:
    return dict(space.arch(genome).ops)


def valid_mask(space: Space, ops: dict[str, str]) -> np.ndarray:
    """(edges, 3) booleans: which transitions give a distinct, allowed op. `none` stays `none`;
    a skip may only become `none` (its "skip" is its "keep"); an edge without a dimension, or
    whose dimension lacks the target op, can only keep."""
    dims = edge_dims(space)
    mask = np.zeros((N_EDGES, 3), dtype=np.int8)
    mask[:, KEEP] = 1
    for k, e in enumerate(EDGES):
        op, d = ops[e], dims.get(e)
        if d is None or op == "none":
            continue
        if op != "skip_connect" and "skip_connect" in d.options:
            mask[k, SKIP] = 1
        if "none" in d.options:
            mask[k, NONE] = 1
    return mask


def transform_ops(
    ops: dict[str, str], action: Sequence[int], mask: np.ndarray | None = None
) -> dict[str, str]:
    """Apply one transition per edge; an invalid one (per `mask`, or by NAT's rules) is a keep."""
    out = dict(ops)
    for k, e in enumerate(EDGES):
        t = int(action[k])
        if mask is not None and not mask[k, t]:
            continue
        if ops[e] == "none" or t == KEEP:
            continue
        out[e] = "skip_connect" if t == SKIP else "none"
    return out


def transform(space: Space, genome: Genome, action: Sequence[int]) -> Genome:
    """The transformed genome: only op dimensions change, invalid transitions keep."""
    ops = cell_ops(space, genome)
    new = transform_ops(ops, action, valid_mask(space, ops))
    g = dict(space.canonical(genome))
    for e, d in edge_dims(space).items():
        g[d.name] = new[e]
    return space.canonical(g)


def never_costlier(space: Space, original: Genome, transformed: Genome) -> bool:
    """NAT's promise: a transformed cell has no more FLOPs and parameters than the original."""
    a, b = space.cost(original), space.cost(transformed)
    return b["flops"] <= a["flops"] and b["params"] <= a["params"]


def guarded_transform(space: Space, genome: Genome, action: Sequence[int]) -> tuple[Genome, bool]:
    """`transform`, checked with `space.cost`: a result that would cost more (which NAT's
    transitions cannot give) falls back to the original; the flag says it did."""
    new = transform(space, genome, action)
    if never_costlier(space, genome, new):
        return new, False
    return space.canonical(genome), True


def cell_graph(ops: dict[str, str]) -> nx.DiGraph:
    """The cell as a DAG: feature-map nodes 0..3 and one node per edge ("e1<-0") carrying its op;
    arcs i -> e -> j for edges whose op is not `none`."""
    live = set(live_edges(ops))
    g = nx.DiGraph()
    for n in range(N_CELL_NODES):
        g.add_node(n, kind="node")
    for e in EDGES:
        g.add_node(f"e{e}", kind="op", op=ops[e], live=e in live)
        if ops[e] != "none":
            j, i = edge_nodes(e)
            g.add_edge(i, f"e{e}")
            g.add_edge(f"e{e}", j)
    for n in range(N_CELL_NODES):
        g.nodes[n]["live"] = n in (0, 3) or any(n in edge_nodes(e) for e in live)
    return g


NODE_ORDER: list[Any] = list(range(N_CELL_NODES)) + [f"e{e}" for e in EDGES]


def graph_arrays(g: nx.DiGraph) -> tuple[np.ndarray, np.ndarray]:
    """Node features (N_NODES, N_FEATURES) float32 and the directed adjacency (N_NODES,
    N_NODES) int8."""
    x = np.zeros((N_NODES, N_FEATURES), dtype=np.float32)
    for idx, n in enumerate(NODE_ORDER):
        a = g.nodes[n]
        if a["kind"] == "node":
            x[idx, 0] = 1.0
        else:
            x[idx, 1] = 1.0
            x[idx, 2 + OPS.index(a["op"])] = 1.0
        x[idx, 2 + len(OPS)] = float(a["live"])
        x[idx, 3 + len(OPS) + idx] = 1.0
    adj = nx.to_numpy_array(g, nodelist=NODE_ORDER, dtype=np.int8)
    return x, adj


def observe(space: Space, genome: Genome) -> dict[str, np.ndarray]:
    """The observation of a genome: node features, adjacency, and the valid-transition mask."""
    ops = cell_ops(space, genome)
    x, adj = graph_arrays(cell_graph(ops))
    return {"nodes": x, "adjacency": adj, "mask": valid_mask(space, ops)}


def relative_violation(metrics: dict[str, Any], constraints: Sequence[Any]) -> float:
    """Sum of constraint violations, each relative to its bound, so FLOPs and accuracy bounds
    weigh alike. Constraints are duck-typed: `.metric`, `.min`, `.max`, `.violation(value)`."""
    total = 0.0
    for c in constraints:
        if c.metric not in metrics:
            continue
        v = c.violation(float(metrics[c.metric]))
        if v > 0:
            bound = c.max if c.max is not None and float(metrics[c.metric]) > c.max else c.min
            total += v / max(abs(float(bound)), 1e-12)
    return total


def nat_reward(
    original: dict[str, Any],
    transformed: dict[str, Any],
    metric: str,
    sign: float = 1.0,
    constraints: Sequence[Any] = (),
    penalty: float = 1.0,
) -> float:
    """metric(transformed) - metric(original) (signed to be maximised), less `penalty` times the
    transformed cell's relative constraint violation."""
    gain = sign * (float(transformed[metric]) - float(original[metric]))
    return gain - penalty * relative_violation(transformed, constraints)
