"""``launcher.snapshot: true``: a copy of focalexp's code in the sweep dir, made when the runs are submitted,
from which their jobs import focalexp, so that a job queued for days does not pick up later edits.

Where focalexp's source is a git checkout and rsync is on PATH, submitit's
:class:`~submitit.helpers.RsyncSnapshot` makes it (a shallow clone, then the tracked files as they are on disk);
the package's untracked, not ignored files are copied too. Otherwise the ``focalexp`` package tree is copied.
Either way the copy's root holds :data:`~focalexp.provenance.SNAPSHOT_MARK` (source, time, and the git state of
the source then), which the runs' ``provenance.json`` reports.

A job runs from the snapshot because it is submitted from inside it (:func:`running_from`): the job starts
in the snapshot dir, which ``python -m submitit...`` puts first on ``sys.path``, and ``PYTHONPATH`` names it
too; the job then returns to the submission's working directory (:class:`~focalexp.sweep.job.RunJob`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

from ..errors import FocalexpError
from ..provenance import SNAPSHOT_MARK, code_root, git_state, run_git


def make_snapshot(dest: Path, source: Path | None = None) -> Path:
    """Copy the code (the directory holding the ``focalexp`` package, ``source``: this process's) into
    ``dest`` (a new directory); returns the directory to run from (the one holding ``focalexp/``)."""
    source = Path(source or code_root()).resolve()
    if dest.exists():
        raise FocalexpError(f"code snapshot {dest} exists already")
    git = git_state(source)
    try:
        import submitit

        rsync = submitit.helpers.RsyncSnapshot.available()
        if git["root"] and git["commit"] and rsync:
            root = Path(git["root"]).resolve()
            rel = source.relative_to(root)
            untracked = (run_git(["ls-files", "--others", "--exclude-standard", "-z", "--", str(rel / "focalexp")],
                              root) or b"").decode("utf-8", "replace").split("\0")
            with submitit.helpers.RsyncSnapshot(dest, root_dir=root, include=[u for u in untracked if u]):
                pass
            code, method = dest / rel, "rsync"
        else:
            shutil.copytree(source / "focalexp", dest / "focalexp",
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            code, method = dest, "copy"
    except Exception as e:  # noqa: BLE001 - the user is told, nothing is sent
        shutil.rmtree(dest, ignore_errors=True)
        raise FocalexpError(f"launcher.snapshot: could not copy the code from {source} to {dest}: {e}") from None
    mark = {"source": str(source), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": method,
            **{k: git[k] for k in ("commit", "dirty", "diff_sha256")}}
    (code / SNAPSHOT_MARK).write_text(json.dumps(mark, indent=1))
    return code


@contextlib.contextmanager
def running_from(code: Path | None) -> Iterator[None]:
    """Submit inside this block and the jobs import focalexp from ``code`` (None: nothing changes): the
    working directory is ``code`` and ``PYTHONPATH`` starts with it, both restored after."""
    if code is None:
        yield
        return
    cwd, pp = os.getcwd(), os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(code) + (os.pathsep + pp if pp else "")
    os.chdir(code)
    try:
        yield
    finally:
        os.chdir(cwd)
        if pp is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pp
