"""The DEAP optimisers (ga, aging, coevolution) on the tabular NAS-Bench-201 evaluator: better than
random over 20 seeds, NSGA-II's hypervolume, constraints, seeding, determinism, the CLI."""

import json
import statistics

import pytest
import yaml

from evaluators.table import TableEvaluator
from search.config import Constraint, Objective
from search.hypervolume import hypervolume_2d
from search.optimizers import OPTIMIZERS
from search.optimizers.evolution import resolve_groups
from search.records import pareto_front
from search.simulate import simulate
from spaces import load_space
from spaces.config import space_from_dict
from tests.conftest import NB201_CSV, run_cli, search_best, space_path

pytestmark = pytest.mark.skipif(
    not NB201_CSV.exists(), reason="../shared/data/nb201_merged.csv not present"
)
TABLE = ["--set", "preset=nb201-table", "--set", f"evaluator.table={NB201_CSV}", "--no-progress"]
GROUPS = {"early": ["op.1<-0", "op.2<-0", "op.2<-1"], "late": ["op.3<-0", "op.3<-1", "op.3<-2"]}


@pytest.fixture(scope="module")
def table():
    space = load_space(space_path("nb201"))
    return space, TableEvaluator(space, str(NB201_CSV), "cifar10", "raspi4")


@pytest.fixture(scope="module")
def grouped():
    d = yaml.safe_load(space_path("nb201").read_text())
    space = space_from_dict(
        {"name": "nb201", "family": d["family"], "dimensions": d["dimensions"], "groups": GROUPS}
    )
    return space, TableEvaluator(space, str(NB201_CSV), "cifar10", "raspi4")


def _mean(xs):
    return statistics.mean(xs), statistics.stdev(xs)


@pytest.fixture(scope="module")
def random_floor(table):
    space, ev = table
    return _mean([search_best("random", space, ev, s) for s in range(20)])


@pytest.mark.parametrize("name,options", [("ga", {"population_size": 10}), ("aging", {})])
def test_evolution_beats_random_over_20_seeds(table, random_floor, name, options):
    space, ev = table
    m, sd = _mean([search_best(name, space, ev, s, **options) for s in range(20)])
    print(f"{name}: {m:.3f} +- {sd:.3f}; random {random_floor[0]:.3f} +- {random_floor[1]:.3f}")
    assert m > random_floor[0] + 0.15


def test_coevolution_beats_random_and_varies_one_population_at_a_time(grouped, random_floor):
    space, ev = grouped
    assert resolve_groups(space) == GROUPS
    m, sd = _mean([search_best("coevolution", space, ev, s, population_size=6) for s in range(20)])
    print(f"coevolution: {m:.3f} +- {sd:.3f}")
    assert m > random_floor[0] + 0.15
    # after the shared first population, a candidate is one population's genes joined with the
    # other population's representative
    cls = OPTIMIZERS["coevolution"]
    opt = cls(space, [Objective(metric="c10_test")], [], 0, cls.Options(population_size=6))
    recs = simulate(opt, ev, 6)
    for _ in range(12):
        turn = opt.names[opt.turn]
        other = [g for g in opt.names if g != turn][0]
        rep = opt.reps[other].genome
        g = opt.ask()
        assert all(g[n] == rep[n] for n in GROUPS[other]), (turn, g, rep)
        res = ev.evaluate(g)
        from search.records import TrialRecord

        opt.tell(
            TrialRecord(
                len(recs), g, space.genome_id(g), res.status, res.metrics, [res.metrics["c10_test"]]
            )
        )


def test_nsga2_hypervolume_beats_random(table):
    space, ev = table
    objs = [Objective(metric="val_acc"), Objective(metric="latency_ms", direction="minimize")]
    ref = [0.0, max(r[ev.lat_col] for r in ev.rows.values())]
    hv = {}
    for name in ("random", "ga"):
        vals = []
        for seed in range(20):
            cls = OPTIMIZERS[name]
            opt = cls(
                space,
                objs,
                [],
                seed,
                cls.Options(**({"population_size": 10} if name == "ga" else {})),
            )
            assert name == "random" or opt.mode == "nsga2"
            recs = simulate(opt, ev, 200)
            vals.append(
                hypervolume_2d(
                    [r.values for r in pareto_front(recs, [1.0, -1.0])], [1.0, -1.0], ref
                )
            )
        hv[name] = _mean(vals)
    print(hv)
    se = (hv["ga"][1] ** 2 / 20 + hv["random"][1] ** 2 / 20) ** 0.5
    assert hv["ga"][0] > hv["random"][0] + 3 * se  # well beyond the seeds' noise


def test_weighted_fitness_trades_accuracy_for_compression(table):
    """Evolutionary compression's lambda: a larger weight on the compression term finds smaller
    cells."""
    space, ev = table
    flops = {}
    for lam in (0.0, 1.0):
        vals = []
        for seed in range(5):
            cls = OPTIMIZERS["ga"]
            opt = cls(
                space,
                [Objective(metric="val_acc")],
                [],
                seed,
                cls.Options(population_size=10, **{"lambda": lam}),
            )
            simulate(opt, ev, 100)
            vals.append(statistics.mean(r.metrics["flops"] for r in opt.pop))
        flops[lam] = statistics.mean(vals)
    assert flops[1.0] < 0.7 * flops[0.0], flops


def test_constraints_are_feasibility_first(table):
    """A bound on a metric only evaluation tells (the table's latency is known beforehand and
    kept by every proposal: tests/test_sweep.py): selection prefers the feasible trials."""
    space, ev = table
    cons = [Constraint(metric="c100_test", min=70.0)]
    feasible = {}
    for name in ("random", "ga"):
        n = 0
        for seed in range(5):
            cls = OPTIMIZERS[name]
            opt = cls(
                space,
                [Objective(metric="val_acc")],
                cons,
                seed,
                cls.Options(**({"population_size": 10} if name == "ga" else {})),
            )
            recs = simulate(opt, ev, 100, cons)
            n += sum(r.feasible for r in recs[-40:])
        feasible[name] = n
    assert feasible["ga"] > 1.5 * feasible["random"], feasible


def test_same_seed_same_genomes_and_seeding(table, tmp_path):
    space, ev = table
    cls = OPTIMIZERS["ga"]

    def ids(seed, **o):
        opt = cls(
            space, [Objective(metric="val_acc")], [], seed, cls.Options(population_size=6, **o)
        )
        return [r.genome_id for r in simulate(opt, ev, 30)]

    assert ids(3) == ids(3) and ids(3) != ids(4)
    seeds = [space.sample(100 + i) for i in range(4)]
    f = tmp_path / "seeds.json"
    f.write_text(json.dumps({"genomes": [space.to_json(g) for g in seeds]}))
    got = ids(3, seeds=[str(f)])
    assert got[:4] == [space.genome_id(g) for g in seeds]


@pytest.mark.parametrize("name", ["ga", "coevolution"])
def test_same_genomes_whichever_worker_finishes_first(table, grouped, name):
    """Synchronous generations: 1 worker, or 3 finishing in random orders, evaluate the same
    genomes; without waiting (synchronous: false) the orders part."""
    space, ev = grouped if name == "coevolution" else table
    objs = [Objective(metric="val_acc"), Objective(metric="latency_ms", direction="minimize")]
    cls = OPTIMIZERS[name]

    def ids(workers, order, sync=True):
        opt = cls(space, objs, [], 5, cls.Options(population_size=6, synchronous=sync))
        recs = simulate(opt, ev, 40, workers=workers, finish_order=order)
        assert len(recs) == 40
        return sorted(r.genome_id for r in recs)

    serial = ids(1, None)
    assert all(ids(3, order) == serial for order in range(4))
    assert any(ids(3, order, sync=False) != serial for order in range(4))


def test_cli_ga_run_seeded_from_another_run(tmp_path):
    first = tmp_path / "first"
    r = run_cli(
        "run", "spaces/nb201.yaml", "--optimizer", "random", "--budget", 20, "--out", first, *TABLE
    )
    assert r.returncode == 0, r.stderr[-2000:]
    second = tmp_path / "second"
    r = run_cli(
        "run",
        "spaces/nb201.yaml",
        "--optimizer",
        "ga",
        "--set",
        f"seeds=[{first}]",
        "--set",
        "population_size=8",
        "--budget",
        60,
        "--out",
        second,
        *TABLE,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    front = json.loads((first / "pareto.json").read_text())["front"]
    import optuna

    from search.store import STUDY_NAME, open_storage

    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(second, None))
    assert study.trials[0].user_attrs["genome_id"] == front[0]["genome_id"]  # the seed comes first
    assert len(study.trials) == 60
    # the given optimiser re-scores a run's front
    third = tmp_path / "third"
    r = run_cli(
        "run",
        "spaces/nb201.yaml",
        "--optimizer",
        "given",
        "--set",
        f"genomes={first / 'pareto.json'}",
        "--budget",
        50,
        "--out",
        third,
        *TABLE,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(third, None))
    assert [t.user_attrs["genome_id"] for t in study.trials] == [e["genome_id"] for e in front]


@pytest.mark.parametrize(
    "args,field",
    [
        (["--optimizer", "ga", "--set", "seeds=[/nonexistent/x.json]"], "optimizer.options.seeds"),
        (["--optimizer", "ga", "--set", "selection=best"], "optimizer.options.selection"),
        (["--optimizer", "coevolution"], "groups"),
        (["--optimizer", "given"], "optimizer.options.genomes"),
    ],
)
def test_bad_evolution_options(tmp_path, args, field):
    r = run_cli("run", "spaces/nb201.yaml", *args, "--out", tmp_path / "x", *TABLE)
    assert r.returncode == 2, r.stderr[-2000:]
    assert field in r.stderr and "Traceback" not in r.stderr


def test_bad_genome_in_seed_file(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([{"op.1<-0": "conv_7x7"}]))
    r = run_cli(
        "run",
        "spaces/nb201.yaml",
        "--optimizer",
        "ga",
        "--set",
        f"seeds=[{f}]",
        "--out",
        tmp_path / "x",
        *TABLE,
    )
    assert r.returncode == 2 and "genome 0" in r.stderr and "optimizer.options.seeds" in r.stderr, (
        r.stderr
    )


def test_naming_another_optimizer_drops_the_files_options():
    from search.config import load_run_config

    tiny = space_path("tinynet")
    cfg, _, _ = load_run_config(tiny)
    assert cfg.optimizer.name == "ga" and cfg.optimizer.options == {"population_size": 6}
    cfg, _, _ = load_run_config(tiny, ["samples=3"], {"optimizer": "tinynet"})
    assert cfg.optimizer.options == {"samples": 3}
    cfg, _, _ = load_run_config(tiny, ["samples=3", "optimizer=tinynet"])
    assert cfg.optimizer.name == "tinynet" and cfg.optimizer.options == {"samples": 3}
    cfg, _, _ = load_run_config(tiny, ["tournament=3"], {"optimizer": "ga"})
    assert cfg.optimizer.options == {"population_size": 6, "tournament": 3}


def test_pruning_space_ships_with_the_papers_weighted_ga():
    """spaces/resnet20.yaml runs Evolutionary compression's form (configs/evolutionary-compression
    .yaml): one weighted fitness, val_acc + lambda x fraction of FLOPs removed, so a smaller network
    a little less accurate ranks first; NSGA-II is one option away; a --set preset adds to it."""
    from search.config import load_run_config
    from search.optimizers.evolution import Ranking
    from search.records import make_record

    path = space_path("resnet20")
    cfg, space, _ = load_run_config(path)
    assert cfg.optimizer.name == "ga"
    cls = OPTIMIZERS["ga"]
    opts = cls.parse_options(cfg.optimizer.options, str(path))
    assert (opts.selection, opts.lam, opts.compression, opts.surrogate) == (
        "weighted",
        0.1,
        "flops",
        0,
    )
    opt = cls(space, cfg.objectives, cfg.constraints, 0, opts)
    assert opt.mode == "weighted" and opt._surrogate() is None
    full = space.full()
    half = {
        k: (tuple(int(i % 2 == 0) for i in range(len(v))) if k.startswith("mask.") else v)
        for k, v in full.items()
    }
    base = space.cost(full)["flops"]
    recs = [
        make_record(
            i,
            space,
            g,
            "complete",
            {"val_acc": acc, "flops": space.cost(g)["flops"]},
            cfg.objectives,
            [],
        )
        for i, (g, acc) in enumerate([(full, 0.80), (half, 0.77)])
    ]
    ranking = Ranking(opt, opt.mode)
    removed = 1 - space.cost(half)["flops"] / base
    assert 0.4 < removed < 0.9
    assert ranking.fitness(recs[1]) == pytest.approx(0.77 + 0.1 * removed)
    assert ranking.fitness(recs[0]) == pytest.approx(0.80)
    assert ranking.survivors(recs, 1)[0].genome_id == recs[1].genome_id  # 0.77 + 0.1 x removed wins
    # NSGA-II one option away; another preset keeps the file's (it is merged after it)
    cfg2, _, _ = load_run_config(path, ["selection=nsga2", "preset=fast"])
    opts2 = cls.parse_options(cfg2.optimizer.options, str(path))
    assert cls(space, cfg2.objectives, [], 0, opts2).mode == "nsga2"
    assert cfg2.budget == 8 and opts2.lam == 0.1  # fast's budget over the file's preset
