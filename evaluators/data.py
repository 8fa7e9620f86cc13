"""Datasets as tensors at the space's base resolution: digits (embedded), imagefolder (folders
or a zip of them, e.g. ../shared/data/cifar10_jpg.zip), cifar10 (torchvision's binary batches
from a local folder, no download). Seeded train / validation / test split."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spaces.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """Float images (N, 3, R, R), normalised, and integer labels, per split."""

    name: str
    classes: list[str]
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for x, y in (self.train, self.val, self.test):
            h.update(str(tuple(x.shape)).encode())
            h.update(y.numpy().tobytes())
            h.update(x[:: max(1, len(x) // 64)].numpy().tobytes())
        return h.hexdigest()[:16]


def _split(x: torch.Tensor, y: torch.Tensor, fractions: tuple[float, float], seed: int):
    """Stratified split into (rest, a, b) with a, b the given fractions of every class."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for c in torch.unique(y).tolist():
        idx = np.flatnonzero(y.numpy() == c)
        rng.shuffle(idx)
        na, nb = int(round(len(idx) * fractions[0])), int(round(len(idx) * fractions[1]))
        parts[1] += idx[:na].tolist()
        parts[2] += idx[na : na + nb].tolist()
        parts[0] += idx[na + nb :].tolist()
    return [(x[sorted(p)], y[sorted(p)]) for p in parts]


def _normalise(*xs: torch.Tensor) -> list[torch.Tensor]:
    """Per-channel standardisation with the training split's statistics. The result is
    contiguous (NCHW): images decoded as HWC would otherwise carry channels-last strides into
    every batch, and oneDNN's strided 1x1-convolution backward on such inputs takes minutes
    per step on this CPU."""
    mean = xs[0].mean((0, 2, 3), keepdim=True)
    std = xs[0].std((0, 2, 3), keepdim=True).clamp(min=1e-3)
    return [((x - mean) / std).contiguous() for x in xs]


def _to_resolution(x: torch.Tensor, r: int) -> torch.Tensor:
    if x.shape[-1] == r:
        return x
    return F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)


def digits(resolution: int, seed: int, val_fraction: float, test_fraction: float) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = _to_resolution(x, resolution).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    (xt, yt), (xv, yv), (xs, ys) = _split(x, y, (val_fraction, test_fraction), seed)
    xt, xv, xs = _normalise(xt, xv, xs)
    return Splits("digits", [str(i) for i in range(10)], (xt, yt), (xv, yv), (xs, ys))


IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp")


class _Source:
    """A folder or a zip, listed as relative paths."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None
        if self.zip:
            self.names = [n for n in self.zip.namelist() if not n.endswith("/")]
        else:
            self.names = [str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()]
        self.names = sorted(n for n in self.names if n.lower().endswith(IMG_EXT))

    def read(self, name: str) -> bytes:
        return self.zip.read(name) if self.zip else (self.path / name).read_bytes()


def _load_images(src: _Source, names: list[str], resolution: int, where=(None, "dataset.path")):
    """The images as a float tensor in [0, 1]; an image that does not decode is a ConfigError
    naming it (`where`: the config file and field)."""
    from PIL import Image

    out = np.empty((len(names), resolution, resolution, 3), dtype=np.uint8)
    for i, n in enumerate(names):
        try:
            im = Image.open(io.BytesIO(src.read(n))).convert("RGB")
        except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for broken files
            raise ConfigError(
                where[0],
                where[1],
                f"{n!r} in {str(src.path)!r} is not a readable "
                f"image ({type(e).__name__}: {str(e)[:120]})",
            ) from None
        if im.size != (resolution, resolution):
            im = im.resize((resolution, resolution), Image.BILINEAR)
        out[i] = np.asarray(im)
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0


def _by_class(names: list[str], depth: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in names:
        parts = n.split("/")
        if len(parts) >= depth + 1:
            out.setdefault(parts[depth - 1], []).append(n)
    return out


def _class_groups(names, seed, per_class, test_per_class, field, config_file):
    """(common top folder, train class -> images, test class -> images) of an image folder: a
    `train/` and `test/` split as given, else one pool of class folders (test empty)."""
    tops = {n.split("/")[0] for n in names}
    prefix = ""
    if len(tops) == 1 and all(n.count("/") >= 2 for n in names):  # zips often hold one top folder
        prefix = tops.pop() + "/"
    rel = [n[len(prefix) :] for n in names]
    tops = {n.split("/")[0] for n in rel}
    rng = random.Random(seed)

    def pick(groups: dict[str, list[str]], k: int | None) -> dict[str, list[str]]:
        return {c: (sorted(rng.sample(v, k)) if k and k < len(v) else v) for c, v in groups.items()}

    if not {"train", "test"} <= tops:
        train = pick(_by_class(rel, 1), per_class)
        test = {}
    else:
        train = pick(_by_class([n for n in rel if n.startswith("train/")], 2), per_class)
        test_names = [n for n in rel if n.startswith("test/")]
        test = pick(_by_class(test_names, 2), test_per_class or per_class)
        if sorted(test) != sorted(train):
            raise ConfigError(config_file, field, "train/ and test/ hold different class folders")
    if len(train) < 2:
        raise ConfigError(
            config_file, field, f"found {len(train)} class folder(s); need at least 2"
        )
    return prefix, train, test


def imagefolder(
    path: str,
    resolution: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    per_class: int | None,
    test_per_class: int | None,
    field: str = "dataset.path",
    config_file: str | None = None,
) -> Splits:
    """Class sub-folders (or a zip of them); `train/` and `test/` at the top are used as given."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(config_file, field, f"dataset path {str(p)!r} does not exist")
    try:
        src = _Source(p)
    except zipfile.BadZipFile:
        raise ConfigError(
            config_file, field, f"{str(p)!r} is not a zip file (nor a folder)"
        ) from None
    if not src.names:
        raise ConfigError(config_file, field, f"no images ({', '.join(IMG_EXT)}) under {str(p)!r}")
    prefix, train, test = _class_groups(
        src.names, seed, per_class, test_per_class, field, config_file
    )
    classes, split_test = sorted(train), not test
    log.info(
        "loading %d images from %s", sum(map(len, train.values())) + sum(map(len, test.values())), p
    )

    def tensors(groups):
        names = [prefix + n for c in classes for n in groups.get(c, [])]
        labels = [i for i, c in enumerate(classes) for _ in groups.get(c, [])]
        x = _load_images(src, names, resolution, (config_file, field))
        return x, torch.tensor(labels, dtype=torch.long)

    x, y = tensors(train)
    if split_test:
        (xt, yt), (xv, yv), (xs, ys) = _split(x, y, (val_fraction, test_fraction), seed)
    else:
        (xt, yt), (xv, yv), _ = _split(x, y, (val_fraction, 0.0), seed)
        xs, ys = tensors(test)
    xt, xv, xs = _normalise(xt, xv, xs)
    return Splits("imagefolder", classes, (xt, yt), (xv, yv), (xs, ys))


CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _cifar_batches(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for f in files:
        with open(f, "rb") as fh:
            d = pickle.load(fh, encoding="latin1")
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.extend(d["labels"])
    return torch.from_numpy(np.concatenate(xs)).float() / 255.0, torch.tensor(ys, dtype=torch.long)


def cifar10(
    path: str,
    resolution: int,
    seed: int,
    val_fraction: float,
    per_class: int | None,
    test_per_class: int | None,
    field: str = "dataset.path",
    config_file: str | None = None,
) -> Splits:
    """torchvision's `cifar-10-batches-py` (data_batch_1..5, test_batch) from a local folder."""
    p = Path(path).expanduser()
    if (p / "cifar-10-batches-py").is_dir():
        p = p / "cifar-10-batches-py"
    files = [p / f"data_batch_{i}" for i in range(1, 6)]
    if not all(f.exists() for f in files + [p / "test_batch"]):
        raise ConfigError(
            config_file,
            field,
            f"{str(p)!r} holds no cifar-10-batches-py (data_batch_1..5, test_batch)",
        )

    rng = np.random.default_rng(seed)

    def subset(x, y, k):
        if not k:
            return x, y
        idx = np.concatenate(
            [rng.permutation(np.flatnonzero(y.numpy() == c))[:k] for c in range(10)]
        )
        idx.sort()
        return x[idx], y[idx]

    x, y = subset(*_cifar_batches(files), per_class)
    xs, ys = subset(*_cifar_batches([p / "test_batch"]), test_per_class or per_class)
    (xt, yt), (xv, yv), _ = _split(x, y, (val_fraction, 0.0), seed)
    xt, xv, xs = [_to_resolution(t, resolution) for t in (xt, xv, xs)]
    xt, xv, xs = _normalise(xt, xv, xs)
    return Splits("cifar10", list(CIFAR10_CLASSES), (xt, yt), (xv, yv), (xs, ys))


def load_dataset(cfg, resolution: int, seed: int, config_file: str | None = None) -> Splits:
    """The configured dataset (a search.config DatasetConfig-like object)."""
    if cfg.name == "digits":
        return digits(resolution, seed, cfg.val_fraction, cfg.test_fraction)
    if cfg.path is None:
        raise ConfigError(config_file, "dataset.path", f"dataset {cfg.name!r} needs a path")
    if cfg.name == "imagefolder":
        return imagefolder(
            cfg.path,
            resolution,
            seed,
            cfg.val_fraction,
            cfg.test_fraction,
            cfg.per_class,
            cfg.test_per_class,
            config_file=config_file,
        )
    if cfg.name == "cifar10":
        return cifar10(
            cfg.path,
            resolution,
            seed,
            cfg.val_fraction,
            cfg.per_class,
            cfg.test_per_class,
            config_file=config_file,
        )
    raise ConfigError(config_file, "dataset.name", f"unknown dataset {cfg.name!r}")


def at_resolution(x: torch.Tensor, r: int) -> torch.Tensor:
    """Images resized to a genome's resolution."""
    return _to_resolution(x, r)
