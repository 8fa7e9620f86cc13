"""Fault injection: nothing lost, nothing duplicated, no hang, no traceback (issue 27).

Torn journal tails, stale locks, two processes on one folder, invalid resumes, unreachable
clusters, unwritable folders, a full disk, and bad input that used to raise a traceback."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from search.store import JOURNAL, STUDY_NAME, open_storage
from tests.conftest import NB201_CSV, ROOT, TINY, run_cli

NB201 = ROOT / "spaces" / "nb201.yaml"
TABLE = ["--set", "evaluator=table", "--set", f"evaluator.table={NB201_CSV}"]

needs_table = pytest.mark.skipif(not NB201_CSV.exists(), reason="no NAS-Bench-201 table")


def _complete(out: Path) -> list[str]:
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out, None))
    done = [
        t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
    ]
    return [t.user_attrs["genome_id"] for t in done]


def _one_line_error(r, needle: str, code: int = 2) -> str:
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("search")]
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-2000:]
    assert needle in lines[0], lines[0]
    return lines[0]


@needs_table
def test_a_torn_journal_tail_is_cut_back_and_resume_finishes_the_budget(tmp_path):
    out = tmp_path / "run"
    assert (
        run_cli("run", NB201, *TABLE, "--budget", 30, "--out", out, "--no-progress").returncode == 0
    )
    journal = out / JOURNAL
    data = journal.read_bytes()
    journal.write_bytes(data[:-40])  # the last record cut short, as a full disk leaves it
    assert run_cli("show", out).returncode == 0  # still readable
    r = run_cli("resume", out, "--budget", 40, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torn tail" in r.stderr
    ids = _complete(out)
    assert len(ids) == 40 and len(set(ids)) == 40
    kept = list(out.glob(f"{JOURNAL}.torn-*"))
    assert len(kept) == 1 and data[:-40].endswith(kept[0].read_bytes())
    assert run_cli("resume", out, "--no-progress").returncode == 0  # and it stays readable
    assert len(_complete(out)) == 40


@needs_table
def test_a_stale_relative_lock_is_taken_over_at_once(tmp_path):
    rel = Path("runs") / "r"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "search.cli",
            "run",
            str(NB201),
            *TABLE,
            "--budget",
            "5",
            "--out",
            str(rel),
            "--no-progress",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    os.symlink(str(rel / JOURNAL), tmp_path / rel / (JOURNAL + ".lock"))  # what kill -9 leaves
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "search.cli", "resume", str(rel), "--budget", "8", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0 and time.time() - t0 < 60, r.stderr[-2000:]
    assert len(set(_complete(tmp_path / rel))) == 8


def test_one_process_per_run_folder(tmp_path, cache_dir):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "search.cli",
        "run",
        str(TINY),
        "--out",
        str(out),
        "--workers",
        "0",
        "--budget",
        "3",
        "--no-progress",
        "--set",
        f"cache={cache_dir}",
        "--set",
        "evaluator.finetune.steps=40",
    ]
    first = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 300
        while not (out / "run.lock").exists() or not (out / "run.lock").read_text().strip():
            assert time.time() < deadline and first.poll() is None, "the first run did not start"
            time.sleep(0.2)
        holder = (out / "run.lock").read_text().strip()
        r = run_cli("resume", out, "--budget", 6, timeout=120)
        _one_line_error(r, f"in use by process {holder}")
        r = run_cli("run", TINY, "--out", out, timeout=120)
        _one_line_error(r, "in use by process")
    finally:
        assert first.wait(600) == 0, first.stderr.read()[-2000:]
    assert len(_complete(out)) == 3  # the refused resume added nothing


@needs_table
def test_out_into_a_folder_of_other_files_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.html").write_text("my own report")
    _one_line_error(run_cli("run", NB201, *TABLE, "--budget", 3, "--out", out), "--overwrite")
    assert (out / "report.html").read_text() == "my own report" and not (
        out / "config.yaml"
    ).exists()
    (tmp_path / "afile").write_text("x")
    _one_line_error(run_cli("run", NB201, *TABLE, "--out", tmp_path / "afile"), "is a file")
    r = run_cli("run", NB201, *TABLE, "--budget", 3, "--out", out, "--overwrite", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]


@needs_table
def test_resume_checks_a_change_before_writing_and_keeps_the_old_config(tmp_path):
    out = tmp_path / "run"
    assert (
        run_cli("run", NB201, *TABLE, "--budget", 20, "--out", out, "--no-progress").returncode == 0
    )
    before = (out / "config.yaml").read_bytes()
    _one_line_error(run_cli("resume", out, "--budget", 10), "below the 20 trials already complete")
    r = run_cli("resume", out, "--set", "dimensions.op.options=[none, skip_connect]")
    _one_line_error(r, "stored trials do not fit")
    r = run_cli(
        "resume",
        out,
        "--set",
        "objectives=[{metric: val_acc}, {metric: flops, direction: minimize}]",
    )
    _one_line_error(r, "objectives")
    assert (out / "config.yaml").read_bytes() == before and not (out / "config.1.yaml").exists()
    assert run_cli("show", out).returncode == 0
    r = run_cli("resume", out, "--budget", 25, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "config.1.yaml").read_bytes() == before
    assert yaml.safe_load((out / "config.yaml").read_text())["budget"] == 25
    assert len(_complete(out)) == 25


@pytest.mark.parametrize("address", ["127.0.0.1:1", "::::", "no-such-host.invalid:6379", "silent"])
def test_an_unreachable_cluster_is_exit_2_before_any_folder(tmp_path, address):
    import socket

    out = tmp_path / "run"
    silent = socket.socket()  # accepts connections and never answers (a proxy, a firewall)
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    if address == "silent":
        address = f"127.0.0.1:{silent.getsockname()[1]}"
    t0 = time.time()
    r = run_cli(
        "run",
        TINY,
        "--address",
        address,
        "--workers",
        2,
        "--out",
        out,
        "--set",
        "ray.connect_timeout=2",
        timeout=120,
    )
    silent.close()
    _one_line_error(r, "address")
    assert time.time() - t0 < 60 and not out.exists()


@needs_table
def test_resume_of_a_long_random_run_goes_on_past_the_replayed_draws(tmp_path):
    """On resume the seeded sampler first redraws the stored trials' genomes (1,200 here): that
    is no exhausted space."""
    out = tmp_path / "run"
    assert (
        run_cli("run", NB201, *TABLE, "--budget", 1200, "--out", out, "--no-progress").returncode
        == 0
    )
    r = run_cli("resume", out, "--budget", 1500, "--no-progress")
    assert r.returncode == 0 and "exhausted" not in r.stderr, r.stderr[-2000:]
    assert len(set(_complete(out))) == 1500


@needs_table
def test_optuna_stops_with_a_warning_when_the_space_is_exhausted(tmp_path):
    r = run_cli(
        "run",
        NB201,
        *TABLE,
        "--set",
        "dimensions.op.options=[skip_connect, nor_conv_3x3]",
        "--optimizer",
        "optuna",
        "--budget",
        100,
        "--out",
        tmp_path / "run",
        "--no-progress",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "exhausted" in r.stderr
    assert len(set(_complete(tmp_path / "run"))) == 64  # 2 ops on 6 edges, each once


@needs_table
def test_a_full_disk_is_exit_1_and_resume_finishes_from_a_readable_journal(
    tmp_path, monkeypatch, capsys
):
    from optuna.storages.journal import JournalFileBackend

    from search.cli import main

    out = tmp_path / "run"
    real = JournalFileBackend.append_logs
    calls = {"n": 0}

    def append_until_full(self, logs):
        calls["n"] += 1
        if calls["n"] > 12:  # the disk fills: half a record lands, then ENOSPC
            with open(self._file_path, "ab") as fh:
                fh.write(json.dumps(logs[0]).encode()[:25])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, logs)

    monkeypatch.setattr(JournalFileBackend, "append_logs", append_until_full)
    rc = main(["run", str(NB201), *TABLE, "--budget", "20", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "no space left" in err and "Traceback" not in err
    stored = len(_complete(out))
    assert 0 < stored < 20
    monkeypatch.setattr(JournalFileBackend, "append_logs", real)
    assert main(["resume", str(out), "--no-progress"]) == 0
    ids = _complete(out)
    assert len(ids) == 20 and len(set(ids)) == 20


def test_an_unwritable_folder_is_exit_2_naming_it(tmp_path, monkeypatch, capsys):
    import search.runlock
    from search.cli import main

    def denied(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(search.runlock.os, "open", denied)
    rc = main(["run", str(TINY), "--out", str(tmp_path / "run"), "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "permission denied" in err and "Traceback" not in err


def _space_file(tmp_path, **changes) -> Path:
    d = yaml.safe_load(NB201.read_text())
    for k, v in changes.items():
        cur, *path = k.split(".")
        node = d
        for p in [cur, *path][:-1]:
            node = node[p]
        node[[cur, *path][-1]] = v
    f = tmp_path / "space.yaml"
    f.write_text(yaml.safe_dump(d))
    return f


def test_bad_input_that_used_to_raise_is_exit_2(tmp_path):
    f = _space_file(tmp_path, **{"family.resolution": -32})
    _one_line_error(run_cli("space", f), "family.resolution")
    tiny = yaml.safe_load(TINY.read_text())
    tiny["dimensions"]["width"]["step"] = 0.3
    g = tmp_path / "tiny.yaml"
    g.write_text(yaml.safe_dump(tiny))
    _one_line_error(run_cli("space", g), "dimensions.width.step")
    _one_line_error(run_cli("show", ROOT, "--top", "-1"), "--top")
    _one_line_error(
        run_cli("run", TINY, "--set", "storage=bogus://x", "--out", tmp_path / "s"), "storage"
    )
    assert not (tmp_path / "s").exists()


def test_broken_tables_and_datasets_are_exit_2(tmp_path):
    binary = tmp_path / "table.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    r = run_cli(
        "run",
        NB201,
        "--set",
        "evaluator=table",
        "--set",
        f"evaluator.table={binary}",
        "--out",
        tmp_path / "a",
    )
    _one_line_error(r, "evaluator.table")
    bad = tmp_path / "bad.csv"
    bad.write_text("arch_str,c10_test,c100_test,in16_test,lat_raspi4\nx,93.1,70,40,oops\n")
    r = run_cli(
        "run",
        NB201,
        "--set",
        "evaluator=table",
        "--set",
        f"evaluator.table={bad}",
        "--out",
        tmp_path / "b",
    )
    _one_line_error(r, "not a number")
    fake = tmp_path / "data.zip"
    fake.write_bytes(b"not a zip at all")
    out = tmp_path / "c"
    r = run_cli(
        "run", TINY, "--set", "dataset=imagefolder", "--set", f"dataset.path={fake}", "--out", out
    )
    _one_line_error(r, "not a zip")
    assert not out.exists()  # a new run that failed its set-up leaves nothing behind


def test_a_corrupt_image_is_exit_2_naming_it_and_leaves_no_folder(tmp_path, cache_dir):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "imgs" / c / f"{i}.png")
    (tmp_path / "imgs" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "run"
    r = run_cli(
        "run",
        TINY,
        "--set",
        "dataset=imagefolder",
        "--set",
        f"dataset.path={tmp_path / 'imgs'}",
        "--set",
        f"cache={cache_dir}",
        "--out",
        out,
    )
    _one_line_error(r, "broken.jpg")
    assert not out.exists()
    assert run_cli("space", TINY).returncode == 0


@needs_table
def test_seeds_from_another_spaces_run_name_the_source_and_field(tmp_path, cache_dir):
    other = tmp_path / "other"
    assert (
        run_cli("run", NB201, *TABLE, "--budget", 2, "--out", other, "--no-progress").returncode
        == 0
    )
    r = run_cli(
        "run", TINY, "--optimizer", "ga", "--set", f"seeds=[{other}]", "--out", tmp_path / "x"
    )
    line = _one_line_error(r, "optimizer.options.seeds")
    assert str(other) in line and "nb201" in line
