"""Training layout and threads. The built-in families' networks train on channels-last batches on
a CPU (the depthwise convolutions' backward pass is several times faster so), a user's network
keeps the contiguous layout (its forward may view a feature map), and the layout changes neither
what is learned beyond rounding nor the pre-trained supernet's cache key. A sandwich step runs
its sub-networks side by side on a CPU and gives the gradients the one-by-one step gives."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from evaluators.cache import supernet_key
from evaluators.data import digits
from evaluators.evaluator import TrainEvaluator
from evaluators.train import SandwichThreads, TrainRecipe, fine_tune, sandwich_genomes
from search.config import load_run_config
from spaces.builder import importance
from tests.conftest import space_path


def _evaluator(path, tmp_path) -> TrainEvaluator:
    cfg, space, _ = load_run_config(path, [f"cache={tmp_path}"])
    return TrainEvaluator.from_config(cfg, space, str(path))


def test_built_in_networks_train_channels_last_and_learn_the_same(tmp_path, root):
    ev = _evaluator(space_path("tinynet"), tmp_path)
    assert ev.finetune.channels_last and ev.pretrain.channels_last
    own = _evaluator(root / "examples" / "resnet18.yaml", tmp_path)
    assert not own.finetune.channels_last and not own.pretrain.channels_last

    space, data = ev.base_space, digits(16, 0, 0.2, 0.1)
    g = space.sample(random.Random(3))
    model = space.build(g, space.supernet(0))
    seen, trained = [], []
    for cl in (True, False):
        m = copy.deepcopy(model)
        first = next(c for c in m.modules() if isinstance(c, torch.nn.Conv2d))
        first.register_forward_pre_hook(
            lambda _m, i: seen.append(i[0].is_contiguous(memory_format=torch.channels_last))
        )
        recipe = TrainRecipe(steps=3, batch_size=32, lr=0.05, bn_batches=0, channels_last=cl)
        fine_tune(m, data, space.arch(g).resolution, recipe, seed=0)
        trained.append(m.state_dict())
    assert seen == [True] * 3 + [False] * 3  # the training batches' layout, as asked
    for k, v in trained[0].items():  # the same training, up to float rounding
        torch.testing.assert_close(v, trained[1][k], rtol=1e-3, atol=1e-4, msg=k)
    keys = [supernet_key(space, data, TrainRecipe(channels_last=cl), 4, 0) for cl in (True, False)]
    assert keys[0] == keys[1]  # a supernet cached before keeps serving


def _sandwich(space, seed: int) -> list:
    return sandwich_genomes(space, random.Random(seed), 4)


def _grads(space, sup, genomes, x, y, threads: int, side_by_side: bool):
    """The sandwich step's gradients and full-network loss on `threads` torch threads, its
    sub-networks side by side or in turn."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sw = SandwichThreads(sup, TrainRecipe(), 4)
        if not side_by_side:
            sw.workers = 1
        with sw:
            assert (sw._pool is not None) == side_by_side
            sup.zero_grad(set_to_none=True)
            cut = (space.family.groups(), importance(sup))
            ce = sw.backward(space, sup, genomes, x, y, cut, TrainRecipe())
        return ce, [None if p.grad is None else p.grad.clone() for p in sup.parameters()]
    finally:
        assert torch.get_num_threads() == threads  # the threads' share given back on exit
        torch.set_num_threads(old)


def test_a_sandwich_steps_sub_networks_side_by_side_give_its_gradients_in_turn(tmp_path):
    """On a CPU with 2 torch threads the sandwich step runs its 4 sub-networks on 2 threads of one
    torch thread each. Their gradients are summed in the sandwich's order, so the step gives what
    the one-by-one step gives on one thread, whichever thread finishes first, run after run."""
    ev = _evaluator(space_path("tinynet"), tmp_path)
    space = ev.base_space.with_classes(10)
    x, y = digits(16, 0, 0.2, 0.1).train.take(16, seed=0)
    x = x.contiguous(memory_format=torch.channels_last)
    sup, genomes = space.supernet(0).train(), _sandwich(space, 1)
    ce1, in_turn = _grads(space, sup, genomes, x, y, threads=1, side_by_side=False)
    for _ in range(2):
        ce2, side = _grads(space, sup, genomes, x, y, threads=2, side_by_side=True)
        assert ce2 == ce1
        assert sum(g is not None for g in side) == sum(g is not None for g in in_turn) > 10
        for a, b in zip(side, in_turn):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # each sub-network counts: the full network alone gives other gradients
    _, alone = _grads(space, sup, genomes[:1], x, y, threads=2, side_by_side=True)
    assert any(
        a is not None and not torch.allclose(a, b, rtol=1e-3, atol=1e-5)
        for a, b in zip(alone, in_turn)
    )


def test_a_failing_sandwich_step_raises_on_every_thread_rather_than_waiting(tmp_path):
    """The distilled sub-networks wait for the full network's output: when the full network
    fails (labels out of range here) the step raises, and the threads do not hang."""
    ev = _evaluator(space_path("tinynet"), tmp_path)
    space = ev.base_space.with_classes(10)
    x, _ = digits(16, 0, 0.2, 0.1).train.take(8, seed=0)
    sup = space.supernet(0).train()
    with pytest.raises((IndexError, RuntimeError)):
        _grads(space, sup, _sandwich(space, 2), x, torch.full((8,), 99), 2, side_by_side=True)


def test_sandwich_steps_stay_one_by_one_with_dropout_or_one_thread():
    """Active dropout draws random numbers on whichever thread runs it: such a supernet keeps the
    one-by-one step, and so does a process on one torch thread."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.2))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert SandwichThreads(net, TrainRecipe(), 4).workers == 1
        net[1].p = 0.0
        assert SandwichThreads(net, TrainRecipe(), 4).workers == 2
        assert SandwichThreads(net, TrainRecipe(device="cuda"), 4).workers == 1
        torch.set_num_threads(1)
        assert SandwichThreads(net, TrainRecipe(), 4).workers == 1
    finally:
        torch.set_num_threads(old)
