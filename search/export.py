"""`search export RUN_DIR [--trial N | --pareto] --format onnx|torchscript|tvm`: the physically
sliced model of each chosen trial, with its fine-tuned weights, in each format, checked against
PyTorch; the max abs difference is printed and stored in `export/manifest.json`."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from spaces.errors import ConfigError

from search.config import load_run_config
from search.errors import RunFailed
from search.records import best, pareto_front
from search.store import load_records

log = logging.getLogger(__name__)
TOLERANCE = 1e-4


def export(run_dir: str, trial: int | list[int] | None = None, pareto: bool = False, formats: list[str] | None = None,
           out: str | None = None) -> int:
    from kernels.export import EXT, export_model

    path = Path(run_dir)
    if not (path / "config.yaml").exists():
        raise ConfigError(str(path), None, "not a run folder (no config.yaml)")
    cfg, space, _ = load_run_config(path / "config.yaml")
    records = load_records(path, cfg.storage, space, cfg.objectives, cfg.constraints)
    signs = [1.0 if o.direction == "maximize" else -1.0 for o in cfg.objectives]
    tvm_db = cfg.latency.database or cfg.cache_dir() / "tvm"  # tuned kernels for the TVM library
    if trial is not None:
        chosen = []
        for t in [trial] if isinstance(trial, int) else trial:
            found = [r for r in records if r.number == t]
            if not found:
                raise ConfigError(str(path), "--trial", f"no trial {t} (the run has trials 0..{len(records) - 1})")
            if not found[0].complete:
                raise ConfigError(str(path), "--trial", f"trial {t} failed: {found[0].reason}")
            chosen.append(found[0])
    elif pareto:
        chosen = pareto_front(records, signs)
    else:
        b = best(records, signs)
        chosen = [b] if b else []
    if not chosen:
        raise ConfigError(str(path), None, "no complete trial to export")
    formats = formats or ["torchscript"]
    dest = Path(out) if out else path / "export"
    dest.mkdir(parents=True, exist_ok=True)
    manifest_path = dest / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else []
    rows, worst = [], 0.0
    with_classes = None
    for r in chosen:
        weights = path / "trials" / f"{r.genome_id}.pt"
        if not weights.exists():
            raise ConfigError(str(path), "--trial", f"trial {r.number} has no stored weights ({weights.name}); "
                                                    "table evaluations and early-stopped Tune trials have none")
        state = torch.load(weights, weights_only=True)
        if with_classes is None:  # the stored classifier gives the dataset's number of classes
            heads = [v for k, v in state.items() if k.endswith("classifier.weight")]
            with_classes = space.with_classes(heads[0].shape[0]) if heads else space
        sp = with_classes
        arch = sp.arch(r.genome)
        model = sp.family.module(arch)
        model.load_state_dict(state)
        model.eval()
        for fmt in formats:
            f = dest / f"trial{r.number}-{r.genome_id}{EXT[fmt]}"
            t0 = time.time()
            diff, info = export_model(model, arch.resolution, fmt, f, tvm_database=tvm_db)
            entry = {"trial": r.number, "genome_id": r.genome_id, "format": fmt, "file": f.name, **info,
                     "bytes": f.stat().st_size, "max_abs_diff": diff, "ok": diff <= TOLERANCE,
                     "resolution": arch.resolution, "seconds": round(time.time() - t0, 2),
                     "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            manifest.append(entry)
            rows.append(entry)
            worst = max(worst, diff)
            tuned = f"  {info['tuned_kernels']}/{info['kernels']} kernels tuned" if info.get("kernels") else ""
            print(f"trial {r.number:>4} {r.genome_id}  {fmt:<11} {f.name:<40} max |diff| {diff:.2e}{tuned}  "
                  f"{'ok' if entry['ok'] else 'ABOVE ' + str(TOLERANCE)}")
    manifest_path.write_text(json.dumps(manifest, indent=2))
    print(f"{len(rows)} export(s) in {dest}; manifest {manifest_path.name}")
    if worst > TOLERANCE:
        raise RunFailed(f"an export differs from PyTorch by {worst:.2e} (> {TOLERANCE})")
    return 0
