"""One training run: run dir, recipe parts, exact resume, preemption, DDP, failures, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from focalexp import create_model
from focalexp.cli import main
from focalexp.errors import ConfigError
from focalexp.train import read_metrics, resolve_run_config, train
from focalexp.train.loop import RUN_FORMAT

from .conftest import TINY_MODEL, tiny_run

TIMING = {"images_per_s", "epoch_seconds"}


def _same_metrics(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in TIMING} == {k: v for k, v in y.items() if k not in TIMING}


def _same_state(a: Path, b: Path) -> None:
    sa = torch.load(a / "last.pth", weights_only=True)
    sb = torch.load(b / "last.pth", weights_only=True)
    for part in ("model", "ema"):
        if sa[part] is None:
            assert sb[part] is None
            continue
        assert sa[part].keys() == sb[part].keys()
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), f"{part}.{k}"
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    for k in oa:
        for name, v in oa[k].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, ob[k][name]), f"optimizer {k}.{name}"
    assert sa["scheduler"] == sb["scheduler"] and sa["global_step"] == sb["global_step"]


@pytest.mark.slow
def test_run_dir_holds_config_metrics_checkpoints_and_result(tmp_path):
    cfg = resolve_run_config(tiny_run())
    result = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "last.pth", "best.pth", "result.json"}
    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg.to_dict()
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"train_loss", "eval_loss", "top1", "top5", "lr", "images_per_s", "epoch_seconds"}
    on_disk = json.loads((run / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert result["status"] == "done" and result["epochs_done"] == 2
    for k in ("top1", "params", "gmacs", "train_seconds", "images_per_s", "peak_memory_mb"):
        assert result[k] is not None and result[k] >= 0, k
    assert "top5" in result and result["top5"] is None  # 2 classes: top-5 would always read 100
    assert result["params"] == sum(p.numel() for p in create_model(cfg.model).parameters())
    best = create_model(checkpoint=run / "best.pth")  # focalexp format: rebuilds its own architecture
    assert best.config == cfg.model_config()
    assert not list(run.glob(".*tmp"))


@pytest.mark.slow
def test_exact_resume_with_the_full_recipe(tmp_path, image_folder):
    """Stopped after each epoch and resumed = uninterrupted, bit for bit: mixup/cutmix, label smoothing,
    RandAugment, random erasing, drop path, EMA, gradient clipping, warm-up + cosine."""
    raw = tiny_run(
        model={"drop_path_rate": 0.1, "num_classes": 2},
        data={"dataset": "imagefolder", "root": str(image_folder), "img_size": 32, "auto_augment": "rand-m9-mstd0.5-inc1",
              "color_jitter": 0.4, "reprob": 0.25, "train_size": None, "val_size": None},
        train={"epochs": 3, "batch_size": 8, "mixup": 0.8, "cutmix": 1.0, "smoothing": 0.1, "ema": True,
               "ema_decay": 0.9, "clip_grad": 5.0, "warmup_epochs": 1},
    )
    full = train(resolve_run_config(raw), tmp_path / "full")
    staged = resolve_run_config({**raw, "train": {**raw["train"], "stop_after_epochs": 1}})
    assert staged.run_id == resolve_run_config(raw).run_id  # operational knobs are not part of the id
    results = [train(staged, tmp_path / "staged") for _ in range(3)]
    assert [r["status"] for r in results] == ["stopped", "stopped", "done"]
    _same_metrics(read_metrics(tmp_path / "full"), read_metrics(tmp_path / "staged"))
    _same_state(tmp_path / "full", tmp_path / "staged")
    assert results[-1]["top1"] == full["top1"] and results[-1]["ema_top1"] == full["ema_top1"]


def _run_cli(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "focalexp", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _set_args(raw: dict) -> list[str]:
    out = []
    for section in ("model", "data", "train"):
        for k, v in raw[section].items():
            out += ["--set", f"{section}.{k}={json.dumps(v)}"]
    return out


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_is_exact(tmp_path):
    # drop path draws from torch's global RNG at every step: a resume mid-epoch must not shift that stream
    raw = tiny_run(model={**TINY_MODEL, "drop_path_rate": 0.2}, data={"train_size": 1024},
                   train={"epochs": 2, "checkpoint_every_steps": 4})
    ref = train(resolve_run_config(raw), tmp_path / "ref")
    out = tmp_path / "cut"
    st = sigterm_after_first_checkpoint(_run_cli("--out", str(out), *_set_args(raw)), out, epochs=2)
    assert st["format"] == RUN_FORMAT
    p = _run_cli("--out", str(out), *_set_args(raw))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    _same_metrics(read_metrics(tmp_path / "ref"), read_metrics(out))
    _same_state(tmp_path / "ref", out)
    assert json.loads((out / "result.json").read_text())["top1"] == ref["top1"]


def sigterm_after_first_checkpoint(p: subprocess.Popen, out: Path, epochs: int) -> dict:
    """SIGTERM the training process ``p`` once ``out/last.pth`` exists (what a scheduler sends); checks that
    it stopped as an interrupted run, before the end, and returns the checkpoint it left."""
    deadline = time.time() + 120
    while not (out / "last.pth").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "run the same command again to continue" in err
    st = torch.load(out / "last.pth", weights_only=True)
    assert (st["epoch"], st["step"]) != (epochs, 0)  # stopped before the end
    assert json.loads((out / "result.json").read_text())["status"] == "interrupted"
    return st


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _classifier():
    cfg = resolve_run_config(tiny_run(data={"train_size": 2048}, train={"epochs": 2, "checkpoint_every_steps": 4}))
    return cfg, train


def _detector():  # FCOS over a FocalNet on Shapes-det: the detect task's job
    from focalexp.detection.config import resolve_detect_config
    from focalexp.detection.trainer import train_detector

    from .test_detection import FCOS, tiny_det

    raw = tiny_det(detector=FCOS, data={"train_size": 128, "val_size": 8},
                   train={"epochs": 2, "checkpoint_every_steps": 2})
    return resolve_detect_config(raw), train_detector


@pytest.mark.slow
@pytest.mark.parametrize("task,make", [("train", _classifier), ("detect", _detector)], ids=["classifier", "detector"])
def test_submitit_preemption_requeues_and_resumes(tmp_path, task, make):
    """A real submitit job (local executor): USR2 -> last.pth saved -> requeued -> continues -> same result."""
    import submitit

    from focalexp.sweep.job import RunJob

    cfg, run = make()
    run(cfg, tmp_path / "ref", progress=False)
    ex = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="local")
    ex.update_parameters(timeout_min=10)
    out = tmp_path / "job"
    job = ex.submit(RunJob(), task, cfg.to_dict(), str(out), {})
    deadline = time.time() + 120
    while not (out / "last.pth").exists() and time.time() < deadline:
        time.sleep(0.05)
    # SLURM delivers the preemption signal to the task; submitit's local executor has a controller
    # process in between (its _interrupt() signals the controller, which does not forward USR2)
    tasks = _children(job._process.pid)
    assert tasks
    for pid in tasks:
        os.kill(pid, signal.SIGUSR2)
    result = job.result()
    assert result["status"] == "done"
    log = job.stdout() + (job.stderr() or "")
    assert "Requeued job" in log, log
    from focalexp import provenance

    attempts = provenance.read(out)  # the start and the requeue, of the same job
    assert [a["attempt"] for a in attempts] == [1, 2] and {a["job"]["id"] for a in attempts} == {str(job.job_id)}
    _same_metrics(read_metrics(tmp_path / "ref"), read_metrics(out))
    _same_state(tmp_path / "ref", out)


@pytest.mark.slow
def test_two_processes_match_one_at_the_same_global_batch(tmp_path):
    from focalexp.train.multiprocess import train_multiprocess

    raw = tiny_run(data={"train_size": 512}, train={"epochs": 2, "batch_size": 32, "threads": 1})
    cfg = resolve_run_config(raw)
    train(cfg, tmp_path / "one")
    train_multiprocess(cfg.to_dict(), str(tmp_path / "two"), nproc=2, progress=False)
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-4)
        assert b["top1"] == pytest.approx(a["top1"], abs=1e-9) or abs(b["top1"] - a["top1"]) <= 100 / 64
    wa = torch.load(tmp_path / "one" / "last.pth", weights_only=True)["model"]
    wb = torch.load(tmp_path / "two" / "last.pth", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-4, rtol=1e-3)
    assert json.loads((tmp_path / "two" / "result.json").read_text())["world_size"] == 2
    assert len(list((tmp_path / "two" / "tb").glob("events.out.tfevents.*"))) == 1  # only rank 0 logs


def test_non_finite_loss_fails_and_keeps_earlier_checkpoints(tmp_path, capsys):
    # a step schedule that multiplies the lr by 1e12 after the first epoch blows the weights up
    raw = tiny_run(train={"epochs": 3, "sched": "step", "decay_epochs": 1, "decay_rate": 1e12, "warmup_epochs": 0,
                          "lr": 1e-2})
    out = tmp_path / "nan"
    rc = main(["train", "--out", str(out), *_set_args(raw)])
    assert rc == 1
    assert "non-finite loss" in capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and "non-finite loss" in result["reason"]
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["model"].values())
    assert torch.load(out / "best.pth", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize(
    "sets,needle",
    [
        (["train.epochs=0"], "train.epochs: expected >= 1, got 0"),
        (["train.lr=fast"], "train.lr: expected a number, got 'fast'"),
        (["train.epoch=3"], "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
        (["model.focal_level=3"], "unknown key 'model.focal_level' (did you mean 'model.focal_levels'?)"),
        (["model.gating=sigmod"], "model.gating: unknown value 'sigmod' (did you mean 'sigmoid'?)"),
        (["model.preset=focalnet_tiny"], "unknown model 'focalnet_tiny'"),
        (["data.dataset=imagenet"], "data.dataset: unknown value 'imagenet'"),
        (["data.dataset=imagefolder", "data.root=/no/such/dir"], "data.root: '/no/such/dir' is not a directory"),
        (["data.dataset=cifar10", "data.root=/tmp"], "data.root: no cifar10 at '/tmp'"),
        (["train.mixup=0.8"], "train.mixup: mixing pathfinder images destroys their labels"),
        (["train.opt=adamz"], "train.opt: unknown optimizer 'adamz'"),
        (["model.num_classes=10"], "model.num_classes: 10 but the dataset has 2 classes"),
        (["recipe=imagenet"], "recipe: unknown recipe 'imagenet'"),
        (["train.batch_size=999999"], "train.batch_size: 999999 is larger than the training set"),
        (["bogus.key=1"], "unknown key 'bogus.key'"),
    ],
)
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, sets, needle):
    out = tmp_path / "run"
    args = ["train", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_config_file_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 2\n  lr: [1, 2\n")
    assert main(["train", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert f"{bad}:4:1: malformed YAML" in capsys.readouterr().err or "malformed YAML" in capsys.readouterr().err
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(tiny_run()))
    cfg = resolve_run_config(yaml.safe_load(ok.read_text()), {"train.epochs": 5})
    assert cfg.train.epochs == 5 and cfg.model["embed_dim"] == 16


def test_out_dir_of_another_experiment_is_refused(tmp_path):
    train(resolve_run_config(tiny_run(train={"epochs": 1})), tmp_path / "r")
    with pytest.raises(ConfigError, match="holds a run with a different config"):
        train(resolve_run_config(tiny_run(train={"epochs": 1, "lr": 1e-4})), tmp_path / "r")


def test_weight_decay_modes():
    from focalexp.train.loop import Trainer

    def groups(mode):
        t = Trainer(resolve_run_config(tiny_run(train={"weight_decay_mode": mode})), "/nonexistent")
        t.device = torch.device("cpu")
        from focalexp.train.distributed import DistInfo

        t.dist = DistInfo()
        t._build()
        names = {id(p): n for n, p in t.model.named_parameters()}
        return {g["weight_decay"]: sorted(names[id(p)] for p in g["params"]) for g in t.optimizer.param_groups}

    g = groups("skip_norm_bias")
    assert all(n.endswith(("bias", "norm1.weight", "norm2.weight", "norm.weight")) or "norm" in n for n in g[0.0])
    assert all(p.endswith("weight") and "norm" not in p for p in g[0.05])
    assert "stages.0.blocks.0.modulation.f.weight" in g[0.05]
    assert set(groups("official_none")) == {0.0}
    assert set(groups("all")) == {0.05}


def test_paper_recipe_resolves(monkeypatch, image_folder):
    monkeypatch.setenv("IMAGENET_ROOT", str(image_folder))
    cfg = resolve_run_config({"recipe": "imagenet_paper"}, model="focalnet_t_srf")
    t, d = cfg.train, cfg.data
    assert (t.epochs, t.batch_size, t.warmup_epochs, t.weight_decay, t.clip_grad) == (300, 1024, 20, 0.05, 5.0)
    assert t.lr * t.batch_size / t.lr_base_batch == pytest.approx(1e-3)
    assert (t.mixup, t.cutmix, t.smoothing, d.reprob, d.auto_augment) == (0.8, 0.8, 0.1, 0.25, "rand-m9-mstd0.5-inc1")
    assert cfg.model_config().drop_path_rate == 0.2  # from the preset (S .3, B .5)
    assert cfg.model["num_classes"] == 2  # the tiny folder's two classes
    monkeypatch.delenv("IMAGENET_ROOT")
    with pytest.raises(ConfigError, match=r"data.root: environment variable \$IMAGENET_ROOT is not set"):
        resolve_run_config({"recipe": "imagenet_paper"})


def test_imagefolder_layout_errors(tmp_path):
    (tmp_path / "flat").mkdir()
    with pytest.raises(ConfigError, match="expected .*train' and .*val' with one folder per class"):
        resolve_run_config(tiny_run(data={"dataset": "imagefolder", "root": str(tmp_path / "flat")}))
    for split, cls in (("train", "a"), ("train", "b"), ("val", "a"), ("val", "c")):
        (tmp_path / "mismatch" / split / cls).mkdir(parents=True)
    with pytest.raises(ConfigError, match="train/ and val/ have different class folders"):
        resolve_run_config(tiny_run(data={"dataset": "imagefolder", "root": str(tmp_path / "mismatch")}))


def test_pathfinder_is_deterministic_balanced_and_means_what_it_says():
    from collections import deque

    from focalexp.data.pathfinder import generate_pathfinder

    a, la = generate_pathfinder(400, seed=3)
    b, lb = generate_pathfinder(400, seed=3)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert 0.4 < la.mean() < 0.6

    def markers_connected(img) -> bool:
        red = (img[0] == 255) & (img[1] == 0)
        ink = img.max(0) > 0
        ys, xs = np.nonzero(red)
        seed = (ys[0], xs[0])
        seen, todo = {seed}, deque([seed])
        while todo:
            y, x = todo.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    q = (y + dy, x + dx)
                    if 0 <= q[0] < 32 and 0 <= q[1] < 32 and ink[q] and q not in seen:
                        seen.add(q)
                        todo.append(q)
        return all((y, x) in seen for y, x in zip(ys, xs))

    conn = np.array([markers_connected(x) for x in a])
    assert conn[la == 1].all()  # a whole path always joins its two markers
    assert conn[la == 0].mean() < 0.35  # a cut one does unless a distractor bridges the gap


@pytest.mark.parametrize(
    "knobs",
    [{"amp": "bf16"}, {"grad_checkpointing": True}, {"channels_last": False},
     pytest.param({"compile": True}, marks=pytest.mark.slow)],
    ids=["bf16", "grad_checkpointing", "no_channels_last", "compile"],
)
def test_speed_knobs_train(tmp_path, knobs):
    result = train(resolve_run_config(tiny_run(train={"epochs": 1, **knobs})), tmp_path / "r")
    assert result["status"] == "done" and result["top1"] is not None


@pytest.mark.slow
def test_resume_flag_continues_from_a_given_checkpoint(tmp_path, capsys):
    raw = tiny_run(train={"epochs": 2, "stop_after_epochs": 1})
    train(resolve_run_config(raw), tmp_path / "a")
    args = ["train", "--out", str(tmp_path / "b"), "--resume", str(tmp_path / "a" / "last.pth"), *_set_args(raw)]
    assert main(args) == 0
    rows = read_metrics(tmp_path / "b")
    assert [r["epoch"] for r in rows] == [1, 2]  # epoch 1 came with the checkpoint
    assert main(["train", "--out", str(tmp_path / "c"), "--resume", str(tmp_path / "nope.pth")]) == 2
    assert "--resume: no such file" in capsys.readouterr().err


# ---------------------------------------------------------------------------- damaged checkpoints, full disks
FAST = {"data": {"train_size": 64, "val_size": 32}, "train": {"epochs": 2}}


def _fast(**train_over) -> dict:
    return tiny_run(data=FAST["data"], train={**FAST["train"], **train_over})


@pytest.mark.slow
def test_a_cut_short_last_pth_resumes_from_the_previous_one_exactly(tmp_path):
    """last.pth cut short (a copy interrupted, a dying disk): one warning line naming it, the run continues
    from last.prev.pth and ends bit-identical to the run before the damage, each epoch logged once; the
    damaged file is not kept as the previous checkpoint."""
    from .conftest import invoke

    raw = _fast(epochs=2, trackers=[])
    out, ref = tmp_path / "cut", tmp_path / "ref"
    train(resolve_run_config(raw), out, progress=False)
    assert torch.load(out / "last.prev.pth", weights_only=True)["epoch"] == 1
    ref.mkdir()
    for name in ("last.pth", "metrics.jsonl"):
        (ref / name).write_bytes((out / name).read_bytes())
    data = (out / "last.pth").read_bytes()
    (out / "last.pth").write_bytes(data[: len(data) // 2])
    r = invoke("train", "--out", str(out), *_set_args(raw))
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"'{out / 'last.pth'}'" in warnings[0] and "corrupt" in warnings[0]
    assert f"resuming from '{out / 'last.prev.pth'}' (after epoch 1)" in warnings[0]
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2]  # epoch 2 logged once, though it ran twice
    _same_metrics(read_metrics(ref), read_metrics(out))
    _same_state(ref, out)
    assert torch.load(out / "last.prev.pth", weights_only=True)["epoch"] == 1  # the good one, not the cut file


def test_no_readable_checkpoint_over_a_history_stops_and_a_sweep_run_fails(tmp_path):
    """Both checkpoints damaged, or metrics.jsonl without a checkpoint: one line naming the files, exit 2,
    nothing trained or written; as a sweep's task, the run ends failed with that line."""
    from focalexp.tasks import get_task

    from .conftest import invoke

    raw = _fast(epochs=1)
    out = tmp_path / "run"
    train(resolve_run_config(raw), out, progress=False)
    (out / "last.pth").write_bytes(b"PK\x03\x04 not a zip")
    (out / "last.prev.pth").write_bytes(b"")
    (out / "best.pth").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    r = invoke("train", "--out", str(out), *_set_args(raw))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "last.pth" in line and "last.prev.pth" in line and "not training from scratch" in line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # the same run dir as a sweep's run: failed, with the line, its history untouched
    task = get_task("train")
    with pytest.raises(RuntimeError, match="not training from scratch"):
        task.run(task.from_plain(resolve_run_config(raw).to_dict()), str(out), {})
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and "last.prev.pth" in result["reason"]
    assert (out / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]
    assert (out / "last.pth").read_bytes() == before["last.pth"]
    # no checkpoint at all, but epochs in metrics.jsonl
    (out / "last.pth").unlink()
    (out / "last.prev.pth").unlink()
    r = invoke("train", "--out", str(out), *_set_args(raw))
    assert r.returncode == 2 and "records 1 trained epoch(s)" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_full_disk_stops_the_run_and_a_rerun_with_space_continues(tmp_path, small_disk):
    """The disk fills while a checkpoint is written: exit 1 with one line, result.json says stopped and
    why, no temporary file is left, the previous checkpoint is intact; with space again the same command
    continues from it and ends as an uninterrupted run, each epoch logged once."""
    from .conftest import invoke

    raw = _fast(epochs=2)
    ref = tmp_path / "ref"
    train(resolve_run_config(raw), ref, progress=False)
    out = small_disk.path / "run"
    r = invoke("train", "--out", str(out), *_set_args(raw), "--set", "train.stop_after_epochs=1")
    assert r.returncode == 0, r.stderr
    st = os.statvfs(small_disk.path)
    used_kib = (st.f_blocks - st.f_bfree) * st.f_frsize // 1024
    last_kib = (out / "last.pth").stat().st_size // 1024
    small_disk.resize(used_kib + last_kib // 2)  # room for the epoch's small files, not for another last.pth
    r = invoke("train", "--out", str(out), *_set_args(raw))
    assert r.returncode == 2 and "Traceback" not in r.stderr  # as for any input the user must fix
    errors = [line for line in r.stderr.splitlines() if line.startswith("focalexp train:")]
    assert errors == [r.stderr.strip().splitlines()[-1]]
    assert f"no space left on device writing {out}" in errors[0]
    assert f"{out / 'last.pth'} (after epoch 1) is intact" in errors[0]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "stopped" and result["reason"] in errors[0] and result["write_error"]
    assert result["epochs_done"] == 1  # what the intact checkpoint holds, not the epoch whose save failed
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1
    small_disk.resize(16 * 1024)
    r = invoke("train", "--out", str(out), *_set_args(raw))
    assert r.returncode == 0, r.stderr
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2]
    _same_metrics(read_metrics(ref), read_metrics(out))
    _same_state(ref, out)
    assert json.loads((out / "result.json").read_text())["status"] == "done"


@pytest.mark.parametrize("damage,nproc", [("truncated", 1), ("not-an-image", 1), ("bomb", 1), ("truncated", 2)])
def test_an_image_found_damaged_mid_run_is_one_line_and_the_run_ends_failed(tmp_path, run, damage, nproc):
    """An ImageFolder image is read only when its batch comes (a header check of a million files would
    cost more than the run's first minutes): found damaged there, in a DataLoader worker process, the
    user gets the one line naming the file (not the worker's traceback), exit 2, and result.json says
    failed with that reason (not "running" forever). With two training processes, either may find it:
    the other is stopped, and the same line and result follow."""
    from . import hostile
    from .conftest import make_image_folder

    root = make_image_folder(tmp_path / "data", n_train=6, n_val=2)
    bad = root / "train" / "dark" / "3.png"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:200])
    elif damage == "not-an-image":
        bad.write_text("<html>")
    else:
        bad.write_bytes(hostile.png_bomb(20000, 20000))
    p = run("train", "--set", "data.dataset=imagefolder", "--set", f"data.root={root}", "--set", "data.img_size=32",
            "--set", "data.workers=2", "--set", "model.embed_dim=16", "--set", "model.depths=[1,1,1]",
            "--set", "train.batch_size=4", "--set", "train.epochs=1", "--nproc", str(nproc), "--out",
            str(tmp_path / "run"), check_rc=2)
    assert "Traceback" not in p.stderr and "worker" not in p.stderr and "Process" not in p.stderr, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("focalexp train: error: data.root: ") and str(bad) in last, p.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "failed" and str(bad) in result["reason"]


class _FailsAtThree(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int):
        if i == 3:
            raise ConfigError("'3.png' is not a readable image (truncated)", key="data.root")
        return torch.zeros(3)


def test_an_error_from_a_worker_stops_the_loaders_workers_at_once():
    """The error a worker raises holds the loader's iterator in a reference cycle: iterated plainly, its
    workers outlive the error until the garbage collector finalises it, and then (its queues closed)
    wait 5 s each before being killed; a CLI run that failed this way took 10 s more to exit. Through
    batches() they are gone when the error leaves the block (checked with the collector off)."""
    import gc
    import multiprocessing

    from focalexp.train.loop import batches

    loader = torch.utils.data.DataLoader(_FailsAtThree(), batch_size=4, num_workers=2)
    gc.disable()
    try:
        with pytest.raises(ConfigError):
            with batches(loader) as items:
                for _ in items:
                    pass
        assert multiprocessing.active_children() == []
    finally:
        gc.enable()


class _StartMethodProbe:
    """A stand-in Trainer for train_multiprocess: records how the process would start its DataLoader's
    workers, and trains nothing."""

    from focalexp.train.config import RunConfig as config_cls

    def __init__(self, cfg, out, **_) -> None:
        self.out = Path(out)

    def run(self) -> None:
        import multiprocessing

        (self.out / f"start_method.{os.environ['RANK']}").write_text(multiprocessing.get_start_method())


def test_training_processes_fork_their_loader_workers_as_under_torchrun(tmp_path):
    """mp.spawn's processes would spawn their DataLoader workers, each importing torch and focalexp
    again every epoch: a 3-epoch CPU run with 2 processes x 2 workers took 90 s instead of 14 s (same
    numbers). They fork them, as torchrun's processes do."""
    from focalexp.train.multiprocess import train_multiprocess

    train_multiprocess(resolve_run_config(tiny_run()).to_dict(), str(tmp_path), 2, trainer=_StartMethodProbe)
    assert [(tmp_path / f"start_method.{r}").read_text() for r in (0, 1)] == ["fork", "fork"]
