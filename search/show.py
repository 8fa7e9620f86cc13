"""`search show RUN_DIR`: the Pareto front and the best trials as a table (also of a live run)."""

from __future__ import annotations

from search.records import TrialRecord
from search.runs import open_run

COLS = ("val_acc", "test_acc", "latency_ms", "flops", "params", "model_bits", "wall_time_s")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v / 1e6:.3f}M"
    return str(v)


def table(rows: list[TrialRecord], metrics: list[str], extra=None) -> str:
    """Trials as a text table; `extra(record) -> {column: text}` adds columns."""
    more = [extra(r) for r in rows] if extra else [{} for _ in rows]
    extra_cols = list(dict.fromkeys(k for m in more for k in m))
    head = ["trial", "genome_id", *metrics, *extra_cols]
    body = [
        [str(r.number), r.genome_id, *(_fmt(r.metrics.get(m, "")) for m in metrics)]
        + [x.get(k, "") for k in extra_cols]
        for r, x in zip(rows, more)
    ]
    w = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head))]
    lines += ["  ".join(c.ljust(w[i]) for i, c in enumerate(b)) for b in body]
    return "\n".join(lines)


def show(run_dir: str, top: int = 10) -> int:
    run = open_run(run_dir)
    cfg, space, done, failed = run.cfg, run.space, run.complete, run.failed
    objs = ", ".join(f"{o.direction} {o.metric}" for o in cfg.objectives)
    print(
        f"{run.dir}: space {space.name}, optimizer {cfg.optimizer.name}, "
        f"{len(done)}/{cfg.budget} complete, "
        f"{len(failed)} failed; objectives: {objs}"
    )
    own = [o.metric for o in cfg.objectives]
    metrics = [
        m for m in own + [c for c in COLS if c not in own] if any(m in r.metrics for r in done)
    ]
    if not done:
        print("no complete trial yet")
        return 0
    front = run.front()
    ref = run.reference
    if ref:
        print(
            "\nbase (the full network, fine-tuned and timed like the candidates): "
            + ", ".join(f"{m} {_fmt(ref[m])}" for m in metrics if m in ref)
        )
    checks = run.front_checks()

    def front_extra(r):
        out = {f"vs base {k}": v for k, v in run.versus_reference(r).items()}
        if checks:  # the latency measured at the run's end with the network's own kernels tuned
            c = checks.get(r.genome_id)
            out["latency_tuned_ms"] = _fmt(c["latency_tuned_ms"]) if c else ""
        return out

    print(f"\nPareto front ({len(front)} trials):")
    print(table(front, metrics, front_extra))
    if checks:
        print(
            "latency_ms: the figure the search ranked by; latency_tuned_ms: the network measured "
            "at the run's end with its own kernels tuned (latency.json)"
        )
    ranked = run.ranked()[:top]
    print(f"\nbest {len(ranked)} by {cfg.objectives[0].metric}:")
    print(table(ranked, metrics))
    b = run.best()
    print(f"\nbest trial {b.number} ({b.genome_id}); model in {run.dir / 'best'}")
    if failed:
        print("\nfailed trials: " + "; ".join(f"{r.number}: {r.reason}" for r in failed[:5]))
    return 0
