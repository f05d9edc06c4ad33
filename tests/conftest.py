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


def invoke(*args: str, cwd: str | Path | None = None) -> SimpleNamespace:
    """The one CLI harness of the tests: ``focalexp ARGS`` run in this process (``cli.main``), its
    stdout/stderr captured and ``cwd`` entered for the call; returns ``returncode``, ``stdout``, ``stderr``
    like a finished subprocess. Tests start a real process only where a separate process is the point
    (SLURM, kill/signal tests, the console entry point, a fresh interpreter's imports)."""
    import contextlib
    import io
    from focalexp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            rc = main(list(args))
        except SystemExit as e:  # argparse errors and --help
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture
def run():
    """:func:`invoke` that by default asserts the exit code (``check_rc=0``; None: any)."""

    def _run(*args: str, check_rc: int | None = 0, cwd: str | Path | None = None) -> SimpleNamespace:
        r = invoke(*args, cwd=cwd)
        if check_rc is not None:
            assert r.returncode == check_rc, r.stderr
        return r

    return _run


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs mounted on tmp_path/disk (root only: CI runs as root; elsewhere skipped unless
    FOCALEXP_REQUIRE_SLURM=1), unmounted afterwards; ``resize(kib)`` remounts it at another size."""
    import os
    import shutil
    import subprocess

    def unavailable(why: str):
        if os.environ.get("FOCALEXP_REQUIRE_SLURM") == "1":
            pytest.fail(f"a tmpfs is required: {why}")
        pytest.skip(why)

    if os.geteuid() != 0 or not shutil.which("mount"):
        unavailable("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True, text=True)
    if p.returncode != 0:
        unavailable(f"mount failed: {p.stderr.strip()}")

    def resize(kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(disk)], check=True, capture_output=True)

    try:
        yield SimpleNamespace(path=disk, resize=resize)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
