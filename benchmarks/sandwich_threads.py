"""A sandwich step's sub-networks side by side on a CPU: step time and what is learned.

1. speed: the tinynet supernet's sandwich step as the default run takes it (4 sub-networks on
   slices of its weights, 32 digits images, channels-last), `--rows` sandwiches of `--steps`
   steps each, three ways alternating step by step in this one process (so a slow spell of the
   host scales all alike; after each switch of threads one step untimed): in turn on 2 torch
   threads (the step before this change), in turn on 1 thread, and side by side on 2 threads of
   one torch thread each (`evaluators.train.SandwichThreads`); with the process's CPU time over
   the wall time.
2. learning: the tinynet supernet pre-trained as the default run does (spaces/tinynet.yaml's
   `pretrain`, digits) in turn on 2 threads and side by side, for each of `--seeds`: the full
   network's validation accuracy and the pre-training's seconds.

    python benchmarks/sandwich_threads.py [--rows 4] [--steps 10] [--seeds 0 1]

Writes benchmarks/results/sandwich_threads.md and .json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    RESULTS,
    default_pretraining,
    json_and_md,
    mean_sd,
    pretraining_section,
    provenance,
)

WAYS = ("in turn, 2 threads", "in turn, 1 thread", "side by side, 2 x 1 thread")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4, help="sandwiches (seeds of their sampling)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per way and row")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="pre-training seeds")
    ap.add_argument("--out", default=str(RESULTS / "sandwich_threads.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    json_and_md(ap.parse_args(), measure, report)


def measure(args) -> dict:
    import torch

    torch.set_num_threads(2)
    return {
        **provenance(),
        "rows": args.rows,
        "steps": args.steps,
        "speed": [_row(k, args.steps) for k in range(args.rows)],
        "pretrain": [_pretrain(seed, side) for seed in args.seeds for side in (False, True)],
    }


def _row(k: int, steps: int) -> dict:
    """One sandwich sampling: each way's median step (ms) and CPU time over wall time."""
    import torch

    from evaluators import train
    from evaluators.data import digits
    from spaces import load_space
    from spaces.builder import importance

    space = load_space(ROOT / "spaces" / "tinynet.yaml").with_classes(10)
    xb, yb = digits(32, 0, 0.2, 0.1).train.take(32, seed=1)
    xb = xb.contiguous(memory_format=torch.channels_last)
    sup, rng, recipe = space.supernet(0).train(), random.Random(k), train.TrainRecipe()
    cut = (space.family.groups(), importance(sup))
    sandwiches = [train.sandwich_genomes(space, rng, 4) for _ in range(steps + 1)]
    ms, cpu = [[] for _ in WAYS], [[0.0, 0.0] for _ in WAYS]
    for n in range(steps):
        for w in range(len(WAYS)):
            torch.set_num_threads(1 if w == 1 else 2)
            threads = train.SandwichThreads(sup, recipe, 4)
            threads.workers = 2 if w == 2 else 1
            with threads:
                for timed in (False, True):  # a step untimed after the switch of threads
                    sup.zero_grad(set_to_none=True)
                    t0, c0 = time.perf_counter(), time.process_time()
                    threads.backward(space, sup, sandwiches[n + timed], xb, yb, cut, recipe)
                    wall, used = time.perf_counter() - t0, time.process_time() - c0
            ms[w].append(1e3 * wall)
            cpu[w][0] += used
            cpu[w][1] += wall
    torch.set_num_threads(2)
    return {
        "ms": [statistics.median(t) for t in ms],
        "cpu_per_wall": [c / max(1e-9, w) for c, w in cpu],
    }


def _pretrain(seed: int, side_by_side: bool) -> dict:
    """The default run's supernet pre-training (its recipe and data), one way."""
    from evaluators import train

    init = train.SandwichThreads.__init__

    def in_turn(self, *a, **k):
        init(self, *a, **k)
        self.workers = 1

    if not side_by_side:
        train.SandwichThreads.__init__ = in_turn
    try:
        info = default_pretraining(seed)
    finally:
        train.SandwichThreads.__init__ = init
    return {
        "seed": seed,
        "way": WAYS[2] if side_by_side else WAYS[0],
        "full_val_acc": info["full_val_acc"],
        "train_time_s": info["train_time_s"],
    }


def report(d: dict) -> str:
    out = [
        "# A sandwich step's sub-networks side by side (CPU)",
        "",
        f"`{d['command']}` ({d['date']}, {d['cpu']}).",
        "",
        " ".join(__doc__.split("\n\n")[1].split()),
        "",
        f"## 1. Step time ({d['rows']} sandwich samplings, {d['steps']} alternating steps each)",
        "",
        "ms: the mean over the samplings of each one's median step (± std over them); saved: "
        "against the step in turn on 2 threads; CPU / wall: the process's CPU seconds over the "
        "step's wall seconds (2: both cores busy).",
        "",
        "| way | ms | saved | CPU / wall |",
        "|---|---:|---:|---:|",
    ]
    base = [r["ms"][0] for r in d["speed"]]
    best = min(range(len(WAYS)), key=lambda w: statistics.mean(r["ms"][w] for r in d["speed"]))
    for w, way in enumerate(WAYS):
        ms = [r["ms"][w] for r in d["speed"]]
        saved = statistics.mean(1 - m / b for m, b in zip(ms, base))
        cell = mean_sd(ms)
        cell = f"**{cell}**" if w == best else cell
        ratio = mean_sd([r["cpu_per_wall"][w] for r in d["speed"]], "{:.2f}")
        out.append(f"| {way} | {cell} | {100 * saved:.0f} % | {ratio} |")
    out += ["", *pretraining_section(d["pretrain"], "way", (WAYS[0], WAYS[2]))]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
