"""Bad configs and flags: exit code 2, one line naming the field, no traceback, no work done."""

import pytest

from tests.conftest import NB201_CSV, run_cli

T = "spaces/tinynet.yaml"
N = "spaces/nb201.yaml"

CASES = [
    ("missing file", ["run", "spaces/nope.yaml"], "file not found"),
    ("unknown optimizer", ["run", T, "--optimizer", "simulated_annealing"], "optimizer.name"),
    ("budget 0", ["run", T, "--budget", "0"], "budget"),
    ("budget not a number", ["run", T, "--budget", "many"], "--budget"),
    ("wrong type by --set", ["run", T, "--set", "seed=abc"], "seed"),
    ("unknown optimizer option", ["run", T, "--set", "colour=red"], "optimizer.options.colour"),
    (
        "unknown nested key",
        ["run", T, "--set", "evaluator.finetune.epoch=3"],
        "evaluator.finetune.epoch",
    ),
    (
        "dataset path missing",
        ["run", T, "--set", "dataset=imagefolder", "--set", "dataset.path=/no/such/dir"],
        "dataset.path",
    ),
    ("dataset without path", ["run", T, "--set", "dataset=cifar10"], "dataset.path"),
    ("unknown dataset", ["run", T, "--set", "dataset=mnist"], "dataset.name"),
    (
        "unknown device column",
        [
            "run",
            N,
            "--set",
            "evaluator=table",
            "--set",
            "evaluator.table_latency=toaster",
            "--set",
            f"evaluator.table={NB201_CSV}",
        ],
        "evaluator.table_latency",
    ),
    (
        "table file missing",
        ["run", N, "--set", "evaluator=table", "--set", "evaluator.table=/no/table.csv"],
        "evaluator.table",
    ),
    (
        "table on a non-cell space",
        ["run", T, "--set", "evaluator=table", "--set", f"evaluator.table={NB201_CSV}"],
        "evaluator.kind",
    ),
    ("unknown evaluator", ["run", T, "--set", "evaluator=oracle"], "evaluator.kind"),
    (
        "unknown objective metric",
        ["run", T, "--set", "objectives=[{metric: happiness}]"],
        "objectives.0.metric",
    ),
    (
        "bad direction",
        ["run", T, "--set", "objectives=[{metric: val_acc, direction: up}]"],
        "objectives.0.direction",
    ),
    ("no objectives", ["run", T, "--set", "objectives=[]"], "objectives"),
    (
        "constraint without bound",
        ["run", T, "--set", "constraints=[{metric: flops}]"],
        "constraints.0",
    ),
    (
        "unknown constraint metric",
        ["run", T, "--set", "constraints=[{metric: joy, max: 1}]"],
        "constraints.0.metric",
    ),
    ("negative seed", ["run", T, "--seed", "-3"], "seed"),
    ("unknown latency provider", ["run", T, "--set", "latency=sundial"], "latency.provider"),
    (
        "unknown fine-tune optimiser",
        ["run", T, "--set", "evaluator.finetune.optimizer=lion"],
        "evaluator.finetune.optimizer",
    ),
    ("zero pre-training epochs", ["run", T, "--set", "pretrain.epochs=0"], "pretrain.epochs"),
    (
        "val fraction above 1",
        ["run", T, "--set", "dataset.val_fraction=1.5"],
        "dataset.val_fraction",
    ),
    (
        "space field by --set",
        ["run", T, "--set", "dimensions.mask.min_keep=-1"],
        "dimensions.mask.min_keep",
    ),
    ("--set without =", ["run", T, "--set", "budget"], "expected key=value"),
    ("unknown flag", ["run", T, "--frobnicate"], "unrecognized arguments"),
    ("resume a non-run folder", ["resume", "spaces"], "not a run folder"),
    ("show a missing folder", ["show", "/no/such/run"], "not a run folder"),
]


@pytest.mark.parametrize("name,args,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(tmp_path, name, args, needle):
    out = tmp_path / "run"
    extra = ["--out", str(out)] if args[0] == "run" and "--frobnicate" not in args else []
    r = run_cli(*args, *extra, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert needle in lines[0], lines[0]
    assert not (out / "config.yaml").exists()  # nothing started
