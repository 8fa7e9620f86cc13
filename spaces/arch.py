"""A concrete sub-network as counts (no weights): what a family resolves a genome to, enough
for FLOPs, parameters and building."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Arch:
    """A concrete sub-network: counts, not weights. Enough for FLOPs, params and building."""

    family: str
    resolution: int
    num_classes: int
    sizes: dict[str, int]
    masks: dict[str, tuple] = field(default_factory=dict)
    depths: dict[str, int] = field(default_factory=dict)
    kernels: dict[str, int] = field(default_factory=dict)
    ops: dict[str, str] = field(default_factory=dict)
    quant: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["masks"] = {k: list(v) for k, v in self.masks.items()}
        return d


def keep_count(n: int, mask: tuple | None, width: float, multiple: int = 1) -> int:
    """Filters a group keeps: the mask's ones, then the width multiplier, at least one; with
    `multiple`, counts of at least that many are rounded to its nearest multiple that the mask
    allows (never more filters than the mask keeps); a whole group stays whole."""
    kept = sum(mask) if mask is not None else n
    k = max(1, int(width * kept + 0.5))
    if multiple > 1 and multiple <= k < n:
        r = int(k / multiple + 0.5) * multiple
        k = r if r <= kept else (kept // multiple) * multiple
    return k
