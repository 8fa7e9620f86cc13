"""YAML space files -> Space. Every error names the file, the field and the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from spaces.dims import Dimension, YamlDim
from spaces.errors import ConfigError, GenomeError
from spaces.families import FAMILIES
from spaces.families.base import TARGETS, Family
from spaces.kinds import KINDS
from spaces.space import Space

SPACE_KEYS = {"name", "description", "family", "dimensions", "groups"}
COMMON_DIM_KEYS = {"kind", "target", "per"}
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
        raise ConfigError(
            str(p), None, f"expected a mapping at the top level, got {type(data).__name__}"
        )
    return data


def load_space(path: str | Path, data: dict[str, Any] | None = None) -> Space:
    """Load and validate the space part of a YAML file (run settings are search.config's)."""
    data = read_yaml(path) if data is None else data
    return space_from_dict(data, str(path))


def _err(file, field, reason):
    return ConfigError(file, field, reason)


def space_from_dict(data: dict[str, Any], file: str = "<space>") -> Space:
    """The space of a space file's mapping (its run settings are ignored)."""
    return space_of_family(data, family_from_dict(data.get("family"), file), file)


def family_from_dict(fam_raw: Any, file: str = "<space>", **objects: Any) -> Family:
    """The family a `family:` mapping describes (`objects`: what Python hands over, such as a
    user's model object)."""
    if not isinstance(fam_raw, dict):
        raise _err(file, "family", "missing or not a mapping (needs at least `kind`)")
    kind = fam_raw.get("kind")
    if kind not in FAMILIES:
        raise _err(
            file, "family.kind", f"unknown family {kind!r}; expected one of {', '.join(FAMILIES)}"
        )
    fam_cls = FAMILIES[kind]
    try:
        spec = fam_cls.Spec.model_validate(fam_raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in ("family", *first["loc"]))
        raise _err(file, loc, first["msg"].removeprefix("Value error, ")) from None
    return fam_cls.from_spec(spec, file, **objects)


def space_of_family(data: dict[str, Any], family: Family, file: str = "<space>") -> Space:
    """The space of `family` with the mapping's dimensions (or the family's defaults) and groups."""
    name = data.get("name", Path(file).stem)
    if not isinstance(name, str) or not name:
        raise _err(file, "name", "expected a non-empty string")
    dims_raw = data.get("dimensions")
    if dims_raw is None:
        dims_raw = family.default_dimensions()
    if not isinstance(dims_raw, dict) or not dims_raw:
        raise _err(file, "dimensions", "missing or empty: a space needs at least one dimension")
    depth_dim = next(
        (n for n, d in dims_raw.items() if isinstance(d, dict) and d.get("target", n) == "depth"),
        None,
    )
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
        raise _err(
            file, "groups", "expected a mapping of population name -> list of dimension prefixes"
        )
    for gname, members in groups.items():
        if not isinstance(members, list) or not members:
            raise _err(
                file, f"groups.{gname}", "expected a non-empty list of dimension names or prefixes"
            )
        for m in members:
            if not any(d.name == m or d.name.startswith(f"{m}.") for d in dims):
                raise _err(file, f"groups.{gname}", f"{m!r} matches no dimension")
    return Space(
        name, family, dims, source=file, groups=groups, description=str(data.get("description", ""))
    )


def _expand(file, family, dname, draw, depth_dim) -> list[Dimension]:
    f = f"dimensions.{dname}"
    if not isinstance(draw, dict):
        raise _err(file, f, "expected a mapping with at least `kind`")
    kind = draw.get("kind")
    if kind not in KINDS:
        raise _err(file, f"{f}.kind", f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    allowed = COMMON_DIM_KEYS | KINDS[kind].yaml_keys
    extra = set(draw) - allowed
    if extra:
        raise _err(
            file,
            f"{f}.{sorted(extra)[0]}",
            f"unknown key for a {kind} dimension; allowed: {', '.join(sorted(allowed))}",
        )
    target = draw.get("target", dname)
    if target not in TARGETS or target not in family.targets:
        allowed = ", ".join(t for t in TARGETS if t in family.targets)
        raise _err(
            file,
            f"{f}.target",
            f"{target!r} is not a target of family {family.kind!r}; expected one of {allowed}",
        )
    classes = TARGETS[target][0]
    if KINDS[kind] not in classes:
        raise _err(file, f"{f}.kind", f"target {target!r} needs kind {classes[0].kind}, got {kind}")
    per = draw.get("per", family.default_per(target))
    _check_per(file, f, family, target, per)

    def make(name, scope, cond) -> Dimension:
        try:
            return KINDS[kind].from_yaml(YamlDim(file, f, draw, name, target, scope, cond, family))
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


def _check_per(file: str, f: str, family, target: str, per: str) -> None:
    """The dimension's `per:` fits its target and the family."""
    scopes = TARGETS[target][1]
    if per not in scopes and not (per == "" and "" in scopes):
        raise _err(
            file,
            f"{f}.per",
            f"{per!r} is not allowed for target {target!r}; expected one of {', '.join(scopes)}",
        )
    if target == "weights" and per not in family.weight_scopes:
        raise _err(
            file,
            f"{f}.per",
            f"family {family.kind!r} scopes weight sets per {', '.join(family.weight_scopes)}",
        )
    if per == "edge" and not family.edges():
        raise _err(file, f"{f}.per", f"family {family.kind!r} has no edges")
    if per == "block" and target == "filters" and not family.block_groups():
        raise _err(file, f"{f}.per", f"family {family.kind!r} has no block-level channel groups")
    if per == "group" and not family.groups():
        raise _err(file, f"{f}.per", f"family {family.kind!r} has no channel groups")


def shipped_spaces() -> list[Path]:
    """The YAML spaces that ship with archsearch."""
    return sorted(SHIPPED.glob("*.yaml"))
