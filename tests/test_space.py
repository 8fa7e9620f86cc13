"""The unified space: ids, conditional dimensions and exact round trips through every encoding."""

import optuna
import pytest

from spaces import GenomeError, load_space
from tests.conftest import SHIPPED, space_path

N = 200


@pytest.fixture(scope="module", params=SHIPPED)
def space(request):
    return load_space(space_path(request.param))


def test_same_seed_same_genomes(space):
    assert [space.sample(s) for s in range(10)] == [space.sample(s) for s in range(10)]
    assert len({space.genome_id(space.sample(s)) for s in range(50)}) > 10


def test_genome_id_is_stable_and_order_free(space):
    g = space.sample(3)
    gid = space.genome_id(g)
    assert gid == space.genome_id(dict(reversed(list(g.items()))))
    assert gid == space.genome_id(space.from_json(space.to_json(g)))
    assert len(gid) == 16


def test_json_roundtrip(space):
    import json

    for s in range(N):
        g = space.sample(s)
        assert space.from_json(json.dumps(space.to_json(g))) == g


def test_optuna_roundtrip_and_recording(space, tmp_path):
    study = optuna.create_study()
    for s in range(N):
        g = space.sample(s)
        params, dists = space.to_optuna(g)
        assert space.from_optuna(params) == g
        if s < 20:  # any genome can be recorded as an Optuna trial
            t = optuna.trial.create_trial(params=params, distributions=dists, value=float(s))
            study.add_trial(t)
            assert space.from_optuna(study.trials[-1].params) == g


def test_optuna_suggest_gives_valid_genomes(space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        g = space.suggest(trial)
        assert space.validate(g) == g
        assert space.from_optuna(trial.params) == g
        study.tell(trial, 0.0)


def test_deap_roundtrip_and_operators(space):
    tb = space.deap_toolbox(weights=(1.0, -1.0), seed=0)
    for s in range(N):
        g = space.sample(s)
        ind = tb.from_genome(g)
        assert tb.genome(ind) == g
    pop = tb.population(20)
    for a, b in zip(pop[::2], pop[1::2]):
        tb.mate(a, b)
        tb.mutate(a)
        for ind in (a, b):
            g = tb.genome(ind)
            assert space.validate(g) == g


def test_gym_sample_gives_valid_genome(space):
    gs = space.gym_space(seed=0)
    for _ in range(N):
        g = space.from_gym(gs.sample())
        assert space.validate(g) == g
        assert gs.contains(space.to_gym(g))


def test_tune_param_space(space):
    import numpy as np
    from ray.tune.search.sample import Domain

    ps = space.tune_param_space()
    assert all(isinstance(v, Domain) for v in ps.values())
    rs = np.random.RandomState(0)
    ids = set()
    for _ in range(20):
        g = space.from_tune({k: v.sample(random_state=rs) for k, v in ps.items()})
        assert space.validate(g) == g
        ids.add(space.genome_id(g))
    assert len(ids) > 5


def test_validate_rejects_unknown_and_missing_fields(space):
    g = space.sample(0)
    with pytest.raises(GenomeError, match="not a dimension"):
        space.validate({**g, "bogus": 1})
    first = next(iter(g))
    with pytest.raises(GenomeError, match="missing"):
        space.validate({k: v for k, v in g.items() if k != first})


def test_depth_cut_blocks_are_inactive_and_ignored():
    space = load_space(space_path("tinynet"))
    g = space.sample(0)
    g.update(depth=0.25)
    inactive = [n for n in space.dims if n not in space.active(g)]
    assert "kernel.s4.b2" in inactive and "kernel.s4.b0" not in inactive
    other = dict(g)
    other["kernel.s4.b2"] = 3 if g["kernel.s4.b2"] == 5 else 5
    assert space.genome_id(other) == space.genome_id(g)  # ignored
    assert space.cost(other) == space.cost(g)
    params, _ = space.to_optuna(g)
    assert "kernel.s4.b2" not in params  # not recorded in Optuna either
    g.update(depth=1.0)
    assert "kernel.s4.b2" in space.active(g)
