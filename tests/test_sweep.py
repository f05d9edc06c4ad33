"""Sweeps without a cluster: spec validation, grid expansion, local launcher, re-runs, crash safety,
status, collect and report. (The real SLURM cluster is in test_slurm.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from focalexp.errors import ConfigError
from focalexp.sweep import collect, counts, expand, launch, parse_spec, report, status
from focalexp.sweep.job import claim_run, read_claim

from .conftest import invoke, tiny_run

REPO = Path(__file__).resolve().parents[1]


def tiny_spec(**over) -> dict:
    base = tiny_run()
    base.pop("seed")
    base["train"]["threads"] = 1
    spec = {"name": "tiny", "base": base, "grid": {"model.focal_levels": [1, 2]},
            "launcher": {"cluster": "local", "cpus_per_task": 1, "timeout_min": 10}}
    spec.update(over)
    return spec


def write_spec(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


cli = invoke  # in-process; a real process only where one is the point (the kill tests below)


# ------------------------------------------------------------------ spec and grid
def test_grid_zip_exclude_seeds_expand_as_declared():
    spec = parse_spec(tiny_spec(
        grid={"model.focal_levels": [1, 2, 3], "train.lr": [1e-3, 2e-3]},
        zip=[{"model.embed_dim": [16, 24], "model.depths": [[1, 1, 1], [1, 1, 2]]}],
        exclude=[{"model.focal_levels": 3, "train.lr": [2e-3]}, {"model.embed_dim": 24, "model.focal_levels": 1}],
        seeds=[0, 1]))
    runs = expand(spec)
    points = {(r.axes["model.focal_levels"], r.axes["train.lr"], r.axes["model.embed_dim"], r.seed) for r in runs}
    # 3 x 2 x 2 combinations, minus (3, 2e-3, *) = 2, minus (1, *, 24) = 2 -> 8 points x 2 seeds
    assert len(runs) == 16 and len(points) == 16
    assert not any(lv == 3 and lr == 2e-3 for lv, lr, _, _ in points)
    assert not any(lv == 1 and d == 24 for lv, _, d, _ in points)
    for r in runs:  # zip: embed_dim and depths vary together
        assert r.config["model"]["depths"] == ([1, 1, 1] if r.axes["model.embed_dim"] == 16 else [1, 1, 2])
        assert r.config["seed"] == r.seed and r.config["train"]["lr"] == r.axes["train.lr"]
    assert len({r.run_id for r in runs}) == 16
    # ids are content hashes: the same spec gives the same ids, a different base different ones
    assert [r.run_id for r in expand(spec)] == [r.run_id for r in runs]
    other = parse_spec(tiny_spec(grid={"model.focal_levels": [1, 2, 3], "train.lr": [1e-3, 2e-3]},
                                 zip=spec.zip, exclude=spec.exclude, seeds=[0, 1],
                                 base={**tiny_spec()["base"], "train": {**tiny_spec()["base"]["train"], "epochs": 3}}))
    assert not {r.run_id for r in expand(other)} & {r.run_id for r in runs}


def test_operational_keys_do_not_change_run_ids():
    a = expand(parse_spec(tiny_spec()))
    s = tiny_spec()
    s["base"]["train"]["threads"] = 2
    s["base"]["data"]["workers"] = 1
    assert [r.run_id for r in expand(parse_spec(s))] == [r.run_id for r in a]


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.update(grd={"model.focal_levels": [1]}), "unknown key 'grd' (did you mean 'grid'?)"),
    (lambda s: s["grid"].update({"model.focal_levels": []}), "grid.model.focal_levels: the list is empty"),
    (lambda s: s["grid"].update({"model.focal_levels": 3}), "grid.model.focal_levels: expected a list"),
    (lambda s: s["grid"].update({"train.epoch": [1, 2]}), "grid axis 'train.epoch': unknown key 'train.epoch' "
                                                           "(did you mean 'train.epochs'?)"),
    (lambda s: s["grid"].update({"model.focal_level": [1, 2]}), "grid axis 'model.focal_level'"),
    (lambda s: s["base"]["model"].update(preset="focalnet_t_sfr"), "model.preset: unknown model 'focalnet_t_sfr'; "
                                                                    "closest: focalnet_t_srf"),
    (lambda s: s["grid"].update({"model.focal_levels": [1, -1]}), "run [model.focal_levels=-1, seed=0]: model."
                                                                  "focal_levels"),
    (lambda s: s.update(seeds=[]), "seeds: the list is empty"),
    (lambda s: s.update(seeds="0"), "seeds: expected a list"),
    (lambda s: s["launcher"].update(cluster="slurmm"), "launcher.cluster: unknown value 'slurmm' (did you mean "
                                                       "'slurm'?)"),
    (lambda s: s["launcher"].update(timeout_min="1h"), "launcher.timeout_min: expected an integer"),
    (lambda s: s["launcher"].update(partiton="gpu"), "unknown key 'launcher.partiton' (did you mean "
                                                     "'launcher.partition'?)"),
    (lambda s: s.update(zip=[{"train.lr": [1e-3, 2e-3], "train.epochs": [1]}]), "zip[0]: lists of different "
                                                                                  "lengths"),
    (lambda s: s.update(exclude=[{"train.lr": 1e-3}]), "exclude[0].train.lr: not an axis"),
    (lambda s: s.update(exclude=[{"model.focal_levels": [1, 2]}]), "every combination is excluded"),
    (lambda s: s.update(task="trian"), "task: unknown value 'trian' (did you mean 'train'?)"),
    (lambda s: s.update(name="a b"), "name: 'a b' may hold only"),
    (lambda s: s["grid"].update({"train.epochs": [2, 2]}), "resolves to the same config"),
])
def test_bad_specs_fail_in_one_line_naming_the_key(tmp_path, mutate, message):
    spec = tiny_spec()
    mutate(spec)
    p = write_spec(tmp_path, spec)
    r = cli("sweep", str(p), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "sweeps").exists()  # nothing written, nothing submitted


def test_malformed_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ngrid:\n  model.focal_levels: [1, 2\nseeds: [0]\n")
    r = cli("sweep", str(p), "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "bad.yaml:" in r.stderr and "malformed YAML" in r.stderr
    line = int(r.stderr.split("bad.yaml:")[1].split(":")[0])
    assert line in (3, 4)


def test_set_overrides_any_part_of_the_spec(tmp_path):
    p = write_spec(tmp_path, tiny_spec())
    r = cli("sweep", str(p), "--dry-run", "--json", "--set", "grid.model.focal_levels=[0,3,4]",
            "--set", "seeds=[0,5]", "--set", "base.train.epochs=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    assert sorted({x["axes"]["model.focal_levels"] for x in runs}) == [0, 3, 4]
    assert sorted({x["seed"] for x in runs}) == [0, 5] and len(runs) == 6
    r = cli("sweep", str(p), "--dry-run", "--set", "launcher.nodez=2", cwd=tmp_path)
    assert r.returncode == 2 and "launcher.nodes" in r.stderr


@pytest.mark.parametrize("spec", sorted(p.name for p in (REPO / "experiments").glob("*.yaml")))
def test_shipped_cpu_specs_validate(spec, tmp_path):
    r = cli("sweep", str(REPO / "experiments" / spec), "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "runs (" in r.stdout and not (tmp_path / "sweeps").exists()


@pytest.mark.parametrize("spec", sorted(p.name for p in (REPO / "experiments" / "imagenet").glob("*.yaml")))
def test_imagenet_specs_validate_without_data(spec, monkeypatch):
    from focalexp.sweep import load_spec

    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    sp = load_spec(REPO / "experiments" / "imagenet" / spec)
    runs = expand(sp, check_data_present=False)
    assert runs and sp.launcher.gpus_per_node == 8 and sp.launcher.tasks_per_node == 8
    for r in runs:
        assert r.config["recipe"] == "imagenet_paper" and r.config["train"]["epochs"] == 300
        assert r.config["model"]["num_classes"] == 1000 and r.config["data"]["root"] == "${IMAGENET_ROOT}"
    with pytest.raises(ConfigError, match=r"data.root: environment variable \$IMAGENET_ROOT is not set"):
        expand(sp)  # submitting for real checks the data


def test_imagenet_dry_run_prints_compute_and_a_real_submission_names_the_missing_data(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    spec = str(REPO / "experiments" / "imagenet" / "components.yaml")
    r = cli("sweep", spec, "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "GPU-hours" in r.stdout and "1281167" in r.stdout and "focalnet_t_lrf_no_gating" in r.stdout
    r = cli("sweep", spec, "--cluster", "local", cwd=tmp_path)
    # 8 GPUs x 10 cores per run: refused here before anything is expanded or written
    assert r.returncode == 2 and "launcher.cpus_per_task: 10 x 8 task(s)" in r.stderr, r.stderr
    fits = [f"launcher.{k}" for k in ("tasks_per_node=1", "gpus_per_node=0", "cpus_per_task=1", "mem_gb=1")]
    r = cli("sweep", spec, "--cluster", "local", *[a for f in fits for a in ("--set", f)], cwd=tmp_path)
    assert r.returncode == 2 and "IMAGENET_ROOT" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sweeps").exists()


# ------------------------------------------------------------------ local launcher, end to end
@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """Three tiny runs (focal levels 1, 2 and one that diverges) through the local launcher."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = tiny_spec(grid={"model.focal_levels": [1, 2], "train.lr": [2e-3, 1e12]},
                     exclude=[{"model.focal_levels": 2, "train.lr": 1e12}])
    p = write_spec(tmp, spec)
    r = cli("sweep", str(p), "--dir", str(tmp / "sw"), cwd=tmp)
    return tmp, p, r


@pytest.mark.slow
def test_local_sweep_runs_every_run_and_a_failure_takes_nothing_down(local_sweep):
    tmp, _, r = local_sweep
    assert r.returncode == 1, r.stdout + r.stderr  # one run failed
    assert "submitted 3 (local)" in r.stdout
    assert "failed: run" in r.stderr and "non-finite" in r.stderr.lower()
    states = {(s.axes["model.focal_levels"], s.axes["train.lr"]): s for s in status(tmp / "sw")}
    assert states[(1, 2e-3)].state == "done" and states[(2, 2e-3)].state == "done"
    bad = states[(1, 1e12)]
    assert bad.state == "failed" and "loss" in bad.reason
    # the finished runs are complete; the failed one says what it kept
    assert "no checkpoint was written yet" in bad.reason or "hold the last good state" in bad.reason
    for key in ((1, 2e-3), (2, 2e-3)):
        rd = tmp / "sw" / "runs" / states[key].run_id
        lines = (rd / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 2 and (rd / "best.pth").exists()


@pytest.mark.slow
def test_status_command_reports_the_failure_and_exits_1(local_sweep):
    tmp, _, _ = local_sweep
    r = cli("status", str(tmp / "sw"))
    assert r.returncode == 1
    assert "2 done, 1 failed" in r.stdout and "non-finite" in r.stdout.lower()
    js = json.loads(cli("status", str(tmp / "sw"), "--json").stdout)
    assert sorted(x["state"] for x in js) == ["done", "done", "failed"]


@pytest.mark.slow
def test_what_a_newcomer_sees_of_a_local_sweep(local_sweep):
    """Off a terminal the launcher prints a line per finished run; each job log holds the run's epochs; the
    dry run of an existing sweep dir names the backend, each run's state and what a re-run would submit
    (and no GPU-hours for CPU runs); status points to the report once every run has ended."""
    from focalexp.sweep import SETTLED, wait

    tmp, p, r = local_sweep
    assert "sweep tiny: 3/3 runs finished" in r.stderr
    assert "sweep tiny: 3 runs, local processes, " in r.stderr and "Ctrl-C stops them" in r.stderr  # announce()
    logs = "".join(f.read_text(errors="replace") for f in (tmp / "sw" / "logs").rglob("*_log.err"))
    assert "epoch 1/2: loss" in logs and "epoch 2/2: loss" in logs
    assert not (tmp / "sw" / "logs" / "%j").exists()
    d = cli("sweep", str(p), "--dir", str(tmp / "sw"), "--dry-run", cwd=tmp)
    assert d.returncode == 0, d.stderr
    assert "-> local (launcher.cluster: local)" in d.stdout and "  GPU-h" not in d.stdout  # no GPU-h column
    assert "2 done, 1 failed; the sweep would submit 0" in d.stdout and "no GPU-hours" in d.stdout
    states = wait(tmp / "sw", poll_s=0.01, timeout_s=30)
    assert all(s.state in SETTLED for s in states)
    assert f"focalexp report {tmp / 'sw'}" not in cli("status", str(tmp / "sw")).stdout  # the sweep wrote it
    (tmp / "sw" / "report").rename(tmp / "sw" / "report.aside")
    try:
        assert f"every run has ended: `focalexp report {tmp / 'sw'}`" in cli("status", str(tmp / "sw")).stdout
    finally:
        (tmp / "sw" / "report.aside").rename(tmp / "sw" / "report")


@pytest.mark.slow
def test_rerun_skips_finished_and_retry_failed_resubmits_only_the_failure(local_sweep):
    tmp, p, _ = local_sweep
    done_ids = [s.run_id for s in status(tmp / "sw") if s.state == "done"]
    mtimes = {i: (tmp / "sw" / "runs" / i / "result.json").stat().st_mtime for i in done_ids}
    r = cli("sweep", str(p), "--dir", str(tmp / "sw"))
    assert "submitted 0" in r.stdout and "2 done" in r.stdout and "1 failed" in r.stdout
    r = cli("sweep", str(p), "--dir", str(tmp / "sw"), "--retry-failed")
    assert "submitted 1 (local)" in r.stdout and r.returncode == 1  # it diverges again, deterministically
    for i in done_ids:  # finished runs untouched
        assert (tmp / "sw" / "runs" / i / "result.json").stat().st_mtime == mtimes[i]
    failed = [s for s in status(tmp / "sw") if s.state == "failed"][0]
    assert list((tmp / "sw" / "runs" / failed.run_id).glob("result.failed*.json"))  # the old verdict kept aside
    events = [json.loads(x) for x in (tmp / "sw" / "jobs.jsonl").read_text().splitlines()]
    per_run = {}
    for e in events:
        if e["event"] == "submitted":
            per_run[e["run_id"]] = per_run.get(e["run_id"], 0) + 1
    assert sorted(per_run.values()) == [1, 1, 2]


@pytest.mark.slow
def test_collect_and_report(local_sweep):
    tmp, _, _ = local_sweep
    import pandas as pd

    df = collect(tmp / "sw")
    assert list(df.columns[:4]) == ["run_id", "model.focal_levels", "train.lr", "seed"]
    assert len(df) == 3 and set(df["status"]) == {"done", "failed"}
    assert df.loc[df["status"] == "done", "top1"].notna().all() and (df["params"] > 0).all()
    back = pd.read_parquet(tmp / "sw" / "results.parquet")
    assert len(back) == 3 and back["top1"].notna().sum() == 2
    assert pd.read_csv(tmp / "sw" / "results.csv").shape == df.shape
    files = report(tmp / "sw", formats=("png", "pdf"))
    md = files["markdown"].read_text()
    rows = [line.strip("|").split("|") for line in md.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in rows[0][:3]] == ["model.focal_levels", "train.lr", "top-1 (%)"]
    assert len(rows) == 3  # header + 2 done groups
    assert r"\toprule" in files["latex"].read_text()
    from PIL import Image
    import numpy as np

    for key in ("top1_vs_model_focal_levels.png", "top1_vs_gmacs.png"):
        img = np.asarray(Image.open(files[key]).convert("L"), dtype=float)
        assert img.std() > 10  # not blank
    assert files["top1_vs_gmacs.pdf"].stat().st_size > 1000
    r = cli("collect", str(tmp / "sw"), "--format", "csv")
    assert r.returncode == 0 and r.stdout.splitlines()[0].startswith("run_id,model.focal_levels,train.lr,seed")


# ------------------------------------------------------------------ crash safety, lock, claims
def _wait_group_dead(pgid: int, timeout: float = 30) -> None:
    """Until no process of group ``pgid`` is more than a zombie (read from /proc)."""
    end = time.time() + timeout
    while time.time() < end:
        live = []
        for d in Path("/proc").iterdir():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split() if d.name.isdigit() else []
            except OSError:
                continue
            if fields and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                live.append(d.name)
        if not live:
            return
        time.sleep(0.05)


# the launcher's process group killed mid-sweep, again and again: tests/test_faults.py


def test_second_launcher_on_the_same_dir_is_refused(tmp_path):
    from focalexp.sweep.store import SweepDir, SweepLocked

    sd = SweepDir(tmp_path / "sw")
    with sd.lock():
        spec = parse_spec(tiny_spec())
        with pytest.raises(SweepLocked, match="another launcher"):
            launch(spec, tmp_path / "sw")
    assert not (tmp_path / "sw" / "sweep.json").exists()


@pytest.mark.slow
def test_two_launchers_started_together_one_submits_the_other_names_it(tmp_path):
    """Two `focalexp sweep` processes on one sweep dir at the same moment: exactly one submits and runs
    the sweep; the other exits 1 at once with one line naming the holder's pid, and nothing of it is
    in the sweep dir (one submission per run, no file of its pid)."""
    spec = tiny_spec(grid={"model.focal_levels": [1]})  # one local job: the winner holds the lock while it runs
    spec["base"]["train"].update(epochs=1, trackers=[])
    spec["base"]["data"].update(train_size=64, val_size=32)
    p = write_spec(tmp_path, spec)
    sw = tmp_path / "sw"
    argv = [sys.executable, "-m", "focalexp", "sweep", str(p), "--dir", str(sw)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    ended = {}
    while len(ended) < 2:
        for i, proc in enumerate(procs):
            if i not in ended and proc.poll() is not None:
                ended[i] = time.monotonic()
        time.sleep(0.02)
    outs = [proc.communicate(timeout=300) for proc in procs]
    rcs = [proc.returncode for proc in procs]
    assert sorted(rcs) == [0, 1], (rcs, outs)
    win, lose = (0, 1) if rcs[0] == 0 else (1, 0)
    out, err = outs[lose]
    assert out == "" and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert f"another launcher (pid {procs[win].pid}) is working on this sweep dir" in line, line
    assert ended[lose] < ended[win]  # refused at once, not after waiting for the sweep
    events = [json.loads(x) for x in (sw / "jobs.jsonl").read_text().splitlines()]
    assert sorted(e["event"] for e in events) == ["submitted", "submitting"]
    assert not [q for q in sw.rglob("*") if str(procs[lose].pid) in q.name]
    assert counts(status(sw)) == {"done": 1}


def test_sweep_json_records_its_format_and_older_dirs_still_read(tmp_path):
    from focalexp.errors import FocalexpError
    from focalexp.sweep.store import FORMAT, SweepDir

    spec = parse_spec(tiny_spec())
    sd = SweepDir(tmp_path / "sw")
    sd.write_manifest(spec, expand(spec, check_data_present=False), "local")
    m = json.loads(sd.manifest_path.read_text())
    assert m["format"] == FORMAT == 1 and sd.manifest()["name"] == "tiny"
    del m["format"]  # a sweep dir written before the field existed
    sd.manifest_path.write_text(json.dumps(m))
    assert [r["run_id"] for r in sd.manifest()["runs"]] == [r["run_id"] for r in m["runs"]]
    sd.manifest_path.write_text(json.dumps({**m, "format": FORMAT + 1}))
    with pytest.raises(FocalexpError, match=f"format {FORMAT + 1}, written by a newer focalexp"):
        sd.manifest()


def test_a_live_claim_keeps_a_duplicate_job_out(tmp_path):
    rd = tmp_path / "run"
    rd.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (rd / "claim.json").write_text(json.dumps({"job_id": "other", "host": os.uname().nodename,
                                                   "pid": holder.pid, "slurm": False}))
        ok, who = claim_run(rd)
        assert not ok and who["job_id"] == "other"
        from focalexp.sweep.job import RunJob

        out = RunJob()("train", tiny_run(), str(rd), {})
        assert out["status"] == "duplicate" and not (rd / "result.json").exists()
    finally:
        holder.kill()
        holder.wait()
    ok, _ = claim_run(rd)  # a dead holder's claim is taken over
    assert ok and read_claim(rd)["pid"] == os.getpid()


# ------------------------------------------------------------------ backends, cancel
def test_a_registered_backend_is_a_choice_of_specs_and_the_cli(tmp_path, run, monkeypatch):
    """A backend is one class plus its registration; the spec, --cluster and status read the registry."""
    from focalexp.sweep import backends
    from focalexp.sweep.backends.debug import DebugBackend

    monkeypatch.setattr(backends._BACKENDS, "registered", dict(backends._BACKENDS.registered))

    @backends.register_backend
    class Inline(DebugBackend):
        name = "inline"
        description = "a newcomer's backend (the debug one, renamed)"

    assert backends.backend_names()[-1] == "inline"
    helptext = " ".join(run("sweep", "--help").stdout.split())
    assert "inline: a newcomer's backend" in helptext and "auto (default): slurm when srun is on PATH, else local" \
        in helptext
    spec = tiny_spec()
    spec["base"]["train"]["epochs"] = 1
    spec["launcher"]["cluster"] = "inline"
    out = launch(parse_spec(spec), tmp_path / "sw")
    assert out.cluster == "inline" and len(out.submitted) == 2
    assert counts(status(tmp_path / "sw")) == {"done": 2}
    events = [json.loads(x) for x in (tmp_path / "sw" / "jobs.jsonl").read_text().splitlines()]
    assert {e["cluster"] for e in events} == {"inline"}
    with pytest.raises(ConfigError, match=r"launcher.cluster: unknown value 'inlin' \(did you mean 'inline'\?\)"):
        parse_spec({**spec, "launcher": {"cluster": "inlin"}})
    # auto: slurm where srun is on PATH, else local; slurm named where it is not: one line
    monkeypatch.setenv("PATH", str(tmp_path))
    assert backends.resolve_backend("auto").name == "local"
    with pytest.raises(ConfigError, match=r"'slurm' but srun is not on PATH here .*; use 'local' or 'auto'"):
        backends.resolve_backend("slurm")


def test_cancel_stops_local_runs_with_a_checkpoint(tmp_path, run):
    """cancel() and `focalexp cancel` stop a local sweep's runs (the launcher still at work): each saves
    last.pth and stops, reads cancelled, and the launcher ends with exit 1."""
    from focalexp.sweep import cancel

    spec = tiny_spec()
    spec["base"]["train"]["epochs"] = 200
    spec["launcher"]["array_parallelism"] = 2
    p = write_spec(tmp_path, spec)
    sw = tmp_path / "sw"
    proc = subprocess.Popen([sys.executable, "-m", "focalexp", "sweep", str(p), "--dir", str(sw)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # both runs train
            if len(list(sw.glob("runs/*/metrics.jsonl"))) == 2:
                break
            time.sleep(0.2)
        first, second = sorted(d.name for d in (sw / "runs").iterdir())
        out = cancel(sw, [first])
        assert out.cancelled == [first] and not out.missed
        deadline = time.time() + 120
        while {s.run_id: s.state for s in status(sw)}[first] != "cancelled" and time.time() < deadline:
            time.sleep(0.5)
        assert {s.run_id: s.state for s in status(sw)} == {first: "cancelled", second: "running"}
        r = run("cancel", str(sw))
        assert r.stdout.strip() == f"cancelled 1 run(s): {second}; left alone: 1 cancelled"
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1 and "submitted 2 (local)" in stdout
    states = status(sw)
    assert counts(states) == {"cancelled": 2}
    for s in states:
        rd = sw / "runs" / s.run_id
        assert "cancelled (focalexp cancel)" in s.reason and (rd / "last.pth").exists()
        assert json.loads((rd / "result.json").read_text())["status"] == "interrupted"
    assert not (sw / "logs" / "%j").exists()  # submitit's folder template is no folder
    assert run("cancel", str(sw)).stdout.strip() == "cancelled 0 run(s); left alone: 2 cancelled"


# ------------------------------------------------------------------ measure task
@pytest.mark.slow
def test_measure_sweep_reports_params_gmacs_and_throughput(tmp_path):
    spec = tiny_spec(task="measure", grid={"model.focal_levels": [1, 3]},
                     measure={"batch_size": 4, "rounds": 2, "warmup": 1, "mode": "both"})
    r = cli("sweep", str(write_spec(tmp_path, spec)), "--dir", str(tmp_path / "sw"))
    assert r.returncode == 0, r.stdout + r.stderr
    df = collect(tmp_path / "sw")
    assert (df["status"] == "done").all() and (df["images_per_s"] > 0).all() and (df["train_images_per_s"] > 0).all()
    lv = df.set_index("model.focal_levels")
    assert lv.loc[3, "params"] > lv.loc[1, "params"] and lv.loc[3, "gmacs"] > lv.loc[1, "gmacs"]
    assert not any((tmp_path / "sw" / "runs" / i / "last.pth").exists() for i in df["run_id"])  # no training


def test_expand_and_estimate_build_no_model_and_import_no_torch(tmp_path):
    """A sweep is resolved and validated once, from the configs alone: expanding it and estimating its
    compute (GMACs) neither builds a module nor imports torch (a 1,200-run grid stays light and fast)."""
    spec = tiny_spec(grid={"model.focal_levels": [1, 2], "train.lr": [1e-3, 2e-3]}, seeds=[0, 1])
    code = (
        "import json, sys, focalexp; focalexp.light_imports()\n"
        "from focalexp.sweep import estimate, expand, parse_spec\n"
        f"spec = parse_spec(json.loads({json.dumps(json.dumps(spec))}))\n"
        "runs = expand(spec); rows = estimate(spec, runs)\n"
        "print(json.dumps({'runs': len(runs), 'gmacs': sorted({r['gmacs'] for r in rows}), "
        "'heavy': sorted(m for m in ('torch', 'timm', 'fvcore') if m in sys.modules)}))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["runs"] == 8 and got["heavy"] == []
    # the analytic GMACs are fvcore's
    from focalexp.analysis.flops import measure_flops, model_for_counting
    from focalexp.models import resolve_config

    want = sorted(measure_flops(model_for_counting(resolve_config({**spec["base"]["model"], "focal_levels": lv,
                                                                   "num_classes": 2, "img_size": 32})),
                                32, cross_check=False).gmacs for lv in (1, 2))
    assert got["gmacs"] == pytest.approx(want, rel=1e-12)
    with pytest.raises(ConfigError, match="focal_levels"):
        expand(parse_spec(tiny_spec(grid={"model.focal_levels": [-1]})))


def test_local_runs_start_costliest_first():
    """With 2 slots and 15 runs, the L = 4 runs start first and an L = 0 run finishes the sweep."""
    from focalexp.sweep import load_spec
    from focalexp.sweep.backends.local import longest_first

    sp = load_spec(REPO / "experiments" / "focal_levels.yaml")
    sp.seeds = [0, 1]
    runs = expand(sp)
    order = [r.axes["model.focal_levels"] for r in longest_first(sp, runs)]
    assert order == [4, 4, 3, 3, 2, 2, 1, 1, 0, 0]
    assert [r.seed for r in longest_first(sp, runs)][:2] == [0, 1]  # ties keep the spec's order
