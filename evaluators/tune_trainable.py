"""Fine-tuning as a Ray Tune trainable that reports every epoch, so Tune schedulers (ASHA)
stop poor candidates early. The evaluator's data and supernet are loaded once per worker
process and kept while Tune reuses the actor (`reuse_actors=True`)."""

from __future__ import annotations

import os

_CACHE: dict = {}  # per worker process: the set-up evaluator


def _evaluator(blank, supernet_state):
    key = blank.worker_key()
    ev = _CACHE.get(key)
    if ev is None:
        import torch
        from ray import tune

        threads = int(
            tune.get_context().get_trial_resources().required_resources.get("CPU", 1) or 1
        )
        torch.set_num_threads(max(1, threads))
        ev = blank
        ev.setup(supernet_state=supernet_state)
        _CACHE.clear()
        _CACHE[key] = ev
    return ev


def finetune_trainable(config: dict, evaluator=None, supernet_state=None) -> None:
    """Tune function trainable: config {"genome": JSON genome, "seed": int}. Reports validation
    metrics after every epoch; the last report holds every metric and `final: True`."""
    from ray import tune

    from evaluators.executor import node_label

    ev = _evaluator(evaluator, supernet_state)
    genome = ev.space.from_json(config["genome"])
    node = node_label()
    res = ev.evaluate(
        genome,
        int(config.get("seed", 0)),
        report=lambda m: tune.report({**m, "final": False, "node": node}),
    )
    if res.status != "complete":
        raise RuntimeError(res.reason)
    wdir = config.get("weights_dir")
    if (
        wdir and os.path.isdir(wdir) and res.state_dict is not None
    ):  # the run folder, if this node sees it
        import torch

        tmp = os.path.join(wdir, f"{res.genome_id}.pt.tmp")
        torch.save(res.state_dict, tmp)
        os.replace(tmp, os.path.join(wdir, f"{res.genome_id}.pt"))
    tune.report({**res.metrics, "epoch": ev.finetune.epochs, "final": True, "node": node})
