"""TinyNet (Model Rubik's Cube, arXiv 2010.14819) on `spaces/tinynet.yaml` and digits, at equal
FLOPs and over seeds.

1. The tiny formula against EfficientNet's compound scaling inverted (d = 1.2^phi, w = 1.1^phi,
   r = 1.15^phi, phi < 0) and single-axis shrinking (only r, only d, only w) at FLOPs targets.
   Every method's network at a target lies within `--window` of it (|FLOPs ratio / target - 1|);
   a method with no grid network in the window "cannot reach" the target and is left out of
   that target's comparison. The whole method is repeated over `--seeds`: per seed, the
   formula's sampled (r, d, w) variants (drawn by the optimiser with that seed) and every
   fine-tuning change; at a target, every method's network is fine-tuned with the same seed.
   One pre-trained supernet (the yaml's seed 0, cached) serves every seed, as one trained base
   serves every seed of benchmarks/dcp.py.
2. A two-objective NSGA-II run (val_acc up, latency_ms down), one seed, descriptive only: its
   Pareto front and Optuna's own plots of the run's study (`--no-nsga` skips it).

Writes the md named by `--out` (default benchmarks/results/tinynet.md), a json beside it with
every figure of the md (`--report-only` rebuilds the md from it), and PNGs beside it. The work
folder keeps every finished fine-tuning (evals.json, keyed by network and fine-tuning seed) and
the NSGA-II run, so an interrupted run redoes only what had not finished (`--fresh` clears it).
Estimated at about 40 minutes on 2 otherwise idle cores with an empty supernet cache (3 seeds x
about 29 fine-tunings of some 20 s, the NSGA-II run's 25, the supernet's pre-training).

    python benchmarks/tinynet.py [--seeds 3] [--samples 20] [--targets 0.25 0.48 0.85]
        [--window 0.1] [--nsga-budget 24] [--population 8] [--no-nsga]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import mean_sd  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
YAML = ROOT / "spaces" / "tinynet.yaml"
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # EfficientNet's depth, width, resolution coefficients
AXES = ("resolution", "depth", "width")
FORMULA, COMPOUND = "tiny formula", "EfficientNet inverse compound"
METHODS = (FORMULA, COMPOUND, "only resolution", "only depth", "only width")
TARGET_SEED = 500  # fine-tuning seed of target i's networks: 1000 * seed + 500 + i


def compound(c: float) -> tuple[float, float, float]:
    """EfficientNet's compound scaling inverted to FLOPs ratio c: (r, d, w)."""
    phi = math.log(c) / math.log(ALPHA * BETA**2 * GAMMA**2)
    return GAMMA**phi, ALPHA**phi, BETA**phi


class Grid:
    """Every (r, d, w) grid network of the space (other dimensions at the base) and its FLOPs."""

    def __init__(self, space):
        from search.optimizers.tinynet import _scale_dims

        self.space, self.dims = space, _scale_dims(space)
        self.base = space.full()
        self.base_flops = space.cost(self.base)["flops"]
        self.points = [
            (rdw, self.ratio(self.genome(*rdw)))
            for rdw in itertools.product(*(self.dims[k].grid() for k in AXES))
        ]

    def genome(self, r, d, w):
        g = dict(self.base)
        for k, x in zip(AXES, (r, d, w)):
            g[self.dims[k].name] = x
        return self.space.canonical(g)

    def ratio(self, g) -> float:
        return self.space.cost(g)["flops"] / self.base_flops

    def rdw(self, g) -> tuple[float, float, float]:
        return tuple(g[self.dims[k].name] for k in AXES)

    def place(self, c: float, window: float, want=None, axis: str | None = None):
        """The grid network for target c: with `axis`, that axis alone shrunk (the others at 1),
        closest in FLOPs; else the network closest to the continuous (r, d, w) `want`. Returns
        ((r, d, w), ratio, within window); outside the window it is the nearest in FLOPs."""
        pts = [
            p
            for p in self.points
            if axis is None or all(p[0][i] == 1.0 for i, k in enumerate(AXES) if k != axis)
        ]
        inside = [p for p in pts if abs(p[1] / c - 1) <= window + 1e-12]
        if not inside:
            p = min(pts, key=lambda p: abs(p[1] / c - 1))
            return p[0], p[1], False
        if axis is not None:
            p = min(inside, key=lambda p: abs(p[1] / c - 1))
        else:
            p = min(
                inside,
                key=lambda p: (sum((a - b) ** 2 for a, b in zip(p[0], want)), abs(p[1] / c - 1)),
            )
        return p[0], p[1], True


class CachedEvaluator:
    """The evaluator, remembering every complete evaluation by (network, fine-tuning seed) in a
    json file: a rerun replays them instead of training again."""

    def __init__(self, ev, path: Path, settings: dict):
        self.ev, self.path = ev, path
        data = json.loads(path.read_text()) if path.exists() else {}
        if data.get("settings") != settings:
            if data:
                print(f"{path}: other settings, starting afresh", flush=True)
            data = {"settings": settings, "evals": {}}
        self.data, self.used, self.new = data, set(), 0

    def __getattr__(self, name):
        return getattr(self.ev, name)

    def evaluate(self, genome, seed: int = 0, report=None):
        from evaluators.base import EvalResult

        gid = self.ev.space.genome_id(genome)
        key = f"{gid}@{seed}"
        if key in self.data["evals"]:
            self.used.add(key)
            return EvalResult(gid, "complete", dict(self.data["evals"][key]))
        r = self.ev.evaluate(genome, seed=seed)
        if r.status == "complete":
            self.new += 1
            self.used.add(key)
            self.data["evals"][key] = {
                k: v for k, v in r.metrics.items() if isinstance(v, (int, float, str))
            }
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data))
            tmp.replace(self.path)
        return r


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, default=3, help="repetitions of the whole method")
    ap.add_argument(
        "--samples", type=int, default=20, help="(r, d, w) variants the formula is fitted on"
    )
    ap.add_argument(
        "--targets",
        type=float,
        nargs="+",
        default=[0.25, 0.48, 0.85],
        help="FLOPs targets as fractions of the base",
    )
    ap.add_argument(
        "--window",
        type=float,
        default=0.10,
        help="a network meets target c when |FLOPs ratio / c - 1| <= window",
    )
    ap.add_argument("--nsga-budget", type=int, default=24)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--no-nsga", action="store_true", help="skip the NSGA-II part")
    ap.add_argument("--pretrain-epochs", type=float, default=None, help="default: the yaml's (10)")
    ap.add_argument("--finetune-epochs", type=float, default=None, help="default: the yaml's (3)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-tinynet"))
    ap.add_argument("--fresh", action="store_true", help="empty the work folder first")
    ap.add_argument("--out", default=str(RESULTS / "tinynet.md"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the md from the json")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    if args.report_only:
        out.write_text(report(json.loads(out.with_suffix(".json").read_text())))
        print(out.read_text())
        return 0
    if args.samples >= TARGET_SEED:
        ap.error(f"--samples must be below {TARGET_SEED}")
    out.parent.mkdir(parents=True, exist_ok=True)
    data = run(args, out)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    out.write_text(report(data))
    print(out.read_text())
    return 0


def _sets(args) -> list[str]:
    sets = []
    if args.pretrain_epochs is not None:
        sets.append(f"pretrain.epochs={args.pretrain_epochs:g}")
    if args.finetune_epochs is not None:
        sets.append(f"evaluator.finetune.epochs={args.finetune_epochs:g}")
    return sets


def _command(args) -> str:
    parts = [
        f"--seeds {args.seeds}",
        f"--samples {args.samples}",
        "--targets " + " ".join(f"{c:g}" for c in args.targets),
        f"--window {args.window:g}",
    ]
    parts += (
        ["--no-nsga"]
        if args.no_nsga
        else [f"--nsga-budget {args.nsga_budget}", f"--population {args.population}"]
    )
    if args.pretrain_epochs is not None:
        parts.append(f"--pretrain-epochs {args.pretrain_epochs:g}")
    if args.finetune_epochs is not None:
        parts.append(f"--finetune-epochs {args.finetune_epochs:g}")
    return "python benchmarks/tinynet.py " + " ".join(parts)


def run(args, out: Path) -> dict:
    from evaluators.registry import make_evaluator
    from search.config import load_run_config
    from search.optimizers.tinynet import TinyNetFormula
    from search.simulate import simulate

    work = Path(args.work).resolve()
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sets = _sets(args)
    # the comparison reads accuracy only: no latency measurement (noisy beside other jobs)
    cfg, space, _ = load_run_config(YAML, [*sets, "latency=none"])
    ev = make_evaluator(cfg, space, str(YAML))
    ev.setup()  # the supernet: pre-trained once with the sandwich rule, cached
    space = ev.space
    grid = Grid(space)
    settings = {
        "space": hashlib.sha256(YAML.read_bytes()).hexdigest()[:16],
        "sets": sets,
    }
    cev = CachedEvaluator(ev, work / "evals.json", settings)
    objectives = cfg.objectives[:1]  # val_acc: what the formula's Pareto front is ranked by
    opts = TinyNetFormula.Options(samples=args.samples, target_flops=list(args.targets))

    def pct(m: dict) -> dict:
        return {"val_acc": 100 * m["val_acc"], "test_acc": 100 * m["test_acc"]}

    seeds: dict[str, dict] = {}
    for s in range(args.seeds):
        t1 = time.time()
        opt = TinyNetFormula(space, objectives, [], s, opts)

        def progress(n, r, s=s, t1=t1):
            m = r.metrics
            print(
                f"seed {s} sample {n + 1}/{args.samples}: val {100 * m.get('val_acc', 0):.2f} "
                f"MFLOPs {m.get('flops', 0) / 1e6:.2f} ({time.time() - t1:.0f} s)",
                flush=True,
            )

        recs = simulate(opt, cev, args.samples, [], seed=1000 * s, on_trial=progress)
        if opt.fit is None:  # the engine stopped at the budget, before the optimiser's own targets
            opt._fit()
        fdir = work / f"formula-seed{s}"
        fdir.mkdir(exist_ok=True)
        opt.finish(fdir)  # formula.json and the fitted curves
        if s == 0:
            shutil.copy(fdir / "tinynet_formula.png", out.parent / f"{out.stem}_formula.png")
        base = next(r for r in recs if r.complete and r.genome_id == space.genome_id(grid.base))
        row: dict = {
            "samples": len([r for r in recs if r.complete]),
            "front": len(opt.fit["front"]),
            "base": pct(base.metrics),
            "targets": {},
        }
        for i, c in enumerate(args.targets):
            curves = opt.curves(c)
            own = opt.formula(c)
            placed = {
                FORMULA: grid.place(c, args.window, want=curves),
                COMPOUND: grid.place(c, args.window, want=compound(c)),
                **{f"only {k}": grid.place(c, args.window, axis=k) for k in AXES},
            }
            ft_seed = 1000 * s + TARGET_SEED + i
            t_row = {
                "curves": list(curves),
                "own": {"rdw": list(grid.rdw(own)), "ratio": grid.ratio(own)},
                "finetune_seed": ft_seed,
                "methods": {},
            }
            for method, (rdw, ratio, ok) in placed.items():
                entry = {"rdw": list(rdw), "ratio": ratio, "reached": ok}
                if ok:
                    r = cev.evaluate(grid.genome(*rdw), seed=ft_seed)
                    if r.status != "complete":
                        raise RuntimeError(f"seed {s} target {c} {method}: {r.reason}")
                    entry.update(pct(r.metrics))
                    print(
                        f"seed {s} target {c:g} {method} ({', '.join(f'{x:g}' for x in rdw)}; "
                        f"{ratio:.3f}): val {entry['val_acc']:.2f} test {entry['test_acc']:.2f}",
                        flush=True,
                    )
                t_row["methods"][method] = entry
            row["targets"][f"{c:g}"] = t_row
        seeds[str(s)] = row
        print(f"seed {s} done ({time.time() - t1:.0f} s)", flush=True)

    nsga = None if args.no_nsga else nsga_part(args, sets, work, out, grid)
    return {
        "command": _command(args),
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": round(time.time() - t0, 1),
        "cpus": os.cpu_count(),
        "evals": len(cev.used),
        "evals_new": cev.new,
        "evals_s": round(sum(cev.data["evals"][k]["wall_time_s"] for k in cev.used), 1),
        "pretrain_s": ev.supernet_info.get("train_time_s"),
        "base_mflops": grid.base_flops / 1e6,
        "train_images": len(ev.data.train),
        "val_images": len(ev.data.val),
        "test_images": len(ev.data.test),
        "pretrain_epochs": ev.pretrain.epochs,
        "sandwich": ev.sandwich,
        "finetune_epochs": ev.finetune.epochs,
        "grid": {k: grid.dims[k].grid() for k in AXES},
        "single_axis": {
            k: [
                [x, grid.ratio(grid.genome(*(x if a == k else 1.0 for a in AXES)))]
                for x in grid.dims[k].grid()
            ]
            for k in AXES
        },
        "targets": [f"{c:g}" for c in args.targets],
        "window": args.window,
        "samples": args.samples,
        "compound": {f"{c:g}": list(compound(c)) for c in args.targets},
        "seeds": seeds,
        "nsga": nsga,
    }


def nsga_part(args, sets, work: Path, out: Path, grid) -> dict:
    """NSGA-II over accuracy and latency as one `search run` (reused when it finished with the
    same settings), and Optuna's plots of its study beside the md."""
    from benchmarks.common import cli

    run_dir = work / "nsga2"
    stamp = run_dir / "bench.json"
    want = {"budget": args.nsga_budget, "population": args.population, "sets": sets}
    have = json.loads(stamp.read_text()) if stamp.exists() else {}
    if not ((run_dir / "pareto.json").exists() and have.get("settings") == want):
        shutil.rmtree(run_dir, ignore_errors=True)
        t = time.time()
        cli(
            "run",
            "spaces/tinynet.yaml",
            "--optimizer",
            "optuna",
            "--set",
            "sampler=nsga2",
            "--set",
            f"population_size={args.population}",
            "--set",
            "latency=torch",  # eager, as this table was measured (the space now defaults to TVM)
            *[a for s in sets for a in ("--set", s)],
            "--budget",
            args.nsga_budget,
            "--out",
            run_dir,
            "--seed",
            0,
        )
        have = {"settings": want, "wall_s": round(time.time() - t, 1)}
        stamp.write_text(json.dumps(have))
    front = json.loads((run_dir / "pareto.json").read_text())["front"]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    from search.store import STUDY_NAME, open_storage

    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir, None))
    ax = optuna.visualization.matplotlib.plot_pareto_front(
        study, target_names=["val_acc", "latency_ms"]
    )
    ax.figure.savefig(out.parent / f"{out.stem}_nsga2_pareto.png", dpi=100, bbox_inches="tight")
    plt.close("all")
    ax = optuna.visualization.matplotlib.plot_optimization_history(
        study, target=lambda tr: tr.values[0], target_name="val_acc"
    )
    ax.figure.savefig(out.parent / f"{out.stem}_nsga2_history.png", dpi=100, bbox_inches="tight")
    plt.close("all")
    points = []
    for e in front:
        m = e["metrics"]
        g = grid.space.from_json(e["genome"])
        points.append(
            {
                "val_acc": 100 * m["val_acc"],
                "latency_ms": m["latency_ms"],
                "mflops": m["flops"] / 1e6,
                "params": m["params"],
                "rdw": list(grid.rdw(g)),
            }
        )
    cmd = (
        "search run spaces/tinynet.yaml --optimizer optuna --set sampler=nsga2 "
        f"--set population_size={args.population} --set latency=torch "
        + "".join(f"--set {s} " for s in sets)
        + f"--budget {args.nsga_budget} --seed 0"
    )
    return {
        "command": cmd,
        "wall_s": have.get("wall_s"),
        "trials": args.nsga_budget,
        "front": points,
    }


# ---- the report: every figure from the json ----


def _ms(v: list[float]) -> str:
    return mean_sd(v, "{:.2f}")


def _rdw(x) -> str:
    return ", ".join(f"{v:g}" for v in x)


def _bold(text: str, value: float, best: float) -> str:
    return f"**{text}**" if round(value, 2) == round(best, 2) else text


def _distinct(vals: list[str]) -> str:
    """`a` when every seed agrees, else `a (×2); b`."""
    counts: dict[str, int] = {}
    for v in vals:
        counts[v] = counts.get(v, 0) + 1
    if len(counts) == 1:
        return vals[0]
    return "; ".join(f"{k} (×{n})" if n > 1 else k for k, n in counts.items())


def reached(d: dict, c: str, method: str) -> bool:
    """A method reaches target c when its network is within the window for every seed."""
    return all(r["targets"][c]["methods"][method]["reached"] for r in d["seeds"].values())


def pair(d: dict, a: str, b: str, metric: str = "test_acc"):
    """Targets both methods reach; per-seed means over them of a, b and a - b (paired)."""
    shared = [c for c in d["targets"] if reached(d, c, a) and reached(d, c, b)]
    if not shared:
        return shared, [], [], []
    va, vb = [], []
    for r in d["seeds"].values():
        va.append(statistics.mean(r["targets"][c]["methods"][a][metric] for c in shared))
        vb.append(statistics.mean(r["targets"][c]["methods"][b][metric] for c in shared))
    return shared, va, vb, [x - y for x, y in zip(va, vb)]


def report(d: dict) -> str:
    seeds = d["seeds"]
    n = len(seeds)
    w = d["window"]
    lines = [
        "# TinyNet: the tiny formula against inverted compound scaling and single-axis shrinking at equal FLOPs (digits)",
        "",
        f"`{d['command']}` ({d['date']}, {d['cpus']} CPU cores). Section 1 used "
        f"{d['evals']} distinct fine-tunings (a network and its fine-tuning seed), "
        f"{d['evals_s'] / 60:.1f} min of evaluation in all ({d['evals_new']} of them trained by the "
        f"invocation that wrote this, which ran {d['wall_s'] / 60:.1f} min; the rest were kept in the "
        "work folder by an earlier one)"
        + (
            f"; the supernet's pre-training took {d['pretrain_s'] / 60:.1f} min (cached)."
            if d.get("pretrain_s")
            else "."
        ),
        "",
        f"Space `spaces/tinynet.yaml` (EfficientNet-B0-style, {d['base_mflops']:.1f} MFLOPs at r = d = w = 1). "
        f"One supernet, pre-trained {d['pretrain_epochs']:g} epoch(s) with the sandwich rule "
        f"({d['sandwich']} sub-networks a batch; the yaml's seed 0, cached), serves every seed; every "
        f"network inherits its weights and is fine-tuned {d['finetune_epochs']:g} epoch(s) (SGD, cosine). "
        f"Digits: {d['train_images']} training, {d['val_images']} validation and {d['test_images']} test "
        f"images, so one test image is {100 / d['test_images']:.2f} points of accuracy.",
        "",
        "## 1. Tiny formula vs inverted compound scaling vs single-axis shrinking, at equal FLOPs",
        "",
        f"Repeated over {n} seeds (0 to {n - 1}); per seed s the whole method: the `tinynet` optimiser "
        f"(seed s) evaluates the base and {d['samples'] - 1} random grid (r, d, w) variants of it "
        "(variant n fine-tuned with seed 1000 s + n), fits r(c) and d(c) by Gaussian-process regression on "
        "the validation-accuracy / FLOPs Pareto front of those variants and sets w = sqrt(c / (r^2 d)). "
        "EfficientNet's compound scaling inverted: phi = ln c / ln(1.2 x 1.1^2 x 1.15^2), r = 1.15^phi, "
        "d = 1.2^phi, w = 1.1^phi. Both prescriptions are continuous; each is placed by the same rule on "
        f"the space's grids (r {_rdw(d['grid']['resolution'])}; d {_rdw(d['grid']['depth'])}; "
        f"w {_rdw(d['grid']['width'])}; the other dimensions at the base): the grid network nearest to "
        f"the prescribed (r, d, w) among those whose FLOPs ratio is within **{100 * w:g} %** of the target "
        f"(|ratio / target - 1| <= {w:g}). Single-axis shrinking takes that axis's grid value (the others "
        "at 1) with FLOPs closest to the target, if it is within the same window; otherwise the method "
        "**cannot reach** the target and is left out of that target's comparison. At target i of seed s "
        f"every method's network is fine-tuned with the same seed (1000 s + {TARGET_SEED} + i).",
        "",
        "Single-axis FLOPs ratios on the grid: "
        + "; ".join(
            f"only {k}: " + ", ".join(f"{x:g} → {r:.3f}" for x, r in d["single_axis"][k] if x < 1)
            for k in AXES
        )
        + ". The targets ("
        + ", ".join(d["targets"])
        + f") and the {100 * w:g} % window are chosen where these land, so that most methods "
        "reach most targets.",
        "",
        f"Accuracy in %, mean ± std over the {n} seeds; where seeds place a method on different "
        "networks, each is listed (×: how many seeds); bold: the best of a column within a target "
        "(ties at the printed precision all bold).",
        "",
        "| target | method | r, d, w | FLOPs ratio | val acc % | test acc % |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for c in d["targets"]:
        ok = [m for m in METHODS if reached(d, c, m)]
        vals = {
            m: {
                k: [r["targets"][c]["methods"][m][k] for r in seeds.values()]
                for k in ("val_acc", "test_acc")
            }
            for m in ok
        }
        best = {
            k: max((round(statistics.mean(v[k]), 2) for v in vals.values()), default=0.0)
            for k in ("val_acc", "test_acc")
        }
        for m in METHODS:
            es = [r["targets"][c]["methods"][m] for r in seeds.values()]
            rdw = _distinct([_rdw(e["rdw"]) for e in es])
            ratio = _distinct([f"{e['ratio']:.3f}" for e in es])
            if m not in ok:
                miss = [e for e in es if not e["reached"]]
                near = _distinct([_rdw(e["rdw"]) for e in miss])
                near_ratio = _distinct([f"{e['ratio']:.3f}" for e in miss])
                lines.append(
                    f"| {c} | {m} | cannot reach (nearest: {near}) | {near_ratio} | – | – |"
                )
                continue
            cells = [
                _bold(_ms(vals[m][k]), statistics.mean(vals[m][k]), best[k])
                for k in ("val_acc", "test_acc")
            ]
            lines.append(f"| {c} | {m} | {rdw} | {ratio} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "The continuous prescriptions (mean over seeds for the formula; its network is the grid network "
        "nearest to them within the window):",
        "",
        "| target | tiny formula r, d, w | inverse compound r, d, w | the optimiser's own network (r, d snapped, w by FLOPs): r, d, w (FLOPs ratio) |",
        "|---:|---|---|---|",
    ]
    own_out = 0
    for c in d["targets"]:
        ts = [r["targets"][c] for r in seeds.values()]
        cur = [statistics.mean(t["curves"][i] for t in ts) for i in range(3)]
        own = _distinct([f"{_rdw(t['own']['rdw'])} ({t['own']['ratio']:.3f})" for t in ts])
        own_out += sum(abs(t["own"]["ratio"] / float(c) - 1) > w + 1e-12 for t in ts)
        lines.append(
            f"| {c} | {', '.join(f'{x:.3f}' for x in cur)} | "
            f"{', '.join(f'{x:.3f}' for x in d['compound'][c])} | {own} |"
        )
    base_t = [r["base"]["test_acc"] for r in seeds.values()]
    lines += [
        "",
        f"The `tinynet` optimiser's own placement fell outside the window at {own_out} of "
        f"{n * len(d['targets'])} (seed, target) pairs; hence the common placement rule above. Variants "
        "on the Pareto front the formula was fitted on, per seed: "
        + ", ".join(f"{r['front']} of {r['samples']}" for r in seeds.values())
        + " (seed 0's fit: `tinynet_formula.png`). The base itself (r = d = w = 1, the first variant of each seed) scores "
        f"{_ms(base_t)} % test accuracy.",
        "",
        "The claim's comparisons, each over the targets both methods reach (every seed's mean over "
        "those targets; the difference is paired by seed and target; bold: the larger). They read test "
        "accuracy: the formula's fit read its variants' validation accuracy.",
        "",
        "| comparison | targets both reach | first % | second % | first minus second |",
        "|---|---|---:|---:|---:|",
    ]
    # a comparison holds only where the first is ahead by more than the paired (per-seed)
    # differences' standard deviation; ahead by less is within noise
    verdict: dict[tuple[str, str], str | None] = {}
    for a, b in (
        (FORMULA, COMPOUND),
        ("only width", "only resolution"),
        ("only width", "only depth"),
    ):
        shared, va, vb, diff = pair(d, a, b)
        if not shared:
            verdict[a, b] = None
            lines.append(f"| {a} vs {b} | none | – | – | – |")
            continue
        ma, mb = statistics.mean(va), statistics.mean(vb)
        spread = statistics.stdev(diff) if len(diff) > 1 else 0.0
        gap = statistics.mean(diff)
        verdict[a, b] = (
            "yes"
            if gap > spread
            else f"no, within noise ({gap:+.2f} ± {spread:.2f})"
            if gap > 0
            else "no"
        )
        top = max(ma, mb)
        lines.append(
            f"| {a} vs {b} | {', '.join(shared)} | {_bold(_ms(va), ma, top)} | {_bold(_ms(vb), mb, top)} | "
            f"{_ms(diff)} |"
        )
    if d.get("nsga"):
        ns = d["nsga"]
        took = f"{ns['wall_s']:.0f} s, " if ns.get("wall_s") is not None else ""
        lines += [
            "",
            "## 2. Two-objective NSGA-II (val_acc up, latency_ms down): one seed, descriptive only",
            "",
            f"`{ns['command']}`: {took}{ns['trials']} trials, **{len(ns['front'])} non-dominated points**. "
            "One seed, latency measured once on this machine's CPU: it shows what the search finds, "
            "and is not part of the claim. Optuna's own plots of the run's study: "
            "`tinynet_nsga2_pareto.png` (plot_pareto_front), `tinynet_nsga2_history.png` "
            "(plot_optimization_history).",
            "",
            "| val acc % | latency_ms | MFLOPs | params | r, d, w |",
            "|---:|---:|---:|---:|---|",
        ]
        for p in ns["front"]:
            lines.append(
                f"| {p['val_acc']:.2f} | {p['latency_ms']:.3f} | {p['mflops']:.2f} | {p['params']:,} | "
                f"{_rdw(p['rdw'])} |"
            )
    f_c = verdict[FORMULA, COMPOUND]
    w_r, w_d = verdict["only width", "only resolution"], verdict["only width", "only depth"]
    holds = f_c == w_r == w_d == "yes"

    def says(v, what: str) -> str:
        if v is None:
            return f"{what}: not compared (no target both reach)"
        return f"{what}: {v}"

    lines += [
        "",
        "The paper's results are on ImageNet with fully trained networks; none of its values is "
        "comparable with digits and this budget, so none is listed.",
        "",
        "**Does the paper's claim (resolution and depth matter more than width when shrinking, read as: "
        "at equal FLOPs, shrinking width alone beats shrinking resolution alone and depth alone; and the "
        "tiny formula beats the inverted EfficientNet compound scaling) hold here? "
        + ("Yes" if holds else "No")
        + "** (on mean test accuracy at the targets both methods reach, a difference counted only "
        + "where its mean exceeds its standard deviation over the seeds; "
        + "; ".join(
            [
                says(w_r, "only width beats only resolution"),
                says(w_d, "only width beats only depth"),
                says(f_c, "the tiny formula beats the inverse compound scaling"),
            ]
        )
        + ").",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
