"""What several benchmarks share: a CIFAR-10 subset from ../shared/data and a float ResNet-20
trained on it once (cached), built from `spaces/resnet20.yaml` so that its sub-networks are the
space's own."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10_jpg.zip"


def cifar_subset(path: str | Path, per_class: int, test_per_class: int, seed: int = 0):
    """Train / val (10 % of train) / test splits of CIFAR-10 JPEGs, `per_class` train images per class."""
    from evaluators.data import imagefolder

    return imagefolder(str(path), 32, seed, 0.1, 0.0, per_class, test_per_class)


def resnet20_space(weight_sets: list[str] | None = None):
    """`spaces/resnet20.yaml`, with a per-stage weight-set dimension when `weight_sets` is given."""
    from spaces.config import read_yaml, space_from_dict

    d = read_yaml(ROOT / "spaces" / "resnet20.yaml")
    if weight_sets:
        d["dimensions"]["weights"] = {
            "kind": "weightset",
            "per": "stage",
            "options": list(weight_sets),
        }
    return space_from_dict(d, str(ROOT / "spaces" / "resnet20.yaml"))


def float_resnet20(
    space, data, epochs: float, seed: int = 0, cache: Path | None = None, lr: float = 0.1
):
    """The full ResNet-20 of `space`, trained from scratch on `data` (cached by its recipe).
    Returns (model, info)."""
    from evaluators.cache import default_cache_dir
    from evaluators.train import TrainRecipe, evaluate, fine_tune

    recipe = TrainRecipe(epochs=epochs, batch_size=128, lr=lr, weight_decay=5e-4, schedule="cosine")
    key = f"resnet20-{data.name}-{data.fingerprint()}-e{epochs}-lr{lr}-s{seed}"
    folder = Path(cache or default_cache_dir()) / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    weights, meta = folder / f"{key}.pt", folder / f"{key}.json"
    space = space.with_classes(data.num_classes)
    g = {n: ("float" if n.startswith("weights.") else v) for n, v in space.full().items()}
    model = space.build(g, space.supernet(seed))
    if weights.exists() and meta.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
        return model, json.loads(meta.read_text())
    t0 = time.time()
    print(
        f"training float ResNet-20 on {len(data.train)} images for {epochs} epochs ...",
        flush=True,
    )
    fine_tune(model, data, 32, recipe, seed)
    acc, _ = evaluate(model, data.test, 32)
    info = {
        "epochs": epochs,
        "lr": lr,
        "train_images": len(data.train),
        "test_acc": acc,
        "train_time_s": round(time.time() - t0, 1),
    }
    torch.save(model.state_dict(), weights)
    meta.write_text(json.dumps(info, indent=2))
    return model, info


def clone(model):
    return copy.deepcopy(model)


def dcp_supernet(supernet, run: Path):
    """A copy of `supernet` with the pruned weights a DCP run left in its folder (dcp_supernet.pt)."""
    pruned = copy.deepcopy(supernet)
    pruned.load_state_dict(torch.load(Path(run) / "dcp_supernet.pt", weights_only=True))
    return pruned


def cifar_run_sets(
    data: str | Path,
    per_class: int,
    test_per_class: int,
    pretrain_epochs: float,
    finetune_epochs: float,
    sandwich: int = 4,
) -> list[str]:
    """`--set` overrides that run `spaces/resnet20.yaml` on a CIFAR-10 subset (the pruning and DCP
    benchmarks share one cached supernet when they share these settings). `sandwich` 1 pre-trains
    the full network alone: a plainly trained base, as the pruning papers start from."""
    return [
        "dataset=imagefolder",
        f"dataset.path={Path(data).resolve()}",
        f"dataset.per_class={per_class}",
        f"dataset.test_per_class={test_per_class}",
        "dataset.val_fraction=0.1",
        f"pretrain.epochs={pretrain_epochs}",
        "pretrain.batch_size=64",
        "pretrain.lr=0.1",
        f"pretrain.sandwich={sandwich}",
        f"evaluator.finetune.epochs={finetune_epochs}",
        "evaluator.finetune.batch_size=128",
        "evaluator.finetune.lr=0.02",
        "latency=none",
    ]


def cli(*args) -> None:
    """`search ARGS` in-process evaluation (`--workers 0`), failing loudly."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "search.cli", *map(str, args), "--no-progress", "--workers", "0"]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def same_counts(space, genome, imp, rng):
    """Genomes keeping as many filters per group as `genome`: by L1 norm (`imp`, the builder's
    importance of the pre-trained supernet) and at random."""
    import torch

    gl, gr = dict(genome), dict(genome)
    for name, v in genome.items():
        if not name.startswith("mask."):
            continue
        group, k = name.removeprefix("mask."), sum(v)
        top = set(torch.argsort(imp[group], descending=True)[:k].tolist())
        gl[name] = tuple(int(i in top) for i in range(len(v)))
        pick = set(rng.sample(range(len(v)), k))
        gr[name] = tuple(int(i in pick) for i in range(len(v)))
    assert space.cost(gl) == space.cost(genome) == space.cost(gr)
    return gl, gr


# The DCP benchmarks' data and base: a plainly trained ResNet-20 (no sandwich rule) on 1,000 images a
# class, scored on 500 test images a class (a standard error of about 0.7 points per accuracy).
DCP_DATA = {"per_class": 1000, "test_per_class": 500, "pretrain_epochs": 20, "sandwich": 1}


def add_cifar_args(
    ap,
    work: str,
    out: str,
    per_class: int = 400,
    test_per_class: int = 100,
    pretrain_epochs: float = 6,
    sandwich: int = 4,
) -> None:
    """The CIFAR-10-subset options the pruning and DCP benchmarks share (their defaults differ)."""
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--per-class", type=int, default=per_class)
    ap.add_argument("--test-per-class", type=int, default=test_per_class)
    ap.add_argument("--pretrain-epochs", type=float, default=pretrain_epochs)
    ap.add_argument(
        "--sandwich",
        type=int,
        default=sandwich,
        help="sub-networks per pre-training batch (1: the full network alone, a plain base)",
    )
    ap.add_argument("--finetune-epochs", type=float, default=2)
    ap.add_argument("--work", default=str(ROOT / "runs" / work))
    ap.add_argument("--out", default=str(RESULTS / out))


def fresh_work(args, keep: bool = False) -> tuple[Path, list[str]]:
    """An empty work folder (`keep`: as it is) and the `--set` arguments of the CIFAR-10-subset runs."""
    import shutil

    work = Path(args.work)
    if work.exists() and not keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    return work, [a for s in cifar_sets(args) for a in ("--set", s)]


def cifar_sets(args) -> list[str]:
    """`cifar_run_sets` of the options `add_cifar_args` added."""
    return cifar_run_sets(
        args.data,
        args.per_class,
        args.test_per_class,
        args.pretrain_epochs,
        args.finetune_epochs,
        args.sandwich,
    )


def cifar_flags(args) -> list[str]:
    """The command-line flags of the options `add_cifar_args` added (for a results file's
    command line; --data and --work name places, not settings)."""
    return [
        f"--per-class {args.per_class}",
        f"--test-per-class {args.test_per_class}",
        f"--pretrain-epochs {args.pretrain_epochs:g}",
        f"--sandwich {args.sandwich}",
        f"--finetune-epochs {args.finetune_epochs:g}",
    ]


def json_and_md(args, run, report) -> None:
    """A benchmark's last step: `run(args)` gives the figures, written as json beside
    `args.out` and as `report(figures)` into it; `--report-only` rebuilds the md from the json."""
    out = Path(args.out)
    if args.report_only:
        out.write_text(report(json.loads(out.with_suffix(".json").read_text())))
    else:
        data = run(args)
        out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
        out.write_text(report(data))
    print(out.read_text())


def default_pretraining(seed: int, adjust=None) -> dict:
    """The default run's supernet pre-training (spaces/tinynet.yaml's recipe and data, a fresh
    temporary cache), `adjust(evaluator)` applied first: the supernet's info (`train_time_s`,
    `full_val_acc`, ...)."""
    import tempfile

    from evaluators.evaluator import TrainEvaluator
    from search.config import load_run_config

    path = ROOT / "spaces" / "tinynet.yaml"
    with tempfile.TemporaryDirectory() as cache:
        cfg, space, _ = load_run_config(path, [f"cache={cache}", f"seed={seed}"])
        ev = TrainEvaluator.from_config(cfg, space, str(path))
        if adjust:
            adjust(ev)
        ev.setup()
        return ev.supernet_info


def mean_sd(v: list[float], fmt: str = "{:.1f}") -> str:
    """The mean of `v` and, over more than one value, its standard deviation: "m ± sd"."""
    import statistics

    sd = f" ± {fmt.format(statistics.stdev(v))}" if len(v) > 1 else ""
    return fmt.format(statistics.mean(v)) + sd


def pretraining_section(runs: list[dict], column: str, ways) -> list[str]:
    """The report section on pre-training runs (`default_pretraining`), each a dict of `seed`,
    `column` (the way it was run), `full_val_acc` and `train_time_s`: a row a run, then for
    each of `ways` the mean ± sd over its seeds."""
    out = [
        "## 2. What the supernet learns (the default run's pre-training)",
        "",
        f"| seed | {column} | full network val acc | pre-training s |",
        "|---:|---|---:|---:|",
    ]
    for p in runs:
        out.append(
            f"| {p['seed']} | {p[column]} | {p['full_val_acc']:.4f} | {p['train_time_s']:.1f} |"
        )
    out.append("")
    for way in ways:
        ps = [p for p in runs if p[column] == way]
        acc = mean_sd([p["full_val_acc"] for p in ps], "{:.4f}")
        secs = mean_sd([p["train_time_s"] for p in ps])
        out.append(f"- {way}: val acc {acc} over {len(ps)} seeds, {secs} s of pre-training")
    return out


def provenance() -> dict:
    """Where a benchmark's figures came from: its command line, the date and the CPU."""
    import datetime
    import platform
    import sys

    return {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.date.today().isoformat(),
        "cpu": platform.machine(),
    }


def timed_front(run_dir: str | Path, n: int) -> list[dict]:
    """The first `n` points of a run's Pareto front (pareto.json) that have a latency."""
    pts = json.loads((Path(run_dir) / "pareto.json").read_text())["front"]
    return [p for p in pts if p["metrics"].get("latency_ms") is not None][:n]


def front_networks(space, pts: list[dict]) -> list[tuple]:
    """(model, resolution) of each front point of `pts` (`timed_front`'s): its genome built on the
    space's supernet (seed 0), made ready to time (`kernels.tvm_latency.realistic`)."""
    from kernels.tvm_latency import realistic

    sup = space.supernet(0)
    out = []
    for p in pts:
        g = space.from_json(p["genome"])
        r = space.arch(g).resolution
        out.append((realistic(space.build(g, sup), r), r))
    return out


def compiled_with(backend, prepared, shape, db) -> dict:
    """A network (`prepared`: a lowered Relax module, `TVMBackend._lowered`) compiled with the
    schedules of `db` (a MetaSchedule database) into a VM, and a fixed input of `shape`, ready
    for `TVMBackend.time_rounds`."""
    from kernels.tvm_compile import load_tvm, with_database

    tvm = load_tvm()
    from tvm import relax

    exe = backend.library.executable(with_database(prepared, backend.target, db))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return {"vm": relax.VirtualMachine(exe, tvm.cpu()), "input": tvm.runtime.tensor(x.numpy())}


def own_front(space_path: str | Path, work: str | Path, n: int, repeats: int = 20) -> tuple:
    """(backend, front points, compiled networks): the first `n` timed front networks of a
    `benchmarks/latency_default.py` work folder's empty run, compiled with that run's own database
    (the schedules its check timed) by a backend on that database (its thread-sync probe too)."""
    from kernels.tvm_latency import TVMBackend
    from spaces import load_space

    run = Path(work) / "run-empty"
    pts = timed_front(run, n)
    own = Path(json.loads((run / "latency.json").read_text())["database"])
    b = TVMBackend(own.parent, repeats=repeats)
    compiled = []
    for model, r in front_networks(load_space(space_path), pts):
        prepared, shape, _ = b._lowered(model, r)
        compiled.append(compiled_with(b, prepared, shape, b.db.database))
    return b, pts, compiled
