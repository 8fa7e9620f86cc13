"""The pre-trained supernet cache: one per (space, dataset, seed, recipe), with a manifest,
shared between runs, loaded with torch.load(weights_only=True)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch

from evaluators.data import Splits
from evaluators.train import TrainRecipe, evaluate, pretrain_supernet
from spaces.space import Space

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ARCHSEARCH_CACHE", Path.home() / ".cache" / "archsearch"))


FINETUNE_ONLY = (
    "weight_training",
    "slb_t_start",
    "slb_t_end",
    "slb_lr",
    "bn_batches",
    "device",
    "amp",
    "channels_last",  # the batches' memory layout: the same training
)


def supernet_key(space: Space, data: Splits, recipe: TrainRecipe, sandwich: int, seed: int) -> dict:
    dims = {n: [d.kind, d.target, d.scope, d.describe()] for n, d in space.dims.items()}
    # how fine-tuning trains low-bit weights does not change pre-training
    recipe = {k: v for k, v in dataclasses.asdict(recipe).items() if k not in FINETUNE_ONLY}
    key = {
        "space": space.name,
        "family": space.family.spec.model_dump(),
        "dimensions": dims,
        "dataset": data.name,
        "data_fingerprint": data.fingerprint(),
        "recipe": recipe,
        "sandwich": sandwich,
        "seed": seed,
        "format": 1,
    }
    if any(
        str(o).startswith("int")
        for d in space.dims.values()
        if d.kind == "weightset"
        for o in d.options
    ):  # sub-networks pre-train through their sets: intN became 2**N levels (a new supernet)
        key["int_levels"] = "2**N"
    fingerprint = space.family.fingerprint()
    if fingerprint:  # a user's network: its source and weights
        key["fingerprint"] = fingerprint
    if not space.family.shares_weights:  # the full network alone is trained: no sandwich
        del key["dimensions"]
        key["sandwich"] = 1
    return key


def get_or_train(
    space: Space,
    data: Splits,
    recipe: TrainRecipe,
    sandwich: int,
    seed: int,
    cache_dir: Path,
    progress=None,
):
    trained = space.family.trained_state()
    if trained is not None:  # a user's trained network that fits the data: no pre-training
        sup = space.supernet(seed)
        r = space.arch(space.full()).resolution
        acc, loss = evaluate(sup, data.val, r)
        log.info("the network's own trained weights: full network val acc %.4f", acc)
        return sup, {"full_val_acc": acc, "full_val_loss": loss, "weights": "the network's own"}
    key = supernet_key(space, data, recipe, sandwich, seed)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    folder = Path(cache_dir) / "supernets" / f"{space.name}-{digest}"
    weights, manifest = folder / "supernet.pt", folder / "manifest.json"
    sup = space.supernet(seed)
    if weights.exists() and manifest.exists():
        sup.load_state_dict(torch.load(weights, weights_only=True))
        info = json.loads(manifest.read_text())
        log.info(
            "supernet from cache %s (full network val acc %.4f)",
            folder,
            info.get("full_val_acc", float("nan")),
        )
        return sup, info
    log.info(
        "pre-training the supernet of %s on %s (%d train images)",
        space.name,
        data.name,
        len(data.train),
    )
    sup, info = pretrain_supernet(space, data, recipe, seed, sandwich, progress)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "supernet.pt.tmp"
    torch.save(sup.state_dict(), tmp)
    os.replace(tmp, weights)
    info = {**info, "key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "path": str(weights)}
    manifest.write_text(json.dumps(info, indent=2))
    return sup, info
