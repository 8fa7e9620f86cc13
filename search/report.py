"""`search report RUN_DIR`: report.html and its PNGs for any run, also one still going.

- `front_latency.png`, `front_flops.png`: accuracy against latency and against FLOPs, every
  complete trial, the Pareto front joined, the supernet (the full genome) marked;
- `progress.png`: best-so-far of the first objective and the hypervolume of the first two
  objectives over the trials;
- `dimensions.png`: how the trials spread over each dimension of the space."""

from __future__ import annotations

import html
import json
import logging
import math
import os
import time
from pathlib import Path

from search.hypervolume import hypervolume_2d
from search.records import TrialRecord, dominates
from search.runs import open_run
from spaces.dims import Choice, Mask, Scale

log = logging.getLogger(__name__)
ACC_METRICS = ("val_acc", "test_acc", "c10_test", "fitness")


def _accuracy_metric(cfg, records) -> tuple[str, float]:
    """The metric the front plots put upward: the first maximised objective, else an accuracy."""
    for o in cfg.objectives:
        if o.sign > 0:
            return o.metric, 1.0
    for m in ACC_METRICS:
        if any(m in r.metrics for r in records):
            return m, 1.0
    return cfg.objectives[0].metric, -1.0


def _front2(
    points: list[tuple[float, float, TrialRecord]],
) -> list[tuple[float, float, TrialRecord]]:
    """Non-dominated points for (x down, y up), by x."""
    out = [
        p
        for p in points
        if not any(dominates([q[1], q[0]], [p[1], p[0]], [1.0, -1.0]) for q in points)
    ]
    return sorted(out, key=lambda p: p[0])


def _plot_front(
    path: Path, records, acc: str, x: str, xlabel: str, base: tuple[dict, str] | None
) -> bool:
    """Accuracy against `x` for every complete trial, the front joined, and the base network
    marked (`base`: its metrics and what they are)."""
    import matplotlib.pyplot as plt

    pts = [
        (float(r.metrics[x]), float(r.metrics[acc]), r)
        for r in records
        if r.complete
        and x in r.metrics
        and acc in r.metrics
        and _finite(r.metrics[x], r.metrics[acc])
    ]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=16, alpha=0.5, label="trials")
    fr = _front2(pts)
    ax.plot([p[0] for p in fr], [p[1] for p in fr], "r-o", ms=5, label=f"Pareto front ({len(fr)})")
    if base and _finite(base[0].get(x), base[0].get(acc)):
        ax.scatter([base[0][x]], [base[0][acc]], marker="*", s=220, c="k", zorder=5, label=base[1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(acc)
    if x == "flops":
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _finite(*vs) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in vs)


def hypervolume_curve(
    records: list[TrialRecord], signs: list[float]
) -> tuple[list[float], list[float]]:
    """Hypervolume of the first two objectives after each trial; the reference point is the
    worst value of each objective over the whole run."""
    done = [r for r in records if r.complete and r.values and len(r.values) >= 2]
    if not done:
        return [], []
    ref = [min(s * r.values[i] for r in done) * s for i, s in enumerate(signs[:2])]
    xs, hv, pts = [], [], []
    for r in records:
        if r.complete and r.values:
            pts.append(r.values[:2])
        xs.append(r.number)
        hv.append(hypervolume_2d(pts, signs[:2], ref) if pts else 0.0)
    return xs, hv


def _plot_progress(path: Path, records, cfg, signs) -> None:
    import matplotlib.pyplot as plt

    two = len(cfg.objectives) >= 2
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(11 if two else 6, 4))
    axes = axes if two else [axes]
    xs, ys, cur = [], [], None
    for r in records:
        if r.complete and r.values:
            v = r.values[0]
            cur = v if cur is None or signs[0] * v > signs[0] * cur else cur
        if cur is not None:
            xs.append(r.number)
            ys.append(cur)
    axes[0].step(xs, ys, where="post")
    axes[0].set_xlabel("trial")
    axes[0].set_ylabel(f"best {cfg.objectives[0].metric} so far")
    axes[0].grid(alpha=0.3)
    if two:
        hx, hv = hypervolume_curve(records, signs)
        axes[1].plot(hx, hv)
        axes[1].set_xlabel("trial")
        axes[1].set_ylabel(f"hypervolume ({cfg.objectives[0].metric} x {cfg.objectives[1].metric})")
        axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_dimensions(path: Path, records, space, limit: int = 24) -> None:
    import matplotlib.pyplot as plt

    dims = list(space.dims.values())[:limit]
    n = len(dims)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    done = [r for r in records if r.complete]
    for ax, d in zip(axes.flat, dims):
        vals = [r.genome[d.name] for r in done if d.name in r.genome]
        if isinstance(d, Mask):
            ax.hist([sum(v) / len(v) for v in vals], bins=10, range=(0, 1))
            ax.set_xlabel("kept fraction", fontsize=7)
        elif isinstance(d, Scale):
            ax.hist([float(v) for v in vals], bins=10, range=(d.low, d.high))
        elif isinstance(d, Choice):
            opts = [str(o) for o in d.options]
            ax.bar(range(len(opts)), [sum(str(v) == o for v in vals) for o in opts])
            ax.set_xticks(range(len(opts)), opts, rotation=30, fontsize=6, ha="right")
        ax.set_title(d.name, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(
        f"trials per dimension ({len(done)} complete)"
        + (f", first {limit} dimensions" if len(space.dims) > limit else ""),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _base_point(run) -> tuple[dict, str] | None:
    """The base network's point: evaluated like the candidates (reference.json), else the
    full genome's own trial, else the pre-trained supernet (supernet.json)."""
    if run.reference:
        return run.reference, "base (fine-tuned like the candidates)"
    full_id = run.space.genome_id(run.space.full())
    full = [r for r in run.complete if r.genome_id == full_id]
    if full:
        return full[0].metrics, "base (its own trial)"
    p = run.dir / "supernet.json"
    return (json.loads(p.read_text()), "base (pre-trained supernet)") if p.exists() else None


def _latency_section(path: Path) -> str:
    """Where the run's latencies came from (latency.json): the tuning database's reuse and, for
    the latency model, its error against tuned whole-network measurements."""
    f = path / "latency.json"
    if not f.exists():
        return ""
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError:
        return ""
    e = html.escape
    target = e(str(d.get("target", "")))
    items = [f"provider <b>{e(str(d.get('provider')))}</b>, target <code>{target}</code>"]
    if "tasks_seen" in d:
        items.append(
            f"kernels seen {d['tasks_seen']}, tuned in this run {d.get('tasks_tuned', 0)} "
            f"({d.get('tuning_s', 0):.0f} s of tuning)"
        )
    if d.get("holdout_mape") is not None:
        items.append(
            f"latency model: fitted on {d.get('fit_networks')} networks, "
            f"error on {len(d.get('holdout', []))} held-out networks "
            f"<b>{d['holdout_mape']:.1f} %</b> (mean absolute percentage)"
        )
    if d.get("front_mape") is not None:
        items.append(
            "error on the Pareto front measured with tuned kernels "
            f"({len(d.get('front', []))} networks): "
            f"<b>{d['front_mape']:.1f} %</b>"
        )
    return "<h2>Latency</h2><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v / 1e6:.3f} M"
    return html.escape(str(v))


def _figures(run, acc: str) -> list[tuple[str, str]]:
    """The PNGs of a run (those it has data for), with their captions."""
    path, records, space = run.dir, run.records, run.space
    figs, base = [], _base_point(run)
    if _plot_front(path / "front_latency.png", records, acc, "latency_ms", "latency (ms)", base):
        figs.append(("front_latency.png", f"{acc} against latency"))
    if _plot_front(path / "front_flops.png", records, acc, "flops", "FLOPs", base):
        figs.append(("front_flops.png", f"{acc} against FLOPs"))
    if records:
        _plot_progress(path / "progress.png", records, run.cfg, run.signs)
        figs.append(("progress.png", "best so far and hypervolume over trials"))
        _plot_dimensions(path / "dimensions.png", records, space)
        figs.append(("dimensions.png", "trials per dimension"))
    return figs


def _bound(v, none: str) -> str:
    return none if v is None else str(v)


def _summary_html(run, metrics: list[str]) -> str:
    """What was searched, how far it got, and the best trial."""
    e, cfg, b = html.escape, run.cfg, run.best()
    n_ok = len(run.complete)
    objs = ", ".join(f"{o.direction} {o.metric}" for o in cfg.objectives)
    cons = (
        ", ".join(
            f"{c.metric} in [{_bound(c.min, '-inf')}, {_bound(c.max, 'inf')}]"
            for c in cfg.constraints
        )
        or "none"
    )
    best_line = (
        f"trial {b.number} (<code>{b.genome_id}</code>): "
        + ", ".join(f"{m} {_cell(b.metrics.get(m, ''))}" for m in metrics)
        if b
        else "no complete trial yet"
    )
    return (
        f"<p>Space <b>{e(run.space.name)}</b> ({len(run.space.dims)} dimensions), optimiser "
        f"<b>{e(cfg.optimizer.name)}</b>,\nevaluator <b>{e(cfg.evaluator.kind)}</b>, "
        f"seed {cfg.seed}. Objectives: {e(objs)}. Constraints: {e(cons)}.</p>\n"
        f"<p><b>{n_ok}</b> complete trials of a budget of {cfg.budget}, "
        f"{len(run.records) - n_ok} failed.\n"
        f"Best: {best_line}.</p>\n<p>Report written {time.strftime('%Y-%m-%d %H:%M:%S')}"
        f"{' (run still going)' if n_ok < cfg.budget else ''}.</p>"
    )


def _sessions_html(path: Path) -> str:
    timings = (
        json.loads((path / "timings.json").read_text()) if (path / "timings.json").exists() else []
    )
    e = html.escape
    items = "".join(
        f"<li>{e(t.get('at', ''))}: {e(t.get('executor', t.get('runner', '')))}, "
        f"{t.get('workers', '')} worker(s), set-up {t.get('setup_s', 0):.1f} s, "
        f"start-up {t.get('executor_startup_s', 0):.1f} s, search {t.get('search_s', 0):.1f} s, "
        f"{t.get('trials', 0)} trials</li>"
        for t in timings
    )
    return f"<h2>Sessions</h2><ul>{items or '<li>no finished session yet</li>'}</ul>"


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
figure{display:inline-block;margin:0 1em 1em 0}
img{max-width:560px;border:1px solid #ddd} figure.wide{display:block}
figure.wide img{max-width:1100px} code{font-size:12px}"""


def _front_table(run, front, metrics: list[str]) -> tuple[str, str]:
    """The front's rows, the base network's first (when the run has it), each trial also
    against the base; and the header."""
    e = html.escape
    vs = [run.versus_reference(r) for r in front]
    extra = list(dict.fromkeys(k for v in vs for k in v))
    head = "".join(f"<th>{e(m)}</th>" for m in metrics) + "".join(
        f"<th>{e(k)} vs base</th>" for k in extra
    )
    cells = lambda m: "".join(f"<td>{_cell(m.get(k, ''))}</td>" for k in metrics)  # noqa: E731
    rows = ""
    if run.reference:
        rows += (
            f"<tr><td>base</td><td><i>full network</i></td>{cells(run.reference)}"
            + "<td></td>" * len(extra)
            + "</tr>"
        )
    for r, v in zip(front, vs):
        rows += (
            f"<tr><td>{r.number}</td><td><code>{r.genome_id}</code></td>{cells(r.metrics)}"
            + "".join(f"<td>{e(v.get(k, ''))}</td>" for k in extra)
            + "</tr>"
        )
    return rows, head


def write_report(run_dir: str | Path) -> Path:
    """(Re)build report.html and the PNGs of a run folder; returns the HTML's path."""
    import matplotlib

    matplotlib.use("Agg")
    run = open_run(run_dir)
    path, e = run.dir, html.escape
    acc, _ = _accuracy_metric(run.cfg, run.records)
    figs = _figures(run, acc)
    front = run.front()
    own = [o.metric for o in run.cfg.objectives]
    metrics = own + [
        m
        for m in ("val_acc", "test_acc", "latency_ms", "flops", "params", "model_bits")
        if m not in own
    ]
    metrics = [m for m in metrics if any(m in r.metrics for r in front)]
    rows, head = _front_table(run, front, metrics)
    stamp = int(time.time())  # browsers reload the PNGs of a rebuilt report
    imgs = "".join(
        f'<figure{" class=wide" if f == "dimensions.png" else ""}><img src="{f}?t={stamp}" '
        f'alt="{e(c)}"><figcaption>{e(c)}</figcaption></figure>'
        for f, c in figs
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>archsearch run {e(path.name)}</title>
<style>{STYLE}</style></head><body>
<h1>Run {e(path.name)}</h1>
{_summary_html(run, metrics)}
{imgs}
<h2>Pareto front ({len(front)} trials)</h2>
<table><tr><th>trial</th><th>genome id</th>{head}</tr>{rows}</table>
{_latency_section(path)}
{_sessions_html(path)}
</body></html>
"""
    out, tmp = path / "report.html", path / "report.html.tmp"
    tmp.write_text(page)
    os.replace(tmp, out)
    return out
