"""Ray evaluators: persistent actors on the session's embedded Ray, a real two-node cluster on
loopback, a worker process killed mid-run. Nothing here runs `ray stop`: every Ray process a
test starts is stopped by its own PID (process group)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest

from search.run import Run
from search.store import STUDY_NAME, open_storage
from tests.conftest import ROOT, TINY, run_cli

pytestmark = pytest.mark.slow


def _trials(out):
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out, None))
    return study.get_trials(deepcopy=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_on_ray_by_address_records_nodes(tmp_path, cache_dir, ray_session):
    out = tmp_path / "run"
    r = run_cli(
        "run",
        TINY,
        "--address",
        ray_session,
        "--workers",
        2,
        "--budget",
        6,
        "--out",
        out,
        "--no-progress",
        "--set",
        f"cache={cache_dir}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 Ray evaluator workers" in r.stderr
    assert "niceness" not in r.stderr  # no latency service: workers keep their priority
    done = [t for t in _trials(out) if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 6
    assert all("/" in t.user_attrs["node"] for t in done)  # host/node-id of the Ray node


def test_killed_worker_is_retried_and_the_run_completes(tmp_path, cache_dir, ray_session):
    budget = 6
    run = Run.create(
        str(TINY),
        str(tmp_path / "run"),
        [f"cache={cache_dir}", "evaluator.finetune.steps=60"],
        {"workers": 2, "budget": budget},
    )
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("rc", run.execute(progress=False)))
    th.start()
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and th.is_alive():
        ex = run.executor
        if ex is not None and getattr(ex, "running", None):
            time.sleep(0.3)  # mid-evaluation
            busy = {idx for idx, _ in list(ex.running.values())}
            if busy:
                idx = sorted(busy)[0]
                pid = ex.pids[idx]
                os.kill(pid, signal.SIGKILL)
                killed = pid
        time.sleep(0.05)
    th.join(600)
    assert killed is not None, "never saw an evaluation running"
    assert result.get("rc") == 0
    assert run.executor.replaced >= 1
    done = [t for t in _trials(run.dir) if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == budget


def test_ctrl_c_stops_a_ray_run_within_seconds(tmp_path, cache_dir, ray_session):
    """Ctrl-C while a worker is mid-evaluation: the run stops within seconds (it does not wait for
    the evaluation), says so, exits 130, and `search resume` finishes the budget."""
    out, log = tmp_path / "run", tmp_path / "stderr.txt"
    cmd = [
        sys.executable,
        "-m",
        "search.cli",
        "run",
        str(TINY),
        "--address",
        ray_session,
        "--workers",
        "1",
        "--budget",
        "3",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"cache={cache_dir}",
        "--set",
        "evaluator.finetune.steps=4000",
        "--set",
        "reference=false",  # the base network would be fine-tuned 4000 steps before any worker
    ]  # minutes an evaluation: far longer than the test waits
    with open(log, "w") as err:
        # a shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT:
        # the run must see Ctrl-C as a terminal would send it, however pytest itself was started
        p = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.time() + 300
        while (
            "Ray evaluator workers" not in log.read_text()
            and time.time() < deadline
            and p.poll() is None
        ):
            time.sleep(0.5)
        assert "Ray evaluator workers" in log.read_text(), log.read_text()[-3000:]
        time.sleep(3)  # the first evaluation is under way
        t0 = time.time()
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=60)
        stopped = time.time() - t0
    finally:
        if p.poll() is None:
            p.kill()
    assert rc == 130, log.read_text()[-3000:]
    assert "interrupted" in log.read_text()
    assert stopped < 20, stopped
    r = run_cli(
        "resume",
        out,
        "--address",
        ray_session,
        "--workers",
        1,
        "--no-progress",
        "--set",
        "evaluator.finetune.steps=20",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    done = [t for t in _trials(out) if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3


def _start_node(args, log):
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--block", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(p):
    """Stop one node: its own process group, by PID (never `ray stop`)."""
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_two_node_loopback_cluster(tmp_path, cache_dir):
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths are limited
    common = [
        "--num-cpus=1",
        "--memory=2000000000",
        "--object-store-memory=150000000",
        "--node-ip-address=127.0.0.1",
        "--disable-usage-stats",
    ]
    log = open(tmp_path / "ray.log", "w")
    head = _start_node(
        ["--head", f"--port={port}", f"--temp-dir={tmp}", "--include-dashboard=false", *common], log
    )
    worker = None
    try:
        addr = f"127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:  # the head is up when its GCS answers
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.5)
        worker = _start_node([f"--address={addr}", *common], log)
        env = {**os.environ, "RAY_ADDRESS": ""}
        # wait for both nodes
        probe = (
            "import ray, sys, time; ray.init(address=sys.argv[1], log_to_driver=False)\n"
            "t = time.time()\n"
            "alive = lambda: len([n for n in ray.nodes() if n['Alive']])\n"
            "while alive() < 2 and time.time() - t < 120: time.sleep(1)\n"
            "print(len([n for n in ray.nodes() if n['Alive']]))"
        )
        n = subprocess.run(
            [sys.executable, "-c", probe, addr],
            capture_output=True,
            text=True,
            timeout=200,
            env=env,
        )
        assert n.stdout.strip().endswith("2"), (
            n.stdout,
            n.stderr[-2000:],
            (tmp_path / "ray.log").read_text()[-2000:],
        )
        out = tmp_path / "run"
        r = run_cli(
            "run",
            TINY,
            "--address",
            addr,
            "--workers",
            2,
            "--budget",
            6,
            "--out",
            out,
            "--no-progress",
            "--set",
            f"cache={cache_dir}",
            "--set",
            "evaluator.finetune.steps=30",
            env=env,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        done = [t for t in _trials(out) if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(done) == 6
        nodes = {t.user_attrs["node"] for t in done}
        assert len(nodes) == 2, nodes  # trials from both nodes
        assert "on 2 node(s)" in r.stderr
    finally:
        for p in (worker, head):
            if p is not None:
                _stop(p)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_tune_runner_with_asha(tmp_path, cache_dir, ray_session):
    out = tmp_path / "run"
    r = run_cli(
        "run",
        TINY,
        "--runner",
        "tune",
        "--address",
        ray_session,
        "--workers",
        2,
        "--budget",
        8,
        "--out",
        out,
        "--no-progress",
        "--set",
        f"cache={cache_dir}",
        "--set",
        "evaluator.finetune.steps=null",
        "--set",
        "evaluator.finetune.epochs=3",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    done = [t for t in _trials(out) if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 8 and len({t.user_attrs["genome_id"] for t in done}) == 8
    early = [t for t in done if t.user_attrs["metrics"].get("stopped_early")]
    full = [t for t in done if not t.user_attrs["metrics"].get("stopped_early")]
    assert early and full, "ASHA should stop some candidates and let others finish"
    assert all(t.user_attrs["metrics"]["epoch"] < 3 for t in early)
    assert all("test_acc" in t.user_attrs["metrics"] for t in full)
    assert all((out / "trials" / f"{t.user_attrs['genome_id']}.pt").exists() for t in full)
    (timing,) = json.loads((out / "timings.json").read_text())
    assert timing["runner"] == "tune" and timing["scheduler"] == "asha" and timing["trials"] == 8


@pytest.mark.parametrize("name", ["random", "ga", "aging", "optuna"])
def test_every_optimizer_is_a_tune_searcher(name, ray_session):
    from ray import tune

    from evaluators.table import TableEvaluator
    from search.config import Objective
    from search.optimizers import OPTIMIZERS
    from search.tune_search import OptimizerSearcher
    from spaces import load_space
    from tests.conftest import NB201_CSV, space_path

    if not NB201_CSV.exists():
        pytest.skip("no NB201 table")
    space = load_space(space_path("nb201"))
    ev = TableEvaluator(space, str(NB201_CSV))
    cls = OPTIMIZERS[name]
    opt = cls(
        space,
        [Objective(metric="c10_test")],
        [],
        0,
        cls.Options(**({"population_size": 6} if name in ("ga", "aging") else {})),
    )
    searcher = OptimizerSearcher(opt, budget=24)

    def lookup(config):
        res = ev.evaluate(space.from_json(config["genome"]))
        tune.report(res.metrics)

    tuner = tune.Tuner(
        lookup,
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=-1, max_concurrent_trials=2, reuse_actors=True
        ),
        run_config=tune.RunConfig(verbose=0, storage_path=str(Path(tempfile.mkdtemp()))),
    )
    results = tuner.fit()
    assert searcher.n_done == 24 and len(opt.history) == 24
    assert len({r.genome_id for r in opt.history}) == 24
    assert len(results) == 24
