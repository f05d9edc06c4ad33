"""Sweeps on a real SLURM cluster (scripts/slurm-local.sh start): job arrays, a run that raises, a
cancelled job, and a run requeued mid-training that resumes to the same result. No mocks.

Skipped where no cluster answers; with FOCALEXP_REQUIRE_SLURM=1 (CI) a missing cluster is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from focalexp.sweep import cancel, collect, status

from .conftest import tiny_run
from .test_provenance import code_repo, git, set_version

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _cluster_up() -> str | None:
    """None when a cluster answers with a usable node; else why not."""
    if shutil.which("sinfo") is None or shutil.which("srun") is None:
        return "no SLURM client on PATH (start one with: sudo scripts/slurm-local.sh start)"
    end = time.time() + 60  # a node still completing the previous module's last job is usable in seconds
    while True:
        try:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            return "sinfo timed out"
        states = out.stdout.split()
        if out.returncode == 0 and any(s.rstrip("*") in ("idle", "mixed", "allocated") for s in states):
            return None
        if out.returncode != 0 or "completing" not in states or time.time() > end:
            return f"no usable SLURM node (sinfo: {out.stdout.strip() or out.stderr.strip()})"
        time.sleep(1)


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    why = _cluster_up()
    if why:
        if os.environ.get("FOCALEXP_REQUIRE_SLURM") == "1":
            pytest.fail(f"FOCALEXP_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)


def spec_for(grid: dict, **base_over) -> dict:
    base = tiny_run(**base_over)
    base.pop("seed")
    base["train"].pop("threads", None)
    return {"name": "slurm_test", "base": base, "grid": grid,
            "launcher": {"cluster": "slurm", "cpus_per_task": 1, "timeout_min": 5, "mem_gb": 2}}


def sweep_cli(tmp: Path, spec: dict, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return subprocess.run([sys.executable, "-m", "focalexp", "sweep", str(p), "--dir", str(tmp / "sw"), *extra],
                          capture_output=True, text=True, timeout=timeout)


def wait_for(pred, timeout: float, every: float = 2.0):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"condition not met in {timeout} s")


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-j", ",".join(sorted({j.split('_')[0] for j in job_ids})),
                          "--format", "JobID,State"], capture_output=True, text=True, timeout=30).stdout
    return {ln.split("|")[0]: ln.split("|")[1] for ln in out.splitlines() if "|" in ln}


def job_ids(sw: Path) -> list[str]:
    return [json.loads(x)["job_id"] for x in (sw / "jobs.jsonl").read_text().splitlines()
            if json.loads(x)["event"] == "submitted"]


def test_sweep_is_job_arrays_split_at_max_size_returns_at_once_and_completes(tmp_path):
    spec = spec_for({"model.focal_levels": [1, 2, 3]})
    spec["launcher"]["max_array_size"] = 2  # the cluster's MaxArraySize is 1001; split as if it were 2
    t0 = time.time()
    r = sweep_cli(tmp_path, spec)
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.time() - t0 < 60 and "submitted 3 (slurm)" in r.stdout
    assert "SLURM job(s) " in r.stdout and f"focalexp report {tmp_path / 'sw'}" in r.stdout  # the backend's line
    ids = job_ids(tmp_path / "sw")
    groups: dict[str, list[str]] = {}
    for j in ids:
        groups.setdefault(j.split("_")[0], []).append(j)
    # split in two: an array of 2 tasks (A_0, A_1) and the remaining run (submitit sends one alone as a job)
    assert sorted(len(v) for v in groups.values()) == [1, 2]
    assert sorted(j.split("_")[1] for v in groups.values() if len(v) == 2 for j in v) == ["0", "1"]
    # status answers at once while the jobs are queued or running
    t0 = time.time()
    early = status(tmp_path / "sw")
    assert time.time() - t0 < 30
    assert {s.state for s in early} <= {"queued", "running", "done"}
    # the same spec again: nothing resubmitted, and --wait follows the sweep to its end
    r = sweep_cli(tmp_path, spec, "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "submitted 0 (slurm)" in r.stdout and "3 done" in r.stdout
    assert set(sacct_states(ids).values()) == {"COMPLETED"}
    df = collect(tmp_path / "sw")
    assert len(df) == 3 and (df["status"] == "done").all() and df["top1"].notna().all()


def test_a_run_that_raises_and_a_cancelled_job_are_reported_without_hanging(tmp_path):
    spec = spec_for({"train.device": ["cuda", "cpu"]}, train={"epochs": 30})
    r = sweep_cli(tmp_path, spec)
    assert r.returncode == 0, r.stdout + r.stderr
    sw = tmp_path / "sw"
    by_dev = {s.axes["train.device"]: s for s in status(sw)}
    long_job = by_dev["cpu"].job_id
    # cancel the long run once it trains (focalexp cancel: scancel through the SLURM backend)
    wait_for(lambda: (sw / "runs" / by_dev["cpu"].run_id / "metrics.jsonl").exists(), 240)
    r = subprocess.run([sys.executable, "-m", "focalexp", "cancel", str(sw), "--run", by_dev["cpu"].run_id],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith(f"cancelled 1 run(s): {by_dev['cpu'].run_id}"), r.stdout + r.stderr

    def settled():  # and accounted: under load sacct records a finished job seconds later (until then the
        # failure is read from the job's own files, without the scheduler's state)
        st = {s.axes["train.device"]: s for s in status(sw)}
        done = st["cuda"].state == "failed" and st["cpu"].state == "cancelled"
        return st if done and st["cuda"].scheduler_state is not None else None

    st = wait_for(settled, 180)
    assert sacct_states([long_job])[long_job].startswith("CANCELLED")
    assert "no GPU" in st["cuda"].reason and st["cuda"].scheduler_state == "FAILED"
    assert st["cuda"].log_tail  # the job's stderr tail comes with the failure
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "focalexp", "status", str(sw)], capture_output=True, text=True,
                       timeout=120)
    assert time.time() - t0 < 60 and r.returncode == 1
    assert "cancelled" in r.stdout and "failed" in r.stdout and "no GPU" in r.stdout
    # --retry-failed resubmits both (and the cancelled one continues from its checkpoint)
    r = sweep_cli(tmp_path, spec, "--retry-failed", "--set", "base.train.epochs=30")
    assert "submitted 2 (slurm)" in r.stdout
    assert by_dev["cpu"].run_id in cancel(sw).cancelled  # the resubmitted long run, queued or running


def test_requeued_mid_training_resumes_to_the_same_result(tmp_path):
    run = {"epochs": 3, "checkpoint_every_steps": 2}
    spec = spec_for({"model.focal_levels": [2]}, train=run, data={"train_size": 512, "val_size": 64})
    r = sweep_cli(tmp_path, spec)
    assert r.returncode == 0, r.stdout + r.stderr
    sw = tmp_path / "sw"
    (st,) = status(sw)
    rd = sw / "runs" / st.run_id
    wait_for(lambda: (rd / "metrics.jsonl").exists(), 240, every=0.5)  # mid-training: after epoch 1
    # what SLURM sends before a time limit / on preemption (signal_delay_s): USR2 to the job's steps
    subprocess.run(["scancel", "--signal=USR2", st.job_id], check=True, timeout=30)
    wait_for(lambda: json.loads((rd / "result.json").read_text()).get("status") == "interrupted", 120, every=0.5)
    seen = set()

    def finished():
        s = status(sw)[0]
        seen.add(s.state)
        return s if s.state in ("done", "failed") else None

    final = wait_for(finished, 420)
    assert final.state == "done", final.reason
    assert seen & {"requeued", "queued", "running"}
    info = subprocess.run(["scontrol", "show", "job", final.job_id], capture_output=True, text=True).stdout
    restarts = [w for w in info.split() if w.startswith("Restarts=")]
    assert not restarts or int(restarts[0].split("=")[1]) >= 1
    epochs = [json.loads(x)["epoch"] for x in (rd / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    from focalexp import provenance

    attempts = provenance.read(rd)  # the start and the requeue, each with its SLURM job
    assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1)) and len(attempts) >= 2
    assert all(a["slurm"]["job_id"] and a["slurm"]["nodelist"] for a in attempts)
    assert {a["job"]["id"] for a in attempts} == {final.job_id}
    # the same config trained without interruption, in this process, with the job's one thread
    from focalexp.train.config import resolve_run_config
    from focalexp.train.loop import train

    cfg = resolve_run_config(json.loads((rd / "run.json").read_text())["config"])
    cfg.train.threads = 1
    threads = torch.get_num_threads()
    try:
        ref = train(cfg, tmp_path / "ref", progress=False)
    finally:
        torch.set_num_threads(threads)
    got = json.loads((rd / "result.json").read_text())
    assert got["top1"] == ref["top1"] and got["eval_loss"] == ref["eval_loss"]
    a = torch.load(rd / "last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "ref" / "last.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_job_held_in_the_queue_across_an_edit_runs_the_snapshot(tmp_path):
    """launcher.snapshot: the job is submitted held (sbatch --hold), focalexp's version is edited in the
    checkout it was submitted from, the job is released: it runs the code of the submission."""
    repo = code_repo(tmp_path)
    set_version(repo, "1.0.0-before")
    git(repo, "commit", "-qam", "before")
    head = git(repo, "rev-parse", "HEAD").strip()
    spec = spec_for({"model.focal_levels": [2]}, train={"epochs": 1})
    spec["launcher"]["snapshot"] = True
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    # the launcher (launch(), as the CLI calls it) with its jobs submitted held: sbatch --hold
    held = ("import sys; from focalexp.sweep import launch, load_spec; from focalexp.sweep.backends.slurm import "
            "SlurmBackend as B; p = B.executor_parameters; B.executor_parameters = lambda self, lc: "
            "{**p(self, lc), 'slurm_additional_parameters': {'hold': True}}; "
            "launch(load_spec(sys.argv[1]), sys.argv[2])")
    r = subprocess.run([sys.executable, "-c", held, str(tmp_path / "spec.yaml"), str(tmp_path / "sw")], cwd=repo,
                       env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    sw = tmp_path / "sw"
    (job,) = job_ids(sw)
    try:
        held = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T|%r"], capture_output=True, text=True, timeout=30)
        assert held.stdout.strip() == "PENDING|JobHeldUser", held.stdout + held.stderr
        set_version(repo, "2.0.0-after")  # while the job waits in the queue
        subprocess.run(["scontrol", "release", job.split("_")[0]], check=True, timeout=30)
        final = wait_for(lambda: next((s for s in status(sw) if s.state in ("done", "failed")), None), 300)
    finally:
        subprocess.run(["scancel", job.split("_")[0]], capture_output=True, timeout=30)
    assert final.state == "done", final.reason
    from focalexp import provenance

    (a,) = provenance.read(sw / "runs" / final.run_id)
    assert a["code"]["version"] == "1.0.0-before"  # the old code ran
    (snap,) = (sw / "snapshots").iterdir()
    assert a["code"]["snapshot"]["dir"] == str(snap) == a["code"]["path"]
    assert a["code"]["commit"] == a["code"]["snapshot"]["commit"] == head and a["code"]["dirty"] is False
    assert a["slurm"]["job_id"] and a["slurm"]["nodelist"] and a["job"]["backend"] == "slurm"
    df = collect(sw, write=False)
    assert list(df["code_commit"]) == [head] and list(df["code_snapshot"]) == [str(snap)]


def test_a_running_array_task_reads_running_while_its_throttled_siblings_pend(tmp_path):
    """A throttled array (4 tasks, one at a time): while it runs, sacct -X lags (a task that started is for
    seconds only in the array's PENDING record, or has its own record beside it); the task squeue saw
    running is never reported pending or requeued (the freshest record wins), and the throttle is seen
    holding the others."""
    from focalexp.sweep.backends.slurm import slurm_states

    out = subprocess.run(["sbatch", "--parsable", "--array=0-3%1", "-o", str(tmp_path / "%A_%a.out"), "-t", "2",
                          "--mem=100M", "-c", "1", "--wrap", "sleep 2"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    ids = [f"{job}_{i}" for i in range(4)]
    started: set[str] = set()
    seen_throttled = False
    try:
        end = time.time() + 60
        while time.time() < end:
            sq = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i|%T"], capture_output=True, text=True,
                                timeout=30).stdout
            truth = dict(ln.split("|") for ln in sq.split() if "|" in ln)
            started |= {j for j, s in truth.items() if s == "RUNNING"}
            ours = slurm_states(ids)
            for j in started:  # once running (no requeue here), never pending again
                assert ours.get(j, ("?",))[0] not in ("PENDING", "REQUEUED"), (j, ours, truth)
            states = {s for s, _ in ours.values()}
            seen_throttled |= "RUNNING" in states and "PENDING" in states
            if len(ours) == 4 and states == {"COMPLETED"}:
                break
            time.sleep(0.3)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    assert started == set(ids) and seen_throttled
    assert {s for s, _ in slurm_states(ids).values()} == {"COMPLETED"}


def test_a_sigkilled_task_reads_killed_and_the_same_command_resubmits_it(tmp_path):
    """The task of a running job SIGKILLed (what the OOM killer does): sacct has the job FAILED 9:0 and its
    step killed by signal 9; status reads killed (not failed) with the signal, and the same sweep command
    resubmits the run, the attempt recorded."""
    import signal

    spec = spec_for({"model.focal_levels": [2]}, train={"epochs": 30})
    r = sweep_cli(tmp_path, spec)
    assert r.returncode == 0, r.stdout + r.stderr
    sw = tmp_path / "sw"
    (st,) = status(sw)
    rd = sw / "runs" / st.run_id
    claim = wait_for(lambda: (rd / "claim.json").exists() and json.loads((rd / "claim.json").read_text()), 240,
                     every=0.2)
    os.kill(int(claim["pid"]), signal.SIGKILL)  # a one-node cluster: the task is a process of this machine
    st = wait_for(lambda: next((s for s in status(sw) if s.state not in ("running", "queued")), None), 120)
    st = wait_for(lambda: next((s for s in status(sw) if "signal 9" in s.reason), None), 60)
    assert st.state == "killed" and "signal 9 (SIGKILL)" in st.reason and st.charged, (st.state, st.reason)
    r = sweep_cli(tmp_path, spec)
    try:
        assert "submitted 1 (slurm)" in r.stdout, r.stdout + r.stderr
        (st,) = status(sw)
        assert st.attempts == 2 and st.state in ("queued", "running")
    finally:
        cancel(sw)


def test_a_detection_sweep_runs_on_slurm_and_reports_box_ap(tmp_path):
    """``task: detect`` on the cluster: a job array of detectors (Mask R-CNN over FocalNets with 1 and 2
    focal levels), COCOeval in each result, and the report's table of box AP with mask AP beside it."""
    from .test_detection import tiny_det

    base = tiny_det(train={"epochs": 1})
    base["train"].pop("threads")
    spec = {"name": "slurm_detect", "task": "detect", "base": base, "grid": {"model.focal_levels": [1, 2]},
            "report": {"baseline": {"model.focal_levels": 2}},
            "launcher": {"cluster": "slurm", "cpus_per_task": 1, "timeout_min": 5, "mem_gb": 2}}
    r = sweep_cli(tmp_path, spec, "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "submitted 2 (slurm)" in r.stdout and "2 done" in r.stdout
    assert set(sacct_states(job_ids(tmp_path / "sw")).values()) == {"COMPLETED"}
    df = collect(tmp_path / "sw")
    assert (df["status"] == "done").all() and df["box_ap"].notna().all() and df["mask_ap"].notna().all()
    rep = subprocess.run([sys.executable, "-m", "focalexp", "report", str(tmp_path / "sw")], capture_output=True,
                         text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr
    header = next(ln for ln in rep.stdout.splitlines() if ln.startswith("| model.focal_levels"))
    assert "box AP" in header and "mask AP" in header and "top-1" not in header
