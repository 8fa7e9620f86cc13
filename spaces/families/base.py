"""What every supernet family provides: its channel groups, its dimension targets, and
genome -> Arch (counts only) -> module. One builder (spaces.builder) slices weights for all."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from spaces.arch import Arch, keep_count
from spaces.builder import build_subnet
from spaces.dims import Choice, Condition, Dimension, Mask, Scale, WeightSet, blocks_kept

__all__ = ["Arch", "Family", "FamilySpec", "TARGETS", "keep_count"]


class FamilySpec(BaseModel):
    """Fields common to every family; each family adds its own."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    resolution: int = Field(32, ge=1, description="input images are resolution x resolution")
    num_classes: int = Field(10, ge=1)
    channel_multiple: int = Field(
        1,
        ge=1,
        description="kept channel counts rounded to this multiple "
        "(hardware-friendly shapes; fewer distinct kernels to tune)",
    )


# target -> (dimension classes allowed, scopes allowed; "" = the whole network)
TARGETS: dict[str, tuple[tuple[type, ...], tuple[str, ...]]] = {
    "resolution": ((Scale,), ("",)),
    "depth": ((Scale,), ("",)),
    "width": ((Scale,), ("",)),
    "filters": ((Mask,), ("stage", "block", "group")),
    "kernel": ((Choice,), ("block",)),
    "op": ((Choice,), ("edge",)),
    "weights": ((WeightSet,), ("network", "stage", "block", "group")),
}


class Family:
    """Base family. Subclasses define `Spec`, the structure methods, `module` and `cost`."""

    kind: ClassVar[str] = ""
    # what its networks do: "classify" (images -> class logits) or "translate" (image -> image);
    # evaluators declare which they score
    task: ClassVar[str] = "classify"
    # sub-networks share the supernet's weights and are pre-trained on slices of them (the
    # sandwich rule); a user's own network is trained whole, then pruned
    shares_weights: ClassVar[bool] = True
    # the `per:` a weights dimension may take
    weight_scopes: ClassVar[tuple[str, ...]] = ("network", "stage", "block")
    # the state-dict key of the classifier's weight (its rows count the classes)
    head_key: ClassVar[str] = "classifier.weight"
    Spec: ClassVar[type[FamilySpec]] = FamilySpec
    targets: ClassVar[tuple[str, ...]] = ()
    kernel_options: ClassVar[tuple[int, ...]] = ()
    op_options: ClassVar[tuple[str, ...]] = ()
    # `cost` takes well under a millisecond (a formula), so a model of the fitness may read it
    # for every child it ranks; a user's own network is pruned and counted instead (~1 s)
    cheap_cost: ClassVar[bool] = True
    # its networks train on channels-last batches on a CPU (PyTorch's depthwise convolutions run
    # their backward pass several times faster so): true of the built-in families, whose
    # forward passes never view a feature map; a user's network may, and a channels-last tensor
    # refuses most views
    channels_last: ClassVar[bool] = True

    def __init__(self, spec: FamilySpec):
        self.spec = spec
        self.supernet_ops: dict[str, tuple[str, ...]] = {}  # edge -> every op the supernet holds

    @classmethod
    def from_spec(cls, spec: FamilySpec, file: str = "<space>", **objects: Any) -> Family:
        """The family of a validated spec; `file` names the space file in errors."""
        return cls(spec)

    def portable(self) -> dict[str, Any]:
        """Spec fields to rewrite in a run folder's config.yaml so that it reads the same from
        there (paths made absolute); none for the built-in families."""
        return {}

    def describe_scope(self, scope: str) -> str:
        """A few words on what a dimension's scope holds, for `search space` (default: none)."""
        return ""

    def excluded_scopes(self) -> dict[str, str]:
        """Channel groups left out of the space, and why (default: none)."""
        return {}

    def default_per(self, target: str) -> str:
        """The `per:` of a dimension on `target` that names none."""
        return {"filters": "stage", "kernel": "block", "op": "edge", "weights": "stage"}.get(
            target, ""
        )

    def default_dimensions(self) -> dict[str, Any] | None:
        """The `dimensions:` of a space file that names none (None: it must name some)."""
        return None

    @property
    def in_channels(self) -> int:
        """Channels of the network's input images."""
        return 3

    def with_classes(self, num_classes: int) -> Family:
        """The same family with a classifier for `num_classes`."""
        return type(self)(self.spec.model_copy(update={"num_classes": num_classes}))

    def trained_state(self) -> dict | None:
        """Trained weights of the full network that need no pre-training (a user's model whose
        classifier fits the data), or None."""
        return None

    def fingerprint(self) -> dict[str, Any]:
        """What the pre-trained supernet depends on beyond the spec (for its cache key)."""
        return {}

    # --- structure (supernet) -------------------------------------------------------------
    def groups(self) -> dict[str, int]:
        """Every prunable channel group and its size in the supernet."""
        raise NotImplementedError

    def stage_blocks(self) -> dict[str, int]:
        """Stage name -> number of blocks (what a depth scale cuts)."""
        raise NotImplementedError

    def stage_groups(self) -> dict[str, str]:
        """Stage name -> the group of its output channels (shared when residuals tie stages)."""
        raise NotImplementedError

    def block_groups(self) -> dict[str, str]:
        """Block name -> the group a block-level mask prunes (its inner channels)."""
        return {}

    def edges(self) -> list[str]:
        return []

    def default_kernel(self, block: str) -> int:
        raise NotImplementedError

    def qgroups(self) -> list[str]:
        """Names that a weight set can apply to; convs carry one as `qgroup`."""
        return [b for _, _, b in self.blocks()]

    def blocks(self) -> list[tuple[str, int, str]]:
        return [(s, j, f"{s}.b{j}") for s, n in self.stage_blocks().items() for j in range(n)]

    # --- expansion of dimension templates ---------------------------------------------------
    def scopes(
        self, scope_kind: str, depth_dim: str | None = None
    ) -> list[tuple[str, Condition | None]]:
        """The concrete scopes of a template and their conditions (blocks cut by depth)."""
        if scope_kind in ("", "network"):
            return [("", None)]
        if scope_kind == "stage":
            return [(s, None) for s in self.stage_blocks()]
        if scope_kind == "block":
            n = self.stage_blocks()
            return [
                (b, Condition(depth_dim, n[s], j) if depth_dim and j > 0 else None)
                for s, j, b in self.blocks()
            ]
        if scope_kind == "group":
            return [(g, None) for g in self.groups()]
        if scope_kind == "edge":
            return [(e, None) for e in self.edges()]
        raise ValueError(scope_kind)

    def mask_group(self, scope_kind: str, scope: str) -> str:
        if scope_kind == "stage":
            return self.stage_groups()[scope]
        if scope_kind == "block":
            return self.block_groups()[scope]
        return scope

    # --- genome -> Arch ------------------------------------------------------------------------
    def resolve(self, dims: list[Dimension], genome: dict[str, Any]) -> Arch:
        by_target: dict[str, list[Dimension]] = {}
        for d in dims:
            by_target.setdefault(d.target, []).append(d)

        def scalar(target: str, default: float) -> float:
            ds = by_target.get(target)
            return float(genome[ds[0].name]) if ds else default

        res = max(4, int(round(scalar("resolution", 1.0) * self.spec.resolution)))
        depth, width = scalar("depth", 1.0), scalar("width", 1.0)
        masks = {d.scope: tuple(genome[d.name]) for d in by_target.get("filters", [])}
        sizes = {
            g: keep_count(n, masks.get(g), width, self.spec.channel_multiple)
            for g, n in self.groups().items()
        }
        depths = {s: blocks_kept(depth, n) for s, n in self.stage_blocks().items()}
        kernels = {b: self.default_kernel(b) for _, _, b in self.blocks()}
        for d in by_target.get("kernel", []):
            kernels[d.scope] = int(genome[d.name])
        ops = {e: self.default_op() for e in self.edges()}
        for d in by_target.get("op", []):
            ops[d.scope] = genome[d.name]
        quant = {q: "float" for q in self.qgroups()}
        for d in by_target.get("weights", []):
            for b in quant:
                if d.scope in ("", b) or b.startswith(d.scope + "."):
                    quant[b] = genome[d.name]
        return Arch(
            self.kind, res, self.spec.num_classes, sizes, masks, depths, kernels, ops, quant
        )

    def default_op(self) -> str:
        return ""

    # --- model -------------------------------------------------------------------------------
    def module(self, arch: Arch, supernet: bool = False) -> nn.Module:
        raise NotImplementedError

    def build(self, arch: Arch, supernet: nn.Module) -> nn.Module:
        """The physically smaller module of `arch` with weights inherited from `supernet`."""
        return build_subnet(self, arch, supernet)

    def costed_forward(self, model: nn.Module, x):
        """The computation that `cost` counts (the forward pass for single networks)."""
        return model(x)

    def output_shape(self, arch: Arch) -> tuple[int, ...]:
        """Shape of one output (without the batch): class logits for classifiers."""
        return (arch.num_classes,)

    def cost(self, arch: Arch) -> tuple[int, int]:
        """(FLOPs, params) of the built module at batch 1, FLOPs counted as flop_counter does."""
        raise NotImplementedError


def conv_out(h: int, k: int, s: int) -> int:
    return (h + 2 * (k // 2) - k) // s + 1


def conv_cost(
    cin: int, cout: int, k: int, h: int, s: int = 1, *, depthwise: bool = False, bias: bool = False
) -> tuple[int, int, int]:
    """(flops, params, out size) of a square conv with padding k//2 on an h x h input."""
    ho = conv_out(h, k, s)
    per_out = k * k * (1 if depthwise else cin)
    return 2 * cout * per_out * ho * ho, cout * per_out + (cout if bias else 0), ho


def bn_params(c: int) -> int:
    return 2 * c
