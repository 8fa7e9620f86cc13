"""`search sweep SWEEP.yaml`: one search over several settings (devices, bounds, datasets,
optimisers, seeds), every combination a run folder of its own, compared side by side.

    run: ../spaces/nb201.yaml          # the base run file (relative to this file)
    set: [preset=nb201-table]          # applied to every combination, as `--set`
    axes:                              # a `--set` key and its values; every combination runs
      evaluator.table_latency: [raspi4, pixel3]
      constraints: [[{metric: latency_ms, max: 8}], [{metric: latency_ms, max: 12}]]
      seed: [0, 1]
    parallel: 2                        # combinations at once

Each combination is an ordinary run (`search run` in a process of its own, so a crash or a bad
setting stays in its folder; `search show` and `search resume` work on it). Combinations that
train on Ray workers share one Ray: the sweep starts an embedded one (or joins `--address`) and
hands its address to every run. Running the sweep again with the same `--out` resumes it: complete
runs are kept, interrupted ones resumed, the rest started. At the end, and whenever asked again,
`sweep.md`, `sweep.json` and `sweep.png` in the sweep folder compare the combinations."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from search.config import _pydantic_error, resolve_run_config
from spaces.config import read_yaml
from spaces.errors import ConfigError

log = logging.getLogger(__name__)
SPEC = "sweep.yaml"  # the sweep's own copy of its file, in the sweep folder


class SweepCfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str
    set: list[str] = Field(default_factory=list)
    axes: dict[str, list[Any]]
    parallel: int = Field(1, ge=1)


@dataclass
class Combo:
    """One combination of the axes' values: its folder name and `--set` items."""

    index: int
    values: dict[str, Any]
    sets: list[str]
    folder: str
    budget: int = 0
    needs_ray: bool = False


def _label(values: dict[str, Any]) -> str:
    parts = []
    for k, v in values.items():
        text = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        parts.append(f"{k.split('.')[-1]}={text}")
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", ",".join(parts))[:80]


@dataclass
class Sweep:
    file: str
    cfg: SweepCfg
    base: Path
    combos: list[Combo]

    @property
    def keys(self) -> list[str]:
        return list(self.cfg.axes)


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file: every combination's run config is resolved before anything
    runs, so a bad axis value is exit 2 naming the axis and the value."""
    file = str(path)
    data = read_yaml(path)
    try:
        cfg = SweepCfg.model_validate(data)
    except ValidationError as e:
        raise _pydantic_error(file, e) from None
    if not cfg.axes:
        raise ConfigError(file, "axes", "no axes: a sweep needs at least one")
    for k, vals in cfg.axes.items():
        if not isinstance(vals, list) or not vals:
            raise ConfigError(file, f"axes.{k}", "expected a non-empty list of values")
    base = (Path(file).parent / cfg.run).resolve()
    if not base.is_file():
        raise ConfigError(file, "run", f"run file {str(base)!r} does not exist")
    base_data = read_yaml(base)
    combos = []
    for i, vals in enumerate(itertools.product(*cfg.axes.values())):
        values = dict(zip(cfg.axes, vals))
        sets = [f"{k}={json.dumps(v)}" for k, v in values.items()]
        combos.append(_checked(file, base, base_data, cfg, Combo(i, values, sets, "")))
    return Sweep(file, cfg, base, combos)


def _checked(file: str, base: Path, base_data: dict, cfg: SweepCfg, c: Combo) -> Combo:
    from evaluators.registry import make_evaluator
    from search.run import check_metrics

    try:
        run_cfg, space, _ = resolve_run_config(base_data, str(base), [*cfg.set, *c.sets])
        ev = make_evaluator(run_cfg, space, str(base))  # what a run checks before it starts
        check_metrics(run_cfg, ev, str(base))
    except ConfigError as e:
        raise ConfigError(file, f"axes ({_label(c.values)})", f"{e.field}: {e.reason}") from None
    c.budget = run_cfg.budget
    c.needs_ray = bool(ev.fine_tunes and run_cfg.workers != 0)
    c.folder = f"{c.index:03d}-{_label(c.values)}"
    return c


def prepare_folder(sweep: Sweep, out: Path) -> None:
    """A new sweep folder, or the same sweep's folder again (resume); another sweep's is exit 2."""
    spec = yaml.safe_dump(sweep.cfg.model_dump() | {"run": str(sweep.base)}, sort_keys=False)
    mine = out / SPEC
    if mine.exists():
        if mine.read_text() != spec:
            raise ConfigError(str(out), None, "holds a sweep of other settings: give another --out")
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(str(out), None, "is not empty and holds no sweep: give another --out")
    out.mkdir(parents=True, exist_ok=True)
    mine.write_text(spec)


def state_of(c: Combo, out: Path) -> str:
    """'new', 'partial' (a run folder short of its budget) or 'complete'."""
    from search.runs import open_run

    run = out / c.folder
    if not (run / "config.yaml").exists():
        return "new"
    try:
        return progress(open_run(run), c)
    except ConfigError:
        return "partial"


def progress(run, c: Combo) -> str:
    """'complete' once an opened run holds the combination's budget of trials, else 'partial'."""
    return "complete" if len(run.complete) >= c.budget else "partial"


def _command(sweep: Sweep, c: Combo, out: Path, state: str, address: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "search.cli"]
    if state == "partial":  # the sweep's budget: a run stopped short, or made with a smaller one
        cmd += ["resume", str(out / c.folder), "--budget", str(c.budget)]
    else:
        cmd += ["run", str(sweep.base), "--out", str(out / c.folder), "--overwrite"]
        for s in [*sweep.cfg.set, *c.sets]:
            cmd += ["--set", s]
    if address and c.needs_ray:
        cmd += ["--address", address]
    return cmd + ["--no-progress"]


def run_sweep(
    path: str, out: str | None, parallel: int | None = None, address: str | None = None
) -> int:
    """Run (or resume) every combination, `parallel` at once, then write the summary. Exit 0
    when every run finished, 1 when some failed (named), 130 on Ctrl-C (runs keep their state)."""
    sweep = load_sweep(path)
    folder = Path(out) if out else Path("runs") / f"sweep-{Path(path).stem}"
    prepare_folder(sweep, folder)
    (folder / "logs").mkdir(exist_ok=True)
    todo = [(c, s) for c in sweep.combos if (s := state_of(c, folder)) != "complete"]
    parallel = parallel or sweep.cfg.parallel
    log.info(
        "sweep %s: %d combinations, %d to run, %d at once, in %s",
        path,
        len(sweep.combos),
        len(todo),
        parallel,
        folder,
    )
    ray_started = False
    if any(c.needs_ray for c, _ in todo) and not address:
        address, ray_started = _start_ray(), True
    try:
        failed = _execute(sweep, folder, todo, parallel, address)
    finally:
        if ray_started:
            import ray

            ray.shutdown()
    print(write_summary(sweep, folder))
    if failed:
        log.error(
            "%d combination(s) failed: %s (logs in %s)",
            len(failed),
            ", ".join(failed),
            folder / "logs",
        )
        return 1
    return 0


def _start_ray() -> str:
    """One embedded Ray for every combination that trains on workers."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    return ray.get_runtime_context().gcs_address


def _execute(sweep, folder: Path, todo: list, parallel: int, address) -> list[str]:
    """The runs, `parallel` processes at once; returns the folders of those that failed."""
    queue, running, failed, done = list(todo), {}, [], 0
    try:
        while queue or running:
            while queue and len(running) < parallel:
                c, state = queue.pop(0)
                logf = open(folder / "logs" / f"{c.folder}.log", "a")  # noqa: SIM115
                p = subprocess.Popen(
                    _command(sweep, c, folder, state, address),
                    stdout=subprocess.DEVNULL,
                    stderr=logf,
                    start_new_session=True,  # Ctrl-C reaches the sweep, which passes it on
                )
                running[p] = (c, logf, time.time())
            time.sleep(0.2)
            for p in [p for p in running if p.poll() is not None]:
                c, logf, t0 = running.pop(p)
                logf.close()
                done += 1
                if p.returncode:
                    failed.append(c.folder)
                log.info(
                    "[%d/%d] %s: %s in %.0f s",
                    done,
                    len(todo),
                    c.folder,
                    "done" if p.returncode == 0 else f"exit {p.returncode}",
                    time.time() - t0,
                )
    except KeyboardInterrupt:
        for p in running:
            p.send_signal(signal.SIGINT)  # each run stops and keeps its trials
        for p in running:
            p.wait()
        raise
    return failed


def collect(sweep: Sweep, folder: Path) -> list[dict]:
    """One row per combination: its axis values, state, trials and best feasible result."""
    from search.runs import open_run

    rows = []
    for c in sweep.combos:
        row = {"folder": c.folder, **{k: c.values[k] for k in sweep.keys}}
        try:
            run = open_run(folder / c.folder)
        except ConfigError:
            rows.append({**row, "state": "not started"})
            continue
        b = run.best()
        objs = run.cfg.objectives
        front = [r for r in run.front() if r.feasible]
        row |= {
            "state": progress(run, c),
            "trials": len(run.complete),
            "feasible": sum(r.feasible for r in run.complete),
            "objective": objs[0].metric,
            "best": b.values[0] if b is not None and b.feasible else None,
            "best_genome": b.genome_id if b is not None and b.feasible else None,
            "front": [r.values[:2] for r in front],
            "objectives": [o.metric for o in objs[:2]],
            "signs": [o.sign for o in objs[:2]],
        }
        rows.append(row)
    return rows


def write_summary(sweep: Sweep, folder: Path) -> str:
    """sweep.md (a table), sweep.json and sweep.png (each combination's front, or its best)."""
    rows = collect(sweep, folder)
    keys = sweep.keys
    lines = [
        f"# Sweep {Path(sweep.file).name}: {len(rows)} combinations of {sweep.base.name}",
        "",
        "| # | " + " | ".join(keys) + " | state | trials | feasible | best feasible |",
        "|---:|" + "---|" * len(keys) + "---|---:|---:|---:|",
    ]
    for i, r in enumerate(rows):
        vals = " | ".join(_cell(r[k]) for k in keys)
        best = "-" if r.get("best") is None else f"{r['objective']} {r['best']:.4g}"
        lines.append(
            f"| {i} | {vals} | {r['state']} | {r.get('trials', 0)} | {r.get('feasible', 0)} "
            f"| {best} |"
        )
    text = "\n".join(lines) + "\n"
    (folder / "sweep.md").write_text(text)
    (folder / "sweep.json").write_text(json.dumps(rows, indent=2, default=str))
    _plot(rows, keys, folder / "sweep.png")
    return text


def _cell(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def _plot(rows: list[dict], keys: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    two = [r for r in rows if len(r.get("objectives", [])) == 2 and r.get("front")]
    if two:
        for r in two:
            pts = sorted(r["front"], key=lambda p: p[1])
            ax.plot([p[1] for p in pts], [p[0] for p in pts], "o-", ms=3, label=r["folder"])
        ax.set_xlabel(two[0]["objectives"][1])
        ax.set_ylabel(two[0]["objectives"][0])
        ax.set_title("each combination's feasible front")
        if len(two) <= 12:
            ax.legend(fontsize=6)
    else:
        have = [r for r in rows if r.get("best") is not None]
        ax.barh([r["folder"] for r in have], [r["best"] for r in have])
        ax.set_xlabel(have[0]["objective"] if have else "best feasible")
        ax.set_title("each combination's best feasible result")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
