"""The Optuna optimiser on the tabular NAS-Bench-201 evaluator: TPE beats random, NSGA-II gives
a front, the study sees trials of other optimisers, and Optuna's own plots read a run."""

import statistics

import matplotlib
import optuna
import pytest

from evaluators.table import TableEvaluator
from search.config import Constraint, Objective
from search.optimizers import OPTIMIZERS
from search.records import pareto_front
from search.simulate import simulate
from search.store import STUDY_NAME, open_storage
from spaces import load_space
from tests.conftest import NB201_CSV, run_cli, search_best, space_path

matplotlib.use("Agg")
pytestmark = pytest.mark.skipif(
    not NB201_CSV.exists(), reason="../shared/data/nb201_merged.csv not present"
)


@pytest.fixture(scope="module")
def table():
    space = load_space(space_path("nb201"))
    return space, TableEvaluator(space, str(NB201_CSV), "cifar10", "raspi4")


def test_tpe_beats_random_over_20_seeds(table):
    space, ev = table
    rnd = [search_best("random", space, ev, s) for s in range(20)]
    tpe = [search_best("optuna", space, ev, s) for s in range(20)]
    print(
        f"random {statistics.mean(rnd):.3f} +- {statistics.stdev(rnd):.3f}; "
        f"tpe {statistics.mean(tpe):.3f} +- {statistics.stdev(tpe):.3f}"
    )
    assert statistics.mean(tpe) > statistics.mean(rnd) + 0.1


def test_nsga2_two_objectives_gives_a_front(table):
    space, ev = table
    objs = [Objective(metric="val_acc"), Objective(metric="latency_ms", direction="minimize")]
    opt = OPTIMIZERS["optuna"](space, objs, [], 0, OPTIMIZERS["optuna"].Options(population_size=20))
    recs = simulate(opt, ev, 120)
    front = pareto_front(recs, [1.0, -1.0])
    assert len(front) >= 5


def test_constraints_reach_the_sampler(table):
    space, ev = table
    # a bound only evaluation tells (random keeps a bound known beforehand, like a table's
    # latency, by drawing within it: tests/test_sweep.py)
    cons = [Constraint(metric="c100_test", min=70.0)]
    feasible = {}
    for name in ("random", "optuna"):
        n = 0
        for seed in range(5):
            opt = OPTIMIZERS[name](space, [Objective(metric="val_acc")], cons, seed)
            recs = simulate(opt, ev, 100, cons)
            n += sum(r.feasible for r in recs[-40:])
            if name == "optuna":
                done = [t for t in opt.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
                assert all("c100_test" in t.constraints for t in done)
        feasible[name] = n
    assert feasible["optuna"] > 1.3 * feasible["random"], (
        feasible
    )  # the sampler steers to feasibility


def test_study_sees_other_optimisers_trials_and_plots(tmp_path):
    out = tmp_path / "run"
    common = [
        "--set",
        "preset=nb201-table",
        "--set",
        f"evaluator.table={NB201_CSV}",
        "--no-progress",
    ]
    r = run_cli("run", "spaces/nb201.yaml", "--budget", 30, "--out", out, *common)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("resume", out, "--optimizer", "optuna", "--budget", 60, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out, None))
    assert len(study.trials) == 60 and len({t.user_attrs["genome_id"] for t in study.trials}) == 60
    # warm start from the first run into a second one
    space = load_space(space_path("nb201"))
    opt = OPTIMIZERS["optuna"](
        space,
        [Objective(metric="val_acc")],
        [],
        0,
        OPTIMIZERS["optuna"].Options(warm_start=[str(out)]),
    )
    assert len(opt.study.trials) == 60
    # Optuna's own visualisation reads the run's study
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    ax = plot_optimization_history(study)
    ax.figure.savefig(tmp_path / "history.png")
    plot_param_importances(study).figure.savefig(tmp_path / "importance.png")
    assert (tmp_path / "history.png").stat().st_size > 1000
