"""A user's own network as a family (`kind: model`): its search space is generated from the
network itself.

The network comes from an importable factory (`model: "package.module:factory"` or
`"path/to/file.py:factory"`, with `kwargs`) or as an object from Python, optionally with trained
weights (`weights:`, a state dict read with `weights_only=True`). Torch-Pruning's dependency
graph finds its coupled channel groups (channels tied by residual additions, concatenations,
depthwise convolutions), and each group becomes a `mask` dimension (`per: group`), named after
the first layer in the forward pass that writes it; the convs writing a group can take a weight
set (`per: group`); a `resolution` scale is offered when the network runs at other input sizes
(global pooling). The classifier's outputs are never pruned, nor the layers in `exclude`.

A candidate is the network physically pruned by its genome: a copy of the trained network whose
groups keep the mask's channels (Torch-Pruning slices every coupled layer), so it inherits the
trained weights. Its FLOPs and parameters are counted on the pruned network itself (torch's flop
counter), so they are exact."""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from spaces.arch import Arch
from spaces.builder import quantize_model_
from spaces.errors import ConfigError
from spaces.families.base import Family, FamilySpec
from spaces.layers import input_channels

log = logging.getLogger(__name__)
PRUNABLE = (nn.Conv2d, nn.Linear)


class ModelSpec(FamilySpec):
    kind: Literal["model"] = "model"
    model: str | None = Field(
        None,
        description='"package.module:factory" or "path/to/file.py:factory": a callable that '
        "returns the network (an nn.Module); optional when Python hands the network over",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="the factory's arguments")
    weights: str | None = Field(None, description="a state dict of the network (weights_only)")
    pretrained: bool | None = Field(
        None,
        description="the network is trained already (default: when `weights` is given); if its "
        "classifier fits the dataset's classes, it is not trained again",
    )
    input_shape: list[int] | None = Field(None, description="[3, H, H]: sets `resolution`")
    exclude: list[str] = Field(
        default_factory=list, description="layers (or their parents) whose outputs are not pruned"
    )
    head: str | None = Field(None, description="the classifier layer (default: the last Linear)")
    python_path: list[str] = Field(
        default_factory=list, description="folders to import the factory's module from"
    )
    analysis: dict[str, Any] | None = Field(
        None,
        description="written by archsearch for a network handed over from Python: its channel "
        "groups, so that the run folder reads without the network",
    )

    @model_validator(mode="after")
    def _shape(self):
        if self.input_shape is not None:
            if len(self.input_shape) != 3 or self.input_shape[0] not in (1, 3):
                raise ValueError("input_shape is [C, H, W] with C = 1 (gray) or 3 (RGB)")
            if self.input_shape[1] != self.input_shape[2] or self.input_shape[1] < 1:
                raise ValueError("input_shape: square images only ([3, H, H])")
            self.resolution = self.input_shape[1]
        return self


@dataclass
class Group:
    """Channels that are pruned together."""

    name: str  # the first layer in the forward pass that writes them
    root: str  # Torch-Pruning's root layer: the masks index its output channels
    channels: int
    writers: list[str]  # layers whose outputs are these channels
    convs: list[str]  # the writers that are convolutions (they take the group's weight set)


@dataclass
class Analysis:
    """What the network's dependency graph says, as plain data."""

    groups: list[Group]
    head: str
    head_classes: int
    order: list[str]  # convs and linears, in forward order
    excluded: dict[str, str] = field(default_factory=dict)  # group -> why it is not searched
    other_resolutions: bool = True  # runs at half the input size

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Analysis:
        return cls(**{**d, "groups": [Group(**g) for g in d["groups"]]})


class ModelFamily(Family):
    kind = "model"
    Spec = ModelSpec
    targets = ("resolution", "width", "filters", "weights")
    shares_weights = False
    weight_scopes = ("network", "group")
    cheap_cost = False
    channels_last = False  # its forward is the user's: it may view a feature map

    def __init__(
        self,
        spec: ModelSpec,
        module: nn.Module | None = None,
        file: str = "<space>",
        analysis: Analysis | None = None,
    ):
        super().__init__(spec)
        self.file, self._given, self._template = file, module, None
        self._paths = [*spec.python_path, *_import_paths(file)]
        self._cost: dict[str, tuple[int, int]] = {}
        if analysis is None and spec.analysis is not None and module is None and not spec.model:
            analysis = Analysis.from_dict(spec.analysis)  # the network stayed in Python
        if analysis is None:
            analysis = analyse(self._network(), spec, file)
        self.analysis = analysis
        self.head_key = f"{analysis.head}.weight"
        if not analysis.other_resolutions:
            self.targets = tuple(t for t in self.targets if t != "resolution")

    @classmethod
    def from_spec(cls, spec, file="<space>", model: nn.Module | None = None, **objects):
        if spec.model is None and model is None and spec.analysis is None:
            raise ConfigError(
                file,
                "family.model",
                'required: "package.module:factory" (a network handed over from Python is '
                "resumed from Python: search.api.resume(run_dir, model=net))",
            )
        return cls(spec, module=model, file=file)

    def portable(self) -> dict[str, Any]:
        """The spec's paths made absolute, for a run folder's config.yaml (read from elsewhere)."""
        out: dict[str, Any] = {}
        ref = self.spec.model
        if ref and ":" in ref:
            where, attr = ref.rsplit(":", 1)
            if where.endswith(".py"):
                out["model"] = f"{_resolve(where, self.file).resolve()}:{attr}"
            else:
                found = _module_folder(where, self._paths)
                if found:
                    out["python_path"] = [found, *self.spec.python_path]
        if self.spec.weights:
            out["weights"] = str(_resolve(self.spec.weights, self.file).resolve())
        if self._given is not None:  # the run folder then reads without the network
            out["analysis"] = asdict(self.analysis)
        return out

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_template"], d["_cost"] = None, {}  # rebuilt where it is unpickled
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        for p in self._paths:  # the factory's module imports there as it did here
            if p not in sys.path:
                sys.path.append(p)

    # --- the network --------------------------------------------------------------------------
    def _network(self) -> nn.Module:
        """The user's network as written, with its weights if given."""
        spec = self.spec
        if self._given is not None:
            net = copy.deepcopy(self._given)
        elif not spec.model:
            raise ConfigError(
                self.file,
                "family.model",
                "this run's network was handed over from Python: pass it to read its models "
                "(search.api.result(run_dir, model=net))",
            )
        else:
            net = _call_factory(spec.model, spec.kwargs, self.file, self._paths)
        if spec.weights:
            _load_weights(net, spec.weights, self.file)
        return net

    def _fresh(self) -> nn.Module:
        """The full network with a classifier for the spec's classes (re-initialised if the
        network's own has another number)."""
        net = self._network()
        a = self.analysis
        if self.spec.num_classes != a.head_classes:
            _replace_head(net, a.head, self.spec.num_classes)
        return net

    @property
    def pretrained(self) -> bool:
        p = self.spec.pretrained
        return bool(self.spec.weights) if p is None else p

    def trained_state(self) -> dict | None:
        if self.pretrained and self.spec.num_classes == self.analysis.head_classes:
            return self._fresh().state_dict()
        return None

    def fingerprint(self) -> dict[str, Any]:
        out = {"source": _source_digest(self.spec.model, self.file, self._paths)}
        if self.spec.weights:
            out["weights"] = _file_digest(_resolve(self.spec.weights, self.file))
        return out

    def with_classes(self, num_classes: int) -> ModelFamily:
        spec = self.spec.model_copy(update={"num_classes": num_classes})
        return ModelFamily(spec, module=self._given, file=self.file, analysis=self.analysis)

    def describe_scope(self, scope: str) -> str:
        g = next((g for g in self.analysis.groups if g.name == scope), None)
        if g is None or len(g.writers) < 2:
            return ""
        more = f" and {len(g.writers) - 4} more" if len(g.writers) > 4 else ""
        return "with " + ", ".join(g.writers[1:4]) + more

    def excluded_scopes(self) -> dict[str, str]:
        return dict(self.analysis.excluded)

    @property
    def in_channels(self) -> int:
        return self.spec.input_shape[0] if self.spec.input_shape else 3

    def default_per(self, target: str) -> str:
        return "group" if target in ("filters", "weights") else ""

    def default_dimensions(self) -> dict[str, Any]:
        dims: dict[str, Any] = {"mask": {"kind": "mask", "target": "filters", "per": "group"}}
        if self.analysis.other_resolutions:
            dims["resolution"] = {
                "kind": "scale",
                "target": "resolution",
                "low": 0.5,
                "high": 1.0,
                "step": 0.25,
            }
        return dims

    # --- structure ----------------------------------------------------------------------------
    def groups(self) -> dict[str, int]:
        return {g.name: g.channels for g in self.analysis.groups}

    def stage_blocks(self) -> dict[str, int]:
        return {}

    def stage_groups(self) -> dict[str, str]:
        return {}

    def qgroups(self) -> list[str]:
        return [g.name for g in self.analysis.groups if g.convs]

    def output_shape(self, arch: Arch) -> tuple[int, ...]:
        return (arch.num_classes,)

    # --- models -------------------------------------------------------------------------------
    def module(self, arch: Arch, supernet: bool = False) -> nn.Module:
        """The full network (`supernet`, weights as given) or `arch`'s pruned one."""
        net = self._fresh()
        if not supernet:
            self._prune(net, arch)
        return net

    def build(self, arch: Arch, supernet: nn.Module) -> nn.Module:
        net = copy.deepcopy(supernet)
        self._prune(net, arch)
        quantize_model_(net, arch.quant)
        return net

    def cost(self, arch: Arch) -> tuple[int, int]:
        key = repr((arch.resolution, sorted(arch.sizes.items()), sorted(arch.masks.items())))
        if key not in self._cost:
            from torch.utils.flop_counter import FlopCounterMode

            if self._template is None:
                self._template = self._fresh()
            net = copy.deepcopy(self._template)
            self._prune(net, arch)
            net.eval()
            r = arch.resolution
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                net(torch.zeros(1, self.in_channels, r, r))
            self._cost[key] = (int(fc.get_total_flops()), sum(p.numel() for p in net.parameters()))
        return self._cost[key]

    def _prune(self, net: nn.Module, arch: Arch) -> None:
        """Prune `net` (the full network) in place to `arch`; tag each conv with its group's
        weight set."""
        prune_network(net, self.analysis.groups, arch, self.spec.resolution)
        mods = dict(net.named_modules())
        for g in self.analysis.groups:
            for name in g.convs:
                mods[name].qgroup = g.name  # its weight set (spaces.layers.weight_set_group)


def prune_network(net: nn.Module, groups: list[Group], arch: Arch, resolution: int) -> None:
    """Prune the full network `net` in place: each group keeps its mask's channels (the most
    important of them, by the L1 norm of the root layer's weights, when the width or the channel
    multiple keeps fewer); Torch-Pruning slices every layer coupled to them."""
    import torch_pruning as tp

    mods = dict(net.named_modules())
    drops = {}
    for g in groups:  # chosen on the full network, before any layer changes
        drops[g.name] = sorted(set(range(g.channels)) - set(_kept(g, arch, mods[g.root])))
    if not any(drops.values()):
        return
    was = net.training
    net.eval()  # the trace must not move batch-norm statistics
    x = torch.zeros(1, input_channels(net), resolution, resolution)
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=x)
    for g in groups:
        if drops[g.name]:
            root = mods[g.root]
            fn = tp.prune_conv_out_channels
            if isinstance(root, nn.Linear):
                fn = tp.prune_linear_out_channels
            dg.get_pruning_group(root, fn, idxs=drops[g.name]).prune()
    net.train(was)


def _kept(g: Group, arch: Arch, root: nn.Module) -> list[int]:
    mask = arch.masks.get(g.name)
    cand = [i for i in range(g.channels) if mask is None or mask[i]]
    k = arch.sizes.get(g.name, len(cand))
    if k < len(cand):
        l1 = root.weight.detach().abs().flatten(1).sum(1)
        cand = sorted(sorted(cand, key=lambda i: (-float(l1[i]), i))[:k])
    return cand


# --- reading the user's network ------------------------------------------------------------------
def _import_paths(file: str) -> list[str]:
    """Where a factory's module is looked for besides sys.path: the current folder and the
    space file's, as `python -m` would."""
    paths = [str(Path.cwd())]
    if file and Path(file).exists():
        paths.append(str(Path(file).resolve().parent))
    return paths


def _resolve(path: str, file: str) -> Path:
    """A path from the space file: as given, else relative to the file's folder."""
    p = Path(path).expanduser()
    if not p.exists() and file and not p.is_absolute():
        q = Path(file).resolve().parent / p
        if q.exists():
            return q
    return p


def _module_folder(where: str, paths: list[str]) -> str | None:
    """The folder on `paths` that `where`'s top package or module lies in (None: sys.path)."""
    top = where.split(".")[0]
    for p in paths:
        if (Path(p) / top).is_dir() or (Path(p) / f"{top}.py").is_file():
            return str(Path(p).resolve())
    return None


def _factory(ref: str, file: str, paths: list[str]):
    if ":" not in ref:
        raise ConfigError(file, "family.model", f'{ref!r}: expected "package.module:factory"')
    where, attr = ref.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            path = _resolve(where, file)
            if not path.is_file():
                raise ConfigError(file, "family.model", f"{where!r} does not exist")
            name = "archsearch_model_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            mod = sys.modules.get(name)
            if mod is None:
                spec = importlib.util.spec_from_file_location(name, path)
                mod = importlib.util.module_from_spec(spec)
                sys.modules[name] = mod
                spec.loader.exec_module(mod)
        else:
            for p in paths:
                if p not in sys.path:
                    sys.path.append(p)
            mod = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module may raise anything on import
        raise ConfigError(
            file, "family.model", f"cannot import {where!r}: {type(e).__name__}: {e}"
        ) from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ConfigError(file, "family.model", f"{where!r} has no callable {attr!r}")
    return fn


def _call_factory(ref: str, kwargs: dict, file: str, paths: list[str]) -> nn.Module:
    fn = _factory(ref, file, paths)
    try:
        net = fn(**kwargs)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            file, "family.kwargs", f"{ref}(**kwargs) raised {type(e).__name__}: {e}"
        ) from None
    if not isinstance(net, nn.Module):
        raise ConfigError(
            file, "family.model", f"{ref} returned {type(net).__name__}, not an nn.Module"
        )
    return net


def _load_weights(net: nn.Module, path: str, file: str) -> None:
    p = _resolve(path, file)
    if not p.is_file():
        raise ConfigError(file, "family.weights", f"{path!r} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a file that is no state dict
        raise ConfigError(
            file, "family.weights", f"cannot read {path!r}: {str(e).splitlines()[0]}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()
        raise ConfigError(
            file,
            "family.weights",
            f"{path!r} does not fit the network: {first[-1] if first else e}",
        ) from None


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def _source_digest(ref: str | None, file: str, paths: list[str]) -> str:
    """The factory's source file, so that a changed network is not served a stale cache."""
    if not ref:
        return ""
    where = ref.rsplit(":", 1)[0]
    if where.endswith(".py"):
        return _file_digest(_resolve(where, file))
    try:
        spec = importlib.util.find_spec(where)
    except (ImportError, ValueError):
        return ""
    return _file_digest(Path(spec.origin)) if spec and spec.origin else ""


def _replace_head(net: nn.Module, name: str, classes: int) -> None:
    """A new classifier for `classes` in place of `name` (a Linear or a Conv2d)."""
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    old = getattr(parent, attr)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(
            old.in_channels,
            classes,
            old.kernel_size,
            old.stride,
            old.padding,
            bias=old.bias is not None,
        )
    setattr(parent, attr, new)


# --- the dependency graph ------------------------------------------------------------------------
class _Tracker:
    """Which layer is running (forward hooks), so that an error can name it."""

    def __init__(self, net: nn.Module):
        self.stack: list[str] = []
        self.order: list[str] = []
        self.hooks = []
        for name, m in net.named_modules():
            if name:
                self.hooks.append(m.register_forward_pre_hook(self._enter(name)))
                self.hooks.append(m.register_forward_hook(self._leave(name)))
        self.prunable = {n for n, m in net.named_modules() if isinstance(m, PRUNABLE)}

    def _enter(self, name):
        def hook(_m, _x):
            self.stack.append(name)
            if name in self.prunable and name not in self.order:
                self.order.append(name)

        return hook

    def _leave(self, name):
        def hook(_m, _x, _y):
            if self.stack and self.stack[-1] == name:
                self.stack.pop()

        return hook

    def where(self) -> str:
        return self.stack[-1] if self.stack else "(outside any layer)"

    def close(self):
        for h in self.hooks:
            h.remove()


def analyse(net: nn.Module, spec: ModelSpec, file: str) -> Analysis:
    """Trace the network, find its coupled channel groups and check that each can be pruned."""
    import torch_pruning as tp

    net.eval()
    r = spec.resolution
    x = torch.zeros(1, spec.input_shape[0] if spec.input_shape else 3, r, r)
    tracker, what = _Tracker(net), "the forward pass"
    try:
        with torch.no_grad():
            net(x)
        what = "torch-pruning's trace"
        dg = tp.DependencyGraph().build_dependency(net, example_inputs=x)
    except Exception as e:  # noqa: BLE001 - whatever the user's forward raises
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ConfigError(
            file,
            "family.model",
            f"{what} fails at layer {tracker.where()!r}: {type(e).__name__}: {msg}",
        ) from None
    finally:
        tracker.close()
    mods = dict(net.named_modules())
    head = _head(spec, tracker.order, mods, file)
    ignored = [mods[head]] + _excluded(spec, mods, file)
    groups = _groups(dg, ignored, mods, tracker.order)
    analysis = Analysis(groups, head, _out_features(mods[head]), tracker.order)
    _check_prunable(net, analysis, spec)
    analysis.other_resolutions = _runs_at(net, max(1, r // 2))
    if not analysis.groups:
        raise ConfigError(
            file,
            "family.model",
            "the network has no channel group to prune "
            "(every one is excluded or tied to the classifier's output)",
        )
    return analysis


def _head(spec: ModelSpec, order: list[str], mods: dict, file: str) -> str:
    if spec.head is not None:
        if spec.head not in mods or not isinstance(mods[spec.head], PRUNABLE):
            raise ConfigError(file, "family.head", f"no Linear or Conv2d layer named {spec.head!r}")
        return spec.head
    linears = [n for n in order if isinstance(mods[n], nn.Linear)]
    if linears:
        return linears[-1]
    if order:
        return order[-1]
    raise ConfigError(file, "family.model", "the network has no Conv2d or Linear layer")


def _out_features(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _excluded(spec: ModelSpec, mods: dict, file: str) -> list[nn.Module]:
    out = []
    for i, e in enumerate(spec.exclude):
        hit = [
            m
            for n, m in mods.items()
            if n and (n == e or n.startswith(e + ".")) and isinstance(m, PRUNABLE)
        ]
        if not hit:
            raise ConfigError(
                file, f"family.exclude.{i}", f"no Conv2d or Linear layer named {e!r} or under it"
            )
        out += hit
    return out


def _groups(dg, ignored: list[nn.Module], mods: dict, order: list[str]) -> list[Group]:
    names = {m: n for n, m in mods.items()}
    rank = {n: i for i, n in enumerate(order)}
    groups = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE):
        root = group[0].dep.target.module
        writers = []
        for dep, _ in group:
            m = dep.target.module
            if isinstance(m, PRUNABLE) and dg.is_out_channel_pruning_fn(dep.handler) and m in names:
                if names[m] not in writers:
                    writers.append(names[m])
        writers.sort(key=lambda n: rank.get(n, len(rank)))
        channels = dg.get_out_channels(root)
        convs = [n for n in writers if isinstance(mods[n], nn.Conv2d)]
        groups.append(
            Group(writers[0] if writers else names[root], names[root], channels, writers, convs)
        )
    groups.sort(key=lambda g: rank.get(g.name, len(rank)))
    return groups


def _check_prunable(net: nn.Module, analysis: Analysis, spec: ModelSpec) -> None:
    """Prune every group by half on a copy and run it; groups whose pruning breaks the forward
    pass (a reshape to a fixed size, say) are left out of the search, with a warning."""
    bad = _failing(net, analysis.groups, spec.resolution)
    if bad and len(analysis.groups) > 1:
        bad = [g for g in analysis.groups if _failing(net, [g], spec.resolution)]
    for g in bad:
        analysis.excluded[g.name] = "pruning it breaks the forward pass"
        log.warning("layer group %s left out: pruning it breaks the forward pass", g.name)
    analysis.groups = [g for g in analysis.groups if g.name not in analysis.excluded]


def _failing(net: nn.Module, groups: list[Group], resolution: int) -> list[Group]:
    """`groups` if pruning each to every other channel breaks the network, else none."""
    masks = {g.name: tuple(int(i % 2 == 0) for i in range(g.channels)) for g in groups}
    sizes = {g.name: sum(m) for g, m in zip(groups, masks.values())}
    probe = copy.deepcopy(net)
    try:
        prune_network(probe, groups, Arch("model", resolution, 0, sizes, masks), resolution)
        with torch.no_grad():
            probe.eval()(torch.zeros(1, input_channels(probe), resolution, resolution))
    except Exception:  # noqa: BLE001 - any failure of the pruned network
        return groups
    return []


def _runs_at(net: nn.Module, r: int) -> bool:
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, input_channels(net), r, r))
        return True
    except Exception:  # noqa: BLE001
        return False
