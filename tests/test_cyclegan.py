"""The co-evolution showcase: two CycleGAN generators (digits <-> inverted, thickened digits),
pre-trained for real, compressed by co-evolving one population per generator."""

import json
import random
import statistics

import optuna
import pytest
import torch

from search.store import STUDY_NAME, open_storage
from tests.conftest import run_cli, space_path


def _evaluator(tmp_path, *sets):
    """The shipped space's evaluator on untrained generators and discriminators (no
    pre-training: these tests check the mechanics, in about a second)."""
    from evaluators.cyclegan import PatchDiscriminator
    from evaluators.registry import make_evaluator
    from search.config import load_run_config

    path = space_path("cyclegan_digits")
    cfg, space, _ = load_run_config(path, ["latency=none", f"cache={tmp_path}", *sets])
    ev = make_evaluator(cfg, space, str(path))
    torch.manual_seed(0)
    state = {
        "generators": space.supernet(0).state_dict(),
        "d_a": PatchDiscriminator().state_dict(),
        "d_b": PatchDiscriminator().state_dict(),
    }
    ev.setup(supernet_state=state)
    return ev


def _pruned(space):
    g = space.sample(random.Random(3))
    assert space.genome_id(g) != space.genome_id(space.full())
    return g


def test_finetuning_trains_the_pruned_pair_reproducibly(tmp_path):
    ev0 = _evaluator(tmp_path, "evaluator.cyclegan.finetune_steps=0")
    ev = _evaluator(tmp_path, "evaluator.cyclegan.finetune_steps=3")
    g = _pruned(ev.space)
    inherited, tuned = ev0.evaluate(g, seed=7), ev.evaluate(g, seed=7)
    assert inherited.status == tuned.status == "complete", (inherited.reason, tuned.reason)
    assert "finetune_loss_first" not in inherited.metrics
    assert tuned.metrics["finetune_loss_last"] != tuned.metrics["finetune_loss_first"]
    assert tuned.metrics["fitness"] != inherited.metrics["fitness"]
    # the trained weights differ from the inherited ones (step 0: the supernet's slices)
    built = ev.space.build(g, ev.supernet).state_dict()
    convs = [k for k in built if k.endswith("weight") and built[k].dim() == 4]
    assert all(torch.equal(inherited.state_dict[k], built[k]) for k in convs)
    assert all(not torch.equal(tuned.state_dict[k], built[k]) for k in convs)
    # same genome and seed: the same pair and metrics; another seed draws other batches
    again = ev.evaluate(g, seed=7)
    assert all(torch.equal(again.state_dict[k], tuned.state_dict[k]) for k in tuned.state_dict)
    drop = ("wall_time_s",)
    assert {k: v for k, v in again.metrics.items() if k not in drop} == {
        k: v for k, v in tuned.metrics.items() if k not in drop
    }
    assert ev.evaluate(g, seed=8).metrics["fitness"] != tuned.metrics["fitness"]
    # the full pair is the reference: nothing pruned, nothing fine-tuned
    full = ev.evaluate(ev.space.full(), seed=7).metrics
    assert full["dis_ab"] == full["dis_ba"] == 0.0 and "finetune_loss_first" not in full


def test_fitness_is_the_papers_reciprocal(tmp_path):
    """Per generator 1 / (kept parameter fraction + gamma * (dis + cycle_weight * cyc)), on the
    select images and, with `_report`, on the report images."""
    gamma, lam = 3.0, 0.5
    ev = _evaluator(
        tmp_path,
        "evaluator.cyclegan.finetune_steps=1",
        f"evaluator.cyclegan.gamma={gamma}",
        f"evaluator.cyclegan.cycle_weight={lam}",
    )
    g = _pruned(ev.space)
    res = ev.evaluate(g, seed=1)
    m = res.metrics
    model = ev.space.family.module(ev.space.arch(g))
    for d, x in (("ab", "a"), ("ba", "b")):
        kept = sum(p.numel() for p in getattr(model, d).parameters())
        full = sum(p.numel() for p in getattr(ev.supernet, d).parameters())
        assert m[f"size_{d}"] == pytest.approx(kept / full) and 0 < m[f"size_{d}"] < 1
        for sfx in ("", "_report"):
            loss = m[f"dis_{d}{sfx}"] + lam * m[f"cyc_{x}{sfx}"]
            assert m[f"loss_{d}{sfx}"] == pytest.approx(loss)
            assert m[f"fitness_{d}{sfx}"] == pytest.approx(1 / (m[f"size_{d}"] + gamma * loss))
    for sfx in ("", "_report"):
        assert m[f"fitness{sfx}"] == pytest.approx(m[f"fitness_ab{sfx}"] + m[f"fitness_ba{sfx}"])
    assert m["fitness"] != m["fitness_report"]
    assert set(m) <= set(ev.metrics)


def test_select_and_report_images_are_disjoint(tmp_path):
    from evaluators.cyclegan import digit_domains

    dom = digit_domains(16, 0, select_fraction=0.5)
    for i, (val, train) in enumerate(((dom.a_val, dom.a_train), (dom.b_val, dom.b_train))):
        sel, rep = dom.held_out("select")[i], dom.held_out("report")[i]
        assert abs(len(sel) - len(rep)) <= 1 and len(sel) + len(rep) == len(val)
        flat = lambda t: {tuple(x.flatten().tolist()) for x in t}  # noqa: E731
        assert len(flat(sel)) == len(sel) and len(flat(rep)) == len(rep)
        assert not flat(sel) & flat(rep) and not (flat(sel) | flat(rep)) & flat(train)
    ev = _evaluator(tmp_path, "evaluator.cyclegan.select_fraction=0.25")
    a_sel, a_rep = ev.ref["select"]["a"], ev.ref["report"]["a"]
    assert len(a_sel) == round(0.25 * len(ev.dom.a_val)) and len(a_rep) == len(ev.dom.a_val) - len(
        a_sel
    )


def test_the_search_ranks_by_the_select_images_only():
    """The shipped run's objectives and each population's fitness are select-image metrics."""
    from search.config import load_run_config
    from search.optimizers import OPTIMIZERS
    from spaces.errors import ConfigError

    path = space_path("cyclegan_digits")
    cfg, space, _ = load_run_config(path)
    cls = OPTIMIZERS["coevolution"]
    opt = cls(
        space,
        cfg.objectives,
        cfg.constraints,
        0,
        cls.parse_options(cfg.optimizer.options, str(path)),
    )
    ranked = [m for r in opt.rank.values() for m, _ in r.metric_signs]
    assert sorted(ranked) == ["fitness_ab", "fitness_ba"]
    assert [o.metric for o in cfg.objectives] == ["fitness", "flops"]
    assert cfg.evaluator.cyclegan.finetune_steps > 0
    with pytest.raises(ConfigError, match="gamma"):
        load_run_config(path, ["evaluator.cyclegan.channel_weight=0.1"])


@pytest.mark.slow
def test_coevolution_compresses_both_generators(tmp_path, cache_dir):
    out = tmp_path / "cg"
    r = run_cli(
        "run",
        space_path("cyclegan_digits"),
        "--budget",
        40,
        "--out",
        out,
        "--no-progress",
        "--set",
        f"cache={cache_dir}",
        "--set",
        "evaluator.cyclegan.pretrain_steps=400",
        "--set",
        "population_size=4",
        "--set",
        "evaluator.cyclegan.finetune_steps=2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # the pre-trained CycleGAN really translates A -> B and back
    manifest = json.loads(
        next(cache_dir.glob("supernets/cyclegan_digits-*/manifest.json")).read_text()
    )
    assert manifest["val_cycle_l1_a"] < 0.25, manifest
    assert manifest["val_mean_gap_ab"] < 0.2, (
        manifest
    )  # A is mostly -1, B mostly +1: a gap of ~1.3 untranslated
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out, None))
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 40
    ms = [t.user_attrs["metrics"] for t in trials]
    for key in ("fitness_ab", "fitness_ba", "dis_ab", "cyc_a", "kept_ab", "kept_ba"):
        assert all(key in m for m in ms)
    # both populations evolved: each generator's masks took several values
    g = [t.user_attrs["genome"] for t in trials]
    assert len({json.dumps({k: v for k, v in x.items() if k.startswith("mask.ab")}) for x in g}) > 4
    assert len({json.dumps({k: v for k, v in x.items() if k.startswith("mask.ba")}) for x in g}) > 4
    first = statistics.median(m["fitness"] for m in ms[:8])  # the shared first population
    best = max(ms, key=lambda m: m["fitness"])
    assert best["fitness"] > first
    assert best["kept_ab"] < 1 and best["kept_ba"] < 1
    # the pruned generators are exported like any other model
    ts = torch.jit.load(str(out / "best" / "model.ts"))
    with torch.no_grad():
        y = ts(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert y.shape == (2, 3, 16, 16) and torch.isfinite(y).all()
    front = json.loads((out / "pareto.json").read_text())["front"]
    assert len(front) >= 3
    # the best pair against the full generators: FLOPs, cycle loss, sample translations
    summary = json.loads((out / "cyclegan.json").read_text())
    assert (
        summary["genome_id"] == json.loads((out / "best" / "metrics.json").read_text())["genome_id"]
    )
    for d in ("ab", "ba"):
        assert (
            summary[d]["flops_reduction"] > 1.0
            and summary[d]["pruned"]["flops"] < summary[d]["full"]["flops"]
        )
        assert summary[d]["pruned"]["cycle_l1"] < 0.5
    assert (out / "cyclegan_samples.png").stat().st_size > 5000
