"""Malformed space files fail with the file, the field and the reason, exit code 2, no traceback."""

import subprocess
import sys

import pytest
import yaml

from spaces import ConfigError, load_space
from tests.conftest import ROOT, space_path

BASE = yaml.safe_load(space_path("tinynet").read_text())


def _with(path, value):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    cur = data
    keys = path.split("/")
    for k in keys[:-1]:
        cur = cur[int(k)] if isinstance(cur, list) else cur[k]
    if value is _DEL:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value
    return data


_DEL = object()

CASES = [
    (
        "unknown kind",
        _with("dimensions/mask/kind", "bitmask"),
        "dimensions.mask.kind",
        "unknown kind",
    ),
    (
        "negative min_keep",
        _with("dimensions/mask/min_keep", -1),
        "dimensions.mask.min_keep",
        "at least 1",
    ),
    (
        "empty choices",
        _with("dimensions/kernel/options", []),
        "dimensions.kernel.options",
        "non-empty",
    ),
    (
        "mask longer than layer",
        _with("dimensions/mask/length", 100),
        "dimensions.mask.length",
        "longer than its layer",
    ),
    (
        "scale low > high",
        _with("dimensions/width/low", 1.5),
        "dimensions.width.low",
        "greater than high",
    ),
    ("unknown family", _with("family/kind", "vit"), "family.kind", "unknown family"),
    (
        "bad family field",
        _with("family/stages/0/channels", "many"),
        "family.stages.0.channels",
        "integer",
    ),
    ("unknown family key", _with("family/colour", "red"), "family.colour", "xtra"),
    (
        "unknown dim key",
        _with("dimensions/width/stepp", 0.1),
        "dimensions.width.stepp",
        "unknown key",
    ),
    (
        "bad target",
        _with("dimensions/kernel/target", "op"),
        "dimensions.kernel.target",
        "not a target",
    ),
    ("bad per", _with("dimensions/kernel/per", "edge"), "dimensions.kernel.per", "not allowed"),
    (
        "bad kernel",
        _with("dimensions/kernel/options", [3, 4]),
        "dimensions.kernel.options",
        "not supported",
    ),
    (
        "bad weight set",
        _with("dimensions/weights/options", ["float", "int3"]),
        "dimensions.weights.options",
        "unknown weight set",
    ),
    ("no dimensions", _with("dimensions", {}), "dimensions", "empty"),
    (
        "min_keep above size",
        _with("dimensions/mask/min_keep", 1000),
        "dimensions.mask.min_keep",
        "more than",
    ),
    (
        "scale not a number",
        _with("dimensions/depth/high", "big"),
        "dimensions.depth.high",
        "a number",
    ),
]


@pytest.mark.parametrize("name,data,field,reason", CASES, ids=[c[0] for c in CASES])
def test_malformed_space_names_file_and_field(tmp_path, name, data, field, reason):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_space(f)
    assert e.value.field == field
    assert reason in e.value.reason
    assert str(f) in str(e.value)


@pytest.mark.parametrize("name,data,field,reason", CASES[:5], ids=[c[0] for c in CASES[:5]])
def test_cli_exit_code_2_one_line(tmp_path, name, data, field, reason):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(data))
    r = subprocess.run(
        [sys.executable, "-m", "search.cli", "space", str(f)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert str(f) in lines[0] and field in lines[0] and reason in lines[0]


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_space(tmp_path / "nope.yaml")
    f = tmp_path / "broken.yaml"
    f.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_space(f)
