"""What training on channels-last batches changes on a CPU: step time and what is learned.

1. speed: `--nets` sub-networks sampled from each built-in space (tinynet, resnet20, nb201),
   each built with inherited weights and trained for `--steps` SGD steps on 64 digits images in
   the contiguous layout and in channels-last, alternating step by step in this one process (so
   a slow spell of the host scales both alike), on 1 and on 2 threads; and the tinynet supernet's
   sandwich step (4 sub-networks on slices of its weights, 32 images, 2 threads) the same way.
2. learning: the tinynet supernet pre-trained as the default run does (spaces/tinynet.yaml's
   `pretrain`, digits) in both layouts for each of `--seeds`: the full network's validation
   accuracy and the pre-training's seconds.

    python benchmarks/train_layout.py [--nets 4] [--steps 10] [--seeds 0 1]

Writes benchmarks/results/train_layout.md and .json.
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

SPACES = ("tinynet", "resnet20", "nb201")
LAYOUTS = ("contiguous", "channels_last")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", type=int, default=4, help="sub-networks per space")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per layout and network")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="pre-training seeds")
    ap.add_argument("--out", default=str(RESULTS / "train_layout.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    json_and_md(ap.parse_args(), measure, report)


def measure(args) -> dict:
    import torch

    from evaluators.data import digits

    data = digits(32, 0, 0.2, 0.1)
    x, y = data.train.take(64, seed=0)
    speed = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name in SPACES:
            speed[f"{name}/{threads}"] = _subnet_steps(name, args, x, y)
    torch.set_num_threads(2)
    speed["tinynet supernet/2"] = _sandwich_steps(args, data)
    return {
        **provenance(),
        "nets": args.nets,
        "steps": args.steps,
        "speed_ms": speed,
        "pretrain": [_pretrain(seed, cl) for seed in args.seeds for cl in (False, True)],
    }


def _alternate(step_a, step_b, steps: int) -> list[list[float]]:
    """Each step function's times (ms), run in turn `steps` times after one untimed run each."""
    step_a(), step_b()
    out = [[], []]
    for _ in range(steps):
        for f, t in zip((step_a, step_b), out):
            t0 = time.perf_counter()
            f()
            t.append(1e3 * (time.perf_counter() - t0))
    return out


def _subnet_steps(name: str, args, x, y) -> list[list[float]]:
    """Per sub-network: the median step (ms) in each layout."""
    import torch
    import torch.nn.functional as F

    from evaluators.data import at_resolution
    from spaces import load_space

    space = load_space(ROOT / "spaces" / f"{name}.yaml").with_classes(10)
    sup, rng, out = space.supernet(0), random.Random(0), []
    for _ in range(args.nets):
        g = space.sample(rng)
        xb = at_resolution(x, space.arch(g).resolution)
        steps = []
        for layout in (torch.contiguous_format, torch.channels_last):
            m = space.build(g, sup).train()
            opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
            xl = xb.contiguous(memory_format=layout)

            def step(m=m, opt=opt, xl=xl):
                opt.zero_grad()
                F.cross_entropy(m(xl), y).backward()
                opt.step()

            steps.append(step)
        out.append([statistics.median(t) for t in _alternate(*steps, args.steps)])
    return out


def _sandwich_steps(args, data) -> list[list[float]]:
    """The tinynet supernet's sandwich step (`evaluators.train._sandwich_backward`, the default
    run's 4 sub-networks, 32 images): the median (ms) in each layout, `--nets` times."""
    import torch

    from evaluators import train
    from spaces import load_space
    from spaces.builder import importance

    space = load_space(ROOT / "spaces" / "tinynet.yaml").with_classes(10)
    xb, yb = data.train.take(32, seed=1)
    groups, out = space.family.groups(), []
    for k in range(args.nets):
        steps = []
        for layout in (torch.contiguous_format, torch.channels_last):
            sup, rng = space.supernet(0).train(), random.Random(k)
            opt = torch.optim.SGD(sup.parameters(), lr=0.01, momentum=0.9)
            imp, xl = importance(sup), xb.contiguous(memory_format=layout)

            def step(sup=sup, opt=opt, rng=rng, xl=xl, imp=imp):
                gs = train.sandwich_genomes(space, rng, 4)
                opt.zero_grad()
                cut = (groups, imp)
                train._sandwich_backward(space, sup, gs, xl, yb, cut, train.TrainRecipe())
                opt.step()

            steps.append(step)
        out.append([statistics.median(t) for t in _alternate(*steps, args.steps)])
    return out


def _pretrain(seed: int, channels_last: bool) -> dict:
    """The default run's supernet pre-training (its recipe and data) in one layout."""
    info = default_pretraining(
        seed, lambda ev: setattr(ev.pretrain, "channels_last", channels_last)
    )
    return {
        "seed": seed,
        "layout": LAYOUTS[channels_last],
        "full_val_acc": info["full_val_acc"],
        "train_time_s": info["train_time_s"],
    }


def report(d: dict) -> str:
    out = [
        "# Training on channels-last batches (CPU)",
        "",
        f"`{d['command']}` ({d['date']}, {d['cpu']}).",
        "",
        " ".join(__doc__.split("\n\n")[1].split()),
        "",
        f"## 1. Step time ({d['nets']} networks a row, {d['steps']} alternating steps each)",
        "",
        "ms: the mean over the networks of each one's median step (± std over the networks); "
        "saved: the mean of each network's 1 - channels-last / contiguous.",
        "",
        "| networks | threads | contiguous ms | channels-last ms | saved |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, rows in d["speed_ms"].items():
        name, threads = key.split("/")
        a, b = [r[0] for r in rows], [r[1] for r in rows]
        saved = statistics.mean(1 - cl / c for c, cl in rows)
        out.append(f"| {name} | {threads} | {mean_sd(a)} | {mean_sd(b)} | {100 * saved:.0f} % |")
    out += ["", *pretraining_section(d["pretrain"], "layout", LAYOUTS)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
