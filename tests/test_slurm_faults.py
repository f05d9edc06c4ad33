"""Faults on the real local SLURM cluster (scripts/slurm-local.sh start): a run killed for memory, `status`
with job accounting off (slurmdbd stopped), and the node set DOWN under a running job. No mocks.

These tests stop slurmdbd and set the node down, so they run only on the cluster that scripts/slurm-local.sh
set up (its slurm.conf), as root; elsewhere they skip, and with FOCALEXP_REQUIRE_SLURM=1 (CI) they fail.
Each one leaves the cluster as it found it (slurmdbd running, node up, its jobs cancelled), also when it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_slurm import job_ids, slurm_cluster, spec_for, sweep_cli, wait_for  # noqa: F401 (autouse fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm-local.sh"
MARK = "# written by focalexp scripts/slurm-local.sh"


def _local_cluster() -> str | None:
    """None where the fault tests may disrupt the cluster; else why not."""
    if os.geteuid() != 0:
        return "the fault tests stop slurmdbd and set the node down: they need root"
    try:
        conf = Path("/etc/slurm/slurm.conf").read_text()
    except OSError as e:
        return f"no /etc/slurm/slurm.conf ({e.strerror})"
    if MARK not in conf:
        return "the cluster was not set up by scripts/slurm-local.sh: the fault tests run only on that one"
    r = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    return None if r.returncode == 0 else f"scripts/slurm-local.sh status: not healthy\n{r.stdout}{r.stderr}"


@pytest.fixture(scope="module", autouse=True)
def local_cluster(slurm_cluster):  # noqa: F811
    why = _local_cluster()
    if why:
        if os.environ.get("FOCALEXP_REQUIRE_SLURM") == "1":
            pytest.fail(f"FOCALEXP_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)


def script(cmd: str) -> None:
    r = subprocess.run([str(SCRIPT), cmd], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"slurm-local.sh {cmd}: {r.stdout}{r.stderr}"


def node_of(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def node_state(node: str) -> str:
    return subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def sacct_ok() -> bool:
    return subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=30).returncode == 0


def status_json(sw: Path) -> tuple[list[dict], float]:
    """`focalexp status --json` as a user runs it; its records and how long it took."""
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "focalexp", "status", str(sw), "--json"], capture_output=True,
                       text=True, timeout=120)
    took = time.time() - t0
    assert r.stdout.startswith("["), r.stdout + r.stderr
    return json.loads(r.stdout), took


@pytest.fixture
def restore(tmp_path):
    """Teardown: the sweep's jobs cancelled, slurmdbd running, the node resumed; the cluster healthy."""
    downed: list[str] = []
    yield downed
    sw = tmp_path / "sw"
    ids = sorted({j.split("_")[0] for j in job_ids(sw)}) if (sw / "jobs.jsonl").exists() else []
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)
    for node in downed:
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], capture_output=True, timeout=30)
    if not sacct_ok():
        script("dbd-start")

    def settled() -> bool:  # the jobs gone from the queue (not even completing), the nodes back
        queued = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True, timeout=30).stdout
        return not set(ids) & set(queued.split()) and \
            all(node_state(n) in ("idle", "mixed", "allocated") for n in downed)

    wait_for(settled, 60, every=0.25)
    assert sacct_ok()
    script("status")


def test_a_run_killed_for_memory_reads_killed_out_of_memory_within_60_s(tmp_path, restore):
    # 0.25 GB: the job's Python passes it while it imports torch (about 0.4 GB), the cgroup's limit kills it
    spec = spec_for({"model.focal_levels": [1]}, train={"epochs": 1})
    spec["launcher"]["mem_gb"] = 0.25
    r = sweep_cli(tmp_path, spec)
    assert r.returncode == 0 and "submitted 1 (slurm)" in r.stdout, r.stdout + r.stderr
    t0 = time.time()
    sw = tmp_path / "sw"

    def killed():
        (st,), _ = status_json(sw)
        return st if st["state"] not in ("queued", "running") else None

    st = wait_for(killed, 60, every=1)
    took = time.time() - t0
    print(f"\nkilled for memory: '{st['state']}: {st['reason']}' in status {took:.1f} s after the submission")
    assert st["state"] == "killed" and st["scheduler_state"] == "OUT_OF_MEMORY", st
    assert st["reason"].startswith("out of memory"), st  # status prints "killed: out of memory (...)"
    # slurmstepd's line, for the user: the cgroup's oom killer, or the RSS sampling (slurm-local.sh's fallback)
    assert any("oom-kill" in line or "exceeded memory limit" in line for line in st["log_tail"]), st["log_tail"]
    assert not (sw / "runs" / st["run_id"] / "result.json").exists() or \
        json.loads((sw / "runs" / st["run_id"] / "result.json").read_text())["status"] != "done"
    sub = subprocess.run(["sacct", "-P", "-n", "-j", st["job_id"].split("_")[0], "-o", "JobID,State"],
                         capture_output=True, text=True, timeout=30).stdout
    if "OverMemoryKill" not in Path("/etc/slurm/slurm.conf").read_text():
        assert "OUT_OF_MEMORY" in sub, sub  # the cgroup's limit killed the step (RSS sampling: CANCELLED)


def test_status_with_accounting_off_answers_from_squeue_and_run_dirs_within_5_s(tmp_path, restore):
    # two runs, one at a time: one runs, the other waits in the array's throttle (a third, finished run would
    # read done from its result.json, as without slurmdbd: it costs 10 s more here)
    spec = spec_for({"model.focal_levels": [1, 2]}, train={"epochs": 30})
    spec["launcher"]["array_parallelism"] = 1
    r = sweep_cli(tmp_path, spec)
    assert r.returncode == 0 and "submitted 2 (slurm)" in r.stdout, r.stdout + r.stderr
    sw = tmp_path / "sw"
    wait_for(lambda: any((d / "claim.json").exists() for d in (sw / "runs").iterdir()), 120, every=0.5)
    script("dbd-stop")
    assert not sacct_ok()  # accounting is off
    states, took = status_json(sw)
    print(f"\nstatus with slurmdbd stopped: {took:.2f} s")
    assert took < 5
    assert sorted(s["state"] for s in states) == ["queued", "running"], states
    running = next(s for s in states if s["state"] == "running")
    assert (sw / "runs" / running["run_id"] / "claim.json").exists()
    assert {s["scheduler_state"] for s in states} == {"RUNNING", "PENDING"}  # squeue's word
    script("dbd-start")
    assert sacct_ok()
    # slurmctld hands slurmdbd what it queued meanwhile: the jobs are in the accounting again
    ids = {j.split("_")[0] for j in job_ids(sw)}
    wait_for(lambda: ids <= {ln.split("|")[0].split("_")[0] for ln in subprocess.run(
        ["sacct", "-X", "-P", "-n", "-j", ",".join(ids), "-o", "JobID"], capture_output=True, text=True,
        timeout=30).stdout.split()}, 30, every=0.5)


def test_a_node_set_down_under_a_running_job_requeues_it_and_the_run_resumes_when_it_returns(tmp_path, restore):
    run = {"epochs": 2, "checkpoint_every_steps": 2}
    spec = spec_for({"model.focal_levels": [2]}, train=run)
    r = sweep_cli(tmp_path, spec)
    assert r.returncode == 0, r.stdout + r.stderr
    sw = tmp_path / "sw"
    (job,) = job_ids(sw)
    (st,), _ = status_json(sw)
    rd = sw / "runs" / st["run_id"]
    wait_for(lambda: (rd / "last.pth").exists(), 240, every=0.25)  # training: its first checkpoint is written
    node = node_of(job)
    assert node
    t0 = time.time()
    restore.append(node)
    subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=focalexp test"], check=True,
                   timeout=30)

    def requeued():
        (s,), _ = status_json(sw)
        return s if s["state"] not in ("running",) else None

    s = wait_for(requeued, 60, every=0.5)
    print(f"\nnode down: status '{s['state']}' ({s['scheduler_state']}) after {time.time() - t0:.1f} s")
    assert s["state"] == "requeued", s
    assert node_state(node).startswith("down")
    subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=True, timeout=30)
    t1 = time.time()
    final = wait_for(lambda: next(iter(x for x in status_json(sw)[0] if x["state"] in ("done", "failed")), None),
                     240, every=1)
    print(f"node back: run {final['state']} {time.time() - t1:.1f} s later ({time.time() - t0:.1f} s after down)")
    assert final["state"] == "done", final
    epochs = [json.loads(x)["epoch"] for x in (rd / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # each epoch once: the requeued job resumed from last.pth
    from focalexp import provenance

    attempts = provenance.read(rd)  # the first start and the one after the node came back, same SLURM job
    assert len(attempts) == 2 and {a["job"]["id"] for a in attempts} == {job}
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    assert "Restarts=1" in info, info
