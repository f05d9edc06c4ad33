"""provenance.json in every run dir: the fields of an attempt, one more entry per resume, git state (commit,
dirty flag, diff hash) of a checkout and of no checkout, the code columns of collect, the one-line warning
of status and report when a sweep's runs ran from different code, and ``launcher.snapshot`` on the local
backend (a job that starts after an edit still runs the code it was submitted with). The SLURM version of
the snapshot test is in test_slurm.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from focalexp import provenance
from focalexp.sweep import collect, expand, parse_spec
from focalexp.sweep.store import SweepDir

from .conftest import invoke, tiny_run

REPO = Path(__file__).resolve().parents[1]
git_state = provenance.git_state


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def tiny_spec(grid: dict | None = None, **launcher) -> dict:
    base = tiny_run()
    base.pop("seed")
    base["train"].update(threads=1, epochs=1)
    base["data"].update(train_size=64, val_size=32)
    return {"name": "prov", "base": base, "grid": grid or {"model.focal_levels": [1, 2]},
            "launcher": {"cluster": "local", "cpus_per_task": 1, "timeout_min": 10, **launcher}}


# ------------------------------------------------------------------ one attempt
def test_an_attempt_records_code_environment_job_and_command(tmp_path):
    a = provenance.attempt({"cwd": str(tmp_path), "argv": ["focalexp", "sweep", "x.yaml"], "time": 1.5})
    code = a["code"]
    assert code["version"] and Path(code["path"]) == REPO and code["snapshot"] is None
    if (REPO / ".git").exists():
        assert len(code["commit"]) == 40 and isinstance(code["dirty"], bool)
        assert (code["diff_sha256"] is None) == (not code["dirty"])
    assert a["workdir"] == {"path": str(tmp_path), "commit": None, "dirty": None, "diff_sha256": None}  # no repo
    assert a["python"] == ".".join(map(str, sys.version_info[:3]))
    import timm
    import torch

    assert a["torch"] == torch.__version__ and a["timm"] == timm.__version__
    assert a["cuda"] == torch.version.cuda and isinstance(a["devices"], list) and a["devices"]
    assert isinstance(a["host"], str) and a["host"] and isinstance(a["start_unix"], float)
    assert time.strptime(a["start_time"], "%Y-%m-%dT%H:%M:%SZ")
    assert a["argv"] == sys.argv and a["submitted_argv"] == ["focalexp", "sweep", "x.yaml"]
    assert a["slurm"] is None or a["slurm"]["job_id"] == os.environ["SLURM_JOB_ID"]
    json.dumps(a)  # plain data


def test_slurm_fields_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "120")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "117")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[01-02]")
    assert provenance.slurm_job() == {"job_id": "120", "array_job_id": "117", "array_task_id": "3",
                                      "nodelist": "gpu[01-02]"}


def test_git_state_of_a_checkout_follows_edits(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    none = {"root": None, "commit": None, "dirty": None, "diff_sha256": None}
    assert git_state(repo) == none  # not a checkout
    assert git_state(tmp_path / "missing") == none
    git(repo, "init", "-q")
    assert git_state(repo)["root"] and git_state(repo)["commit"] is None  # no commit yet
    (repo / "a.py").write_text("X = 1\n")
    git(repo, "add", "a.py")
    git(repo, "commit", "-qm", "one")
    head = git(repo, "rev-parse", "HEAD").strip()
    assert git_state(repo) == {"root": str(repo.resolve()), "commit": head, "dirty": False, "diff_sha256": None}
    (repo / "a.py").write_text("X = 2\n")
    one = git_state(repo)
    assert one["commit"] == head and one["dirty"] is True and len(one["diff_sha256"]) == 64
    (repo / "a.py").write_text("X = 3\n")
    two = git_state(repo)
    assert two["dirty"] and two["diff_sha256"] != one["diff_sha256"]
    (repo / "a.py").write_text("X = 2\n")
    assert git_state(repo)["diff_sha256"] == one["diff_sha256"]  # the hash is of the content
    (repo / "untracked.py").write_text("")
    (repo / "a.py").write_text("X = 1\n")
    assert git_state(repo)["dirty"] is False  # untracked files are not the code's diff
    (repo / "sub").mkdir()
    assert git_state(repo / "sub")["commit"] == head  # below the root


def test_without_git_every_git_field_is_null(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on PATH
    assert git_state(REPO) == {"root": None, "commit": None, "dirty": None, "diff_sha256": None}
    assert provenance.attempt({"cwd": str(REPO)})["workdir"]["commit"] is None


# ------------------------------------------------------------------ the run dir
def test_every_attempt_is_appended_and_a_broken_file_is_no_failure(tmp_path):
    from focalexp.sweep.job import RunJob

    rd = tmp_path / "run"
    origin = {"cwd": str(tmp_path), "argv": ["focalexp", "sweep"], "time": time.time(), "snapshot": None}
    cfg = expand(parse_spec(tiny_spec()))[0].config
    assert RunJob()("train", cfg, str(rd), {}, origin)["status"] == "done"
    first = provenance.read(rd)
    assert [a["attempt"] for a in first] == [1] and first[0]["job"]["id"].startswith("pid")
    RunJob()("train", cfg, str(rd), {}, origin)  # again: a resume (here of a finished run)
    both = provenance.read(rd)
    assert [a["attempt"] for a in both] == [1, 2] and both[0] == first[0]
    assert both[1]["start_unix"] >= both[0]["start_unix"]
    assert not list(rd.glob(".provenance.json.*"))  # atomic: no temporary file left
    (rd / "provenance.json").write_text("[1, {")  # a torn or foreign file: read as none, then rewritten
    assert provenance.read(rd) == []
    assert provenance.record_attempt(rd)["attempt"] == 1
    os.chmod(rd, 0o500)
    try:
        if os.geteuid() != 0:  # root writes anyway
            assert provenance.record_attempt(rd) is None  # cannot write: said on stderr, the run goes on
    finally:
        os.chmod(rd, 0o700)


def _sweep_with_provenance(tmp_path: Path, commits: list[tuple[str, str | None]]) -> Path:
    """A sweep dir (manifest only, nothing run) whose runs' provenance.json names these code versions."""
    spec = parse_spec(tiny_spec(grid={"model.focal_levels": list(range(1, len(commits) + 1))}))
    runs = expand(spec)
    sd = SweepDir(tmp_path / "sw")
    sd.write_manifest(spec, runs, "local")
    for r, (commit, diff) in zip(runs, commits):
        code = {"version": "0.1.0", "path": "/x", "commit": commit, "dirty": diff is not None,
                "diff_sha256": diff, "snapshot": None}
        sd.run_dir(r.run_id).mkdir(parents=True, exist_ok=True)
        (sd.run_dir(r.run_id) / "provenance.json").write_text(json.dumps({"attempts": [{"attempt": 1, "code": code}]}))
    return tmp_path / "sw"


def test_collect_has_code_columns_and_status_and_report_warn_in_one_line_on_mixed_code(tmp_path):
    same = _sweep_with_provenance(tmp_path / "a", [("c" * 40, None), ("c" * 40, None)])
    df = collect(same)
    assert list(df["code_commit"]) == ["c" * 40] * 2 and list(df["code_dirty"]) == [False, False]
    assert df.attrs["mixed_code"] is None
    assert "warning" not in invoke("status", str(same)).stderr
    assert "different versions" not in invoke("report", str(same)).stdout

    mixed = _sweep_with_provenance(tmp_path / "b", [("c" * 40, None), ("c" * 40, "d" * 64), ("e" * 40, None)])
    df = collect(mixed)
    assert list(df["code_dirty"]) == [False, True, False] and df["code_diff"].iloc[1] == "d" * 64
    assert "code_commit" in (mixed / "results.csv").read_text().splitlines()[0]
    r = invoke("status", str(mixed))
    lines = [ln for ln in r.stderr.splitlines() if "different versions" in ln]
    assert len(lines) == 1 and "3 different versions" in lines[0] and "cccccccccc+diff dddddddd" in lines[0]
    rep = invoke("report", str(mixed), "--fig-format", "png")
    assert rep.returncode == 0, rep.stderr
    assert sum("3 different versions of the code" in ln for ln in rep.stdout.splitlines()) == 1
    assert "3 different versions" in (mixed / "report" / "report.md").read_text()


def test_a_run_resumed_on_other_code_counts_as_mixed(tmp_path):
    sw = _sweep_with_provenance(tmp_path, [("c" * 40, None)])
    rd = next((sw / "runs").iterdir())
    data = json.loads((rd / "provenance.json").read_text())
    data["attempts"].append({"attempt": 2, "code": {"commit": "f" * 40, "diff_sha256": None}})
    (rd / "provenance.json").write_text(json.dumps(data))
    assert collect(sw).attrs["mixed_code"].startswith("warning: the runs of this sweep ran from 2 different")
    assert collect(sw)["code_commit"].iloc[0] == "f" * 40  # the columns are the latest attempt's
    data["attempts"].append({"attempt": 3, "code": {"commit": ["x"], "dirty": "yes", "snapshot": {"dir": 1}}})
    (rd / "provenance.json").write_text(json.dumps(data))  # a hostile file: wrong types read as unknown
    df = collect(sw)
    assert df["code_commit"].iloc[0] is None and df["code_dirty"].iloc[0] is None
    assert "3 different versions" in df.attrs["mixed_code"] and "unknown commit" in df.attrs["mixed_code"]


@pytest.mark.parametrize("value, message", [
    ("yes", "launcher.snapshot: expected true or false, got 'yes'"),
    (1, "launcher.snapshot: expected true or false, got 1"),
])
def test_launcher_snapshot_is_validated_strictly(value, message):
    from focalexp.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_spec(tiny_spec(snapshot=value))
    assert parse_spec(tiny_spec()).launcher.snapshot is False


def test_the_debug_backend_refuses_a_snapshot(tmp_path):
    from focalexp.errors import ConfigError
    from focalexp.sweep import launch

    with pytest.raises(ConfigError, match="launcher.snapshot: the debug backend runs in this process"):
        launch(parse_spec(tiny_spec(cluster="debug", snapshot=True)), tmp_path / "sw")


# ------------------------------------------------------------------ launcher.snapshot
def code_repo(tmp_path: Path) -> Path:
    """A git checkout holding a copy of focalexp (committed), for a test to edit."""
    repo = tmp_path / "code"
    shutil.copytree(REPO / "focalexp", repo / "focalexp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", repo)
    (repo / ".gitignore").write_text("__pycache__/\nsweeps/\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "code")
    return repo


def set_version(repo: Path, version: str) -> None:
    init = repo / "focalexp" / "__init__.py"
    text = init.read_text()
    old = next(ln for ln in text.splitlines() if ln.startswith("__version__ = "))
    init.write_text(text.replace(old, f"__version__ = {version!r}"))


def submitted_jobs(sweep: Path) -> list[dict]:
    try:
        lines = (sweep / "jobs.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [e for e in map(json.loads, lines) if e.get("event") == "submitted"]


def test_a_snapshot_holds_the_code_as_it_is_on_disk_and_says_what_it_was(tmp_path):
    from focalexp.sweep.snapshot import make_snapshot

    repo = code_repo(tmp_path)
    set_version(repo, "1.5.0-dirty")  # an uncommitted edit and a new module are part of the code
    (repo / "focalexp" / "new_module.py").write_text("X = 1\n")
    code = make_snapshot(tmp_path / "snap", repo)
    assert "1.5.0-dirty" in (code / "focalexp" / "__init__.py").read_text()
    assert (code / "focalexp" / "new_module.py").exists()
    mark = json.loads((code / provenance.SNAPSHOT_MARK).read_text())
    state = git_state(repo)
    assert mark["commit"] == state["commit"] and mark["dirty"] is True
    assert mark["diff_sha256"] == state["diff_sha256"] and mark["source"] == str(repo.resolve())
    assert mark["method"] == ("rsync" if shutil.which("rsync") else "copy")
    plain = tmp_path / "plain"  # no checkout: the package tree is copied
    shutil.copytree(repo / "focalexp", plain / "focalexp")
    code = make_snapshot(tmp_path / "snap2", plain)
    mark = json.loads((code / provenance.SNAPSHOT_MARK).read_text())
    assert code == tmp_path / "snap2" and mark["method"] == "copy" and mark["commit"] is None
    assert (code / "focalexp" / "new_module.py").exists() and not list(code.rglob("__pycache__"))


LAUNCH = ("import sys; from focalexp.sweep import launch, load_spec; "
          "launch(load_spec(sys.argv[1]), sys.argv[2], allow_setup=True)")  # the CLI, less its report


@pytest.mark.slow
def test_a_local_job_that_starts_after_an_edit_runs_the_snapshot(tmp_path):
    repo = code_repo(tmp_path)
    set_version(repo, "1.0.0-before")
    git(repo, "commit", "-qam", "before")
    head = git(repo, "rev-parse", "HEAD").strip()
    spec = tiny_spec(grid={"model.focal_levels": [2]}, snapshot=True, setup=["sleep 5"])  # starts 5 s late
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PYTHONPATH": str(repo)}
    p = subprocess.Popen([sys.executable, "-c", LAUNCH, str(tmp_path / "spec.yaml"), str(tmp_path / "sw")],
                         cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.time() + 60
        while not submitted_jobs(tmp_path / "sw") and time.time() < end and p.poll() is None:
            time.sleep(0.2)
        assert submitted_jobs(tmp_path / "sw"), p.poll()
        set_version(repo, "2.0.0-after")  # edited while the job waits to start
        out, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, out
    df = collect(tmp_path / "sw", write=False)
    assert list(df["status"]) == ["done"], out
    assert list(df["code_commit"]) == [head] and list(df["code_dirty"]) == [False]
    (snap,) = (tmp_path / "sw" / "snapshots").iterdir()
    (a,) = provenance.read(tmp_path / "sw" / "runs" / df["run_id"].iloc[0])
    assert a["code"]["version"] == "1.0.0-before"  # the old code ran
    assert a["code"]["snapshot"]["dir"] == str(snap) == a["submitted_snapshot"] == a["code"]["path"]
    assert a["code"]["snapshot"]["commit"] == head and a["code"]["snapshot"]["source"] == str(repo)
    assert a["workdir"] == {"path": str(repo), "commit": head, "dirty": False, "diff_sha256": None}  # at submission
    assert (snap / ".git").is_dir() == (shutil.which("rsync") is not None)  # RsyncSnapshot where it can
    assert git_state(repo)["dirty"]  # and the edit is there, in the source
