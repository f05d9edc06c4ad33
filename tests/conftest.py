"""Shared fixtures: a tiny ImageNet-layout folder of generated PNGs, tiny run configs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import importlib

importlib.import_module("focalexp.models")  # eagerly, with the timm registration, before any in-process CLI call


def make_image_folder(root: Path, n_train: int = 12, n_val: int = 6, size: int = 40) -> Path:
    """root/{train,val}/{bright,dark}/*.png: two classes a model can tell apart (brightness)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for cls, level in (("bright", 200), ("dark", 50)):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(rng.normal(level, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imagefolder"))


# a tiny model and run: seconds on CPU
TINY_MODEL = {"preset": "focalnet_micro", "embed_dim": 16, "depths": [1, 1, 1]}


def tiny_run(**sections) -> dict:
    cfg = {
        "seed": 0,
        "model": dict(TINY_MODEL),
        "data": {"dataset": "pathfinder", "train_size": 256, "val_size": 64},
        "train": {"epochs": 2, "batch_size": 32, "warmup_epochs": 0.5, "threads": 2},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


@pytest.fixture
def run(capsys):
    """Run the CLI in-process; returns (returncode, stdout, stderr) like a finished subprocess."""

    from focalexp.cli import main

    def _run(*args: str, check_rc: int | None = 0) -> SimpleNamespace:
        try:
            rc = main(list(args))
        except SystemExit as e:  # argparse errors and --help
            rc = e.code
        out, err = capsys.readouterr()
        if check_rc is not None:
            assert rc == check_rc, err
        return SimpleNamespace(returncode=rc, stdout=out, stderr=err)

    return _run
