"""The tabular evaluator: NAS-Bench-201's accuracies and per-device latencies, looked up."""

from __future__ import annotations

import csv
from pathlib import Path

from evaluators.base import EvalResult, Evaluator
from spaces.errors import ConfigError
from spaces.families.cell import arch_str
from spaces.space import Genome, Space

NB201_ACC = {"cifar10": "c10_test", "cifar100": "c100_test", "imagenet16": "in16_test"}


def _read_table(p: Path, device: str, config_file: str | None) -> tuple[dict, str]:
    """arch_str -> the accuracy columns and the device's latency column, as numbers."""
    with open(p, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "arch_str" not in cols:
            raise ConfigError(config_file, "evaluator.table", f"{str(p)!r} has no arch_str column")
        lat_col = f"lat_{device}"
        if lat_col not in cols:
            devs = sorted(c[4:] for c in cols if c.startswith("lat_"))
            raise ConfigError(
                config_file,
                "evaluator.table_latency",
                f"unknown device {device!r}; the table has {', '.join(devs)}",
            )
        keep = ["c10_test", "c100_test", "in16_test", lat_col]
        rows = {}
        for line, r in enumerate(reader, start=2):
            try:
                rows[r["arch_str"]] = {k: float(r[k]) for k in keep}
            except (TypeError, ValueError):
                bad = next(k for k in keep if not _is_number(r.get(k)))
                raise ConfigError(
                    config_file,
                    "evaluator.table",
                    f"{str(p)!r} line {line}: {bad} is {r.get(bad)!r}, not a number",
                ) from None
    return rows, lat_col


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


class TableEvaluator(Evaluator):
    """NAS-Bench-201 lookup: test accuracies and measured latencies, no training."""

    kind = "table"

    def __init__(
        self,
        space: Space,
        path: str,
        dataset: str = "cifar10",
        table_latency: str = "raspi4",
        config_file: str | None = None,
    ):
        if space.family.kind != "cell":
            raise ConfigError(
                config_file,
                "evaluator.kind",
                f"the table evaluator needs a cell space, {space.name!r} is {space.family.kind}",
            )
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(config_file, "evaluator.table", f"table {str(p)!r} does not exist")
        if dataset not in NB201_ACC:
            raise ConfigError(
                config_file,
                "evaluator.dataset",
                f"unknown dataset {dataset!r}; expected one of {', '.join(NB201_ACC)}",
            )
        try:
            self.rows, lat_col = _read_table(p, table_latency, config_file)
        except (UnicodeDecodeError, csv.Error) as e:
            raise ConfigError(
                config_file, "evaluator.table", f"{str(p)!r} is not a CSV table ({e})"
            ) from None
        self.space, self.acc_col, self.lat_col, self.table_latency = (
            space,
            NB201_ACC[dataset],
            lat_col,
            table_latency,
        )
        self._cost: dict[str, dict] = {}

    @classmethod
    def from_config(cls, cfg, space: Space, file: str | None) -> TableEvaluator:
        """The table's own latency column (`evaluator.table_latency`) is its latency: `latency:` is
        unused."""
        e = cfg.evaluator
        return cls(space, e.table, e.dataset, e.table_latency, file)

    metrics = (
        "val_acc",
        "test_acc",
        "c10_test",
        "c100_test",
        "in16_test",
        "latency_ms",
        "flops",
        "params",
    )

    known_metrics = ("latency_ms", "flops", "params")

    def known(self, genome: Genome, names: frozenset[str] | None = None) -> dict[str, float]:
        """The device's latency is a lookup, FLOPs and parameters analytic: all known before the
        accuracy is looked at."""
        row = self.rows.get(arch_str(self.space.arch(genome).ops))
        costs = names is None or {"flops", "params"} & names
        out = dict(self._costs(genome)) if costs else {}
        if row is not None:
            out["latency_ms"] = row[self.lat_col]
        return out

    def _costs(self, genome: Genome) -> dict:
        gid = self.space.genome_id(genome)
        if gid not in self._cost:
            self._cost[gid] = self.space.cost(genome)
        return self._cost[gid]

    def evaluate(self, genome: Genome, seed: int = 0, report=None) -> EvalResult:
        gid = self.space.genome_id(genome)
        arch = self.space.arch(genome)
        key = arch_str(arch.ops)
        row = self.rows.get(key)
        if row is None:
            return EvalResult(gid, "failed", reason=f"{key} is not in the table")
        acc = row[self.acc_col] / 100.0
        m = {
            "val_acc": acc,
            "test_acc": acc,
            "c10_test": row["c10_test"],
            "c100_test": row["c100_test"],
            "in16_test": row["in16_test"],
            "latency_ms": row[self.lat_col],
            **self._costs(genome),
        }
        return EvalResult(gid, "complete", m)
