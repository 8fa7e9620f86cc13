"""Opening a run folder, finished or still going: its config, space and stored trials, for
show, report, export, seeding and warm starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from search.config import RunCfg, load_run_config
from search.records import TrialRecord, best, pareto_front
from search.store import load_records
from spaces.errors import ConfigError
from spaces.space import Space

REFERENCE = "reference.json"  # the base network evaluated like a candidate (search.run)


@dataclass
class OpenRun:
    """A run folder's config, space and trials (in the order they were stored)."""

    dir: Path
    cfg: RunCfg
    space: Space
    records: list[TrialRecord]

    @property
    def signs(self) -> list[float]:
        return [o.sign for o in self.cfg.objectives]

    @property
    def complete(self) -> list[TrialRecord]:
        return [r for r in self.records if r.complete]

    @property
    def failed(self) -> list[TrialRecord]:
        return [r for r in self.records if not r.complete]

    def front(self) -> list[TrialRecord]:
        return pareto_front(self.records, self.signs)

    def best(self) -> TrialRecord | None:
        return best(self.records, self.signs)

    @property
    def reference(self) -> dict | None:
        """The base network's metrics, evaluated like the candidates (None if not written)."""
        import json

        p = self.dir / REFERENCE
        try:
            return json.loads(p.read_text())["metrics"] if p.exists() else None
        except (ValueError, KeyError):
            return None

    def versus_reference(self, rec: TrialRecord) -> dict[str, str]:
        """A trial against the base: FLOPs and latency as "3.1x fewer" / "2.4x faster", the
        accuracy metrics as a difference in points."""
        ref, out = self.reference, {}
        if not ref:
            return out
        m = rec.metrics
        for key, word in (("flops", "fewer"), ("latency_ms", "faster")):
            if _num(m.get(key)) and _num(ref.get(key)) and m[key] > 0:
                out[key] = f"{ref[key] / m[key]:.2f}x {word}"
        for key in ("val_acc",):
            if _num(m.get(key)) and _num(ref.get(key)):
                scale = 100 if max(abs(m[key]), abs(ref[key])) <= 1 else 1
                out[key] = f"{scale * (m[key] - ref[key]):+.2f} pts"
        return out

    def front_checks(self) -> dict[str, dict]:
        """The front's networks that the latency provider measured again at the end with their
        own kernels tuned (latency.json's `front`: tvm-transfer, tvm-model), by genome id:
        `latency_tuned_ms` and `latency_tuned_source`."""
        return front_checks(self.dir)

    def ranked(self) -> list[TrialRecord]:
        """Complete trials, feasible first, then by the first objective."""
        s = self.signs[0]
        return sorted(self.complete, key=lambda r: (not r.feasible, -s * r.values[0]))


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def open_run(
    path: str | Path,
    space: Space | None = None,
    objectives: list | None = None,
    constraints: list | None = None,
    **objects,
) -> OpenRun:
    """Read a run folder (ConfigError if it is none). Its genomes are read in `space`, its
    objective values and feasibility by `objectives` / `constraints` (default: the run's own);
    `objects`: what Python handed its family (a user's network, `model=`)."""
    path = Path(path)
    if not (path / "config.yaml").exists():
        raise ConfigError(str(path), None, "not a run folder (no config.yaml)")
    cfg, own_space, _ = load_run_config(path / "config.yaml", **objects)
    space = space or own_space
    try:
        records = load_records(
            path,
            cfg.storage,
            space,
            objectives or cfg.objectives,
            cfg.constraints if constraints is None else constraints,
        )
    except KeyError:  # the study is not created yet
        records = []
    return OpenRun(path, cfg, space, records)


def front_checks(run_dir: Path) -> dict[str, dict]:
    """`OpenRun.front_checks` of a run folder (empty without latency.json or checks)."""
    import json

    try:
        checks = json.loads((Path(run_dir) / "latency.json").read_text()).get("front") or []
    except (OSError, ValueError):
        return {}
    out = {}
    for c in checks:
        tuned = c.get("tuned_ms") or c.get("measured_ms")
        if "genome_id" in c and tuned:
            out[c["genome_id"]] = {
                "latency_tuned_ms": tuned,
                "latency_tuned_source": c.get("tuned_source") or c.get("source"),
            }
    return out
