"""`search export RUN_DIR [--trial N | --pareto] --format onnx|torchscript|tvm`: the physically
sliced model of each chosen trial, with its fine-tuned weights, in each format, checked against
PyTorch; the max abs difference is printed and stored in `export/manifest.json`. An ONNX
export of a candidate with low-bit weight sets stores those convs' weights as packed integer
codes and per-channel scales (`kernels.export.store_low_bit`)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from search.errors import RunFailed
from search.runs import open_run
from spaces.errors import ConfigError

log = logging.getLogger(__name__)
TOLERANCE = 1e-4


def _input(run, arch) -> dict:
    """The exported network's input: its shape (batch 1) and the normalisation the run trained
    with, which a user of the exported file applies to images in [0, 1]."""
    d = json.loads((run.dir / "data.json").read_text())
    c = d.get("input_shape", [3])[0]
    return {
        "shape": [1, c, arch.resolution, arch.resolution],
        "mean": d.get("mean"),
        "std": d.get("std"),
        "scale": "pixels / 255, then (x - mean) / std per channel",
    }


def _chosen(run, trial: int | list[int] | None, pareto: bool) -> list:
    """The trials to export: those named, the front, or the best."""
    if trial is None:
        if pareto:
            return run.front()
        b = run.best()
        return [b] if b else []
    chosen = []
    for t in [trial] if isinstance(trial, int) else trial:
        found = [r for r in run.records if r.number == t]
        if not found:
            raise ConfigError(
                str(run.dir),
                "--trial",
                f"no trial {t} (the run has trials 0..{len(run.records) - 1})",
            )
        if not found[0].complete:
            raise ConfigError(str(run.dir), "--trial", f"trial {t} failed: {found[0].reason}")
        chosen.append(found[0])
    return chosen


def _trained_model(run, r, space_cache: dict):
    """The sliced model of trial `r` with its fine-tuned weights, and its arch."""
    weights = run.dir / "trials" / f"{r.genome_id}.pt"
    if not weights.exists():
        raise ConfigError(
            str(run.dir),
            "--trial",
            f"trial {r.number} has no stored weights ({weights.name}); "
            "table evaluations and early-stopped Tune trials have none",
        )
    state = torch.load(weights, weights_only=True)
    if "space" not in space_cache:  # the stored classifier gives the dataset's number of classes
        heads = [v for k, v in state.items() if k == run.space.family.head_key]
        space_cache["space"] = run.space.with_classes(heads[0].shape[0]) if heads else run.space
    sp = space_cache["space"]
    arch = sp.arch(r.genome)
    model = sp.family.module(arch)
    model.load_state_dict(state)
    return model.eval(), arch


def _print_entry(entry: dict, info: dict) -> None:
    tuned = (
        f"  {info['tuned_kernels']}/{info['kernels']} kernels tuned" if info.get("kernels") else ""
    )
    print(
        f"trial {entry['trial']:>4} {entry['genome_id']}  {entry['format']:<11} "
        f"{entry['file']:<40} max |diff| {entry['max_abs_diff']:.2e}{tuned}  "
        f"{'ok' if entry['ok'] else 'ABOVE ' + str(TOLERANCE)}"
    )


def export(
    run_dir: str,
    trial: int | list[int] | None = None,
    pareto: bool = False,
    formats: list[str] | None = None,
    out: str | None = None,
) -> int:
    from kernels.export import EXT, export_model

    run = open_run(run_dir)
    tvm_db = (
        run.cfg.latency.database or run.cfg.cache_dir() / "tvm"
    )  # tuned kernels for the TVM library
    chosen = _chosen(run, trial, pareto)
    if not chosen:
        raise ConfigError(str(run.dir), None, "no complete trial to export")
    formats = formats or ["torchscript"]
    dest = Path(out) if out else run.dir / "export"
    dest.mkdir(parents=True, exist_ok=True)
    manifest_path = dest / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else []
    rows, spaces = [], {}
    for r in chosen:
        model, arch = _trained_model(run, r, spaces)
        for fmt in formats:
            f = dest / f"trial{r.number}-{r.genome_id}{EXT[fmt]}"
            t0 = time.time()
            diff, info = export_model(
                model, arch.resolution, fmt, f, tvm_database=tvm_db, quant=arch.quant
            )
            entry = {
                **({"input": _input(run, arch)} if (run.dir / "data.json").exists() else {}),
                "trial": r.number,
                "genome_id": r.genome_id,
                "format": fmt,
                "file": f.name,
                **info,
                "bytes": f.stat().st_size,
                "max_abs_diff": diff,
                "ok": diff <= TOLERANCE,
                "resolution": arch.resolution,
                "seconds": round(time.time() - t0, 2),
                "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            manifest.append(entry)
            rows.append(entry)
            _print_entry(entry, info)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    print(f"{len(rows)} export(s) in {dest}; manifest {manifest_path.name}")
    worst = max(e["max_abs_diff"] for e in rows)
    if worst > TOLERANCE:
        raise RunFailed(f"an export differs from PyTorch by {worst:.2e} (> {TOLERANCE})")
    return 0
