"""Where a run's result came from: ``provenance.json`` in the run dir, one entry per attempt (the first
start, then every resume and requeue), each written atomically when the attempt starts.

An attempt records focalexp's version and the git state of its source tree (commit, dirty flag, SHA-256 of
``git diff HEAD``), the same for the working directory the run was submitted from (as it was at submission), Python/torch/timm/CUDA/cuDNN versions, the devices, the host, the SLURM job (id, array index, node
list), the command lines (of this process and of the submission) and the start time. A run started from a
code snapshot (``launcher.snapshot``) says so and names the snapshot's commit.

Nothing here fails a run: a missing git, a tree that is no checkout, a slow git (5 s per call) leave null
fields. On the node, focalexp's git state and the versions are asked once per process
(:func:`code_state`, :func:`environment`); :func:`git_state` itself asks every time (a launcher in a notebook
submits again after edits).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from .fileio import atomic_write_text

FILE = "provenance.json"
SNAPSHOT_MARK = ".focalexp-snapshot.json"  # at the root of a code snapshot: where and what it was copied from
GIT_TIMEOUT_S = 5.0


def run_git(args: list[str], cwd: Path) -> bytes | None:
    try:
        p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=GIT_TIMEOUT_S,
                           env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):  # no git, no such dir, too slow
        return None
    return p.stdout if p.returncode == 0 else None


def git_state(path: str | os.PathLike) -> dict[str, Any]:
    """``{root, commit, dirty, diff_sha256}`` of the git checkout holding ``path`` (``dirty``: ``git diff
    HEAD`` is not empty, i.e. tracked files differ from the commit; ``diff_sha256``: the hash of that diff,
    None when clean). Every field None where ``path`` is no checkout or git is missing or slow."""
    out: dict[str, Any] = {"root": None, "commit": None, "dirty": None, "diff_sha256": None}
    p = Path(path)
    if not p.is_dir():
        return out
    root = run_git(["rev-parse", "--show-toplevel"], p)
    if root is None:
        return out
    out["root"] = root.decode("utf-8", "replace").strip()
    commit = run_git(["rev-parse", "--verify", "-q", "HEAD"], p)
    if commit is None:  # a repository without a commit
        return out
    out["commit"] = commit.decode().strip()
    diff = run_git(["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff"], p)
    if diff is not None:
        out["dirty"] = bool(diff)
        out["diff_sha256"] = hashlib.sha256(diff).hexdigest() if diff else None
    return out


def code_root() -> Path:
    """The directory holding the ``focalexp`` package this process imported."""
    return Path(__file__).resolve().parent.parent


def read_snapshot_mark(root: Path) -> dict[str, Any] | None:
    try:
        mark = json.loads((root / SNAPSHOT_MARK).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return mark if isinstance(mark, dict) else None


@functools.lru_cache(maxsize=1)
def code_state() -> dict[str, Any]:
    """focalexp's version, where it was imported from, its git state, and the snapshot it runs from (if any:
    the git state is then the snapshot's, as recorded when it was made)."""
    from . import __version__

    root = code_root()
    mark = read_snapshot_mark(root)
    out: dict[str, Any] = {"version": __version__, "path": str(root)}
    if mark is not None:
        git = {k: mark.get(k) for k in ("commit", "dirty", "diff_sha256")}
        out.update(git, snapshot={"dir": str(root), "source": mark.get("source"), "created": mark.get("created"),
                                  **git})
    else:
        git = git_state(root)
        out.update({k: git[k] for k in ("commit", "dirty", "diff_sha256")}, snapshot=None)
    return out


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """Versions of Python, torch, timm, CUDA, cuDNN and the device names (CPU where there is no GPU)."""
    out: dict[str, Any] = {"python": platform.python_version(), "torch": None, "timm": None, "cuda": None,
                           "cudnn": None, "devices": [platform.processor() or platform.machine() or "cpu"]}
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        if torch.cuda.is_available():
            out["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken torch install is the run's to report, not ours
        pass
    try:
        import timm

        out["timm"] = timm.__version__
    except Exception:  # noqa: BLE001
        pass
    return out


def slurm_job() -> dict[str, Any] | None:
    """SLURM's job id, array job id and index, and node list from the environment; None outside SLURM
    (the submitit job, with its id as ``12_3`` for an array task, is the attempt's ``job``)."""
    env = os.environ
    if not env.get("SLURM_JOB_ID"):
        return None
    return {"job_id": env["SLURM_JOB_ID"], "array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
            "array_task_id": env.get("SLURM_ARRAY_TASK_ID"), "nodelist": env.get("SLURM_JOB_NODELIST")}


def workdir_state(cwd: str | os.PathLike) -> dict[str, Any]:
    """``{path, commit, dirty, diff_sha256}`` of a working directory (None git fields where it is no checkout)."""
    git = git_state(cwd)
    return {"path": str(cwd), **{k: git[k] for k in ("commit", "dirty", "diff_sha256")}}


def origin() -> dict[str, Any]:
    """What a submission knows of itself, for the attempts it starts: the working directory and its git state
    now, the command line and the time (``snapshot``: filled in by a launcher that makes one)."""
    cwd = os.getcwd()
    return {"cwd": cwd, "workdir": workdir_state(cwd), "argv": list(sys.argv), "time": time.time(), "snapshot": None}


def attempt(origin: Mapping[str, Any] | None = None, job: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One attempt's record. ``origin``: what the launcher knew at submission (``cwd``, ``workdir``: its git
    state then, ``argv``, ``time``, ``snapshot``); ``job``: the submitit job (``id``, ``backend``)."""
    origin = dict(origin or {})
    cwd = origin.get("cwd")
    workdir = origin.get("workdir") if isinstance(origin.get("workdir"), dict) else \
        workdir_state(cwd) if isinstance(cwd, str) and cwd else None
    now = time.time()
    return {
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "start_unix": now,
        "code": code_state(),
        "workdir": workdir,
        **environment(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "job": dict(job) if job else None,
        "slurm": slurm_job(),
        "argv": list(sys.argv),
        "submitted_argv": origin.get("argv"),
        "submitted_time": origin.get("time"),
        "submitted_snapshot": origin.get("snapshot"),  # the snapshot the job was sent from (code.snapshot: used)
    }


def read(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The attempts recorded in ``run_dir`` (a user file: anything but a list of mappings reads as none)."""
    try:
        data = json.loads((Path(run_dir) / FILE).read_text())
    except (OSError, ValueError, RecursionError):
        return []
    attempts = data.get("attempts") if isinstance(data, dict) else None
    return [a for a in attempts if isinstance(a, dict)] if isinstance(attempts, list) else []


def record_attempt(run_dir: str | os.PathLike, origin: Mapping[str, Any] | None = None,
                   job: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Append this attempt to ``run_dir/provenance.json`` (atomically); returns it, or None where it could
    not be written (the run goes on)."""
    try:
        entry = attempt(origin, job)
        attempts = read(run_dir)
        entry["attempt"] = len(attempts) + 1
        attempts.append(entry)
        atomic_write_text(Path(run_dir) / FILE, json.dumps({"attempts": attempts}, indent=1, default=str))
        return entry
    except Exception as e:  # noqa: BLE001 - provenance never fails a run
        print(f"focalexp: provenance not recorded in {run_dir}: {e}", file=sys.stderr)
        return None


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def run_code(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The code of a run's latest attempt: ``{commit, dirty, diff_sha256, snapshot}`` (None fields where the
    run has no provenance), and ``versions``: every distinct (commit, diff_sha256) of its attempts. The file
    is a user file: a field of the wrong type reads as None."""
    codes = [a["code"] if isinstance(a.get("code"), dict) else {} for a in read(run_dir)]
    versions: list[tuple] = []
    for c in codes:
        v = (_text(c.get("commit")), _text(c.get("diff_sha256")))
        if v not in versions:
            versions.append(v)
    last = codes[-1] if codes else {}
    snap = last.get("snapshot")
    dirty = last.get("dirty")
    return {"commit": _text(last.get("commit")), "dirty": dirty if isinstance(dirty, bool) else None,
            "diff_sha256": _text(last.get("diff_sha256")),
            "snapshot": _text(snap.get("dir")) if isinstance(snap, dict) else None, "versions": versions}


def describe(version: tuple) -> str:
    commit, diff = version
    return (str(commit)[:10] if commit else "unknown commit") + (f"+diff {str(diff)[:8]}" if diff else "")


def mixed_code(versions_by_run: Mapping[str, list[tuple]]) -> str | None:
    """One line when the runs (run id -> the (commit, diff hash) of each of its attempts) ran from more than one
    version of focalexp's code; None when they agree (runs without provenance are left out)."""
    runs_of: dict[tuple, set[str]] = {}
    for rid, versions in versions_by_run.items():
        for v in versions:
            runs_of.setdefault(tuple(v), set()).add(rid)
    if len(runs_of) < 2:
        return None
    parts = ", ".join(f"{describe(v)} ({len(r)} run{'s' if len(r) != 1 else ''})"
                      for v, r in sorted(runs_of.items(), key=lambda kv: -len(kv[1])))
    return f"warning: the runs of this sweep ran from {len(runs_of)} different versions of the code: {parts} " \
           f"(see provenance.json in the run dirs)"
