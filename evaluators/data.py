"""Datasets, streamed: digits (embedded, in memory), imagefolder (class folders, or a zip of
them, e.g. ../shared/data/cifar10_jpg.zip) and cifar10 (its binary batches, or the Python
batches read by a loader that admits nothing but their arrays and lists). Seeded train /
validation / test splits.

Only labels and file names are kept in memory: images are decoded when a batch asks for them
(through a `torch.utils.data` loader, with `workers` processes if asked), at the space's base
resolution, with `channels` channels (1 keeps them gray), normalised by the training images'
mean and standard deviation, and augmented for training (random crop with padding or random
resized crop, horizontal flip) when the run asks."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import random
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spaces.errors import ConfigError

log = logging.getLogger(__name__)

IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp")
AUGMENTS = ("none", "crop-flip", "resized-crop-flip")
NORM_SAMPLE = 2000  # training images the normalisation statistics are taken from


# --- where images come from -----------------------------------------------------------------------
class Images(torch.utils.data.Dataset):
    """Images by index as uint8 tensors (C, R, R)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError


class ArrayImages(Images):
    """Images already decoded, as a uint8 array (N, C, H, W) (digits, CIFAR's batches)."""

    def __init__(self, array: np.ndarray, resolution: int, channels: int):
        self.array, self.resolution, self.channels = array, resolution, channels

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(self.array[i]))
        if x.shape[0] != self.channels:
            x = _to_channels(x, self.channels)
        if x.shape[-1] != self.resolution:
            x = _resize(x, self.resolution)
        return x

    def fingerprint(self) -> str:
        return hashlib.sha256(self.array[:: max(1, len(self.array) // 64)].tobytes()).hexdigest()[
            :16
        ]


class FileImages(Images):
    """Image files in a folder or a zip, decoded one at a time (each loader process opens the
    zip for itself)."""

    def __init__(
        self, path: Path, names: list[str], resolution: int, channels: int, where=(None, None)
    ):
        self.path, self.names, self.resolution, self.channels, self.where = (
            path,
            names,
            resolution,
            channels,
            where,
        )
        self._zip = None

    def __getstate__(self):
        return {**self.__dict__, "_zip": None}

    def __len__(self) -> int:
        return len(self.names)

    def _read(self, name: str) -> bytes:
        if self.path.is_file():
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.path)
            return self._zip.read(name)
        return (self.path / name).read_bytes()

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        name = self.names[i]
        try:
            im = Image.open(io.BytesIO(self._read(name)))
            im = im.convert("L" if self.channels == 1 else "RGB")
        except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for broken files
            raise ConfigError(
                self.where[0],
                self.where[1],
                f"{name!r} in {str(self.path)!r} is not a readable image "
                f"({type(e).__name__}: {str(e)[:120]})",
            ) from None
        if im.size != (self.resolution, self.resolution):
            im = im.resize((self.resolution, self.resolution), Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return torch.from_numpy(np.array(a, copy=True))

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join([str(self.path), *self.names]).encode()).hexdigest()[:16]


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 1:
        return x.float().mean(0, keepdim=True).round().to(torch.uint8)
    return x.expand(channels, *x.shape[1:]).clone()


def _resize(x: torch.Tensor, r: int) -> torch.Tensor:
    y = F.interpolate(x[None].float(), size=(r, r), mode="bilinear", align_corners=False)[0]
    return y.round().clamp(0, 255).to(torch.uint8)


class _Subset(torch.utils.data.Dataset):
    def __init__(self, images: Images, index: np.ndarray):
        self.images, self.index = images, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[int(self.index[i])]


# --- a split --------------------------------------------------------------------------------------
@dataclass
class Split:
    """Some of a dataset's images (`index` into `images`) and their labels; batches come
    decoded, normalised (and augmented, when asked) as float tensors (N, C, R, R)."""

    images: Images
    index: np.ndarray
    labels: torch.Tensor
    mean: torch.Tensor | None = None  # per channel; None: images in [0, 1], not standardised
    std: torch.Tensor | None = None
    workers: int = 0

    def __len__(self) -> int:
        return len(self.index)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        if self.mean is None:
            return x.contiguous()
        return ((x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)).contiguous()

    def _decode(self, order: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
        """uint8 batches of the images at `order`, decoded by a loader (in `workers` processes)."""
        if isinstance(self.images, ArrayImages) and self.images.array.shape[1:] == (
            self.images.channels,
            self.images.resolution,
            self.images.resolution,
        ):
            arr = self.images.array
            for i in range(0, len(order), batch_size):
                yield torch.from_numpy(arr[self.index[order[i : i + batch_size]]])
            return
        loader = torch.utils.data.DataLoader(
            _Subset(self.images, self.index[order]),
            batch_size=batch_size,
            num_workers=self.workers,
            persistent_workers=False,
        )
        yield from loader

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        gen: torch.Generator | None = None,
        augment: str = "none",
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass: (images, labels) batches; shuffled and augmented with `gen`'s draws."""
        n = len(self)
        order = torch.randperm(n, generator=gen).numpy() if shuffle else np.arange(n)
        if drop_last and n >= batch_size:
            order = order[: n - n % batch_size]
        for i, xb in zip(range(0, len(order), batch_size), self._decode(order, batch_size)):
            idx = order[i : i + batch_size]
            x = self._normalise(xb)
            if augment != "none":
                x = augment_batch(x, augment, gen)
            yield x, self.labels[idx]

    def take(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` images (a seeded choice, in memory, not augmented): batch-norm recalibration,
        DCP's selection."""
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=g)[: min(n, len(self))].numpy()
        xs = [self._normalise(xb) for xb in self._decode(order, 256)]
        return torch.cat(xs) if xs else torch.zeros(0), self.labels[order]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image of the split in memory, in order (small splits and tests only)."""
        xs = [x for x, _ in self.batches(256)]
        return torch.cat(xs), self.labels.clone()


def augment_batch(x: torch.Tensor, kind: str, gen: torch.Generator | None) -> torch.Tensor:
    """Training augmentation of a normalised batch: a random crop (4 pixels of zero padding
    for 32 pixels, scaled to the size) or a random resized crop (8-100 % of the area, aspect
    3/4 to 4/3), then a horizontal flip with probability 1/2."""
    n, _, r, _ = x.shape
    if kind == "crop-flip":
        pad = max(1, round(r / 8))
        padded = F.pad(x, (pad, pad, pad, pad))
        off = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
        x = torch.stack(
            [padded[i, :, a : a + r, b : b + r] for i, (a, b) in enumerate(off.tolist())]
        )
    elif kind == "resized-crop-flip":
        x = torch.stack([_resized_crop(img, gen) for img in x])
    flip = torch.rand(n, generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    return x.contiguous()


def _resized_crop(img: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    r = img.shape[-1]
    for _ in range(10):
        area = r * r * float(torch.empty(1).uniform_(0.08, 1.0, generator=gen))
        ratio = float(torch.empty(1).uniform_(np.log(3 / 4), np.log(4 / 3), generator=gen).exp())
        w, h = round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)
        if 0 < w <= r and 0 < h <= r:
            a = int(torch.randint(0, r - h + 1, (1,), generator=gen))
            b = int(torch.randint(0, r - w + 1, (1,), generator=gen))
            crop = img[None, :, a : a + h, b : b + w]
            return F.interpolate(crop, size=(r, r), mode="bilinear", align_corners=False)[0]
    return img


@dataclass
class Splits:
    """A dataset's train / validation / test splits and what the run records of it."""

    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    resolution: int = 32
    channels: int = 3

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def mean(self) -> list[float]:
        return [round(float(v), 6) for v in self.train.mean]

    @property
    def std(self) -> list[float]:
        return [round(float(v), 6) for v in self.train.std]

    def describe(self) -> dict:
        """What a run and an export record of the data: its name, sizes and normalisation."""
        return {
            "name": self.name,
            "classes": self.num_classes,
            "input_shape": [self.channels, self.resolution, self.resolution],
            "mean": self.mean,
            "std": self.std,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
        }

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.train.images.fingerprint().encode())
        for s in (self.train, self.val, self.test):
            h.update(s.index.tobytes())
            h.update(s.labels.numpy().tobytes())
        return h.hexdigest()[:16]


def _stratified(y: np.ndarray, fractions: tuple[float, float], seed: int) -> list[np.ndarray]:
    """Indices of (rest, a, b), a and b the given fractions of every class."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for c in np.unique(y).tolist():
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        na, nb = int(round(len(idx) * fractions[0])), int(round(len(idx) * fractions[1]))
        parts[1] += idx[:na].tolist()
        parts[2] += idx[na : na + nb].tolist()
        parts[0] += idx[na + nb :].tolist()
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


def _stats(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of (a seeded sample of) the training images."""
    plain = Split(split.images, split.index, split.labels, workers=split.workers)
    x, _ = plain.take(NORM_SAMPLE, seed=0)
    return x.mean((0, 2, 3)), x.std((0, 2, 3)).clamp(min=1e-3)


def _splits(
    name, classes, images, train_idx, labels, parts, test, workers, resolution, channels
) -> Splits:
    """Splits whose training images give the normalisation to all three."""
    tr, va, te = [Split(images, train_idx[p], labels[p], workers=workers) for p in parts[:2]] + [
        test
    ]
    mean, std = _stats(tr)
    for s in (tr, va, te):
        s.mean, s.std, s.workers = mean, std, workers
    return Splits(name, classes, tr, va, te, resolution, channels)


def digits(
    resolution: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    channels: int = 3,
    workers: int = 0,
) -> Splits:
    """scikit-learn's 8x8 digits, upscaled: the embedded dataset of the default run."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, channels, -1, -1).numpy()
    images = ArrayImages(np.ascontiguousarray(arr), resolution, channels)
    y = torch.tensor(d.target, dtype=torch.long)
    rest, val, test = _stratified(y.numpy(), (val_fraction, test_fraction), seed)
    te = Split(images, test, y[test])
    idx = np.arange(len(y))
    return _splits(
        "digits",
        [str(i) for i in range(10)],
        images,
        idx,
        y,
        [rest, val],
        te,
        workers,
        resolution,
        channels,
    )


# --- image folders --------------------------------------------------------------------------------
def _list_images(path: Path, field: str, config_file: str | None) -> list[str]:
    if path.is_file():
        try:
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if not n.endswith("/")]
        except zipfile.BadZipFile:
            raise ConfigError(
                config_file, field, f"{str(path)!r} is not a zip file (nor a folder)"
            ) from None
    else:
        names = [str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()]
    return sorted(n for n in names if n.lower().endswith(IMG_EXT))


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
    channels: int = 3,
    workers: int = 0,
) -> Splits:
    """Class sub-folders (or a zip of them); `train/` and `test/` at the top are used as given."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(config_file, field, f"dataset path {str(p)!r} does not exist")
    names = _list_images(p, field, config_file)
    if not names:
        raise ConfigError(config_file, field, f"no images ({', '.join(IMG_EXT)}) under {str(p)!r}")
    prefix, train, test = _class_groups(names, seed, per_class, test_per_class, field, config_file)
    classes = sorted(train)

    def listed(groups):
        files = [prefix + n for c in classes for n in groups.get(c, [])]
        labels = [i for i, c in enumerate(classes) for _ in groups.get(c, [])]
        return files, torch.tensor(labels, dtype=torch.long)

    files, y = listed(train)
    where = (config_file, field)
    if not test:
        rest, val, tst = _stratified(y.numpy(), (val_fraction, test_fraction), seed)
        images = FileImages(p, files, resolution, channels, where)
        te = Split(images, tst, y[tst])
    else:
        rest, val, _ = _stratified(y.numpy(), (val_fraction, 0.0), seed)
        test_files, ty = listed(test)
        te = Split(FileImages(p, test_files, resolution, channels, where), np.arange(len(ty)), ty)
        images = FileImages(p, files, resolution, channels, where)
    log.info(
        "%s: %d training and %d test images, decoded per batch", p, len(rest) + len(val), len(te)
    )
    return _splits(
        "imagefolder",
        classes,
        images,
        np.arange(len(y)),
        y,
        [rest, val],
        te,
        workers,
        resolution,
        channels,
    )


# --- CIFAR-10 -------------------------------------------------------------------------------------
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
_ALLOWED = {  # all that torchvision's CIFAR batches hold: numpy arrays (and their dtype)
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch and nothing else: a file naming any other global (a function to
    run, say) is refused before anything is called."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused: the file names {module}.{name}, which no CIFAR batch holds"
        )


def _read_batch(f: Path, where) -> tuple[np.ndarray, list[int]]:
    """(uint8 (N, 3, 32, 32), labels) of one batch: the binary version's records, or the Python
    version's dict read by the restricted unpickler."""
    if f.suffix == ".bin":
        raw = np.frombuffer(f.read_bytes(), dtype=np.uint8)
        if raw.size % 3073:
            raise ConfigError(*where, f"{str(f)!r} is not a CIFAR-10 binary batch")
        rec = raw.reshape(-1, 3073)
        return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(int).tolist()
    try:
        with open(f, "rb") as fh:
            d = _CifarUnpickler(fh, encoding="latin1").load()
        data, labels = d.get("data", d.get(b"data")), d.get("labels", d.get(b"labels"))
        arr = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        return arr, [int(v) for v in labels]
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, KeyError) as e:
        raise ConfigError(*where, f"{str(f)!r} is not a CIFAR-10 batch ({e})") from None


def _cifar_files(p: Path, where) -> tuple[list[Path], Path]:
    for sub, train, test in (
        ("cifar-10-batches-bin", "data_batch_{}.bin", "test_batch.bin"),
        ("cifar-10-batches-py", "data_batch_{}", "test_batch"),
    ):
        root = p / sub if (p / sub).is_dir() else p
        files = [root / train.format(i) for i in range(1, 6)]
        if all(f.exists() for f in [*files, root / test]):
            return files, root / test
    raise ConfigError(*where, f"{str(p)!r} holds no CIFAR-10 batches (cifar-10-batches-bin or -py)")


def cifar10(
    path: str,
    resolution: int,
    seed: int,
    val_fraction: float,
    per_class: int | None,
    test_per_class: int | None,
    field: str = "dataset.path",
    config_file: str | None = None,
    channels: int = 3,
    workers: int = 0,
) -> Splits:
    """CIFAR-10's batches from a local folder (no download): the binary version, or the Python
    version read without unpickling anything but arrays and lists."""
    where = (config_file, field)
    train_files, test_file = _cifar_files(Path(path).expanduser(), where)
    rng = np.random.default_rng(seed)

    def subset(batches, k):
        x = np.concatenate([b[0] for b in batches])
        y = np.asarray([v for b in batches for v in b[1]])
        idx = np.arange(len(y))
        if k:
            idx = np.sort(
                np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k] for c in range(10)])
            )
        return x[idx], torch.tensor(y[idx], dtype=torch.long)

    x, y = subset([_read_batch(f, where) for f in train_files], per_class)
    xs, ys = subset([_read_batch(test_file, where)], test_per_class or per_class)
    images, test_images = (
        ArrayImages(x, resolution, channels),
        ArrayImages(xs, resolution, channels),
    )
    rest, val, _ = _stratified(y.numpy(), (val_fraction, 0.0), seed)
    te = Split(test_images, np.arange(len(ys)), ys)
    return _splits(
        "cifar10",
        list(CIFAR10_CLASSES),
        images,
        np.arange(len(y)),
        y,
        [rest, val],
        te,
        workers,
        resolution,
        channels,
    )


def load_dataset(
    cfg, resolution: int, seed: int, config_file: str | None = None, channels: int = 3
) -> Splits:
    """The configured dataset (`search.config.DatasetCfg`)."""
    workers = getattr(cfg, "workers", 0) or 0
    if cfg.name == "digits":
        return digits(resolution, seed, cfg.val_fraction, cfg.test_fraction, channels, workers)
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
            channels=channels,
            workers=workers,
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
            channels=channels,
            workers=workers,
        )
    raise ConfigError(config_file, "dataset.name", f"unknown dataset {cfg.name!r}")


def at_resolution(x: torch.Tensor, r: int) -> torch.Tensor:
    """Images resized to a genome's resolution."""
    if x.shape[-1] == r:
        return x
    return F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
