"""Fashion-MNIST: the IDX parser (generated tiny files for every edge, the real files when installed), the
dataset (shapes, labels, normalisation, 1 or 3 channels, sizes), the config rules, and one tiny training
run through the CLI.

The real files come from Debian's ``dataset-fashion-mnist`` (``scripts/setup.sh`` installs it as root).
Tests that need them skip where it is absent, unless FOCALEXP_REQUIRE_DATA=1 (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from focalexp.data.config import FASHION_MNIST_ROOT, DataConfig, fashion_mnist_files
from focalexp.data.idx import check_header, read_idx
from focalexp.errors import ConfigError

from . import hostile
from .conftest import TINY_MODEL, invoke

IMAGES, LABELS = hostile.FASHION_NAMES["train"]


@pytest.fixture(scope="module")
def real_root() -> Path:
    root = Path(FASHION_MNIST_ROOT)
    if not (root / f"{IMAGES}.gz").exists() and not (root / IMAGES).exists():
        why = f"no Fashion-MNIST at {root} (apt-get install dataset-fashion-mnist; scripts/setup.sh does as root)"
        if os.environ.get("FOCALEXP_REQUIRE_DATA") == "1":
            pytest.fail(f"FOCALEXP_REQUIRE_DATA=1 but {why}")
        pytest.skip(why)
    return root


def _write(tmp: Path, data: bytes, name: str = "f") -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


# -- the IDX parser

@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_idx_round_trip(tmp_path, compress):
    x, y = hostile.fashion_arrays(7)
    px = _write(tmp_path, (hostile.gz if compress else bytes)(hostile.idx_bytes(x)), "x")
    py = _write(tmp_path, (hostile.gz if compress else bytes)(hostile.idx_bytes(y)), "y")
    assert check_header(px, 3, (None, 28, 28), 100).gzipped is compress
    np.testing.assert_array_equal(read_idx(px, 3, (None, 28, 28), 100), x)
    np.testing.assert_array_equal(read_idx(py, 1, (7,), 100), y)


def test_idx_reads_like_torchvision(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    x, y = hostile.fashion_arrays(9, seed=3)
    px, py = _write(tmp_path, hostile.idx_bytes(x), "x"), _write(tmp_path, hostile.idx_bytes(y), "y")
    np.testing.assert_array_equal(read_idx(px, 3, (None, 28, 28), 100), read_image_file(str(px)).numpy())
    np.testing.assert_array_equal(read_idx(py, 1, (None,), 100), read_label_file(str(py)).numpy())


X7, Y7 = hostile.fashion_arrays(7)
GOOD = hostile.idx_bytes(X7)
BAD_IDX = {  # name: (file contents, words the one-line error holds)
    "empty": (b"", "shorter than the 4-byte magic"),
    "wrong-magic": (b"\x12\x34" + GOOD[2:], "magic 12340803"),
    "png": (b"\x89PNG\r\n\x1a\n" + bytes(64), "magic 89504e47"),
    "float-type": (hostile.idx_bytes(X7, type_code=0x0D), "element type 0x0d"),
    "wrong-rank": (hostile.idx_bytes(X7.reshape(7, 784)), "2 dimensions, expected 3"),
    "header-cut": (GOOD[:10], "cut off inside the header"),
    "zero-items": (hostile.idx_bytes(X7[:0], dims=(0, 28, 28)), "dimension 0 is 0"),
    "wrong-width": (hostile.idx_bytes(np.zeros((7, 28, 29))), "dimension 2 is 29, expected 28"),
    "too-many-items": (hostile.idx_bytes(X7, dims=(101, 28, 28)), "declares 101 items, more than the 100"),
    "truncated": (GOOD[:-5], "header declares"),
    "trailing-bytes": (GOOD + b"x", "header declares"),
    "huge-dims": (hostile.idx_bytes(X7, dims=(100, 2**31, 2**31)), "dimension 1 is 2147483648"),
    "gzip-truncated": (hostile.gz(GOOD)[:-30], "truncated or corrupt"),
    "gzip-trailing-data": (hostile.gz(GOOD + b"extra"), "truncated or corrupt"),
    "gzip-declares-too-much": (hostile.gzip_claiming(100), "more than a"),
    "gzip-not-gzip": (b"\x1f\x8b" + bytes(40), "unreadable gzip header"),
}


@pytest.mark.parametrize("name", list(BAD_IDX))
def test_idx_refuses_a_bad_file_in_one_line(tmp_path, name):
    data, needle = BAD_IDX[name]
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        read_idx(p, 3, (None, 28, 28), 100)
    msg = str(e.value)
    assert msg.startswith("data.root: ") and "\n" not in msg and str(p) in msg and needle in msg, msg


def test_idx_crc_and_bomb_are_caught_when_reading(tmp_path):
    good = bytearray(hostile.gz(GOOD))
    good[-8] ^= 0xFF  # the CRC: the header and ISIZE still agree, only inflating to the end can tell
    with pytest.raises(ConfigError, match="corrupt or truncated gzip data"):
        read_idx(_write(tmp_path, bytes(good), "crc"), 3, (None, 28, 28), 100)
    bomb = hostile.gzip_bomb(n_declared=2, inflated=64 << 20)
    assert len(bomb) < 100_000
    with pytest.raises(ConfigError, match="gzip says it inflates to"):
        read_idx(_write(tmp_path, bomb, "bomb"), 3, (None, 28, 28), 100)
    # a bomb that lies in its trailer too is cut off one byte past what the header declares
    forged = bomb[:-4] + ((16 + 2 * 784) % 2**32).to_bytes(4, "little")
    with pytest.raises(ConfigError, match=r"inflates to 1,585\+ bytes, but its header declares 1,584"):
        read_idx(_write(tmp_path, forged, "forged"), 3, (None, 28, 28), 100)


def test_real_idx_files(real_root):
    files = fashion_mnist_files(DataConfig(dataset="fashion_mnist"))
    from focalexp.data.fashion_mnist import read_fashion_mnist

    x, y = read_fashion_mnist(*files["train"])
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8 and y.shape == (60000,)
    assert np.bincount(y).tolist() == [6000] * 10
    assert abs(x.mean() / 255 - 0.2860) < 1e-3 and abs(x.std() / 255 - 0.3530) < 1e-3  # the stated mean/std
    xv, yv = read_fashion_mnist(*files["val"])
    assert xv.shape == (10000, 28, 28) and np.bincount(yv).tolist() == [1000] * 10


# -- the files under data.root

def test_root_layouts(tmp_path):
    for compress in (True, False):
        root = hostile.fashion_root(tmp_path / f"c{compress}", n_train=30, n_val=10, compress=compress)
        files = fashion_mnist_files(DataConfig(dataset="fashion_mnist", root=str(root)))
        assert check_header(files["val"][0], 3, (None, 28, 28), 100).shape == (10, 28, 28)
    with pytest.raises(ConfigError, match="labels-idx1-ubyte.gz' is not a valid IDX file .dimension 0 is 20, expected 30"):
        root = hostile.fashion_root(tmp_path / "mismatch", n_train=30,
                                    replace={LABELS: hostile.idx_bytes(np.zeros(20))})
        fashion_mnist_files(DataConfig(dataset="fashion_mnist", root=str(root)))
    both = hostile.fashion_root(tmp_path / "both")
    (both / IMAGES).write_bytes(hostile.idx_bytes(X7))
    with pytest.raises(ConfigError, match="holds both train-images-idx3-ubyte and train-images-idx3-ubyte.gz"):
        fashion_mnist_files(DataConfig(dataset="fashion_mnist", root=str(both)))
    inner = hostile.fashion_root(tmp_path / "linked")  # a link that stays inside the root is fine
    (inner / "real.gz").write_bytes((inner / f"{IMAGES}.gz").read_bytes())
    (inner / f"{IMAGES}.gz").unlink()
    (inner / f"{IMAGES}.gz").symlink_to("real.gz")
    fashion_mnist_files(DataConfig(dataset="fashion_mnist", root=str(inner)))


@pytest.mark.parametrize("where", ["empty", "absent", "default"])
def test_missing_data_names_the_apt_package(tmp_path, monkeypatch, where):
    import focalexp.data.config as dc

    root = {"empty": tmp_path, "absent": tmp_path / "nope", "default": None}[where]
    if where == "default":
        monkeypatch.setattr(dc, "FASHION_MNIST_ROOT", str(tmp_path / "usr-share-nothing"))
    cfg = DataConfig(dataset="fashion_mnist", root=None if root is None else str(root))
    with pytest.raises(ConfigError) as e:
        fashion_mnist_files(cfg)
    msg = str(e.value)
    assert msg.startswith("data.root: no Fashion-MNIST") and "apt-get install dataset-fashion-mnist" in msg, msg
    assert "\n" not in msg
    r = invoke("train", "--set", "data.dataset=fashion_mnist", "--set", f"data.root={tmp_path}",
               "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "apt-get install dataset-fashion-mnist" in r.stderr
    assert not (tmp_path / "run").exists()


# -- the run config

def test_in_chans_follows_the_data_and_a_mismatch_names_the_key():
    from focalexp.train.config import resolve_run_config

    def resolve(**model):
        return resolve_run_config({"data": {"dataset": "fashion_mnist"}, "model": {"preset": "focalnet_micro", **model}},
                                  check_data_present=False)

    cfg = resolve()
    assert cfg.model["in_chans"] == 1 and cfg.model["num_classes"] == 10 and cfg.data.img_size == 32
    assert resolve(in_chans=3).model_config().in_chans == 3
    with pytest.raises(ConfigError, match=r"^model.in_chans: 2, but fashion_mnist images feed 1 or 3"):
        resolve(in_chans=2)
    with pytest.raises(ConfigError, match=r"^model.in_chans: 1, but pathfinder images have 3 channels$"):
        resolve_run_config({"model": {"preset": "focalnet_micro", "in_chans": 1}})
    # the other datasets' configs (and so their run ids) are unchanged: no in_chans is added
    assert "in_chans" not in resolve_run_config({"model": {"preset": "focalnet_micro"}}).model


# -- the dataset

@pytest.mark.parametrize("size", [28, 32, 48])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_dataset_shapes_labels_channels(tmp_path, size, in_chans):
    from focalexp.data.build import build_data

    root = hostile.fashion_root(tmp_path / "fm", n_train=50, n_val=20)
    cfg = DataConfig(dataset="fashion_mnist", root=str(root), img_size=size, train_size=30)
    b = build_data(cfg, seed=0, in_chans=in_chans)
    assert (len(b.train), len(b.val), b.num_classes, b.img_size) == (30, 20, 10, size)
    assert b.classes[0] == "T-shirt/top" and b.classes[9] == "Ankle boot"
    x, y = b.train[0]
    assert tuple(x.shape) == (in_chans, size, size) and 0 <= y < 10
    xv, yv = b.val[3]
    assert yv == 3  # the generated labels are i % 10, unshuffled in the validation split
    if in_chans == 3:
        assert (xv[0] == xv[1]).all() and (xv[1] == xv[2]).all()
    if size == 32:  # 28 px zero-padded by 2: the border is black, normalised
        border = (0 - 0.2860) / 0.3530
        assert np.allclose(xv[:, :2, :].numpy(), border, atol=1e-5) and np.allclose(xv[:, :, -2:].numpy(), border, atol=1e-5)
    with pytest.raises(ConfigError, match="model.in_chans"):
        build_data(cfg, seed=0, in_chans=2)


def test_caps_are_a_deterministic_subset(tmp_path):
    from focalexp.data.build import build_data

    root = hostile.fashion_root(tmp_path / "fm", n_train=50, n_val=20)
    cfg = DataConfig(dataset="fashion_mnist", root=str(root), train_size=12, val_size=5, augment=False)
    a, b = build_data(cfg, seed=0), build_data(cfg, seed=0)
    ia, ib = a.train.dataset.indices, b.train.dataset.indices
    assert len(a.train) == 12 and len(a.val) == 5 and ia == ib and ia == sorted(set(ia))
    assert (a.train[4][0] == b.train[4][0]).all()


def test_real_data_is_normalised(real_root):
    import torch

    from focalexp.data.build import build_data

    b = build_data(DataConfig(dataset="fashion_mnist", img_size=28, augment=False, train_size=1000, val_size=500), 0)
    assert len(b.train) == 1000 and len(b.val) == 500 and b.num_classes == 10
    x = torch.stack([b.train[i][0] for i in range(len(b.train))])
    assert x.shape == (1000, 3, 28, 28)  # build_data's default in_chans: 3
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    labels = [b.val[i][1] for i in range(len(b.val))]
    assert set(labels) == set(range(10))


def test_augmentation_is_seeded_per_item(tmp_path):
    from focalexp.data.build import build_data

    root = hostile.fashion_root(tmp_path / "fm", n_train=20, n_val=10)
    aug = build_data(DataConfig(dataset="fashion_mnist", root=str(root)), 0, in_chans=1)
    aug.train.set_epoch(1)
    first = aug.train[5][0]
    assert first.shape == (1, 32, 32) and (aug.train[5][0] == first).all()  # seeded per (seed, epoch, item)
    assert any(not (aug.train[5][0] == first).all() for e in range(2, 12) if aug.train.set_epoch(e) is None)


# -- one tiny training run through the CLI

def test_tiny_training_run_through_the_cli(real_root, tmp_path):
    model = [f"--set=model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items() if k != "preset"]
    r = invoke("train", "--set", "data.dataset=fashion_mnist", "--set", "data.train_size=320",
               "--set", "data.val_size=160", "--set", "train.epochs=1", "--set", "train.batch_size=32",
               "--set", "train.threads=2", "--set", "train.warmup_epochs=0.2", *model, "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "done" and result["epochs_done"] == 1
    assert result["top1"] > 10.0  # above chance after 10 steps of 32 (a tiny model; chance is 10 %)
    import yaml

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["in_chans"] == 1 and saved["model"]["num_classes"] == 10
    assert saved["data"]["dataset"] == "fashion_mnist"
    # a single run through `focalexp train` records its provenance too (one attempt, this command line)
    from focalexp import provenance

    (att,) = provenance.read(tmp_path / "run")
    assert att["attempt"] == 1 and att["argv"] and att["code"]["version"] and att["torch"]
