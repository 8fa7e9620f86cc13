"""EfficientNet-B0-style inverted-residual stages (expansion, depthwise 3/5, squeeze-excite,
SiLU), sized for 32x32 inputs: the TinyNet space."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from spaces.families.base import Arch, Family, FamilySpec, bn_params, conv_cost
from spaces.layers import GBatchNorm2d, GConv2d, GLinear


class MBStage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expand: int = Field(6, ge=1)
    kernel: Literal[3, 5, 7] = 3
    stride: Literal[1, 2] = 1
    channels: int = Field(..., ge=1)
    blocks: int = Field(1, ge=1)
    se: float = Field(0.25, ge=0, le=1)


class MBConvSpec(FamilySpec):
    kind: Literal["mbconv"] = "mbconv"
    stem: int = Field(32, ge=1)
    stem_stride: Literal[1, 2] = 1
    head: int = Field(1280, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    stages: list[MBStage] = Field(..., min_length=1)


class MBConvFamily(Family):
    kind = "mbconv"
    Spec = MBConvSpec
    targets = ("resolution", "depth", "width", "filters", "kernel", "weights")
    kernel_options = (3, 5, 7)

    def __init__(self, spec: MBConvSpec):
        super().__init__(spec)
        self._layout = self._make_layout()

    def _make_layout(self) -> list[dict]:
        """Every block of the supernet with its groups, channels and residual flag."""
        sp: MBConvSpec = self.spec
        out, prev_c, prev_g = [], sp.stem, "stem"
        for i, st in enumerate(sp.stages, 1):
            for j in range(st.blocks):
                stride = st.stride if j == 0 else 1
                residual = stride == 1 and prev_c == st.channels
                g_out = prev_g if residual else f"s{i}"
                hid = prev_c * st.expand
                name = f"s{i}.b{j}"
                out.append(
                    dict(
                        name=name,
                        stage=f"s{i}",
                        index=j,
                        cin=prev_c,
                        cout=st.channels,
                        hid=hid,
                        se=max(1, int(prev_c * st.se)) if st.se > 0 else 0,
                        stride=stride,
                        kernel=st.kernel,
                        expand=st.expand != 1,
                        residual=residual,
                        g_in=prev_g,
                        g_out=g_out,
                        g_hid=f"{name}.hid" if st.expand != 1 else prev_g,
                        g_se=f"{name}.se",
                    )
                )
                prev_c, prev_g = st.channels, g_out
        return out

    def groups(self):
        g = {"stem": self.spec.stem}
        for b in self._layout:
            g.setdefault(b["g_out"], b["cout"])
            if b["expand"]:
                g[b["g_hid"]] = b["hid"]
            if b["se"]:
                g[b["g_se"]] = b["se"]
        g["head"] = self.spec.head
        return g

    def stage_blocks(self):
        return {f"s{i}": st.blocks for i, st in enumerate(self.spec.stages, 1)}

    def stage_groups(self):
        return {b["stage"]: b["g_out"] for b in self._layout if b["index"] == 0}

    def block_groups(self):
        return {b["name"]: b["g_hid"] for b in self._layout if b["expand"]}

    def default_kernel(self, block):
        return next(b["kernel"] for b in self._layout if b["name"] == block)

    def _kept(self, arch: Arch) -> list[dict]:
        return [b for b in self._layout if b["index"] < arch.depths[b["stage"]]]

    def module(self, arch, supernet=False):
        return MBConvNet(self, arch)

    def cost(self, arch):
        s, h = arch.sizes, arch.resolution
        f, p, h = conv_cost(3, s["stem"], 3, h, self.spec.stem_stride)
        p += bn_params(s["stem"])
        for b in self._kept(arch):
            cin, cout, k = s[b["g_in"]], s[b["g_out"]], arch.kernels[b["name"]]
            hid = s[b["g_hid"]]
            if b["expand"]:
                ff, pp, _ = conv_cost(cin, hid, 1, h)
                f, p = f + ff, p + pp + bn_params(hid)
            ff, pp, h = conv_cost(hid, hid, k, h, b["stride"], depthwise=True)
            f, p = f + ff, p + pp + bn_params(hid)
            if b["se"]:
                se = s[b["g_se"]]
                f += 2 * hid * se * 2
                p += hid * se + se + se * hid + hid
            ff, pp, _ = conv_cost(hid, cout, 1, h)
            f, p = f + ff, p + pp + bn_params(cout)
        last = s[self._layout[-1]["g_out"]]
        ff, pp, _ = conv_cost(last, s["head"], 1, h)
        f, p = f + ff, p + pp + bn_params(s["head"])
        f += 2 * s["head"] * arch.num_classes
        p += s["head"] * arch.num_classes + arch.num_classes
        return f, p


def _conv_bn(cin, cout, k, stride, gin, gout, q, act=True, depthwise=False):
    layers = [
        GConv2d(cin, cout, k, stride, gin=gin, gout=gout, depthwise=depthwise, qgroup=q),
        GBatchNorm2d(cout, group=gout),
    ]
    if act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class MBBlock(nn.Module):
    def __init__(self, b: dict, s: dict[str, int], k: int):
        super().__init__()
        q, cin, hid, cout = b["name"], s[b["g_in"]], s[b["g_hid"]], s[b["g_out"]]
        self.residual = b["residual"]
        self.expand = _conv_bn(cin, hid, 1, 1, b["g_in"], b["g_hid"], q) if b["expand"] else None
        self.dw = _conv_bn(hid, hid, k, b["stride"], b["g_hid"], b["g_hid"], q, depthwise=True)
        if b["se"]:
            se = s[b["g_se"]]
            self.se_reduce = GConv2d(
                hid, se, 1, gin=b["g_hid"], gout=b["g_se"], bias=True, qgroup=q
            )
            self.se_expand = GConv2d(
                se, hid, 1, gin=b["g_se"], gout=b["g_hid"], bias=True, qgroup=q
            )
        else:
            self.se_reduce = self.se_expand = None
        self.project = _conv_bn(hid, cout, 1, 1, b["g_hid"], b["g_out"], q, act=False)

    def forward(self, x):
        h = self.expand(x) if self.expand is not None else x
        h = self.dw(h)
        if self.se_reduce is not None:
            w = F.silu(self.se_reduce(h.mean((2, 3), keepdim=True)))
            h = h * torch.sigmoid(self.se_expand(w))
        h = self.project(h)
        return x + h if self.residual else h


class MBConvNet(nn.Module):
    def __init__(self, fam: MBConvFamily, arch: Arch):
        super().__init__()
        sp, s = fam.spec, arch.sizes
        self.arch = arch
        self.stem = _conv_bn(3, s["stem"], 3, sp.stem_stride, "input", "stem", None)
        stages = []
        for i in range(1, len(sp.stages) + 1):
            kept = [b for b in fam._kept(arch) if b["stage"] == f"s{i}"]
            stages.append(nn.ModuleList(MBBlock(b, s, arch.kernels[b["name"]]) for b in kept))
        self.stages = nn.ModuleList(stages)
        last = fam._layout[-1]["g_out"]
        self.head = _conv_bn(s[last], s["head"], 1, 1, last, "head", None)
        self.dropout = nn.Dropout(sp.dropout)
        self.classifier = GLinear(s["head"], arch.num_classes, gin="head")

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            for block in stage:
                x = block(x)
        x = self.head(x).mean((2, 3))
        return self.classifier(self.dropout(x))
