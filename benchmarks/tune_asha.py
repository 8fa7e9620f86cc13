"""Ray Tune runner: ASHA against FIFO (no early stopping) at the same budget on
`spaces/tinynet.yaml` (digits, real fine-tuning), the same random genomes (same seed).

Reports the total fine-tuning epochs spent, the best validation accuracy and the wall time of
each. Writes benchmarks/results/tune.md.

    python benchmarks/tune_asha.py [--budget 16] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-tune"))
    ap.add_argument("--out", default=str(RESULTS / "tune.md"))
    args = ap.parse_args()
    import optuna

    from search.store import STUDY_NAME, open_storage

    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    rows = {}
    for sched in ("fifo", "asha"):
        out = work / sched
        cmd = [
            sys.executable,
            "-m",
            "search.cli",
            "run",
            "spaces/tinynet.yaml",
            "--optimizer",
            "random",
            "--runner",
            "tune",
            "--budget",
            str(args.budget),
            "--seed",
            "0",
            "--no-progress",
            "--out",
            str(out),
            "--set",
            f"tune.scheduler={sched}",
            "--set",
            f"evaluator.finetune.epochs={args.epochs}",
            "--set",
            "latency=none",
            # tinynet.yaml's second objective is latency_ms; without latency timing use FLOPs
            "--set",
            "objectives=[{metric: val_acc, direction: maximize}, {metric: flops, direction: minimize}]",
        ]
        print("$", " ".join(cmd[2:]), flush=True)
        t0 = time.time()
        subprocess.run(cmd, cwd=ROOT, check=True)
        secs = time.time() - t0
        timings = json.loads((out / "timings.json").read_text())
        study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out, None))
        done = [
            t.user_attrs["metrics"]
            for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE
        ]
        epochs = sum(float(m.get("epoch", args.epochs)) for m in done)
        rows[sched] = {
            "trials": len(done),
            "epochs": epochs,
            "stopped": sum(bool(m.get("stopped_early")) for m in done),
            "best": max(m["val_acc"] for m in done),
            "best_full": max(
                (m["val_acc"] for m in done if not m.get("stopped_early")), default=float("nan")
            ),
            "wall": secs,
            "search": sum(s.get("search_s", 0) for s in timings),
        }
    lines = [
        "# Ray Tune runner: ASHA against FIFO",
        "",
        f"`python benchmarks/tune_asha.py --budget {args.budget} --epochs {args.epochs}` "
        f"({time.strftime('%Y-%m-%d')}, 2 CPU cores, embedded Ray, 2 concurrent trials). "
        f"`search run spaces/tinynet.yaml --optimizer random --runner tune --budget {args.budget} --set "
        f"evaluator.finetune.epochs={args.epochs} --set tune.scheduler=asha|fifo --set latency=none --set "
        "objectives=[val_acc max, flops min]`: the same seed, so the same "
        "random genomes; ASHA with grace period 1 epoch, reduction factor 3.",
        "",
        "| scheduler | complete trials | stopped early | fine-tuning epochs in all | best val acc | "
        "best val acc of the fully trained | searching (s) | whole command (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, r in rows.items():
        lines.append(
            f"| {k} | {r['trials']} | {r['stopped']} | {r['epochs']:g} | {r['best']:.4f} | "
            f"{r['best_full']:.4f} | {r['search']:.0f} | {r['wall']:.0f} |"
        )
    a, f = rows["asha"], rows["fifo"]
    lines += [
        "",
        f"ASHA spent {a['epochs']:g} fine-tuning epochs against FIFO's {f['epochs']:g} "
        f"({100 * (1 - a['epochs'] / f['epochs']):.0f} % fewer) for a best validation accuracy of "
        f"{a['best']:.4f} against {f['best']:.4f} (one validation image is "
        "0.0028 on digits).",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
