"""The tabular NAS-Bench-201 evaluator: lookups are right, whole runs take seconds."""

import csv
import json

import optuna
import pytest

from evaluators.table import TableEvaluator
from search.store import STUDY_NAME, open_storage
from spaces import ConfigError, load_space
from spaces.families.cell import arch_str
from tests.conftest import NB201_CSV, run_cli, space_path

pytestmark = pytest.mark.skipif(
    not NB201_CSV.exists(), reason="../shared/data/nb201_merged.csv not present"
)


def test_lookup_matches_the_table():
    space = load_space(space_path("nb201"))
    ev = TableEvaluator(space, str(NB201_CSV), "cifar100", "pixel3")
    with open(NB201_CSV) as fh:
        rows = list(csv.DictReader(fh))[:50]
    for row in rows:
        # rebuild the genome from the arch string edge by edge
        g = {}
        nodes = row["arch_str"].split("+")
        for j, node in enumerate(nodes, 1):
            for part in node.strip("|").split("|"):
                op, i = part.split("~")
                g[f"op.{j}<-{i}"] = op
        g = space.validate(g)
        assert arch_str(space.arch(g).ops) == row["arch_str"]
        r = ev.evaluate(g)
        assert r.status == "complete"
        assert r.metrics["c100_test"] == float(row["c100_test"])
        assert r.metrics["val_acc"] == pytest.approx(float(row["c100_test"]) / 100)
        assert r.metrics["latency_ms"] == float(row["lat_pixel3"])


def test_unknown_device_names_the_field():
    space = load_space(space_path("nb201"))
    with pytest.raises(ConfigError) as e:
        TableEvaluator(space, str(NB201_CSV), "cifar10", "toaster", "nb201.yaml")
    assert e.value.field == "evaluator.table_latency" and "raspi4" in e.value.reason


def test_2000_trial_random_run(tmp_path):
    out = tmp_path / "nb"
    r = run_cli(
        "run",
        "spaces/nb201.yaml",
        "--optimizer",
        "random",
        "--budget",
        2000,
        "--set",
        "evaluator=table",
        "--set",
        f"evaluator.table={NB201_CSV}",
        "--out",
        out,
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out, None))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 2000 and len({t.user_attrs["genome_id"] for t in trials}) == 2000
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert best["metrics"]["c10_test"] > 93.0  # random search over 2000 of 15625 finds a good cell


def test_same_config_and_seed_give_the_same_genomes(tmp_path):
    runs = []
    for k, seed in enumerate((3, 3, 4)):
        out = tmp_path / f"r{k}"
        r = run_cli(
            "run",
            "spaces/nb201.yaml",
            "--budget",
            40,
            "--seed",
            seed,
            "--set",
            "preset=nb201-table",
            "--set",
            f"evaluator.table={NB201_CSV}",
            "--out",
            out,
            "--no-progress",
        )
        assert r.returncode == 0, r.stderr[-2000:]
        study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out, None))
        runs.append([t.user_attrs["genome_id"] for t in study.get_trials(deepcopy=False)])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
