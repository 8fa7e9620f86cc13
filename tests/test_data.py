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
    assert torch.equal(a.train[1], b.train[1]) and torch.equal(a.test[0], b.test[0])
    c = digits(16, 1, 0.2, 0.2)
    assert not torch.equal(a.val[1], c.val[1])
    n = sum(len(s[1]) for s in (a.train, a.val, a.test))
    assert n == 1797 and a.train[0].shape[1:] == (3, 16, 16)
    assert len(torch.unique(a.test[1])) == 10
    assert abs(float(a.train[0].mean())) < 1e-3  # normalised with training statistics


@need_cifar
def test_imagefolder_loads_cifar_zip_per_class_subset():
    d = imagefolder(str(CIFAR_ZIP), 32, 0, 0.2, 0.0, per_class=20, test_per_class=10)
    assert d.classes[0] == "airplane" and d.num_classes == 10
    assert len(d.train[1]) + len(d.val[1]) == 200 and len(d.test[1]) == 100
    assert d.train[0].shape[1:] == (3, 32, 32)
    # contiguous NCHW: channels-last strides from HWC decoding made oneDNN's 1x1 conv backward
    # take minutes per step (a ResNet-20 pre-training stalled at step 3)
    assert all(s[0].is_contiguous() for s in (d.train, d.val, d.test))
    e = imagefolder(str(CIFAR_ZIP), 32, 0, 0.2, 0.0, per_class=20, test_per_class=10)
    assert torch.equal(d.train[0], e.train[0])  # the same subset for the same seed
    f = imagefolder(str(CIFAR_ZIP), 32, 1, 0.2, 0.0, per_class=20, test_per_class=10)
    assert not torch.equal(d.train[0], f.train[0])


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
    assert d.num_classes == 3 and sum(len(s[1]) for s in (d.train, d.val, d.test)) == 30
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
    assert len(c10.test[1]) == 40 and len(c10.train[1]) + len(c10.val[1]) == 200
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
    with pytest.raises(ConfigError, match="cifar-10-batches-py"):
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
