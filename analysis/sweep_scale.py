"""How the sweep engine scales, against the issue-12 targets (2 CPU cores):

- ``focalexp sweep SPEC --dry-run`` of a 1,200-run grid (4 focal levels x 5 widths x 5 learning rates x
  4 gatings x 3 seeds = 80 distinct models), end to end in a fresh interpreter: < 15 s, peak < 400 MB;
  expansion + validation alone < 3 s;
- ``focalexp status DIR`` and ``focalexp collect DIR`` on a sweep dir of 1,000 finished runs, end to end:
  < 1 s and < 2 s;
- ``focalexp sweep`` of 256 runs to the local SLURM cluster (one array), command to return: < 5 s (only
  where ``sinfo`` answers; the jobs are cancelled at once).

Before issue 12 (main at 574467d, same machine): dry run ~105 s end to end (expand 47.7 s at 715 MB
after the first step, 110 s / 900 MB before it), status 1,000 runs 0.02 s in-process (+4 s of imports).

    python analysis/sweep_scale.py            # every figure, with its target
    python analysis/sweep_scale.py --only expand
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def grid_spec() -> dict:
    return {
        "name": "scale",
        "base": {"recipe": "cpu_small", "model": {"preset": "focalnet_micro"},
                 "data": {"dataset": "pathfinder", "train_size": 1000, "val_size": 100},
                 "train": {"epochs": 1, "batch_size": 32}},
        "grid": {"model.focal_levels": [1, 2, 3, 4], "model.embed_dim": [16, 24, 32, 48, 64],
                 "train.lr": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
                 "model.gating": ["sigmoid", "linear", "softmax", "none"]},
        "seeds": [0, 1, 2],
        "launcher": {"cluster": "local", "cpus_per_task": 1},
    }


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    print(f"{label:<44}{time.perf_counter() - t0:>8.2f} s   peak RSS {peak_mb():>7.0f} MB", flush=True)
    return out


def finished_sweep(root: Path, n: int = 1000) -> Path:
    """A sweep dir of ``n`` finished runs (manifest, jobs log, result.json each), as the launcher leaves it."""
    sw = root / "sw"
    runs = [{"run_id": f"{i:012x}", "axes": {"model.focal_levels": i % 5, "train.lr": 10.0 ** -(i % 4)},
             "seed": i // 20} for i in range(n)]
    (sw / "runs").mkdir(parents=True)
    (sw / "sweep.json").write_text(json.dumps({"name": "scale", "task": "train", "cluster": "local",
                                               "axes": ["model.focal_levels", "train.lr"], "runs": runs}))
    with open(sw / "jobs.jsonl", "w") as f:
        for i, r in enumerate(runs):
            f.write(json.dumps({"event": "submitted", "run_id": r["run_id"], "job_id": str(10**6 + i),
                                "cluster": "local", "pid": 2**22 - 1}) + "\n")
            rd = sw / "runs" / r["run_id"]
            rd.mkdir()
            (rd / "result.json").write_text(json.dumps({"status": "done", "top1": 50 + i % 50, "top5": None,
                                                        "params": 500_000, "gmacs": 0.01, "train_seconds": 10.0}))
    return sw


def command(label: str, argv: list[str], target_s: float | None = None, target_mb: float | None = None,
            cwd: Path | None = None) -> tuple[float, float, str]:
    """``focalexp ARGV`` in a fresh interpreter: wall seconds and its peak RSS (MB), against the targets."""
    import os
    import subprocess

    code = ("import resource, sys, time; t0 = time.perf_counter(); from focalexp.cli import main; rc = main(sys.argv[1:]); "
            "sys.stdout.flush(); print(f'@@ {time.perf_counter() - t0:.3f} "
            "{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} {rc}', file=sys.stderr)")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cwd,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    tail = [ln for ln in p.stderr.splitlines() if ln.startswith("@@ ")]
    if p.returncode != 0 or not tail:
        raise SystemExit(f"{label}: focalexp {' '.join(argv)} failed:\n{p.stderr[-2000:]}")
    _, _, mb, _ = tail[-1].split()
    mb = float(mb)
    ok = (target_s is None or wall < target_s) and (target_mb is None or mb < target_mb)
    goal = " / ".join(x for x in (f"< {target_s:g} s" if target_s else "", f"< {target_mb:g} MB" if target_mb else "") if x)
    print(f"{label:<44}{wall:>8.2f} s   peak RSS {mb:>7.0f} MB   target {goal or '-'}: "
          f"{'met' if ok else 'MISSED'}", flush=True)
    return wall, mb, p.stdout


def slurm_submit(tmp: Path) -> None:
    """256 runs (one array) to the local SLURM cluster, command to return; the jobs are cancelled at once."""
    import shutil
    import subprocess

    import yaml

    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        print("slurm submit of 256 runs: skipped (no SLURM cluster answers here)")
        return
    spec = grid_spec()
    spec.update(name="scale256", grid={"train.lr": [round(1e-4 * (i + 1), 6) for i in range(256)]}, seeds=[0],
                launcher={"cluster": "slurm", "cpus_per_task": 1, "timeout_min": 5})
    path = tmp / "scale256.yaml"
    path.write_text(yaml.safe_dump(spec))
    try:
        _, _, out = command("slurm: submit 256 runs (one array)", ["sweep", str(path), "--dir", str(tmp / "sw256")],
                            target_s=5.0, cwd=tmp)
    finally:
        jobs = tmp / "sw256" / "jobs.jsonl"
        if jobs.exists():
            arrays = sorted({json.loads(ln)["job_id"].split("_")[0] for ln in jobs.read_text().splitlines()
                             if ln.strip() and '"submitted"' in ln})
            if arrays:
                subprocess.run(["scancel", *arrays], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["expand", "estimate", "status", "slurm"], help="one figure only")
    args = ap.parse_args(argv)
    import yaml

    import focalexp

    focalexp.light_imports()  # as the CLI does for the sweep engine
    from focalexp.sweep import estimate, expand, parse_spec, status
    from focalexp.sweep.collect import collect

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = parse_spec(grid_spec())
        if args.only in (None, "expand", "estimate"):
            runs = timed("expand + validate 1,200 runs (80 models)", lambda: expand(spec, check_data_present=False))
            assert len(runs) == 1200
            timed("estimate (GMACs of 80 models)", lambda: estimate(spec, runs))
            print(f"{'  torch imported in-process:':<44}{'torch' in sys.modules!s:>8}")
        if args.only in (None, "estimate"):
            (tmp / "grid.yaml").write_text(yaml.safe_dump(grid_spec()))
            command("focalexp sweep --dry-run (1,200 runs)", ["sweep", str(tmp / "grid.yaml"), "--dry-run"],
                    target_s=15.0, target_mb=400.0, cwd=tmp)
        if args.only in (None, "status"):
            sw = finished_sweep(tmp)
            states = timed("status of 1,000 finished runs (in-process)", lambda: status(sw))
            assert sum(s.state == "done" for s in states) == 1000
            df = timed("collect 1,000 finished runs (in-process)", lambda: collect(sw))
            assert len(df) == 1000
            command("focalexp status (1,000 finished runs)", ["status", str(sw), "--json"], target_s=1.0, cwd=tmp)
            command("focalexp collect (1,000 finished runs)", ["collect", str(sw), "--format", "csv"], target_s=2.0,
                    cwd=tmp)
        if args.only in (None, "slurm"):
            slurm_submit(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
