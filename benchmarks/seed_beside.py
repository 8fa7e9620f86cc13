"""The default run's set-up with its seed tuning beside the pre-training, against after it.

`search run spaces/tinynet.yaml` from an empty cache first pre-trains the supernet (its sandwich
threads leave about a fifth of the 2 cores idle, `benchmarks/results/sandwich_threads.md`), then
tunes the base network's kernels (`latency: tvm-transfer`'s seed tuning). Beside (the default,
`kernels.tvm_provider.TVMTransferLatency.beside_setup`): the seed tuning's candidates are built
during the pre-training on threads of the lowest priority, and timed once it ends. After (the
way before): the tuning starts once the pre-training ends.

Each way sets up the run as `search run` does (`search.run.Run.start`: pre-training, seed tuning,
the base network's reference evaluation) in a fresh process with an empty cache, the ways in
turn, `--rounds` times. Columns: the pre-training's seconds, the seed tuning's seconds after the
pre-training ended (what it adds to the run), the run's set-up seconds, the full network's
validation accuracy after pre-training, and the seed kernels' summed best time (what the
tuning found: the same candidates each way, timed in another process).

    python benchmarks/seed_beside.py [--rounds 2]

Writes benchmarks/results/seed_beside.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, json_and_md, mean_sd, provenance  # noqa: E402

SPACE = ROOT / "spaces" / "tinynet.yaml"
WAYS = ("after", "beside")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="set-ups each way, in turn")
    ap.add_argument("--space", default=str(SPACE))
    ap.add_argument("--out", default=str(RESULTS / "seed_beside.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    ap.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(set_up(args.child, args.space, Path(args.folder))))
        return
    json_and_md(args, measure, report)


def set_up(way: str, space: str, folder: Path) -> dict:
    """One run's set-up (`Run.start`) from an empty cache in `folder`, this way."""
    from evaluators.base import Evaluator
    from search.run import Run

    if way == "after":  # no preparation begun in setup: the seed tuning after the pre-training
        Evaluator.run_starting = lambda self, seed: None
    run = Run.create(space, str(folder / "run"), [f"cache={folder / 'cache'}"], {})
    t0 = time.time()
    try:
        run.start(progress=False)
    finally:
        run.close()
    setup_s = time.time() - t0
    lat = json.loads((folder / "run" / "latency.json").read_text())
    rows = [json.loads(x) for x in next((folder / "cache").rglob("kernels.jsonl")).open()]
    info = run.evaluator.supernet_info
    return {
        "way": way,
        "setup_s": setup_s,
        "pretrain_s": info["train_time_s"],
        "full_val_acc": info.get("full_val_acc"),
        "tuning_after_s": lat["prepare_s"],
        "seed_tuning_s": lat["seed_tuning_s"],
        "beside": lat.get("seed_tuning_beside"),
        "kernels": lat["seed_kernels_tuned"],
        "kernels_us": sum(r["seconds"] for r in rows) * 1e6,  # each kernel's best, summed
    }


def measure(args) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    out = []
    for i in range(args.rounds):
        for way in WAYS if i % 2 == 0 else WAYS[::-1]:
            with tempfile.TemporaryDirectory(prefix="seed-beside-") as d:
                cmd = [sys.executable, __file__, "--child", way, "--folder", d]
                cmd += ["--space", args.space]
                r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
                if r.returncode != 0:
                    raise SystemExit(f"the {way} set-up failed:\n{r.stderr[-3000:]}")
                row = {**json.loads(r.stdout.strip().splitlines()[-1]), "round": i}
                print(json.dumps(row), flush=True)
                out.append(row)
    return {**provenance(), "cores": os.cpu_count(), "rounds": args.rounds, "rows": out}


def report(res: dict) -> str:
    lines = [
        "# The seed tuning beside the pre-training",
        "",
        f"`{res['command']}` ({res['date']}, {res['cores']} CPU cores, {res['cpu']}).",
        "",
        __doc__.split("\n\n", 1)[1].split("\n\n    python")[0].replace("\n", " "),
        "",
        "| round | way | pre-training s | seed tuning after it s | seed tuning s | set-up s "
        "| full val acc | kernels | best µs |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['round']} | {r['way']} | {r['pretrain_s']:.1f} | {r['tuning_after_s']:.1f} "
            f"| {r['seed_tuning_s']:.1f} | {r['setup_s']:.1f} | {r['full_val_acc']:.4f} "
            f"| {r['kernels']} | {r['kernels_us']:.1f} |"
        )
    keys = ("pretrain_s", "tuning_after_s", "setup_s")
    means = {
        w: {k: statistics.mean(r[k] for r in res["rows"] if r["way"] == w) for k in keys}
        for w in WAYS
    }
    lines += [
        "",
        "| way | pre-training s | seed tuning after it s | set-up s |",
        "|---|---:|---:|---:|",
    ]
    for way in WAYS:
        cells = []
        for k in keys:
            cell = mean_sd([r[k] for r in res["rows"] if r["way"] == way])
            cells.append(
                f"**{cell}**" if means[way][k] == min(m[k] for m in means.values()) else cell
            )
        lines.append(f"| {way} | " + " | ".join(cells) + " |")
    a, b = means["after"]["setup_s"], means["beside"]["setup_s"]
    lines += ["", f"- Set-up: {b - a:+.1f} s beside against after ({100 * (b - a) / a:+.1f} %)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
