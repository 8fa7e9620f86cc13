"""Reliability under faults (issue 27): each case the issue found, run again on this code.

For each: what the issue reported before, and now: the exit code, the one line the user sees,
the seconds it took, and the complete trials stored before and after. Runs on the tabular
NAS-Bench-201 evaluator (seconds per case) in a temporary folder. Writes
benchmarks/results/reliability.md.

    python benchmarks/reliability.py [--csv ../shared/data/nb201_merged.csv]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
NB201 = ROOT / "spaces" / "nb201.yaml"
TINY = ROOT / "tests" / "data" / "tiny.yaml"


def cli(*args, cwd=ROOT, timeout=900) -> tuple[int, str, float]:
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "search.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("search") or "Traceback" in ln]
    return r.returncode, (lines[-1] if lines else ""), time.time() - t0


def complete(out: Path) -> tuple[int, int]:
    """(complete trials, distinct genomes among them)."""
    import optuna

    from search.store import STUDY_NAME, open_storage

    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out, None))
    except Exception:  # noqa: BLE001 - an unreadable study counts as nothing stored
        return 0, 0
    done = [
        t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
    ]
    return len(done), len({t.user_attrs["genome_id"] for t in done})


def in_process(*args) -> tuple[int, str, float]:
    from search.cli import main

    err, t0 = io.StringIO(), time.time()
    with contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("search")]
    return rc, (lines[-1] if lines else ""), time.time() - t0


def cases(tmp: Path, table: list[str]):
    """(case, before, [(step, rc, line, seconds, trials before, trials after)]) per case."""
    run = lambda out, *a: cli("run", NB201, *table, "--out", out, "--no-progress", *a)  # noqa: E731

    out = tmp / "torn"
    run(out, "--budget", 300)
    j = out / "study.journal"
    j.write_bytes(j.read_bytes()[:-40])
    before = complete(out)
    rc, line, s = cli("resume", out, "--budget", 400, "--no-progress")
    yield (
        "torn journal tail, then resume --budget 400",
        "resume appended onto the torn line; from then on resume, show and load_study failed "
        "(JSONDecodeError): every stored trial unreadable",
        [
            (
                "resume",
                rc,
                line or "ok (warning: torn tail cut back, bytes kept)",
                s,
                before,
                complete(out),
            )
        ],
    )

    out = Path("runs") / "stale"
    cli("run", NB201, *table, "--budget", 50, "--out", out, "--no-progress", cwd=tmp)
    os.symlink(str(out / "study.journal"), tmp / out / "study.journal.lock")
    before = complete(tmp / out)
    rc, line, s = cli("resume", out, "--budget", 60, "--no-progress", cwd=tmp, timeout=300)
    yield (
        "stale relative journal lock after kill -9, then resume",
        "resume spun at 100 % CPU forever (the lock's relative symlink never resolves)",
        [("resume", rc, line or "ok (stale lock removed)", s, before, complete(tmp / out))],
    )

    out = tmp / "two"
    run(out, "--budget", 1000)
    before = complete(out)
    cmd = [
        sys.executable,
        "-m",
        "search.cli",
        "resume",
        str(out),
        "--budget",
        "3000",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [(p.wait(900), p.stderr.read()) for p in procs]
    steps = [
        (
            f"resume #{i + 1}",
            rc,
            next((ln for ln in err.splitlines() if ln.startswith("search")), "ok"),
            time.time() - t0,
            before,
            complete(out),
        )
        for i, (rc, err) in enumerate(outs)
    ]
    yield (
        "two `search resume` on one folder at once (budget 3000)",
        "both ran: 5,024 complete trials for a budget of 3,000, 2,024 of them duplicates",
        steps,
    )

    out = tmp / "change"
    run(out, "--budget", 50)
    before, cfg = complete(out), (out / "config.yaml").read_bytes()
    steps = []
    for label, args in (
        ("resume --set (genomes no longer fit)", ["--set", "dimensions.op.options=[none]"]),
        ("resume --budget 10 (below 50 complete)", ["--budget", "10"]),
    ):
        rc, line, s = cli("resume", out, *args)
        same = (out / "config.yaml").read_bytes() == cfg
        steps.append(
            (
                f"{label}; config.yaml {'unchanged' if same else 'REWRITTEN'}",
                rc,
                line,
                s,
                before,
                complete(out),
            )
        )
    yield (
        "resume with an invalid change",
        "config.yaml rewritten before the check: the run could not be shown or resumed; "
        "`--budget 10` lowered the budget for good",
        steps,
    )

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    steps = []
    for addr in (
        "127.0.0.1:1",
        f"127.0.0.1:{silent.getsockname()[1]}",
        "no-such-host.invalid:6379",
    ):
        rc, line, s = cli(
            "run",
            TINY,
            "--address",
            addr,
            "--workers",
            2,
            "--out",
            tmp / "addr",
            "--set",
            "ray.connect_timeout=5",
        )
        steps.append(
            (
                f"--address {addr}; folder {'left' if (tmp / 'addr').exists() else 'not written'}",
                rc,
                line,
                s,
                (0, 0),
                (0, 0),
            )
        )
    silent.close()
    yield (
        "a cluster address nothing answers at",
        "hung over 500 s with no message and left a run folder",
        steps,
    )

    out = tmp / "exhausted"
    rc, line, s = run(
        out,
        "--optimizer",
        "optuna",
        "--budget",
        100,
        "--set",
        "dimensions.op.options=[skip_connect, nor_conv_3x3]",
    )
    yield (
        "optuna on a 64-cell space, budget 100",
        "hung after its last genome",
        [("run", rc, line or "ok (warning: the space is exhausted)", s, (0, 0), complete(out))],
    )

    yield full_disk(tmp, table)

    steps = []
    for label, args in bad_inputs(tmp, table):
        rc, line, s = cli(*args)
        steps.append((label, rc, line, s, (0, 0), (0, 0)))
    yield ("bad input that raised a traceback", "tracebacks (see the issue's list)", steps)


def full_disk(tmp: Path, table: list[str]):
    """ENOSPC injected into the journal's appends after 120 trials (half a record written)."""
    from optuna.storages.journal import JournalFileBackend

    out = tmp / "full"
    real, calls = JournalFileBackend.append_logs, {"n": 0}

    def append(self, logs):
        calls["n"] += 1
        if calls["n"] > 120:
            with open(self._file_path, "ab") as fh:
                fh.write(json.dumps(logs[0]).encode()[:30])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, logs)

    JournalFileBackend.append_logs = append
    try:
        rc, line, s = in_process(
            "run", NB201, *table, "--budget", 300, "--out", out, "--no-progress"
        )
    finally:
        JournalFileBackend.append_logs = real
    stored = complete(out)
    rc2, line2, s2 = in_process("resume", out, "--no-progress")
    return (
        "full disk (ENOSPC injected into the journal's appends)",
        "ENOSPC traceback, a torn line and a 0-byte pareto.json",
        [
            ("run", rc, line, s, (0, 0), stored),
            ("resume after freeing space", rc2, line2 or "ok", s2, stored, complete(out)),
        ],
    )


def bad_inputs(tmp: Path, table: list[str]):
    (tmp / "afile").write_text("x")
    binary = tmp / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    cell = tmp / "cell.csv"
    cell.write_text("arch_str,c10_test,c100_test,in16_test,lat_raspi4\nx,93.1,70,40,oops\n")
    fake = tmp / "fake.zip"
    fake.write_bytes(b"not a zip")
    step = tmp / "step.yaml"
    step.write_text(
        TINY.read_text().replace(
            "width: {kind: scale, low: 0.5, high: 1.0, step: 0.25}",
            "width: {kind: scale, low: 0.5, high: 1.0, step: 0.3}",
        )
    )
    neg = tmp / "neg.yaml"
    neg.write_text(NB201.read_text().replace("resolution: 32", "resolution: -32"))
    return [
        ("--address ':::'", ["run", TINY, "--address", ":::", "--workers", 2, "--out", tmp / "b1"]),
        (
            "dataset zip that is not a zip",
            [
                "run",
                TINY,
                "--set",
                "dataset=imagefolder",
                "--set",
                f"dataset.path={fake}",
                "--out",
                tmp / "b2",
            ],
        ),
        (
            "evaluator.table a binary file",
            [
                "run",
                NB201,
                "--set",
                "evaluator=table",
                "--set",
                f"evaluator.table={binary}",
                "--out",
                tmp / "b3",
            ],
        ),
        (
            "evaluator.table with a non-numeric cell",
            [
                "run",
                NB201,
                "--set",
                "evaluator=table",
                "--set",
                f"evaluator.table={cell}",
                "--out",
                tmp / "b4",
            ],
        ),
        ("--out naming an existing file", ["run", NB201, *table, "--out", tmp / "afile"]),
        (
            "storage: bogus://x",
            ["run", NB201, *table, "--set", "storage=bogus://x", "--out", tmp / "b5"],
        ),
        ("a scale whose step does not divide [low, high]", ["space", step]),
        ("a cell resolution: -32", ["space", neg]),
        ("show --top -1", ["show", tmp / "torn", "--top", "-1"]),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=str(ROOT.parent / "shared" / "data" / "nb201_merged.csv"))
    args = ap.parse_args()
    if not Path(args.csv).exists():
        sys.exit(f"reliability.py: error: {args.csv} does not exist (the NAS-Bench-201 table)")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    table = ["--set", "evaluator=table", "--set", f"evaluator.table={Path(args.csv).resolve()}"]
    lines = [
        f"# Reliability under faults ({time.strftime('%Y-%m-%d')})",
        "",
        "`python benchmarks/reliability.py`: every case of issue 27 run again on this code (the "
        "tabular evaluator, in a temporary folder). *Before* is what the issue reported; *now* is "
        "measured here. Trials: complete (distinct) stored before the step and after it.",
        "",
        "| case | before (issue 27) | step | exit | what the user sees | s | trials before | trials after |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as d:
        for case, before, steps in cases(Path(d), table):
            for i, (step, rc, line, s, b, a) in enumerate(steps):
                line = line.replace(d, "<tmp>").replace("|", "\\|")
                lines.append(
                    f"| {case if i == 0 else ''} | {before if i == 0 else ''} | {step} | {rc} | "
                    f"{line} | {s:.1f} | {b[0]} ({b[1]}) | {a[0]} ({a[1]}) |"
                )
                print(lines[-1], flush=True)
    lines += [
        "",
        "Not covered here: a read-only folder (the machine runs as root, which writes anyway; "
        "`tests/test_reliability.py` injects the permission error instead), and the embedded Ray's "
        "listening addresses (see the README: Ray 2.60 offers no way to bind them to loopback; its "
        "token authentication, on by default for local clusters, guards them).",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reliability.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
