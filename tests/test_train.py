"""Training layout: the built-in families' networks train on channels-last batches on a CPU (the
depthwise convolutions' backward pass is several times faster so), a user's network keeps the
contiguous layout (its forward may view a feature map), and the layout changes neither what is
learned beyond rounding nor the pre-trained supernet's cache key."""

from __future__ import annotations

import copy
import random

import torch

from evaluators.cache import supernet_key
from evaluators.data import digits
from evaluators.evaluator import TrainEvaluator
from evaluators.train import TrainRecipe, fine_tune
from search.config import load_run_config
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
