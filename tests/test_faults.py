"""Faults a sweep must survive, with real processes and real files: the launcher's whole process group
SIGKILLed (a closed terminal, an OOM kill of the login shell) at random moments, again and again, and a
run's task killed alone. Killed is not failed: the same command resubmits what was killed.

(The SLURM side, a task's own sacct record over its array's, is in test_slurm.py.)
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from focalexp.sweep import counts, status
from focalexp.sweep.backends.slurm import parse_sacct

from .conftest import invoke
from .test_sweep import _wait_group_dead, tiny_spec, write_spec


# ------------------------------------------------------------------ sacct: the freshest record wins
def test_a_task_record_wins_over_the_stale_array_record_that_expands_to_it():
    """The lines `sacct -X -P -n --format JobID,State,ExitCode,Reason` printed on the cluster while task 3
    of a throttled array ran: its own RUNNING record and the array's not-yet-updated PENDING one (in
    either order), the running task is running."""
    stale = "9_[3-4%5]|PENDING|0:0|JobArrayTaskLimit"
    own = "9_3|RUNNING|0:0|None"
    for lines in ([own, stale], [stale, own]):
        got = parse_sacct("\n".join(["9_0|COMPLETED|0:0|None", *lines, "9_2|CANCELLED by 0|0:15|None"]) + "\n")
        assert got["9_3"] == ("RUNNING", "exit 0:0")
        assert got["9_4"] == ("PENDING", "exit 0:0, JobArrayTaskLimit")
        assert got["9_0"][0] == "COMPLETED" and got["9_2"] == ("CANCELLED", "exit 0:15")
    assert parse_sacct("garbage\n|||\n") == {}


# ------------------------------------------------------------------ the launcher's process group killed
def _files(sw: Path, pattern: str) -> list[Path]:
    return list(sw.glob(pattern)) if sw.exists() else []


def _mtimes(sw: Path) -> dict[Path, int]:
    out = {}
    for p in _files(sw, "runs/*/last.pth"):
        try:
            out[p] = p.stat().st_mtime_ns
        except OSError:
            pass
    return out


def _claims(sw: Path) -> set[str]:
    out = set()
    for p in _files(sw, "runs/*/claim.json"):
        try:
            out.add(str(json.loads(p.read_text())["job_id"]))
        except (OSError, ValueError, KeyError):
            pass
    return out


def _trigger(phase: str, sw: Path, proc: subprocess.Popen, rng: random.Random, timeout: float = 90) -> str | None:
    """Wait for the moment of ``phase``; returns what was seen, or None when the launcher ended first."""
    old_claims, old_ckpt = _claims(sw), _mtimes(sw)
    lines0 = len((sw / "jobs.jsonl").read_text().splitlines()) if (sw / "jobs.jsonl").exists() else 0
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if phase == "submission":  # a new "submitting" line: the launcher is handing runs to submitit
            if (sw / "jobs.jsonl").exists() and len((sw / "jobs.jsonl").read_text().splitlines()) > lines0:
                time.sleep(rng.uniform(0, 0.3))
                return "jobs.jsonl line"
        elif phase == "start-up":  # a job claimed its run dir: its task is importing, building, resuming
            if _claims(sw) - old_claims:
                time.sleep(rng.uniform(0, 1.0))
                return "claim.json"
        elif phase == "mid-epoch":  # a checkpoint written by this launch's jobs, then a little further
            now = _mtimes(sw)
            if any(now[p] != old_ckpt.get(p) for p in now):
                time.sleep(rng.uniform(0, 0.2))
                return "last.pth written"
        elif phase == "checkpoint write":  # a checkpoint being written (its temporary file), else just replaced
            if _files(sw, "runs/*/.last.pth.*.tmp"):
                return "last.pth temporary file"
            now = _mtimes(sw)
            if any(now[p] != old_ckpt.get(p) for p in now):
                return "last.pth replaced"
            continue  # poll as fast as we can
        time.sleep(0.01)
    return None


def _launch(spec_path: Path, sw: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "focalexp", "sweep", str(spec_path), "--dir", str(sw)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _checkpoints_load(sw: Path) -> int:
    import torch

    n = 0
    for p in _files(sw, "runs/*/last.pth") + _files(sw, "runs/*/best.pth"):
        torch.load(p, map_location="cpu", weights_only=True)  # raises on a torn or corrupt file
        n += 1
    return n


@pytest.mark.slow
def test_process_group_sigkilled_at_random_moments_then_rerun_every_run_done_once(tmp_path):
    """One small sweep, its launcher's process group (launcher, controllers, tasks) SIGKILLed in each phase
    (seeded: which phase first, how long after the moment) and started again: every kill leaves killed or
    missing runs (never failed) and loadable checkpoints; the last launch finishes with exit 0, every run
    done, each epoch logged exactly once. (It replaces test_sweep's single kill of a launcher mid-run.)"""
    rng = random.Random(1515)
    spec = tiny_spec(grid={"model.focal_levels": [1, 2]})
    trials = max(5, int(os.environ.get("FOCALEXP_KILL_TRIALS", "5")))  # more for the README's figures
    epochs = 2 if trials <= 5 else trials // 2  # enough work left for every kill
    spec["base"]["train"].update(epochs=epochs, checkpoint_every_steps=1)
    spec["base"]["data"].update(train_size=128, val_size=32)  # 4 steps an epoch, a checkpoint after each
    spec["launcher"]["array_parallelism"] = 2
    p = write_spec(tmp_path, spec)
    sw = tmp_path / "sw"
    phases = ["submission", "start-up", "mid-epoch", "checkpoint write"]
    rng.shuffle(phases)
    phases.append(rng.choice(["submission", "start-up"]))  # a fifth kill, of the quick kind
    # FOCALEXP_KILL_TRIALS=40 pytest tests/test_faults.py -k group -s: 40 kills (the README's figures)
    phases += [rng.choice(["submission", "start-up", "mid-epoch", "checkpoint write"]) for _ in range(trials - 5)]
    kills = []
    for phase in phases:
        t0 = time.time()
        proc = _launch(p, sw)
        try:
            seen = _trigger(phase, sw, proc, rng)
            alive = proc.poll() is None
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _wait_group_dead(proc.pid)
        kills.append((phase, seen, alive, round(time.time() - t0, 1)))
        states = status(sw)
        # never failed: killed, or missing/stopped when it died before its job was recorded; all resubmitted
        assert {s.state for s in states} <= {"killed", "missing", "stopped", "done"}, (
            phase, [(s.state, s.reason) for s in states])
        assert all(s.charged is False for s in states if s.state == "killed")  # not the run's fault: no bound
        _checkpoints_load(sw)
    assert all(seen and alive for _, seen, alive, _ in kills), kills  # every trial killed a sweep at work
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "focalexp", "sweep", str(p), "--dir", str(sw)],
                       capture_output=True, text=True, timeout=300)
    kills.append(("final", round(time.time() - t0, 1)))
    assert r.returncode == 0, r.stdout + r.stderr
    after = status(sw)
    assert counts(after) == {"done": 2}
    for s in after:
        epochs = [json.loads(x)["epoch"] for x in (sw / "runs" / s.run_id / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, spec["base"]["train"]["epochs"] + 1)), (s.run_id, epochs)
        assert s.attempts >= 2  # every launch's submission is counted
    assert _checkpoints_load(sw) == 4
    print(f"\n{len(phases)} kills of the whole process group, {len(phases)} survived "
          f"(every run done once, every epoch logged once, no checkpoint corrupt):", kills)


# ------------------------------------------------------------------ a task killed alone
def _kill_next_task(sw: Path, stop: threading.Event) -> threading.Thread:
    """A thread that SIGKILLs the task of the next job that claims a run dir (the launcher lives on)."""
    old = _claims(sw)

    def go():
        while not stop.is_set():
            for c in _files(sw, "runs/*/claim.json"):
                try:
                    claim = json.loads(c.read_text())
                except (OSError, ValueError):
                    continue
                if str(claim.get("job_id")) not in old:
                    os.kill(int(claim["pid"]), signal.SIGKILL)
                    return
            time.sleep(0.02)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


@pytest.mark.slow
def test_a_task_killed_by_a_signal_reads_killed_and_reruns_up_to_max_retries(tmp_path):
    """The task SIGKILLed alone (what the OOM killer does): its controller records the signal, the run
    reads killed (not failed), the sweep says the same command resubmits it; killed again past
    launcher.max_retries (1 here) it is held with the reason, and --retry-failed runs it to the end."""
    spec = tiny_spec(grid={"model.focal_levels": [1]})
    spec["base"]["train"]["epochs"] = 1
    spec["base"]["data"].update(train_size=64, val_size=32)
    spec["launcher"]["max_retries"] = 1
    p = write_spec(tmp_path, spec)
    sw = tmp_path / "sw"
    for n in (1, 2):
        stop = threading.Event()
        t = _kill_next_task(sw, stop)
        r = invoke("sweep", str(p), "--dir", str(sw))
        stop.set()
        t.join()
        assert r.returncode == 1, r.stdout + r.stderr
        (st,) = status(sw)
        assert st.state == "killed" and "signal 9 (SIGKILL)" in st.reason and st.charged, st
        assert st.attempts == n and st.kills == n
        if n == 1:
            assert "1 run was killed; the same command resubmits it" in r.stdout
    assert "killed or timed out 2 times in a row (launcher.max_retries: 1); --retry-failed" in st.reason
    assert "the same command leaves it" in r.stdout
    r = invoke("sweep", str(p), "--dir", str(sw))
    assert "submitted 0" in r.stdout and "left alone: 1 killed" in r.stdout
    js = json.loads(invoke("status", str(sw), "--json").stdout)
    assert js[0]["state"] == "killed" and js[0]["attempts"] == 2 and js[0]["kills"] == 2
    r = invoke("sweep", str(p), "--dir", str(sw), "--retry-failed")
    assert r.returncode == 0, r.stdout + r.stderr
    (st,) = status(sw)
    assert st.state == "done" and st.attempts == 3 and st.kills == 0
    events = [json.loads(x) for x in (sw / "jobs.jsonl").read_text().splitlines()]
    subs = [e for e in events if e["event"] == "submitted"]
    assert [(e["attempt"], e["after"], e.get("forced")) for e in subs] == [(1, None, None), (2, "killed", False),
                                                                          (3, "killed", True)]


# ------------------------------------------------------------------ a task killed by the kernel's OOM killer
def _memory_cgroup(name: str, limit_mb: int) -> tuple[Path, str] | None:
    """A memory cgroup of ``limit_mb`` (v1 or v2) and the shell line that moves a job into it; None where this
    process may not make one (not root, no writable cgroup fs)."""
    for root, limit in ((Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"),
                        (Path("/sys/fs/cgroup"), "memory.max")):
        if not (root / limit).exists() and not (root / "cgroup.controllers").exists():
            continue
        cg = root / name
        try:
            cg.mkdir()
            (cg / limit).write_text(str(limit_mb * 2**20))
        except OSError:
            try:
                cg.rmdir()
            except OSError:
                pass
            continue
        return cg, f"echo $$ > {cg}/cgroup.procs"
    return None


@pytest.mark.slow
def test_a_task_the_oom_killer_kills_twice_reads_out_of_memory_and_waits(tmp_path):
    """The job runs in a memory cgroup too small for it (launcher.setup moves it there): the kernel's OOM
    killer kills the task, its controller sees the signal and the cgroup's OOM count, the run reads killed
    for out of memory; a re-run resubmits it once, and after the second OOM kill it waits with the reason."""
    made = _memory_cgroup(f"focalexp-oom-{os.getpid()}", 120)
    if made is None:
        pytest.skip("no memory cgroup can be made here (needs root and a writable cgroup file system)")
    cg, line = made
    try:
        spec = tiny_spec(grid={"model.focal_levels": [1]})
        spec["launcher"]["setup"] = [line]
        p = write_spec(tmp_path, spec)
        sw = tmp_path / "sw"
        for n in (1, 2):
            r = invoke("sweep", str(p), "--dir", str(sw), "--allow-setup")
            assert r.returncode == 1, r.stdout + r.stderr
            (st,) = status(sw)
            assert st.state == "killed" and st.oom and "out of memory" in st.reason, st
            assert st.attempts == n and st.oom_kills == n
        assert "killed for out of memory 2 times; raise launcher.mem_gb" in st.reason
        assert "the same command leaves it" in r.stdout
        r = invoke("sweep", str(p), "--dir", str(sw), "--allow-setup")
        assert "submitted 0" in r.stdout
    finally:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                cg.rmdir()
                break
            except OSError:  # processes still leaving it
                time.sleep(0.2)


# ------------------------------------------------------------------ SLURM's endings, as sacct prints them
@pytest.mark.parametrize("sacct_line, pickled, state, words", [
    ("7|OUT_OF_MEMORY|0:125|None", False, "killed", "out of memory"),
    ("7|TIMEOUT|0:0|None", False, "timeout", "time limit"),
    ("7|DEADLINE|0:0|None", False, "timeout", "time limit"),
    ("7|NODE_FAIL|0:0|None", False, "killed", "node failure"),
    ("7|FAILED|0:9|None", False, "killed", "signal 9 (SIGKILL)"),  # sbatch's own shell SIGKILLed
    ("7|FAILED|137:0|None", False, "killed", "signal 9 (SIGKILL)"),  # a shell's 128 + 9
    ("7|FAILED|3:0|None", False, "failed", "FAILED (exit 3:0)"),  # exited 3 before any Python raised
    ("7|FAILED|1:0|None", True, "failed", "ValueError: boom"),  # the task raised
    ("7|CANCELLED by 0|0:15|None", False, "cancelled", "cancelled"),
])
def test_slurm_endings_map_to_killed_timeout_failed_cancelled(tmp_path, sacct_line, pickled, state, words):
    import pickle

    from focalexp.sweep.backends.slurm import SlurmBackend
    from focalexp.sweep.store import SweepDir

    sw = SweepDir(tmp_path / "sw")
    pkl = sw.logs / "7" / "7_0_result.pkl"
    pkl.parent.mkdir(parents=True)
    if pickled:  # what submitit leaves when the task raised
        pkl.write_bytes(pickle.dumps(("error", "Traceback (most recent call last):\nValueError: boom\n")))
    job = {"job_id": "999999999", "result_pickle": str(pkl)}  # no such job: no step record to find
    (sched,) = parse_sacct(sacct_line).values()
    v = SlurmBackend()._state("0123456789ab", job, sched, sw, None)
    assert v.state == state and words in v.reason, v
    assert v.oom == (words == "out of memory")
