"""Datasets: digits (embedded), imagefolder from the real CIFAR-10 JPEG zip and from folders,
cifar10 in torchvision's binary format. Seeded splits."""

import io
import pickle
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evaluators.data import cifar10, digits, imagefolder, load_dataset
from spaces import ConfigError

CIFAR_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_jpg.zip"
need_cifar = pytest.mark.skipif(
    not CIFAR_ZIP.exists(), reason="../shared/data/cifar10_jpg.zip not present"
)


def test_digits_split_is_seeded_stratified_and_disjoint():
    a, b = digits(16, 0, 0.2, 0.2), digits(16, 0, 0.2, 0.2)
    assert torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.test.tensors()[0], b.test.tensors()[0])
    c = digits(16, 1, 0.2, 0.2)
    assert not torch.equal(a.val.labels, c.val.labels)
    n = sum(len(s) for s in (a.train, a.val, a.test))
    x, _ = a.train.tensors()
    assert n == 1797 and x.shape[1:] == (3, 16, 16)
    assert len(torch.unique(a.test.labels)) == 10
    assert abs(float(x.mean())) < 1e-3  # normalised with training statistics


@need_cifar
def test_imagefolder_loads_cifar_zip_per_class_subset():
    d = imagefolder(str(CIFAR_ZIP), 32, 0, 0.2, 0.0, per_class=20, test_per_class=10)
    assert d.classes[0] == "airplane" and d.num_classes == 10
    assert len(d.train) + len(d.val) == 200 and len(d.test) == 100
    x, _ = d.train.tensors()
    assert x.shape[1:] == (3, 32, 32)
    # contiguous NCHW: channels-last strides from HWC decoding made oneDNN's 1x1 conv backward
    # take minutes per step (a ResNet-20 pre-training stalled at step 3)
    assert all(xb.is_contiguous() for s in (d.train, d.val, d.test) for xb, _ in s.batches(64))
    e = imagefolder(str(CIFAR_ZIP), 32, 0, 0.2, 0.0, per_class=20, test_per_class=10)
    assert torch.equal(x, e.train.tensors()[0])  # the same subset for the same seed
    f = imagefolder(str(CIFAR_ZIP), 32, 1, 0.2, 0.0, per_class=20, test_per_class=10)
    assert not torch.equal(x, f.train.tensors()[0])


@need_cifar
def test_imagefolder_plain_folders_and_cifar10_binary(tmp_path):
    from PIL import Image

    zf = zipfile.ZipFile(CIFAR_ZIP)
    names = [n for n in zf.namelist() if n.startswith("train/") and n.endswith(".jpg")]
    by_class = {}
    for n in names:
        by_class.setdefault(n.split("/")[1], []).append(n)
    # class sub-folders without train/test: split three ways
    for c, ns in list(by_class.items())[:3]:
        (tmp_path / "folders" / c).mkdir(parents=True)
        for n in ns[:10]:
            (tmp_path / "folders" / c / Path(n).name).write_bytes(zf.read(n))
    d = imagefolder(str(tmp_path / "folders"), 16, 0, 0.2, 0.2, None, None)
    assert d.num_classes == 3 and sum(len(s) for s in (d.train, d.val, d.test)) == 30
    # torchvision's binary batches, written from real CIFAR-10 images
    classes = sorted(by_class)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for b, fname in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data, labels = [], []
        for ci, c in enumerate(classes):
            for n in by_class[c][b * 4 : (b + 1) * 4]:
                arr = np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB"))
                data.append(arr.transpose(2, 0, 1).reshape(-1))
                labels.append(ci)
        with open(root / fname, "wb") as fh:
            pickle.dump({"data": np.stack(data), "labels": labels}, fh)
    c10 = cifar10(str(tmp_path), 32, 0, 0.2, per_class=None, test_per_class=None)
    assert len(c10.test) == 40 and len(c10.train) + len(c10.val) == 200
    assert c10.classes[0] == "airplane"


def test_missing_paths_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(
            SimpleNamespace(
                name="imagefolder",
                path=str(tmp_path / "nope"),
                per_class=None,
                test_per_class=None,
                val_fraction=0.2,
                test_fraction=0.2,
            ),
            32,
            0,
            "x.yaml",
        )
    with pytest.raises(ConfigError, match="no CIFAR-10 batches"):
        load_dataset(
            SimpleNamespace(
                name="cifar10",
                path=str(tmp_path),
                per_class=None,
                test_per_class=None,
                val_fraction=0.2,
                test_fraction=0.2,
            ),
            32,
            0,
            "x.yaml",
        )


def test_a_gray_image_folder_stays_one_channel(tmp_path):
    from PIL import Image

    for c, v in (("dark", 40), ("light", 200)):
        (tmp_path / "g" / c).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (12, 12), v + i).save(tmp_path / "g" / c / f"{i}.png")
    d = imagefolder(str(tmp_path / "g"), 16, 0, 0.2, 0.2, None, None, channels=1)
    x, y = d.train.tensors()
    assert x.shape[1:] == (1, 16, 16) and d.describe()["input_shape"] == [1, 16, 16]
    assert len(d.mean) == 1 and set(y.tolist()) == {0, 1}
    rgb = imagefolder(str(tmp_path / "g"), 16, 0, 0.2, 0.2, None, None)
    assert rgb.train.tensors()[0].shape[1] == 3


def test_augmentation_shows_other_crops_each_epoch_and_none_shows_the_same_pixels():
    d = digits(16, 0, 0.2, 0.2)
    g = torch.Generator().manual_seed(0)
    e1 = next(d.train.batches(32, gen=g, augment="crop-flip"))[0]
    e2 = next(d.train.batches(32, gen=g, augment="crop-flip"))[0]
    plain1 = next(d.train.batches(32, gen=g))[0]
    plain2 = next(d.train.batches(32, gen=g))[0]
    assert not torch.equal(e1, e2)  # the same images, other crops and flips
    assert torch.equal(plain1, plain2)
    assert e1.shape == plain1.shape
    r = next(d.train.batches(32, gen=g, augment="resized-crop-flip"))[0]
    assert r.shape == plain1.shape and not torch.equal(r, plain1)


def test_a_crafted_pickle_in_a_cifar_folder_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / f, "wb") as fh:
            pickle.dump({"data": Evil(), "labels": [0]}, fh)
    with pytest.raises(ConfigError, match="refused: the file names posix.system"):
        cifar10(str(tmp_path), 32, 0, 0.2, None, None)
    assert not marker.exists()


def test_cifar10_binary_version(tmp_path):
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    rng = np.random.default_rng(0)
    for f in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = np.arange(20) % 10
        recs = np.concatenate([labels[:, None], rng.integers(0, 256, (20, 3072))], 1).astype(
            np.uint8
        )
        (root / f).write_bytes(recs.tobytes())
    d = cifar10(str(tmp_path), 32, 0, 0.2, None, None)
    assert len(d.train) + len(d.val) == 100 and len(d.test) == 20
    assert d.train.tensors()[0].shape[1:] == (3, 32, 32)
