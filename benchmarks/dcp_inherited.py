"""Companion to benchmarks/dcp.py: the test accuracy of its networks *before* fine-tuning (batch
norm recalibrated on the training images), where the channel choice and DCP's own weight updates
are not yet washed out by the evaluator's fine-tuning.

For each epsilon of a finished `benchmarks/dcp.py` work folder: DCP's network with DCP's weights
(`dcp_supernet.pt`), DCP's channels on the untouched pre-trained weights (the selection alone),
and the L1-norm and random genomes at the same counts (the same ones dcp.py evaluated: same
seed, same order). Prints a markdown table.

    python benchmarks/dcp_inherited.py [--work runs/bench-dcp] [--per-class 200]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import DCP_DATA, add_cifar_args, cifar_run_sets, dcp_supernet, same_counts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epsilons", type=float, nargs="+", default=[0.1, 0.01, 0.001])
    add_cifar_args(ap, "bench-dcp", "unused", **DCP_DATA)
    args = ap.parse_args()

    from evaluators.registry import make_evaluator
    from evaluators.train import evaluate, recalibrate_bn
    from search.config import load_run_config
    from spaces.builder import importance

    work = Path(args.work)
    sets = cifar_run_sets(
        args.data,
        args.per_class,
        args.test_per_class,
        args.pretrain_epochs,
        args.finetune_epochs,
        args.sandwich,
    )
    cfg, space, _ = load_run_config(ROOT / "spaces" / "resnet20.yaml", sets)
    ev = make_evaluator(cfg, space, "spaces/resnet20.yaml")
    ev.setup()
    space, sup, data = ev.space, ev.supernet, ev.data
    imp, rng = importance(sup), random.Random(0)
    res = space.arch(space.full()).resolution

    def acc(genome, net) -> str:
        m = space.build(genome, net)
        recalibrate_bn(m, data.train, res)
        return f"{100 * evaluate(m, data.test, res)[0]:.1f}"

    rows = [f"| full network | {acc(space.full(), sup)} | | | |"]
    for eps in args.epsilons:
        run = work / f"dcp-{eps:g}"
        g = space.from_json(json.loads((run / "dcp.json").read_text())["genome"])
        dsup = dcp_supernet(sup, run)
        gl, gr = same_counts(space, g, imp, rng)
        rows.append(
            f"| eps {eps:g} | {acc(g, dsup)} | {acc(g, sup)} | {acc(gl, sup)} | {acc(gr, sup)} |"
        )
    print(
        "\n".join(
            [
                "| network | DCP (its weights) | DCP's channels, pre-trained weights | L1-norm | random |",
                "|---|---:|---:|---:|---:|",
            ]
            + rows
        )
    )


if __name__ == "__main__":
    main()
