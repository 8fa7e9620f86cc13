"""YAML space files -> Space. Every error names the file, the field and the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from spaces.dims import KINDS, WEIGHT_SETS, Choice, Dimension, Mask, Scale, WeightSet
from spaces.errors import ConfigError, GenomeError
from spaces.families import FAMILIES
from spaces.families.base import TARGETS
from spaces.space import Space

SPACE_KEYS = {"name", "description", "family", "dimensions", "groups"}
DIM_KEYS = {
    "mask": {"kind", "target", "per", "min_keep", "length", "keep_prob"},
    "choice": {"kind", "target", "per", "options", "default"},
    "weightset": {"kind", "target", "per", "options", "default"},
    "scale": {"kind", "target", "per", "low", "high", "step", "default"},
}
DEFAULT_PER = {"filters": "stage", "kernel": "block", "op": "edge", "weights": "stage"}
SHIPPED = Path(__file__).resolve().parent


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping or fail with ConfigError naming the file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(str(p), None, "file not found")
    if p.is_dir():
        raise ConfigError(str(p), None, "is a folder, expected a YAML file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(str(p), None, f"invalid YAML{at}: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(p), None, "not a text file") from None
    if not isinstance(data, dict):
        raise ConfigError(str(p), None, f"expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_space(path: str | Path, data: dict[str, Any] | None = None) -> Space:
    """Load and validate the space part of a YAML file (run settings are search.config's)."""
    data = read_yaml(path) if data is None else data
    return space_from_dict(data, str(path))


def _err(file, field, reason):
    return ConfigError(file, field, reason)


def _num(file, field, v, *, integer=False):
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok:
        raise _err(file, field, f"expected {'an integer' if integer else 'a number'}, got {v!r}")
    return v


def space_from_dict(data: dict[str, Any], file: str = "<space>") -> Space:
    name = data.get("name", Path(file).stem)
    if not isinstance(name, str) or not name:
        raise _err(file, "name", "expected a non-empty string")
    fam_raw = data.get("family")
    if not isinstance(fam_raw, dict):
        raise _err(file, "family", "missing or not a mapping (needs at least `kind`)")
    kind = fam_raw.get("kind")
    if kind not in FAMILIES:
        raise _err(file, "family.kind", f"unknown family {kind!r}; expected one of {', '.join(FAMILIES)}")
    fam_cls = FAMILIES[kind]
    try:
        spec = fam_cls.Spec.model_validate(fam_raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in ("family", *first["loc"]))
        raise _err(file, loc, first["msg"]) from None
    family = fam_cls(spec)

    dims_raw = data.get("dimensions")
    if not isinstance(dims_raw, dict) or not dims_raw:
        raise _err(file, "dimensions", "missing or empty: a space needs at least one dimension")
    depth_dim = next((n for n, d in dims_raw.items() if isinstance(d, dict) and d.get("target", n) == "depth"), None)
    dims: list[Dimension] = []
    for dname, draw in dims_raw.items():
        dims.extend(_expand(file, family, str(dname), draw, depth_dim))
    seen = set()
    for d in dims:
        if d.name in seen:
            raise _err(file, f"dimensions.{d.name}", "defined twice")
        seen.add(d.name)
    for t in ("resolution", "depth", "width"):
        if sum(d.target == t for d in dims) > 1:
            raise _err(file, "dimensions", f"more than one dimension targets {t!r}")

    groups = data.get("groups") or {}
    if not isinstance(groups, dict):
        raise _err(file, "groups", "expected a mapping of population name -> list of dimension prefixes")
    for gname, members in groups.items():
        if not isinstance(members, list) or not members:
            raise _err(file, f"groups.{gname}", "expected a non-empty list of dimension names or prefixes")
        for m in members:
            if not any(d.name == m or d.name.startswith(f"{m}.") for d in dims):
                raise _err(file, f"groups.{gname}", f"{m!r} matches no dimension")
    return Space(name, family, dims, source=file, groups=groups, description=str(data.get("description", "")))


def _expand(file, family, dname, draw, depth_dim) -> list[Dimension]:
    f = f"dimensions.{dname}"
    if not isinstance(draw, dict):
        raise _err(file, f, "expected a mapping with at least `kind`")
    kind = draw.get("kind")
    if kind not in KINDS:
        raise _err(file, f"{f}.kind", f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    extra = set(draw) - DIM_KEYS[kind]
    if extra:
        raise _err(file, f"{f}.{sorted(extra)[0]}", f"unknown key for a {kind} dimension; allowed: {', '.join(sorted(DIM_KEYS[kind]))}")
    target = draw.get("target", dname)
    if target not in TARGETS or target not in family.targets:
        allowed = ", ".join(t for t in TARGETS if t in family.targets)
        raise _err(file, f"{f}.target", f"{target!r} is not a target of family {family.kind!r}; expected one of {allowed}")
    classes, scopes = TARGETS[target]
    if KINDS[kind] not in classes:
        raise _err(file, f"{f}.kind", f"target {target!r} needs kind {classes[0].kind}, got {kind}")
    per = draw.get("per", DEFAULT_PER.get(target, ""))
    if per not in scopes and not (per == "" and "" in scopes):
        raise _err(file, f"{f}.per", f"{per!r} is not allowed for target {target!r}; expected one of {', '.join(scopes)}")
    if per == "edge" and not family.edges():
        raise _err(file, f"{f}.per", f"family {family.kind!r} has no edges")
    if per == "block" and target == "filters" and not family.block_groups():
        raise _err(file, f"{f}.per", f"family {family.kind!r} has no block-level channel groups")

    def make(name, scope, cond) -> Dimension:
        try:
            return _make_dim(file, f, kind, draw, name, target, scope, cond, family, per)
        except GenomeError as e:
            raise _err(file, f, e.reason) from None

    scoped = family.scopes(per, depth_dim)
    if per in ("", "network"):
        return [make(dname, "", None)]
    if per == "stage" and target == "filters":  # stages tied by residuals share one group
        seen, out = set(), []
        for s, c in scoped:
            g = family.mask_group(per, s)
            if g not in seen:
                seen.add(g)
                out.append(make(f"{dname}.{s}", g, c))
        return out
    if target == "filters":
        return [make(f"{dname}.{s}", family.mask_group(per, s), c) for s, c in scoped]
    return [make(f"{dname}.{s}", s, c) for s, c in scoped]


def _make_dim(file, f, kind, d, name, target, scope, cond, family, per) -> Dimension:
    if kind == "mask":
        n = family.groups()[scope]
        length = d.get("length", n)
        _num(file, f"{f}.length", length, integer=True)
        if length != n:
            rel = "longer" if length > n else "shorter"
            raise _err(file, f"{f}.length", f"mask of length {length} is {rel} than its layer group {scope!r} ({n} filters)")
        mk = d.get("min_keep", 1)
        _num(file, f"{f}.min_keep", mk, integer=True)
        if mk < 1:
            raise _err(file, f"{f}.min_keep", f"must be at least 1 (a layer needs a filter), got {mk}")
        if mk > n:
            raise _err(file, f"{f}.min_keep", f"{mk} is more than the {n} filters of group {scope!r}")
        kp = d.get("keep_prob", [0.25, 1.0])
        if (not isinstance(kp, list) or len(kp) != 2 or not all(isinstance(x, (int, float)) for x in kp)
                or not 0 <= kp[0] <= kp[1] <= 1):
            raise _err(file, f"{f}.keep_prob", f"expected [low, high] with 0 <= low <= high <= 1, got {kp!r}")
        return Mask(name, target, scope, cond, length=n, min_keep=mk, keep_prob=tuple(kp))
    if kind in ("choice", "weightset"):
        opts = d.get("options")
        if not isinstance(opts, list) or not opts:
            raise _err(file, f"{f}.options", "must be a non-empty list")
        if len(set(map(repr, opts))) != len(opts):
            raise _err(file, f"{f}.options", "has duplicates")
        if kind == "weightset":
            bad = [o for o in opts if o not in WEIGHT_SETS]
            if bad:
                raise _err(file, f"{f}.options", f"unknown weight set {bad[0]!r}; expected from {', '.join(WEIGHT_SETS)}")
        if target == "kernel":
            bad = [o for o in opts if o not in family.kernel_options or isinstance(o, bool)]
            if bad:
                raise _err(file, f"{f}.options", f"kernel {bad[0]!r} not supported; expected from {list(family.kernel_options)}")
            default = d.get("default", max(opts))
        elif target == "op":
            bad = [o for o in opts if o not in family.op_options]
            if bad:
                raise _err(file, f"{f}.options", f"unknown op {bad[0]!r}; expected from {', '.join(family.op_options)}")
            default = d.get("default", family.default_op() if family.default_op() in opts else opts[-1])
        else:
            default = d.get("default")
        if default is not None and default not in opts:
            raise _err(file, f"{f}.default", f"{default!r} is not one of the options")
        cls = WeightSet if kind == "weightset" else Choice
        return cls(name, target, scope, cond, default=default, options=tuple(opts))
    # scale
    low, high = d.get("low"), d.get("high")
    if low is None or high is None:
        raise _err(file, f"{f}.{'low' if low is None else 'high'}", "required for a scale")
    _num(file, f"{f}.low", low)
    _num(file, f"{f}.high", high)
    if low > high:
        raise _err(file, f"{f}.low", f"low {low} is greater than high {high}")
    if low <= 0:
        raise _err(file, f"{f}.low", f"a multiplier must be positive, got {low}")
    step = d.get("step")
    if step is not None:
        _num(file, f"{f}.step", step)
        if step <= 0:
            raise _err(file, f"{f}.step", f"must be positive, got {step}")
    default = d.get("default")
    dim = Scale(name, target, scope, cond, default=None, low=float(low), high=float(high),
                step=float(step) if step else None)
    if default is not None:
        try:
            dim.default = dim.validate(default)
        except GenomeError as e:
            raise _err(file, f"{f}.default", e.reason) from None
    return dim


def shipped_spaces() -> list[Path]:
    """The YAML spaces that ship with archsearch."""
    return sorted(SHIPPED.glob("*.yaml"))
