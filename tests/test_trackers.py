"""Trackers (train.trackers): what each tool's own reader sees, resume into the same tracker run without a
repeated step, and trackers that fail without failing the run."""

from __future__ import annotations

import json
import socket
import struct
import sys
from pathlib import Path

import pytest

from focalexp.errors import ConfigError
from focalexp.train import resolve_run_config, train
from focalexp.train.trackers import Tracker, register_tracker

from .conftest import tiny_run

STEPS_PER_EPOCH = 2  # 64 images, batch 32


def _staged(**train_knobs) -> dict:
    """Two epochs of two steps, stopped after the first (a second call resumes), every step logged."""
    return tiny_run(data={"train_size": 64, "val_size": 32},
                    train={"epochs": 2, "stop_after_epochs": 1, "log_every": 1, **train_knobs})


def _tb_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tb"))
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def _steps(points: list[tuple[int, float]]) -> list[int]:
    return [s for s, _ in points]


ALL_STEPS = list(range(1, 2 * STEPS_PER_EPOCH + 1))
EPOCH_ENDS = [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


def test_tensorboard_logs_every_step_and_epoch_and_a_resume_repeats_no_step(tmp_path):
    cfg = resolve_run_config(_staged(clip_grad=1.0))  # grad norm from clip_grad_norm_
    run = tmp_path / "run"
    # the event files of this test, all in one second and one process, get counters 8, 9 and 10: by name
    # the resumed run's (10) would sort before the killed process's (9), unless it waits for the next second
    from tensorboard.summary.writer import event_file_writer

    if hasattr(event_file_writer._global_uid, "_value"):
        event_file_writer._global_uid._value = 8
    assert train(cfg, run, progress=False)["status"] == "stopped"
    # a process killed after its last checkpoint had logged steps that the resumed run will log again
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run / "tb")) as w:
        for step in (3, 4, 5):
            w.add_scalar("train/loss", 99.0, step)
    assert train(cfg, run, progress=False)["status"] == "done"
    sc = _tb_scalars(run)
    for tag in ("train/loss", "train/lr", "train/images_per_s", "train/grad_norm", "system/peak_memory_mb"):
        assert _steps(sc[tag]) == ALL_STEPS, tag
    assert all(v != 99.0 for _, v in sc["train/loss"])  # the killed process's steps were purged
    for tag in ("epoch", "train_epoch/loss", "train_epoch/lr", "train_epoch/images_per_s", "train_epoch/seconds",
                "eval/loss", "eval/top1"):
        assert _steps(sc[tag]) == EPOCH_ENDS, tag
    assert [v for _, v in sc["epoch"]] == [1.0, 2.0]
    assert "eval/top5" not in sc  # 2 classes: top-5 is None, not logged
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [v for _, v in sc["eval/top1"]] == pytest.approx([r["top1"] for r in rows])
    assert all(v > 0 for _, v in sc["train/grad_norm"] + sc["system/peak_memory_mb"] + sc["train/images_per_s"])


def _wandb_records(path: Path):
    """The records of a ``.wandb`` file (W&B's LevelDB-style log: 32 KiB blocks of CRC'd chunks), parsed
    with wandb's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL, FIRST | MIDDLE, LAST
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def _wandb_history(run_file: Path) -> tuple[str, dict[int, dict]]:
    run_id, rows = "", {}
    for rec in _wandb_records(run_file):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run_id = run_id or rec.run.run_id
        elif kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            rows[row["_step"]] = row
    return run_id, rows


def test_wandb_and_mlflow_continue_the_same_run_after_a_resume(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_PROJECT", "focalexp-test")
    (tmp_path / "wandb").mkdir()
    # a local file store: instant, where a new sqlite store takes seconds to migrate its tables
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "trackers-test")
    cfg = resolve_run_config(_staged(trackers=["wandb", "mlflow"]))
    assert train(cfg, tmp_path / "run", progress=False)["status"] == "stopped"
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("trackers-test")
    (first,) = client.search_runs([exp.experiment_id])
    client.log_metric(first.info.run_id, "train/loss", 0.5, step=3)  # as if killed after step 3's log
    assert train(cfg, tmp_path / "run", progress=False)["status"] == "done"
    assert not (tmp_path / "run" / "tb").exists()  # tensorboard was not asked for

    # W&B (offline): one local dir per process, both the same run (id = run id), steps continue
    files = sorted((tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2
    seen: list[int] = []
    for f in files:
        run_id, rows = _wandb_history(f)
        assert run_id == cfg.run_id
        seen += sorted(rows)
        assert all("train/loss" in rows[s] for s in rows)
    assert seen == ALL_STEPS  # each step once, in order across the resume
    eval_steps = [s for f in files for s, r in _wandb_history(f)[1].items() if "eval/top1" in r]
    assert eval_steps == EPOCH_ENDS

    # MLflow: one run found by its tag, resumed, finished
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["focalexp.run_id"] == cfg.run_id and run.info.status == "FINISHED"
    history = {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
               for k in ("train/loss", "train/lr", "eval/top1")}
    assert _steps(history["train/loss"]) == ALL_STEPS  # step 3 once: the killed process's value kept
    assert dict(history["train/loss"])[3] == 0.5
    assert _steps(history["train/lr"]) == ALL_STEPS and _steps(history["eval/top1"]) == EPOCH_ENDS
    assert run.data.params["train.epochs"] == "2"

    # the same experiment trained again from scratch (another dir) gets an MLflow run of its own, and a
    # resume continues the latest one
    from focalexp.train.trackers import MlflowTracker, TrackedRun

    fresh = MlflowTracker()
    fresh.start(TrackedRun(cfg.run_id, tmp_path / "again", cfg.to_dict(), start_step=0))
    assert fresh.run_id != run.info.run_id
    resumed = MlflowTracker()
    resumed.start(TrackedRun(cfg.run_id, tmp_path / "again", cfg.to_dict(), start_step=2))
    assert resumed.run_id == fresh.run_id


def test_a_sweeps_runs_are_grouped_and_a_retrain_from_scratch_gets_a_new_wandb_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)  # W&B's files go to the run dir
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    cfg = resolve_run_config(tiny_run(data={"train_size": 32, "val_size": 16},
                                      train={"epochs": 1, "trackers": ["wandb", "mlflow"]}))
    sweep = tmp_path / "sweeps" / "levels"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"name": "focal_levels", "runs": []}))
    run = sweep / "runs" / cfg.run_id
    assert train(cfg, run, progress=False)["status"] == "done"
    for name in ("last.pth", "result.json", "metrics.jsonl"):  # the same dir trained again from scratch
        (run / name).unlink(missing_ok=True)
    assert train(cfg, run, progress=False)["status"] == "done"

    groups, ids = set(), []
    for f in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        for rec in _wandb_records(f):
            if rec.WhichOneof("record_type") == "run":
                groups.add(rec.run.run_group)
                ids.append(rec.run.run_id)
                break
    assert groups == {"focal_levels"}
    assert ids == [cfg.run_id, f"{cfg.run_id}-2"]  # no history mixed into the first W&B run
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("focal_levels")  # the sweep's experiment, not "focalexp"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and {r.data.tags["focalexp.sweep"] for r in runs} == {"focal_levels"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Flaky(Tracker):
    name = "flaky_test"
    calls = 0

    def start(self, run):
        pass

    def log(self, scalars, step):
        type(self).calls += 1
        if type(self).calls == 2:
            raise OSError("disk full")


def test_trackers_that_cannot_start_or_fail_mid_run_are_one_warning_each(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    register_tracker(_Flaky)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails as if it were not installed
    cfg = resolve_run_config(_staged(trackers=["mlflow", "wandb", "flaky_test", "tensorboard"], stop_after_epochs=None))
    result = train(cfg, tmp_path / "run", progress=False)
    assert result["status"] == "done"
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning: tracker" in line]
    assert len(warnings) == 3, warnings
    assert any("tracker mlflow could not start" in w for w in warnings)
    assert any("tracker wandb needs the 'wandb' package (pip install 'focalexp[wandb]')" in w for w in warnings)
    assert any("tracker flaky_test failed (OSError: disk full)" in w for w in warnings)
    assert _Flaky.calls == 2  # dropped after its failure
    assert _steps(_tb_scalars(tmp_path / "run")["train/loss"]) == ALL_STEPS  # the others went on


def test_trackers_config():
    assert resolve_run_config(tiny_run()).train.trackers == ["tensorboard"]
    base = resolve_run_config(tiny_run())
    other = resolve_run_config(tiny_run(train={"trackers": ["wandb", "mlflow"], "log_every": 7}))
    assert other.run_id == base.run_id  # where a run logs is not what it computes
    assert resolve_run_config(tiny_run(train={"trackers": []})).train.trackers == []
    with pytest.raises(ConfigError, match=r"^train\.trackers: unknown tracker 'tensorbord' \(did you mean "
                                          r"'tensorboard'\?\); allowed: tensorboard, wandb, mlflow"):
        resolve_run_config(tiny_run(train={"trackers": ["tensorbord"]}))
    with pytest.raises(ConfigError, match=r"^train\.trackers: 'wandb' is listed twice"):
        resolve_run_config(tiny_run(train={"trackers": ["wandb", "wandb"]}))
    with pytest.raises(ConfigError, match=r"^train\.trackers: expected a list"):
        resolve_run_config(tiny_run(train={"trackers": "wandb"}))
    with pytest.raises(ConfigError, match=r"^train\.log_every: expected >= 1"):
        resolve_run_config(tiny_run(train={"log_every": 0}))


def test_a_detection_rows_coco_numbers_become_eval_scalars():
    from focalexp.train.trackers import epoch_scalars

    row = {"epoch": 3, "train_loss": 1.5, "box_ap": 12.5, "box_ap50": 30.0, "box_ap_m": None, "mask_ap75": 4,
           "box_ap_per_class": {"disk": 3.0}, "box_ap_context": 7.0, "ema_box_ap": 13.0, "ema_mask_ap": 9.0,
           "detections": 120}
    assert epoch_scalars(row) == {"epoch": 3, "train_epoch/loss": 1.5, "eval/box_ap": 12.5, "eval/box_ap50": 30.0,
                                  "eval/mask_ap75": 4, "eval/box_ap_context": 7.0, "eval_ema/box_ap": 13.0,
                                  "eval_ema/mask_ap": 9.0}
