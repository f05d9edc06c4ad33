"""The sweep dir: everything a sweep knows lives in files that survive the launcher at any point.

::

    SWEEP/spec.yaml        the spec as resolved (after --set), for the record
    SWEEP/sweep.json       manifest: format (the layout's version, :data:`FORMAT`; none: 1), name, axes,
                           cluster, one entry per run (id, axes, seed) - atomic
    SWEEP/jobs.jsonl       append-only log: a "submitting" line before each submission, a "submitted"
                           line (job id, log paths, attempt number, the ending it follows) after; a torn
                           last line is ignored
    SWEEP/runs/ID/         run dir: run.json (axes + config, written before submission), claim.json (the
                           job running it), cancel.json (a job `focalexp cancel` stopped), provenance.json
                           (code, environment, job: one entry per attempt), then what the task writes
                           (config.yaml, metrics.jsonl, last.pth, best.pth, result.json)
    SWEEP/logs/JOBID/      submitit's pickles and job logs (SLURM, debug; local jobs: SWEEP/logs/RUN_ID/,
                           files named by the job's pid, and PID_exit.json: how its tasks ended)
    SWEEP/snapshots/TIME-PID/  the code the jobs of one submission run from (``launcher.snapshot``)
    SWEEP/.lock            held by the launcher (flock) while it submits; holds its pid

A sweep dir of a newer layout (``format`` above :data:`FORMAT`) is refused in one line by every command
(sweep, status, collect, report, cancel) rather than misread.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..errors import FocalexpError
from ..fileio import atomic_write_text, file_lock
from .spec import Run, SweepSpec, axis_keys


RUN_ID = re.compile(r"^[0-9a-f]{12}$")
FORMAT = 1  # the sweep dir layout written here; bump it when an older focalexp would misread a new one


class SweepLocked(FocalexpError):
    exit_code = 1


_HELD: dict[Path, int] = {}  # sweep dirs whose lock this process holds re-entrantly -> nesting depth


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
    def lock(self, *, reentrant: bool = False) -> Iterator[None]:
        """One launcher per sweep dir; a second one fails at once, naming the holder. ``reentrant``: while
        held, this process's own later ``lock()`` calls on the dir join it (the CLI holds it around the
        whole launch, which takes it again); otherwise a second ``lock()`` is refused like another process."""
        key = self.path.absolute()
        if _HELD.get(key):
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        try:
            held = file_lock(self.path / ".lock", blocking=False)
            f = held.__enter__()
        except BlockingIOError:
            raise SweepLocked(f"{self.path}: another launcher (pid {self._holder()}) is working on this sweep "
                              "dir; wait for it or stop it") from None
        if reentrant:
            _HELD[key] = 1
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield
        finally:
            _HELD.pop(key, None)
            f.seek(0)
            f.truncate()
            held.__exit__(None, None, None)

    def _holder(self) -> str:
        """The pid in ``.lock``; a holder that took the lock a moment ago writes it within milliseconds."""
        deadline = time.monotonic() + 2.0
        while True:
            try:
                pid = (self.path / ".lock").read_text().strip()
            except OSError:
                pid = ""
            if pid or time.monotonic() > deadline:
                return pid or "unknown"
            time.sleep(0.01)

    # -- manifest
    def write_manifest(self, spec: SweepSpec, runs: list[Run], cluster: str) -> None:
        atomic_write_text(self.path / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
        for r in runs:
            rd = self.run_dir(r.run_id)
            if not (rd / "run.json").exists():
                atomic_write_text(rd / "run.json", json.dumps(
                    {"run_id": r.run_id, "task": r.task, "axes": r.axes, "seed": r.seed, "config": r.config},
                    indent=1))
        manifest = {
            "format": FORMAT, "name": spec.name, "description": spec.description, "task": spec.task, "cluster": cluster,
            "axes": axis_keys(spec), "updated": time.time(),
            "runs": [{"run_id": r.run_id, "axes": r.axes, "seed": r.seed} for r in runs],
        }
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1))

    def manifest(self) -> dict[str, Any]:
        """``sweep.json``, checked: a sweep dir is a user file like any other (hand-edited, cut short by a
        full disk, or hostile); every problem is one line that says it is corrupt."""
        if not self.path.exists():
            raise FocalexpError(f"{self.path}: no such sweep dir")
        if not self.path.is_dir():
            raise FocalexpError(f"{self.path}: is a file, not a sweep dir")
        if not self.exists():
            raise FocalexpError(f"{self.path}: not a sweep dir (no sweep.json); run `focalexp sweep SPEC` first")
        bad = f"{self.manifest_path}: sweep.json is corrupt"
        try:
            raw = self.manifest_path.read_bytes()
            if len(raw) > 256 * 2**20:
                raise FocalexpError(f"{bad} (larger than 256 MB)")
            m = json.loads(raw.decode("utf-8"))
        except (OSError, ValueError, RecursionError) as e:
            raise FocalexpError(f"{bad} ({type(e).__name__}: {str(e)[:120]})") from None
        if not isinstance(m, dict):
            raise FocalexpError(f"{bad} (expected an object, got a {type(m).__name__})")
        fmt = m.get("format", 1)  # sweep dirs written before the field existed are format 1
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
            raise FocalexpError(f"{bad}: 'format' is {str(fmt)[:40]!r}, expected a layout version (1)")
        if fmt > FORMAT:
            raise FocalexpError(f"{self.manifest_path}: a sweep dir of format {fmt}, written by a newer focalexp; "
                                f"this one reads format {FORMAT}: upgrade focalexp to use it")
        runs, axes = m.get("runs"), m.get("axes", [])
        if not isinstance(runs, list):
            raise FocalexpError(f"{bad}: it has no list of runs")
        if not isinstance(axes, list) or not all(isinstance(a, str) for a in axes):
            raise FocalexpError(f"{bad}: 'axes' is not a list of names")
        if not isinstance(m.get("name"), str):
            raise FocalexpError(f"{bad}: it has no name")
        for i, r in enumerate(runs):
            if not isinstance(r, dict) or not isinstance(r.get("run_id"), str) or not RUN_ID.match(r["run_id"]):
                rid = r.get("run_id") if isinstance(r, dict) else r
                raise FocalexpError(f"{bad}: runs[{i}] has run_id {str(rid)[:40]!r}, expected 12 hex digits")
            if not isinstance(r.get("axes", {}), dict) or not isinstance(r.get("seed", 0), int):
                raise FocalexpError(f"{bad}: runs[{i}] has malformed axes or seed")
            r.setdefault("axes", {})
            r.setdefault("seed", 0)
        m["axes"] = axes
        return m

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
        for line in self.jobs_path.read_text(errors="replace").splitlines():
            try:
                e = json.loads(line)
            except (ValueError, RecursionError):  # a line torn by a kill mid-write
                continue
            if isinstance(e, dict) and isinstance(e.get("run_id"), str):  # anything else is not ours
                out.append(e)
        return out

    def latest_jobs(self) -> dict[str, dict[str, Any]]:
        """run id -> its latest "submitted" event."""
        latest: dict[str, dict[str, Any]] = {}
        for e in self.events():
            if e.get("event") == "submitted" and isinstance(e.get("job_id"), (str, int)):
                latest[e["run_id"]] = e
        return latest

    def result(self, run_id: str) -> dict[str, Any] | None:
        try:
            res = json.loads((self.run_dir(run_id) / "result.json").read_text())
        except (OSError, ValueError, RecursionError):
            return None
        return res if isinstance(res, dict) else None
