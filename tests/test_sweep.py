"""`search sweep` and constrained search: every combination a run, a summary, resume, bad axes;
proposals kept within bounds known before evaluation; the surrogate is seeded."""

import json
import random

import numpy as np
import pytest
import yaml

from evaluators.table import TableEvaluator
from search.config import Constraint, Objective
from search.optimizers import OPTIMIZERS
from search.runs import open_run
from search.simulate import simulate
from spaces import load_space
from tests.conftest import NB201_CSV, ROOT, run_cli, space_path

pytestmark = pytest.mark.skipif(
    not NB201_CSV.exists(), reason="../shared/data/nb201_merged.csv not present"
)


def _sweep_file(tmp_path, axes, budget=12, name="s.yaml"):
    spec = {
        "run": str(ROOT / "spaces" / "nb201.yaml"),
        "set": [
            "preset=nb201-table",
            f"evaluator.table={NB201_CSV}",
            f"budget={budget}",
            "optimizer=ga",
        ],
        "axes": axes,
        "parallel": 2,
    }
    p = tmp_path / name
    p.write_text(yaml.safe_dump(spec))
    return p


def test_a_table_sweep_runs_every_combination_and_compares_them(tmp_path):
    f = _sweep_file(
        tmp_path,
        {
            "evaluator.table_latency": ["raspi4", "eyeriss"],
            "constraints": [[{"metric": "latency_ms", "max": 12.0}]],
        },
    )
    out = tmp_path / "sw"
    r = run_cli("sweep", f, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((out / "sweep.json").read_text())
    assert [x["evaluator.table_latency"] for x in rows] == ["raspi4", "eyeriss"]
    for x in rows:
        run = open_run(out / x["folder"])
        assert x["state"] == "complete" and len(run.complete) == 12
        assert run.cfg.evaluator.table_latency == x["evaluator.table_latency"]
        assert run.cfg.constraints[0].max == 12.0
        b = run.best()
        assert b.feasible and x["best"] == pytest.approx(b.values[0])
        assert all(t.metrics["latency_ms"] <= 12.0 for t in run.complete)  # lookups: all kept in
    lat = [open_run(out / x["folder"]).complete[0].metrics["latency_ms"] for x in rows]
    assert lat[0] != lat[1]  # each run read its own device's column
    md = (out / "sweep.md").read_text()
    assert md.count("| complete |") == 2
    assert (out / "sweep.png").stat().st_size > 0
    shown = run_cli("show", out / rows[0]["folder"])
    assert shown.returncode == 0, shown.stderr


def test_a_half_finished_sweep_resumes_keeping_what_was_done(tmp_path, capsys):
    from search.cli import main
    from search.sweep import load_sweep, prepare_folder

    f = _sweep_file(tmp_path, {"seed": [0, 1]})
    out = tmp_path / "sw"
    prepare_folder(load_sweep(f), out)
    # combination 0 stopped after 5 of its 12 trials, combination 1 never started
    part = out / "000-seed=0"
    args = ["run", ROOT / "spaces" / "nb201.yaml", "--out", part, "--no-progress"]
    for s in [*yaml.safe_load(f.read_text())["set"], "seed=0", "budget=5"]:
        args += ["--set", s]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    first = [t.genome_id for t in open_run(part).complete]
    r = run_cli("sweep", f, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 to run" in r.stderr
    done = open_run(part).complete
    assert len(done) == 12 and [t.genome_id for t in done[:5]] == first
    assert len(open_run(out / "001-seed=1").complete) == 12
    assert main(["sweep", str(f), "--out", str(out)]) == 0  # nothing left to run
    assert "| 1 | 1 | complete | 12 |" in capsys.readouterr().out


def test_a_bad_axis_is_exit_2_naming_it_and_starts_nothing(tmp_path, capsys):
    from search.cli import main

    def err(f, *more):
        assert main(["sweep", str(f), *more]) == 2
        return capsys.readouterr().err

    f = _sweep_file(tmp_path, {"evaluator.table_latency": ["raspi4", "nosuchdevice"]})
    e = err(f, "--out", str(tmp_path / "sw"))
    assert str(f) in e and "table_latency=nosuchdevice" in e and "unknown device" in e
    assert not (tmp_path / "sw").exists()
    assert "axes.seed" in err(_sweep_file(tmp_path, {"seed": []}, name="empty.yaml"))
    assert "nosuchfield" in err(_sweep_file(tmp_path, {"evaluator.nosuchfield": [1]}, name="x"))
    # another sweep's folder is not taken over
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "sweep.yaml").write_text("run: other\n")
    good = _sweep_file(tmp_path, {"seed": [0]}, name="good.yaml")
    assert "another --out" in err(good, "--out", str(tmp_path / "g"))


def _bounded(seed, name, **options):
    space = load_space(space_path("nb201"))
    ev = TableEvaluator(space, str(NB201_CSV), "cifar100", "pixel3")
    bound = float(np.percentile([r[ev.lat_col] for r in ev.rows.values()], 10))
    cons = [Constraint(metric="latency_ms", max=bound)]
    cls = OPTIMIZERS[name]
    opt = cls(space, [Objective(metric="val_acc")], cons, seed, cls.Options(**options))
    return simulate(opt, ev, 60, cons), bound


@pytest.mark.parametrize("name", ["random", "ga", "aging"])
def test_proposals_keep_within_a_bound_known_before_evaluation(name):
    """A table's latency is a lookup: no trial is spent on a cell over the bound."""
    recs, bound = _bounded(0, name)
    assert len(recs) == 60
    assert all(r.metrics["latency_ms"] <= bound for r in recs)


def test_the_surrogate_is_seeded_and_ranks_children():
    a, _ = _bounded(3, "ga", surrogate=20, population_size=10)
    b, _ = _bounded(3, "ga", surrogate=20, population_size=10)
    c, _ = _bounded(3, "ga", surrogate=0, population_size=10)
    ids = [[r.genome_id for r in x] for x in (a, b, c)]
    assert ids[0] == ids[1]
    assert ids[0][:10] == ids[2][:10]  # the first population is random either way
    assert ids[0][10:] != ids[2][10:]  # then the model picks other children


def test_the_surrogate_reads_the_metrics_known_before_evaluation():
    """FLOPs, parameters and the table's latency join the genome's encoding as features (their
    log); on the table they make the model's ranking of unseen cells better."""
    from search.optimizers.surrogate import Surrogate

    space = load_space(space_path("nb201"))
    ev = TableEvaluator(space, str(NB201_CSV), "cifar100", "pixel3")
    opt = OPTIMIZERS["ga"](space, [Objective(metric="val_acc")], [], 0)
    g = space.sample(opt.rng)
    assert opt.known_features(g) == []  # nothing known before the run tells it
    opt.know(ev.known_metrics, ev.known)
    m = ev.known(g)
    assert opt.known_features(g) == pytest.approx(
        [np.log(m[k]) for k in ("latency_ms", "flops", "params")]
    )
    rng = random.Random(1)
    train = [space.sample(rng) for _ in range(60)]
    test = [space.sample(rng) for _ in range(300)]

    def acc(genomes):
        return [ev.evaluate(x).metrics.get("val_acc", 0.0) for x in genomes]

    def rho(model):  # Spearman's: the correlation of the ranks
        model.fit(train, acc(train))
        ranks = [np.argsort(np.argsort(v)) for v in (model.predict(test), acc(test))]
        return float(np.corrcoef(*ranks)[0, 1])

    assert rho(Surrogate(space, extra=opt.known_features)) > rho(Surrogate(space)) + 0.05
