"""Co-evolutionary compression of CycleGAN generators (arXiv 1907.10804) on the digit domains of
`spaces/cyclegan_digits.yaml`, against pruning by the L1 norm of the filters and at random, at
equal FLOPs.

Per seed (the whole method: the seed also draws the domains and pre-trains its own CycleGAN):

1. `search run spaces/cyclegan_digits.yaml --optimizer coevolution --seed S`: every candidate
   pair is fine-tuned `finetune_steps` and ranked by the paper's fitness on the *select*
   images; its best pair (highest select fitness) is the method's answer.
2. The same number of channels per layer group, chosen by the L1 norm of the pre-trained
   filters (Li et al., ICLR 2017), and chosen at random: identical FLOPs and parameters by
   construction, fine-tuned and scored by the same evaluator (`--optimizer given`).
3. The table: the disjoint *report* images only, mean ± std over the seeds; the best value of
   each column among the pruned pairs in bold; a closing verdict computed from the numbers.

Writes benchmarks/results/cyclegan.md, cyclegan.json and cyclegan_samples.png (next to --out).
Run it with one thread on a shared machine (OMP_NUM_THREADS=1): about 5 minutes a seed on
2 cores, most of it pre-training.

    OMP_NUM_THREADS=1 python benchmarks/cyclegan.py [--seeds 0 1 2] [--budget 80]
        [--work runs/bench-cyclegan] [--set KEY=VALUE ...] [--reuse] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, same_counts  # noqa: E402

SPACE = "spaces/cyclegan_digits.yaml"
METHODS = ("coevolution", "l1", "random")
LABELS = {
    "full": "full generators (reference, not pruned)",
    "coevolution": "co-evolution (best pair of the search)",
    "l1": "L1-norm filters, same channel counts",
    "random": "random filters, same channel counts",
}
# (column title, metric on the report images, larger is better, format)
COLUMNS = [
    ("fitness ↑", "fitness_report", True, "{:.3f}"),
    ("loss G_AB ↓", "loss_ab_report", False, "{:.3f}"),
    ("loss G_BA ↓", "loss_ba_report", False, "{:.3f}"),
    ("dis G_AB ↓", "dis_ab_report", False, "{:.4f}"),
    ("dis G_BA ↓", "dis_ba_report", False, "{:.4f}"),
    ("cycle L1 A ↓", "cyc_a_report", False, "{:.3f}"),
    ("cycle L1 B ↓", "cyc_b_report", False, "{:.3f}"),
    ("L1 to full G_AB ↓", "l1_to_full_ab_report", False, "{:.3f}"),
    ("L1 to full G_BA ↓", "l1_to_full_ba_report", False, "{:.3f}"),
]


def cli(out: Path, *args, reuse: bool = False) -> float | None:
    """`search ARGS --out OUT` in-process (`--workers 0`); its wall time. With `reuse`, a finished
    run folder (best/metrics.json) is kept and None returned."""
    if reuse and (out / "best" / "metrics.json").exists():
        return None
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "search.cli", *map(str, args), "--out", str(out)]
    cmd += ["--no-progress", "--workers", "0"]
    print("$", " ".join(cmd[2:]), flush=True)
    t = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.time() - t


def trials(run_dir: Path) -> dict[str, dict]:
    """Genome id -> metrics of a run's complete trials."""
    from search.config import load_run_config
    from search.store import load_records

    cfg, space, _ = load_run_config(run_dir / "config.yaml")
    recs = load_records(run_dir, cfg.storage, space, cfg.objectives, cfg.constraints)
    return {r.genome_id: dict(r.metrics) for r in recs if r.complete}


def baselines(seed: int, sets: list[str], genome: dict) -> tuple[object, dict, dict]:
    """The L1-norm and random genomes with `genome`'s channel counts per group, on the seed's
    pre-trained generators (from the cache the co-evolution run filled)."""
    from evaluators.registry import make_evaluator
    from search.config import load_run_config
    from spaces.builder import importance

    cfg, space, _ = load_run_config(ROOT / SPACE, [*sets, f"seed={seed}"])
    ev = make_evaluator(cfg, space, SPACE)
    ev.setup()
    gl, gr = same_counts(space, genome, importance(ev.supernet), random.Random(seed))
    return ev, gl, gr


def samples(ev, runs: dict[str, tuple[Path, dict]], path: Path, n: int = 8) -> None:
    """Report images translated by the full pair and by each method's pruned pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    space = ev.space
    a, b = ev.dom.held_out("report")
    a, b = a[:n], b[:n]
    models = {"full": ev.supernet}
    for name, (run_dir, genome) in runs.items():
        gid = space.genome_id(genome)
        m = space.family.module(space.arch(genome))
        m.load_state_dict(torch.load(run_dir / "trials" / f"{gid}.pt", weights_only=True))
        models[name] = m.eval()
    rows = [("A", a)]
    with torch.no_grad():
        rows += [(f"{k} G_AB(A)", m.ab(a)) for k, m in models.items()]
        rows += [("B", b)]
        rows += [(f"{k} G_BA(B)", m.ba(b)) for k, m in models.items()]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 1.1, len(rows) * 1.15))
    for i, (label, imgs) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(imgs[j, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=6)
    fig.suptitle(f"report images; pruned pairs at equal FLOPs (seed {ev.seed})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_seed(args, seed: int, sets: list[str]) -> dict:
    work = ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    extra = [x for s in sets for x in ("--set", s)]
    co = work / f"coevolution-s{seed}"
    wall_co = cli(
        co,
        "run",
        SPACE,
        "--optimizer",
        "coevolution",
        "--seed",
        seed,
        "--budget",
        args.budget,
        *([] if args.population is None else ["--set", f"population_size={args.population}"]),
        *extra,
        reuse=args.reuse,
    )
    best = json.loads((co / "best" / "metrics.json").read_text())
    from spaces import load_space

    space = load_space(ROOT / SPACE)
    genome = space.from_json(best["genome"])
    ev, gl, gr = baselines(seed, sets, genome)
    ids = {"l1": space.genome_id(gl), "random": space.genome_id(gr)}
    base = work / f"baselines-s{seed}"
    unique = {space.genome_id(g): space.to_json(g) for g in (gl, gr)}
    gfile = work / f"baselines-s{seed}.json"
    gfile.write_text(json.dumps(list(unique.values())))
    wall_base = cli(
        base,
        "run",
        SPACE,
        "--optimizer",
        "given",
        "--set",
        f"genomes={gfile}",
        "--seed",
        seed,
        "--budget",
        len(unique),
        *extra,
        reuse=args.reuse,
    )
    got = trials(base)
    ref = json.loads((co / "reference.json").read_text())
    row = {
        "seed": seed,
        "wall_s": {"coevolution": wall_co, "baselines": wall_base},
        "pretrain": ev.supernet_info,
        "full": ref["metrics"],
        "coevolution": {"genome_id": best["genome_id"], "metrics": best["metrics"]},
        "trials": len(trials(co)),
    }
    for k in ("l1", "random"):
        row[k] = {"genome_id": ids[k], "metrics": got[ids[k]]}
    if seed == args.seeds[0]:
        out = Path(args.out).with_name("cyclegan_samples.png")
        samples(
            ev,
            {
                "co-evolution": (co, genome),
                "L1-norm": (base, gl),
                "random": (base, gr),
            },
            out,
        )
    return row


def mean_sd(xs: list[float], fmt: str) -> str:
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(statistics.stdev(xs))}"


def total_loss(m: dict, split: str = "report") -> float:
    sfx = "_report" if split == "report" else ""
    return m[f"loss_ab{sfx}"] + m[f"loss_ba{sfx}"]


def write_md(state: dict, out: Path) -> None:
    rows, args = state["rows"], state["args"]
    n = len(rows)
    full = rows[0]["full"]
    full_flops = full["flops"]

    def vals(method: str, key: str) -> list[float]:
        return [float((r[method] if method == "full" else r[method]["metrics"])[key]) for r in rows]

    means = {m: {c[1]: statistics.mean(vals(m, c[1])) for c in COLUMNS} for m in METHODS}
    best = {}
    for _, key, up, fmt in COLUMNS:  # the best among the pruned pairs; none when tied
        shown = {m: fmt.format(means[m][key]) for m in METHODS}
        top = (max if up else min)(METHODS, key=lambda m: means[m][key])
        best[key] = top if list(shown.values()).count(shown[top]) == 1 else None
    walls = ", ".join(f"seed {r['seed']}: {fmt_wall(r)}" for r in rows)
    head = "| pairs | MFLOPs (% of full) | params | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [
        "# Co-evolutionary compression of CycleGAN generators against L1-norm pruning at equal FLOPs",
        "",
        f"    {state['command']}",
        "",
        f"{state['date']}, {state.get('machine', 'CPU')}: {state['wall_s'] / 60:.1f} min in all ({walls}).",
        "",
        "Setup (`spaces/cyclegan_digits.yaml`): two generators (A -> B digits to thickened, inverted "
        "digits, and B -> A; 16x16, channels 16/32/16, 2 residual blocks) and two PatchGAN "
        "discriminators pre-trained together per seed "
        f"({args['pretrain_steps']} steps, LSGAN + cycle loss; each seed draws its own unpaired "
        "domains from scikit-learn's digits). Co-evolution: one population of channel masks per "
        f"generator, budget {args['budget']} trials; every candidate pair fine-tuned "
        f"{args['finetune_steps']} steps (Adam, LSGAN against the frozen discriminators + "
        "cycle loss) and ranked by the paper's fitness per generator, "
        f"1 / (kept parameter fraction + {args['gamma']:g} x (dis + cycle L1)), "
        "on the *select* half of the held-out images. Baselines: the same channel count per layer "
        "group as the co-evolution's chosen pair, the channels chosen by the L1 norm of the "
        "pre-trained filters, or at random: identical FLOPs and parameters; fine-tuned the same "
        "steps and scored by the same evaluator.",
        "",
        f"Everything below is on the *report* half of the held-out images (never used to select; "
        f"{state['report_images']} images a domain), mean ± std over {n} seeds "
        f"({', '.join(str(r['seed']) for r in rows)}). Bold: the best pruned pair of each column "
        "(none when tied at the shown precision). loss = dis + cycle L1 of that generator (lower "
        "is better); dis: mean squared difference of the target-domain discriminator's patch "
        "scores between the pruned and the full generator's translation; cycle L1: mean "
        "|G_other(G(x)) - x| through the pair; L1 to full: mean |pruned(x) - full(x)|; pixel "
        "range [-1, 1].",
        "",
        head,
        "|---|" + "---:|" * (len(COLUMNS) + 2),
    ]
    for m in ("full", *METHODS):
        flops = vals(m, "flops")
        params = vals(m, "params")
        pct = [100 * f / full_flops for f in flops]
        cells = [
            LABELS[m],
            f"{mean_sd([f / 1e6 for f in flops], '{:.2f}')} ({mean_sd(pct, '{:.0f}')} %)",
            mean_sd(params, "{:,.0f}"),
        ]
        for _, key, _, fmt in COLUMNS:
            s = mean_sd(vals(m, key), fmt)
            cells.append(f"**{s}**" if m != "full" and best[key] == m else s)
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per seed: the chosen pair's FLOPs and the summed loss (G_AB + G_BA) on the select images "
        "(what the search saw) and on the report images.",
        "",
        "| seed | MFLOPs (% of full) | co-evolution select / report | L1-norm select / report "
        "| random select / report | co-evolution better than L1 (report) |",
        "|---:|---:|---:|---:|---:|:---:|",
    ]
    wins = 0
    for r in rows:
        cm, lm, rm = (r[k]["metrics"] for k in METHODS)
        win = total_loss(cm) < total_loss(lm)
        wins += win
        lines.append(
            f"| {r['seed']} | {cm['flops'] / 1e6:.2f} ({100 * cm['flops'] / full_flops:.0f} %) | "
            + " | ".join(
                f"{total_loss(x, 'select'):.3f} / {total_loss(x):.3f}" for x in (cm, lm, rm)
            )
            + f" | {'yes' if win else 'no'} |"
        )
    co_l = statistics.mean(total_loss(r["coevolution"]["metrics"]) for r in rows)
    l1_l = statistics.mean(total_loss(r["l1"]["metrics"]) for r in rows)
    rnd_l = statistics.mean(total_loss(r["random"]["metrics"]) for r in rows)
    full_l = statistics.mean(total_loss(r["full"]) for r in rows)
    pct = statistics.mean(100 * r["coevolution"]["metrics"]["flops"] / full_flops for r in rows)
    # co-evolution's lead over L1-norm, paired by seed, counts only where its mean exceeds its std
    lead = [total_loss(r["l1"]["metrics"]) - total_loss(r["coevolution"]["metrics"]) for r in rows]
    spread = statistics.stdev(lead) if len(lead) > 1 else 0.0
    holds = statistics.mean(lead) > spread
    lines += [
        "",
        f"Summed report loss, mean over seeds: full {full_l:.3f}, co-evolution {co_l:.3f}, "
        f"L1-norm {l1_l:.3f}, random {rnd_l:.3f}.",
        "",
        "![samples](cyclegan_samples.png)",
        "",
        f"`cyclegan_samples.png`: the first 8 report images of each domain (seed {rows[0]['seed']}) "
        "and their translations by the full pair and by each pruned pair.",
        "",
        "Does the paper's claim (co-evolution keeps the translation quality at a fraction of the "
        "FLOPs better than a hand-crafted pruning criterion at equal FLOPs) hold here? "
        f"**{'Yes' if holds else 'No'}**: at {pct:.0f} % of the full FLOPs the co-evolution's "
        f"pairs have a summed report loss of {co_l:.3f} against {l1_l:.3f} for L1-norm pruning "
        f"(lower is better), lower in {wins} of {n} seeds; the paired lead "
        f"{statistics.mean(lead):.3f} ± {spread:.3f} (a lead counts only where its mean over the "
        "seeds exceeds its standard deviation).",
    ]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def fmt_wall(r: dict) -> str:
    w = r["wall_s"]
    if w["coevolution"] is None:
        return "reused"
    return (
        f"{w['coevolution'] / 60:.1f} min search + {(w['baselines'] or 0) / 60:.1f} min baselines"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=int, default=80, help="co-evolution trials per seed")
    ap.add_argument(
        "--population", type=int, default=None, help="co-evolution's (default: the space's 8)"
    )
    ap.add_argument("--work", default="runs/bench-cyclegan")
    ap.add_argument("--out", default=str(RESULTS / "cyclegan.md"), help="the .md; .json beside")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        help="extra --set for every run (e.g. evaluator.cyclegan.pretrain_steps=50 for a quick "
        "look; the defaults are the benchmark)",
    )
    ap.add_argument("--reuse", action="store_true", help="keep finished runs of --work")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="write the .md again from the .json beside --out (no runs)",
    )
    args = ap.parse_args()
    out = Path(args.out)
    js = out.with_suffix(".json")
    if args.report_only:
        write_md(json.loads(js.read_text()), out)
        return
    from search.config import load_run_config

    cfg, _, _ = load_run_config(ROOT / SPACE, args.set)
    c = cfg.evaluator.cyclegan
    t0 = time.time()
    rows = [run_seed(args, s, args.set) for s in args.seeds]
    sel, rep = rows_images(args.set)
    argv = " ".join(sys.argv[1:])
    state = {
        "command": f"OMP_NUM_THREADS=1 python benchmarks/cyclegan.py {argv}".strip(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "wall_s": time.time() - t0,
        "args": {
            **vars(args),
            "pretrain_steps": c.pretrain_steps,
            "finetune_steps": c.finetune_steps,
            "gamma": c.gamma,
        },
        "select_images": sel,
        "report_images": rep,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(state, indent=1))
    write_md(state, out)


def rows_images(sets: list[str]) -> tuple[int, int]:
    """How many held-out images of domain A select and report."""
    from evaluators.cyclegan import digit_domains
    from search.config import load_run_config

    cfg, space, _ = load_run_config(ROOT / SPACE, sets)
    dom = digit_domains(
        space.family.spec.resolution,
        cfg.seed,
        select_fraction=cfg.evaluator.cyclegan.select_fraction,
    )
    return tuple(len(dom.held_out(s)[0]) for s in ("select", "report"))


if __name__ == "__main__":
    main()
