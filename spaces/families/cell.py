"""A NAS-Bench-201-style network: stacked cells of 4 nodes and 6 edges, each edge one of
none / skip_connect / nor_conv_1x1 / nor_conv_3x3 / avg_pool_3x3, with ResNet reduction blocks
between stages: the NAT space. The supernet holds every op of every edge; a sub-network only
the chosen ops of the edges that connect input to output (dead edges are dropped)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from spaces.families.base import Arch, Family, FamilySpec, bn_params, conv_cost
from spaces.layers import GBatchNorm2d, GConv2d, GLinear

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ("1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2")


def edge_nodes(edge: str) -> tuple[int, int]:
    j, i = edge.split("<-")
    return int(j), int(i)


def live_edges(ops: dict[str, str]) -> list[str]:
    """Edges on some path from node 0 to node 3 whose op is not `none`."""
    fwd, bwd = {0}, {3}
    for e in EDGES:  # edges are in topological order of their target
        j, i = edge_nodes(e)
        if ops[e] != "none" and i in fwd:
            fwd.add(j)
    for e in reversed(EDGES):
        j, i = edge_nodes(e)
        if ops[e] != "none" and j in bwd:
            bwd.add(i)
    return [
        e for e in EDGES if ops[e] != "none" and edge_nodes(e)[1] in fwd and edge_nodes(e)[0] in bwd
    ]


def arch_str(ops: dict[str, str]) -> str:
    """NAS-Bench-201's string: |o~0|+|o~0|o~1|+|o~0|o~1|o~2|."""
    nodes = []
    for j in (1, 2, 3):
        nodes.append("|" + "|".join(f"{ops[f'{j}<-{i}']}~{i}" for i in range(j)) + "|")
    return "+".join(nodes)


class CellSpec(FamilySpec):
    kind: Literal["cell"] = "cell"
    channels: int = Field(16, ge=1)
    cells: int = Field(5, ge=1, description="cells per stage (NAS-Bench-201: 5)")
    stages: int = Field(3, ge=1)


class CellFamily(Family):
    kind = "cell"
    Spec = CellSpec
    targets = ("resolution", "depth", "width", "filters", "op", "weights")
    op_options = OPS

    def groups(self):
        return {f"s{i}": self.spec.channels * 2 ** (i - 1) for i in range(1, self.spec.stages + 1)}

    def stage_blocks(self):
        return {f"s{i}": self.spec.cells for i in range(1, self.spec.stages + 1)}

    def stage_groups(self):
        return {s: s for s in self.stage_blocks()}

    def edges(self):
        return list(EDGES)

    def qgroups(self):
        return super().qgroups() + [f"s{i}.red" for i in range(2, self.spec.stages + 1)]

    def default_op(self):
        return "nor_conv_3x3"

    def default_kernel(self, block):
        return 3

    def module(self, arch, supernet=False):
        return CellNet(self, arch, supernet)

    def cost(self, arch):
        s, h = arch.sizes, arch.resolution
        f, p, h = conv_cost(3, s["s1"], 3, h)
        p += bn_params(s["s1"])
        live = live_edges(arch.ops)
        for i in range(1, self.spec.stages + 1):
            g = f"s{i}"
            if i > 1:  # reduction block
                prev = s[f"s{i - 1}"]
                fa, pa, ho = conv_cost(prev, s[g], 3, h, 2)
                fb, pb, _ = conv_cost(s[g], s[g], 3, ho)
                fc, pc, _ = conv_cost(prev, s[g], 1, ho)  # after a ceil-mode 2x2 average pool
                f, p, h = f + fa + fb + fc, p + pa + pb + pc + 2 * bn_params(s[g]), ho
            for _ in range(arch.depths[g]):
                for e in live:
                    k = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}.get(arch.ops[e])
                    if k:
                        ff, pp, _ = conv_cost(s[g], s[g], k, h)
                        f, p = f + ff, p + pp + bn_params(s[g])
        last = s[f"s{self.spec.stages}"]
        p += bn_params(last)
        f += 2 * last * arch.num_classes
        p += last * arch.num_classes + arch.num_classes
        return f, p


class ReLUConvBN(nn.Sequential):
    def __init__(self, c, k, g, q):
        super().__init__(
            nn.ReLU(), GConv2d(c, c, k, gin=g, gout=g, qgroup=q), GBatchNorm2d(c, group=g)
        )


def make_op(op: str, c: int, g: str, q: str) -> nn.Module:
    if op == "skip_connect":
        return nn.Identity()
    if op == "nor_conv_1x1":
        return ReLUConvBN(c, 1, g, q)
    if op == "nor_conv_3x3":
        return ReLUConvBN(c, 3, g, q)
    if op == "avg_pool_3x3":
        return nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    raise ValueError(f"op {op!r} has no module")


def _key(edge: str) -> str:
    j, i = edge_nodes(edge)
    return f"e{j}{i}"


class Cell(nn.Module):
    """One cell. The supernet's cell holds every op per edge; `ops` picks the path."""

    def __init__(self, c, g, q, ops: dict[str, str], options: dict[str, tuple[str, ...]]):
        super().__init__()
        self.ops = dict(ops)
        self.edges = nn.ModuleDict()
        for e, opts in options.items():
            self.edges[_key(e)] = nn.ModuleDict(
                {o: make_op(o, c, g, q) for o in opts if o != "none"}
            )

    def forward(self, x):
        nodes = [x]
        live = set(live_edges(self.ops))
        for j in (1, 2, 3):
            acc = None
            for i in range(j):
                e = f"{j}<-{i}"
                if e in live:
                    y = self.edges[_key(e)][self.ops[e]](nodes[i])
                    acc = y if acc is None else acc + y
            nodes.append(acc if acc is not None else torch.zeros_like(x))
        return nodes[3]


class Reduction(nn.Module):
    """NAS-Bench-201's residual reduction block (stride 2, channels doubled)."""

    def __init__(self, cin, cout, gin, gout, q):
        super().__init__()
        self.conv_a = nn.Sequential(
            nn.ReLU(),
            GConv2d(cin, cout, 3, 2, gin=gin, gout=gout, qgroup=q),
            GBatchNorm2d(cout, group=gout),
        )
        self.conv_b = nn.Sequential(
            nn.ReLU(),
            GConv2d(cout, cout, 3, 1, gin=gout, gout=gout, qgroup=q),
            GBatchNorm2d(cout, group=gout),
        )
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(2, 2, ceil_mode=True), GConv2d(cin, cout, 1, gin=gin, gout=gout, qgroup=q)
        )

    def forward(self, x):
        return self.conv_b(self.conv_a(x)) + self.shortcut(x)


class CellNet(nn.Module):
    def __init__(self, fam: CellFamily, arch: Arch, supernet: bool = False):
        super().__init__()
        s = arch.sizes
        self.arch = arch
        self.stem = nn.Sequential(
            GConv2d(3, s["s1"], 3, gin="input", gout="s1"), GBatchNorm2d(s["s1"], group="s1")
        )
        if supernet:
            options = {e: tuple(fam.supernet_ops.get(e, (arch.ops[e],))) for e in EDGES}
        else:
            options = {e: (arch.ops[e],) for e in live_edges(arch.ops)}
        layers = []
        for i in range(1, fam.spec.stages + 1):
            g = f"s{i}"
            if i > 1:
                layers.append(Reduction(s[f"s{i - 1}"], s[g], f"s{i - 1}", g, f"{g}.red"))
            for j in range(arch.depths[g]):
                layers.append(Cell(s[g], g, f"{g}.b{j}", arch.ops, options))
        self.layers = nn.ModuleList(layers)
        last = f"s{fam.spec.stages}"
        self.lastact = nn.Sequential(GBatchNorm2d(s[last], group=last), nn.ReLU())
        self.classifier = GLinear(s[last], arch.num_classes, gin=last)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(self.lastact(x).mean((2, 3)))
