"""`search show RUN_DIR`: the Pareto front and the best trials as a table (also of a live run)."""

from __future__ import annotations

from pathlib import Path

from spaces.errors import ConfigError

from search.config import load_run_config
from search.records import TrialRecord, best, pareto_front
from search.store import load_records

COLS = ("val_acc", "test_acc", "latency_ms", "flops", "params", "model_bits", "wall_time_s")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v / 1e6:.3f}M"
    return str(v)


def table(rows: list[TrialRecord], metrics: list[str]) -> str:
    head = ["trial", "genome_id", *metrics]
    body = [[str(r.number), r.genome_id, *(_fmt(r.metrics.get(m, "")) for m in metrics)] for r in rows]
    w = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head))]
    lines += ["  ".join(c.ljust(w[i]) for i, c in enumerate(b)) for b in body]
    return "\n".join(lines)


def show(run_dir: str, top: int = 10) -> int:
    path = Path(run_dir)
    if not (path / "config.yaml").exists():
        raise ConfigError(str(path), None, "not a run folder (no config.yaml)")
    cfg, space, _ = load_run_config(path / "config.yaml")
    try:
        records = load_records(path, cfg.storage, space, cfg.objectives, cfg.constraints)
    except KeyError:
        records = []
    signs = [1.0 if o.direction == "maximize" else -1.0 for o in cfg.objectives]
    done = [r for r in records if r.complete]
    failed = [r for r in records if not r.complete]
    objs = ", ".join(f"{o.direction} {o.metric}" for o in cfg.objectives)
    print(f"{path}: space {space.name}, optimizer {cfg.optimizer.name}, {len(done)}/{cfg.budget} complete, "
          f"{len(failed)} failed; objectives: {objs}")
    metrics = [o.metric for o in cfg.objectives] + [c for c in COLS if c not in {o.metric for o in cfg.objectives}]
    metrics = [m for m in metrics if any(m in r.metrics for r in done)]
    if not done:
        print("no complete trial yet")
        return 0
    front = pareto_front(records, signs)
    print(f"\nPareto front ({len(front)} trials):")
    print(table(front, metrics))
    ranked = sorted(done, key=lambda r: (not r.feasible, -signs[0] * r.values[0]))[:top]
    print(f"\nbest {len(ranked)} by {cfg.objectives[0].metric}:")
    print(table(ranked, metrics))
    b = best(records, signs)
    print(f"\nbest trial {b.number} ({b.genome_id}); model in {path / 'best'}")
    if failed:
        print(f"\nfailed trials: " + "; ".join(f"{r.number}: {r.reason}" for r in failed[:5]))
    return 0
