"""The sweep dir: everything a sweep knows lives in files that survive the launcher at any point.

::

    SWEEP/spec.yaml        the spec as resolved (after --set), for the record
    SWEEP/sweep.json       manifest: name, axes, cluster, one entry per run (id, axes, seed) - atomic
    SWEEP/jobs.jsonl       append-only log: a "submitting" line before each submission, a "submitted"
                           line (job id, log paths) after; a torn last line is ignored
    SWEEP/runs/ID/         run dir: run.json (axes + config, written before submission), then what the
                           task writes (config.yaml, metrics.jsonl, last.pth, best.pth, result.json)
    SWEEP/logs/JOBID/      submitit's pickles and job logs
    SWEEP/.lock            held by the launcher (flock) while it submits
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..errors import FocalexpError
from ..fileio import atomic_write_text
from .spec import Run, SweepSpec, axis_keys


class SweepLocked(FocalexpError):
    exit_code = 1


class SweepDir:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    # -- files
    @property
    def manifest_path(self) -> Path:
        return self.path / "sweep.json"

    @property
    def jobs_path(self) -> Path:
        return self.path / "jobs.jsonl"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def run_dir(self, run_id: str) -> Path:
        return self.path / "runs" / run_id

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    # -- lock
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One launcher per sweep dir; a second one fails at once, naming the holder."""
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise SweepLocked(f"{self.path}: another launcher (pid {holder}) is working on this sweep dir; "
                              "wait for it or stop it") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    # -- manifest
    def write_manifest(self, spec: SweepSpec, runs: list[Run], cluster: str) -> None:
        from ..configtools import to_plain

        atomic_write_text(self.path / "spec.yaml", yaml.safe_dump(to_plain(spec), sort_keys=False))
        for r in runs:
            rd = self.run_dir(r.run_id)
            if not (rd / "run.json").exists():
                atomic_write_text(rd / "run.json", json.dumps(
                    {"run_id": r.run_id, "task": r.task, "axes": r.axes, "seed": r.seed, "config": r.config},
                    indent=1))
        manifest = {
            "name": spec.name, "description": spec.description, "task": spec.task, "cluster": cluster,
            "axes": axis_keys(spec), "updated": time.time(),
            "runs": [{"run_id": r.run_id, "axes": r.axes, "seed": r.seed} for r in runs],
        }
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1))

    def manifest(self) -> dict[str, Any]:
        if not self.exists():
            raise FocalexpError(f"{self.path}: not a sweep dir (no sweep.json); run `focalexp sweep SPEC` first")
        return json.loads(self.manifest_path.read_text())

    def run_config(self, run_id: str) -> dict[str, Any]:
        return json.loads((self.run_dir(run_id) / "run.json").read_text())

    # -- job log
    def record(self, **event: Any) -> None:
        event.setdefault("time", time.time())
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.jobs_path, "a") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def events(self) -> list[dict[str, Any]]:
        if not self.jobs_path.exists():
            return []
        out = []
        for line in self.jobs_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:  # a line torn by a kill mid-write
                continue
        return out

    def latest_jobs(self) -> dict[str, dict[str, Any]]:
        """run id -> its latest "submitted" event."""
        latest: dict[str, dict[str, Any]] = {}
        for e in self.events():
            if e.get("event") == "submitted":
                latest[e["run_id"]] = e
        return latest

    def result(self, run_id: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.run_dir(run_id) / "result.json").read_text())
        except (OSError, ValueError):
            return None
