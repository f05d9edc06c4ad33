"""The other side of the hostile-input table: what must still be accepted (numbers as researchers write
them, merge keys, CIFAR batches, trusted setup lines, run checkpoints), and the readers that hand
untrusted files to pickle (CIFAR, submitit's result pickles in a sweep dir) never running them."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from focalexp.config import parse_yaml
from focalexp.errors import ConfigError
from focalexp.config import parse_value

from . import hostile
from .conftest import tiny_run


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("5E4", 5e4), ("-2.5e-2", -2.5e-2), ("+1e+2", 100.0),
                                         ("1.0e-3", 1e-3), (".5", 0.5), ("3", 3), ("1_000", 1000)])
def test_numbers_as_researchers_write_them(text, value):
    got = parse_yaml(f"lr: {text}\n")["lr"]
    assert got == value and type(got) is type(value)
    assert parse_value(text) == value


def test_strings_that_look_like_numbers_stay_strings():
    assert parse_yaml("a: e3\nb: 1e\nc: '1e-3'\nd: 0x1F\n") == {"a": "e3", "b": "1e", "c": "1e-3", "d": 31}


def test_lr_1e_3_in_a_run_config_and_on_the_command_line(tmp_path, run):
    from focalexp.train.config import load_run_config

    p = tmp_path / "r.yaml"
    p.write_text("train:\n  lr: 1e-3\n  epochs: 1\n")
    assert load_run_config(p).train.lr == 1e-3
    assert load_run_config(p, {"train.lr": parse_value("5e-4")}).train.lr == 5e-4


def test_merge_keys_may_be_overridden_but_plain_keys_not_repeated():
    doc = "base: &b {lr: 1, epochs: 2}\nrun:\n  <<: *b\n  lr: 3\n"
    assert parse_yaml(doc)["run"] == {"lr": 3, "epochs": 2}
    with pytest.raises(ConfigError, match=r"<string>:3:\d+: malformed YAML: .*duplicate key 'lr' \(also on line 2"):
        parse_yaml("run:\n  lr: 1\n  lr: 2\n")


def _cifar10(root: Path, n_per_batch: int = 4) -> tuple[np.ndarray, list[int]]:
    """A CIFAR-10 "python version" folder in the layout of the real one (its Python 2 pickles load as these)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    all_data, all_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n_per_batch)]
        with open(d / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": ["x.png"] * n_per_batch}, f, protocol=2)
        if name != "test_batch":
            all_data.append(data)
            all_labels += labels
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list("abcdefghij"), "num_vis": 3072}, f, protocol=2)
    return np.vstack(all_data), all_labels


def test_cifar_batches_read_like_torchvision_without_pickle(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    from focalexp.data.build import CifarBatches

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # md5 sums of the real files
    _cifar10(tmp_path)
    ours, theirs = CifarBatches(tmp_path, "cifar10", train=True), tv_cifar.CIFAR10(str(tmp_path), train=True)
    assert len(ours) == len(theirs) == 20 and ours.classes == theirs.classes and ours.targets == theirs.targets
    np.testing.assert_array_equal(ours.data, theirs.data)
    img, y = ours[7]
    assert np.asarray(img).tolist() == np.asarray(theirs[7][0]).tolist() and y == theirs[7][1]
    assert len(CifarBatches(tmp_path, "cifar10", train=False)) == 4


def test_cifar_hostile_batch_is_refused_before_it_runs(tmp_path):
    from focalexp.data.build import CifarBatches

    hostile.cifar_root(tmp_path / "c", tmp_path / "MARKER")
    with pytest.raises(ConfigError, match=r"data.root: refused .*posix.system"):
        CifarBatches(tmp_path / "c", "cifar10", train=True)
    assert not (tmp_path / "MARKER").exists()


CIFAR_LIES = {  # what a batch (or the meta file) says -> words of the one line
    "label-out-of-range": ({"labels": [0, 1, 2, 500]}, "label 500 at item 3; cifar10's labels are 0-9"),
    "label-negative": ({"labels": [0, -1, 2, 3]}, "label -1 at item 1"),
    "labels-floats": ({"labels": [0.5, 1.0, 2.0, 3.0]}, "not a list of integers"),
    "labels-string": ({"labels": "abcd"}, "not a list of integers"),
    "labels-bools": ({"labels": [True, False, True, False]}, "not a list of integers"),
    "labels-too-few": ({"labels": [0, 1]}, "4 images but 2 labels"),
    "data-floats": ({"data": np.zeros((4, 3072))}, "float64 data of shape (4, 3072)"),
    "data-objects": ({"data": np.array([None] * 4 * 3072, dtype=object).reshape(4, 3072)}, "object data"),
    "data-wrong-width": ({"data": np.zeros((4, 100), np.uint8)}, "shape (4, 100)"),
    "meta-two-names": ("meta", "has no label_names (10 strings)"),
}


@pytest.mark.parametrize("lie", sorted(CIFAR_LIES))
def test_a_cifar_batch_that_lies_is_one_line_naming_the_file(tmp_path, lie):
    """Labels out of range used to fail mid-run in the loss (an IndexError traceback); float or object
    pixels in PIL; a two-name meta file trained a 10-class model with 2 class names."""
    from focalexp.data.build import CifarBatches

    _cifar10(tmp_path)
    change, words = CIFAR_LIES[lie]
    d = tmp_path / "cifar-10-batches-py"
    if change == "meta":
        path, obj = d / "batches.meta", {"label_names": ["a", "b"]}
    else:
        path = d / "data_batch_3"
        with open(path, "rb") as f:
            obj = {**pickle.load(f, encoding="latin1"), **change}
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    with pytest.raises(ConfigError) as e:
        CifarBatches(tmp_path, "cifar10", train=True)
    text = str(e.value)
    assert "\n" not in text and f"'{path}'" in text and words in text, text


def test_setup_lines_run_only_when_allowed():
    from focalexp.sweep.launcher import check_launcher
    from focalexp.sweep.spec import LauncherConfig

    lc = LauncherConfig(cluster="local", setup=["echo hi"])
    with pytest.raises(ConfigError, match="--allow-setup"):
        check_launcher(lc, "local")
    check_launcher(lc, "local", allow_setup=True)


def test_run_count_is_answered_without_building_runs():
    from focalexp.sweep.spec import check_run_count, count_runs, parse_spec

    base = tiny_run()
    base.pop("seed")
    spec = parse_spec({"name": "big", "base": base, "grid": {"model.focal_levels": list(range(1000)),
                                                              "train.lr": [1e-3] * 1000},
                       "exclude": [{"model.focal_levels": 0}], "seeds": [0, 1]})
    assert count_runs(spec) == (1000 * 1000 * 2, False)  # above the exact walk: the cartesian bound
    with pytest.raises(ConfigError, match=r"up to 2,000,000 runs .*--yes"):
        check_run_count(spec)
    small = parse_spec({**spec.to_dict(), "launcher": {}, "estimate": {},
                        "grid": {"model.focal_levels": [1, 2, 3]}, "exclude": [{"model.focal_levels": 2}]})
    assert count_runs(small) == (4, True) and check_run_count(small) == 4


def test_status_never_unpickles_a_hostile_result_pickle(tmp_path, run):
    """jobs.jsonl names submitit's result pickles; one inside the sweep dir that would run code is read
    through the allowlist (and ignored), one outside the sweep dir is not read at all."""
    sw = tmp_path / "sw"
    (sw / "logs" / "1").mkdir(parents=True)
    marker = tmp_path / "MARKER"
    evil = pickle.dumps(("error", hostile.shell(marker)), protocol=2)
    inside, outside = sw / "logs" / "1" / "1_result.pkl", tmp_path / "elsewhere.pkl"
    inside.write_bytes(evil)
    outside.write_bytes(pickle.dumps(("error", "Traceback\nValueError: from outside"), protocol=2))
    runs = [{"run_id": f"{i:012x}", "axes": {"model.focal_levels": i}, "seed": 0} for i in (1, 2)]
    (sw / "sweep.json").write_text(json.dumps({"name": "t", "axes": ["model.focal_levels"], "task": "train",
                                               "cluster": "local", "runs": runs}))
    with open(sw / "jobs.jsonl", "w") as f:
        for r, pkl in zip(runs, (inside, outside)):
            f.write(json.dumps({"event": "submitted", "run_id": r["run_id"], "job_id": "999999", "cluster": "local",
                                "pid": 999999, "result_pickle": str(pkl), "stderr": str(outside)}) + "\n")
        f.write("[1, 2]\n{\"event\": \"submitted\"}\n")  # not events of ours: ignored
    p = run("status", str(sw), "--json", check_rc=None)
    assert not marker.exists()
    states = {s["run_id"]: s for s in json.loads(p.stdout)}
    # neither pickle counts as the task's exception: jobs that ended with no result and no exception read killed
    assert all(s["state"] == "killed" for s in states.values())
    assert all("from outside" not in (s["reason"] or "") for s in states.values())
    assert all(not s.get("log_tail") for s in states.values())


def test_cancel_signals_no_process_that_is_not_the_runs_job(tmp_path, run):
    """jobs.jsonl and claim.json name pids; cancel signals one only if it is a submitit process of the run
    (here: an unrelated process and the test's own), and gives SLURM's scancel plain job ids only."""
    import os
    import socket
    import subprocess
    import sys

    from focalexp.sweep.backends.slurm import SlurmBackend
    from focalexp.sweep.store import SweepDir

    sw = tmp_path / "sw"
    rid = "0123456789ab"
    (sw / "runs" / rid).mkdir(parents=True)
    (sw / "sweep.json").write_text(json.dumps({"name": "t", "axes": [], "task": "train", "cluster": "local",
                                               "runs": [{"run_id": rid, "axes": {}, "seed": 0}]}))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (sw / "jobs.jsonl").write_text(json.dumps({"event": "submitted", "run_id": rid, "job_id": str(other.pid),
                                                   "cluster": "local", "pid": other.pid}) + "\n")
        (sw / "runs" / rid / "claim.json").write_text(json.dumps({"job_id": str(other.pid), "pid": os.getpid(),
                                                                  "host": socket.gethostname()}))
        p = run("cancel", str(sw))
        assert "cancelled 0 run(s)" in p.stdout and f"no job left to stop (ended meanwhile?): {rid}" in p.stdout
        assert other.poll() is None and not (sw / "runs" / rid / "cancel.json").exists()
    finally:
        other.kill()
        other.wait()
    assert SlurmBackend().cancel(SweepDir(sw), {rid: {"job_id": "--user=root"}, "b": {"job_id": "1 2"}}) == []


def test_resume_from_a_real_last_pth_still_works(tmp_path, run):
    """The checks before resuming (format, run id, keys) accept what the trainer writes."""
    args = ["train", "--set", "data.train_size=64", "--set", "data.val_size=32", "--set", "model.embed_dim=16",
            "--set", "model.depths=[1,1,1]", "--set", "train.batch_size=32", "--set", "train.threads=2"]
    run(*args, "--set", "train.epochs=2", "--set", "train.stop_after_epochs=1", "--out", str(tmp_path / "a"))
    st = torch.load(tmp_path / "a" / "last.pth", weights_only=False)
    assert st["epoch"] == 1
    p = run(*args, "--set", "train.epochs=2", "--out", str(tmp_path / "b"), "--resume", str(tmp_path / "a" / "last.pth"),
            "--json")
    res = json.loads(p.stdout)
    assert res["status"] == "done" and res["epochs_done"] == 2
