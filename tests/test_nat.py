"""NAT: the gymnasium environment over cell DAGs, the GCN policy and its REINFORCE trainer, and
the `nat` optimiser on the tabular NAS-Bench-201 evaluator (training, transforming, resume)."""

import itertools
import json
import random
import statistics

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from agents.nat import (
    KEEP,
    NONE,
    SKIP,
    NATAgent,
    NATEnv,
    cell_graph,
    never_costlier,
    observe,
    transform,
    valid_mask,
)
from agents.nat.cell import cell_ops
from evaluators.table import TableEvaluator
from search.config import Constraint, Objective
from search.optimizers import OPTIMIZERS
from search.records import TrialRecord
from search.simulate import simulate
from spaces import load_space
from spaces.families.cell import EDGES
from tests.conftest import NB201_CSV, run_cli, space_path

needs_table = pytest.mark.skipif(
    not NB201_CSV.exists(), reason="../shared/data/nb201_merged.csv not present"
)
TABLE = ["--set", "preset=nb201-table", "--set", f"evaluator.table={NB201_CSV}", "--no-progress"]
EVAL = ["--set", "reward=evaluator"]  # the table's rewards: seconds, not the shared weights
SMALL = [
    *EVAL,
    "--set",
    "train_archs=40",
    "--set",
    "epochs=3",
    "--set",
    "batch=8",
    "--set",
    "holdout=8",
]


@pytest.fixture(scope="module")
def space():
    return load_space(space_path("nb201"))


@pytest.fixture(scope="module")
def table(space):
    if not NB201_CSV.exists():
        pytest.skip("../shared/data/nb201_merged.csv not present")
    return TableEvaluator(space, str(NB201_CSV), "cifar10", "raspi4")


def _nat(space, seed=0, constraints=(), **options):
    cls = OPTIMIZERS["nat"]
    options.setdefault("reward", "evaluator")
    return cls(
        space, [Objective(metric="val_acc")], list(constraints), seed, cls.Options(**options)
    )


# --- the environment -----------------------------------------------------------------------------
@needs_table
def test_check_env_passes(space, table):
    env = NATEnv(space, table)
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    again, _ = env.reset(seed=3)
    assert all(np.array_equal(obs[k], again[k]) for k in obs)  # seeded reset


def test_observation_is_the_cells_dag(space):
    g = {**space.full(), "op.2<-1": "none", "op.3<-0": "skip_connect"}
    graph = cell_graph(cell_ops(space, g))
    assert graph.number_of_nodes() == 10
    assert not graph.has_edge(1, "e2<-1") and not graph.has_edge("e2<-1", 2)  # `none` cuts the arc
    assert graph.has_edge(0, "e3<-0") and graph.has_edge("e3<-0", 3)
    obs = observe(space, g)
    assert obs["adjacency"].sum() == 2 * 5
    assert obs["mask"][EDGES.index("2<-1")].tolist() == [1, 0, 0]  # none stays none
    assert obs["mask"][EDGES.index("3<-0")].tolist() == [1, 0, 1]  # a skip may only become none
    assert obs["mask"][EDGES.index("1<-0")].tolist() == [1, 1, 1]


def test_transitions_never_raise_flops_or_params(space):
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(200)] + [space.full()]
    for i, g in enumerate(archs):
        actions = (
            itertools.product(range(3), repeat=6)
            if i % 40 == 0
            else (tuple(rng.randrange(3) for _ in EDGES) for _ in range(30))
        )
        before = cell_ops(space, g)
        for a in actions:
            t = transform(space, g, a)
            assert never_costlier(space, g, t), (g, a)
            after = cell_ops(space, t)
            for k, e in enumerate(EDGES):  # only NAT's transitions
                assert (
                    after[e] == before[e]
                    or after[e] == "none"
                    or (after[e] == "skip_connect" and before[e] != "none")
                )
                if a[k] == KEEP or before[e] == "none":
                    assert after[e] == before[e]


@needs_table
def test_env_reward_is_the_gain_less_the_constraint_penalty(space, table):
    g = {**space.full(), "op.3<-1": "avg_pool_3x3"}
    act = [KEEP] * 6
    act[EDGES.index("3<-1")] = SKIP
    t = transform(space, g, act)
    gain = table.evaluate(t).metrics["val_acc"] - table.evaluate(g).metrics["val_acc"]
    env = NATEnv(space, table)
    env.reset(options={"genome": g})
    _, r, term, trunc, info = env.step(act)
    assert term and not trunc and r == pytest.approx(gain)
    assert info["cost_after"]["flops"] <= info["cost_before"]["flops"]
    # a FLOPs bound the transformed cell breaks costs its relative violation
    bound = space.cost(t)["flops"] / 2
    env = NATEnv(space, table, constraints=[Constraint(metric="flops", max=bound)], penalty=0.5)
    env.reset(options={"genome": g})
    _, r2, *_ = env.step(act)
    assert r2 == pytest.approx(gain - 0.5 * (space.cost(t)["flops"] - bound) / bound)
    # removing every edge: the cell costs less, never more
    env.reset(options={"genome": g})
    _, _, _, _, info = env.step([NONE] * 6)
    assert info["cost_after"]["params"] < info["cost_before"]["params"]


# --- the policy ----------------------------------------------------------------------------------
def test_policy_masks_and_checkpoint_roundtrip(space, tmp_path):
    rng = random.Random(1)
    obs = [observe(space, space.sample(rng)) for _ in range(32)]
    agent = NATAgent(seed=5)
    # untrained: a few updates with made-up rewards so the weights are not at their start
    for i in range(3):
        acts = agent.act(obs[:8], seed=i)
        agent.update(obs[:8], acts, list(np.linspace(-0.1, 0.1, 8)))
    p = agent.probs(obs)
    masks = np.stack([o["mask"] for o in obs]).astype(bool)
    assert np.all(p[~masks] == 0) and np.allclose(p.sum(-1), 1)
    for _ in range(5):
        a = agent.act(obs, seed=11)
        assert np.all(np.take_along_axis(masks, a[..., None], -1))  # only valid transitions
    agent.save(tmp_path / "p.pt")
    back = NATAgent.load(tmp_path / "p.pt")
    assert np.array_equal(back.act(obs, greedy=True), agent.act(obs, greedy=True))
    assert np.array_equal(back.act(obs, seed=7), agent.act(obs, seed=7))
    assert back.baseline == agent.baseline and back.updates == agent.updates == 3
    # training goes on identically after a reload (Adam's state travels too)
    for x in (agent, back):
        x.update(obs[8:16], x.act(obs[8:16], seed=9), [0.05 * i for i in range(8)])
    assert np.allclose(back.probs(obs), agent.probs(obs), atol=0, rtol=0)
    # seeded: the same seed gives the same weights, another seed others
    same, other = NATAgent(seed=5).policy.state_dict(), NATAgent(seed=6).policy.state_dict()
    assert all(np.array_equal(v, NATAgent(seed=5).policy.state_dict()[k]) for k, v in same.items())
    assert not np.array_equal(same["gc1.weight"], other["gc1.weight"])


# --- the optimiser, in memory --------------------------------------------------------------------
def _random_gain(space, table, archs, seeds=5):
    """Mean gain of uniformly random NAT transitions (the same mask the policy has)."""
    out = []
    for s in range(seeds):
        rng = np.random.default_rng(s)
        for g in archs:
            m = valid_mask(space, cell_ops(space, g))
            a = [rng.choice(np.flatnonzero(m[k])) for k in range(6)]
            out.append(
                table.evaluate(transform(space, g, a)).metrics["val_acc"]
                - table.evaluate(g).metrics["val_acc"]
            )
    return statistics.mean(out)


@needs_table
def test_training_beats_a_random_transformation(space, table):
    opt = _nat(space, seed=0, train_archs=200, epochs=10, holdout=60)
    recs = simulate(opt, table, 5000)
    assert len({r.genome_id for r in recs}) == len(recs)  # no cell evaluated twice
    assert opt.done_batches == opt.n_batches == 200
    rep = opt.report()
    s = rep["summary"]
    assert s["transformed"] == 60 and s["max_flops_change"] <= 0 and s["max_params_change"] <= 0
    rand = _random_gain(space, table, opt.targets)
    print(f"nat greedy gain {s['mean_gain']:.4f}, improved {s['improved']:.2f}; random {rand:.4f}")
    assert s["mean_gain"] > 0 and s["mean_gain"] > rand + 0.05
    curve = [c["mean_reward"] for c in rep["training"]["curve"]]
    assert statistics.mean(curve[-20:]) > statistics.mean(curve[:20]) + 0.05  # it learnt
    # held out: no target was trained on
    assert not {table.space.genome_id(g) for g in opt.targets} & {
        table.space.genome_id(g) for g in opt.pool
    }


@needs_table
def test_workers_ahead_of_the_batch_keep_busy_and_finish(space, table):
    """With more workers than a batch needs, originals are fetched ahead, later batches are
    sampled from the latest policy, and everything ends transformed, never asked twice."""
    opt = _nat(space, seed=2, train_archs=30, epochs=2, batch=6, holdout=5)
    in_flight, asked, n = [], [], 0
    while True:
        while len(in_flight) < 8:
            g = opt.ask()
            if g is None:
                break
            in_flight.append(g)
            asked.append(space.genome_id(g))
        if not in_flight:
            break
        g = in_flight.pop(0)
        res = table.evaluate(g)
        opt.tell(
            TrialRecord(n, g, space.genome_id(g), res.status, res.metrics, [res.metrics["val_acc"]])
        )
        n += 1
    assert len(asked) == len(set(asked))
    assert opt._prefetch_at > 0  # originals were fetched ahead while a batch waited
    assert any(
        c["stale"] for c in opt.curve
    )  # some batches were sampled before the update before them
    assert opt.done_batches == opt.n_batches
    assert opt.report()["summary"]["transformed"] == 5


# --- the CLI -------------------------------------------------------------------------------------
def _nat_json(run):
    return json.loads((run / "nat.json").read_text())


@pytest.mark.slow
@needs_table
def test_cli_run_writes_nat_json_and_resume_rebuilds_the_agent(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    r = run_cli(
        "run",
        "spaces/nb201.yaml",
        "--optimizer",
        "nat",
        *TABLE,
        *SMALL,
        "--budget",
        2000,
        "--out",
        full,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rep = _nat_json(full)
    assert rep["training"]["complete"] and rep["summary"]["transformed"] == 8
    assert all(t["flops_change"] <= 0 and t["params_change"] <= 0 for t in rep["transforms"])
    assert (full / "nat_policy.pt").is_file()
    # stopped early by its budget, then resumed: the same agent, the same transformations
    r = run_cli(
        "run",
        "spaces/nb201.yaml",
        "--optimizer",
        "nat",
        *TABLE,
        *SMALL,
        "--budget",
        30,
        "--out",
        part,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert not _nat_json(part)["training"]["complete"]
    r = run_cli("resume", part, "--budget", 2000, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _nat_json(part) == rep


@pytest.mark.slow
@needs_table
def test_cli_checkpoint_resume_and_transform_another_runs_best(tmp_path):
    first, again, other = tmp_path / "first", tmp_path / "again", tmp_path / "other"
    ck = tmp_path / "agent.pt"
    r = run_cli(
        "run",
        "spaces/nb201.yaml",
        "--optimizer",
        "nat",
        *TABLE,
        *SMALL,
        "--set",
        f"checkpoint={ck}",
        "--budget",
        40,
        "--out",
        first,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("resume", first, "--budget", 2000, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed the agent from" in r.stderr
    r = run_cli(
        "run",
        "spaces/nb201.yaml",
        "--optimizer",
        "nat",
        *TABLE,
        *SMALL,
        "--budget",
        2000,
        "--out",
        again,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert _nat_json(first)["transforms"] == _nat_json(again)["transforms"]
    # the trained agent transforms the three best cells of another run (a random search)
    r = run_cli(
        "run", "spaces/nb201.yaml", "--optimizer", "random", *TABLE, "--budget", 30, "--out", other
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "transformed"
    r = run_cli(
        "run",
        "spaces/nb201.yaml",
        "--optimizer",
        "nat",
        *TABLE,
        *EVAL,
        "--set",
        f"init_policy={first}",
        "--set",
        "train_archs=0",
        "--set",
        f"transform={other}",
        "--set",
        "transform_top=3",
        "--budget",
        10,
        "--out",
        out,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rep = _nat_json(out)
    assert rep["summary"]["transformed"] == 3 and rep["training"]["updates"] == 0
    best = json.loads((other / "best" / "metrics.json").read_text())["genome_id"]
    assert rep["transforms"][0]["original"]["genome_id"] == best
    space = load_space(space_path("nb201"))
    agent = NATAgent.load(first / "nat_policy.pt")
    for t in rep["transforms"]:
        g = space.from_json(t["original"]["genome"])
        assert t["transformed"]["genome_id"] == space.genome_id(
            transform(space, g, agent.act([observe(space, g)], greedy=True)[0])
        )


def test_cli_rejects_a_space_without_cells():
    r = run_cli("run", "spaces/tinynet.yaml", "--optimizer", "nat", "--budget", 2)
    assert r.returncode == 2 and "NAT transforms cells" in r.stderr


# --- reward: supernet (the paper's shared weights, trained alternately with the policy) ----------
TINY = {
    "holdout": 3,
    "batch": 3,
    "data": {"name": "digits"},
    "supernet": {
        "epochs": 2,
        "steps": 3,
        "updates": 2,
        "samples": 2,
        "select_images": 64,
        "reward_images": 32,
    },
}


def _curve(opt):
    """The training curve without its timings."""
    return [{k: v for k, v in c.items() if not k.endswith("_s")} for c in opt.curve]


def _supernet_nat(space, **over):
    cls = OPTIMIZERS["nat"]
    return cls(space, [Objective(metric="val_acc")], [], 0, cls.Options(**{**TINY, **over}))


def test_supernet_mode_alternates_weights_and_policy_and_rewards_come_from_the_weights(space):
    opt = _supernet_nat(space)
    fresh = NATAgent(0, 64, 3e-3)
    opt._start()  # trains: epoch 0 (weights, policy), epoch 1 (weights, policy), then transforms
    c0, c1 = opt.curve
    w0 = [u["weights"] for u in c0["updates"]]
    w1 = [u["weights"] for u in c1["updates"]]
    assert len(set(w0)) == 1 and len(set(w1)) == 1  # policy updates leave the weights alone
    assert w0[0] != w1[0]  # the weight steps between the two policy phases changed them
    assert opt.shared.steps == 6 and opt.agent.updates == 4
    moved = [
        not torch.equal(a, b)
        for a, b in zip(opt.agent.policy.parameters(), fresh.policy.parameters())
    ]
    assert any(moved)  # the policy learned from those rewards
    # a reward is the accuracy of the transformed cell minus the original's, both measured with
    # the shared weights on the same validation batch; other weights give other rewards
    rng = random.Random(5)
    cells = [space.sample(rng) for _ in range(4)]
    acts = [[SKIP] * 6, [NONE] * 6, [KEEP] * 6, [SKIP, NONE, KEEP, SKIP, NONE, KEEP]]
    start = opt.shared.val_batches
    got = opt.rewards(cells, acts)
    opt.shared._val, opt.shared.val_batches = None, start  # replay the same validation batches
    for g, a, r in zip(cells, acts, got):
        x, y = opt.shared.val_batch()
        t = transform(space, g, a)
        before = opt.shared.accuracy(cell_ops(space, g), x, y)
        after = opt.shared.accuracy(cell_ops(space, t), x, y)
        assert r["reward"] == pytest.approx(after - before)
    assert got[2]["reward"] == 0.0  # keeping every op changes nothing
    with torch.no_grad():
        for p in opt.shared.net.parameters():
            p.mul_(-1.0)
    opt.shared._val, opt.shared.val_batches = None, start
    assert [r["after"] for r in opt.rewards(cells, acts)] != [r["after"] for r in got]
    opt._transform_episodes()
    rep = opt.report()
    assert rep["reward"] == "supernet" and rep["training"]["complete"]
    assert {t["kind"] for t in rep["transforms"]} == {"greedy", "best"}


def test_supernet_mode_resumes_after_a_crash_where_it_stopped(space, tmp_path, monkeypatch, caplog):
    whole = _supernet_nat(space)
    whole._start()
    crashed = _supernet_nat(space)
    crashed.attach(tmp_path)
    real = crashed._supernet_epoch

    def crash_at_second(epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        real(epoch)

    monkeypatch.setattr(crashed, "_supernet_epoch", crash_at_second)
    with pytest.raises(KeyboardInterrupt):
        crashed._start()
    resumed = _supernet_nat(space)
    resumed.attach(tmp_path)
    resumed._start()  # reloads epoch 0's weights, policy and streams, trains epoch 1
    assert _curve(resumed) == _curve(whole)
    assert resumed.inference == whole.inference
    assert resumed.shared.fingerprint() == pytest.approx(whole.shared.fingerprint())
    # another training's checkpoint (here: other targets, so other training cells) is not used
    other = _supernet_nat(space, holdout=2)
    other.attach(tmp_path)
    with caplog.at_level("WARNING"):
        other._start()
    assert "another training's" in caplog.text


def test_cli_nat_supernet_needs_its_images():
    r = run_cli(
        "run",
        "spaces/nb201.yaml",
        "--optimizer",
        "nat",
        "--set",
        "optimizer.options.data.path=/nonexistent.zip",
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "optimizer.options.data.path" in r.stderr and "/nonexistent.zip" in r.stderr
