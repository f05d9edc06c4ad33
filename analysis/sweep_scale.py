"""How the sweep engine scales: expanding and validating a 1,200-run grid (4 focal levels x 5 widths x
5 learning rates x 4 gatings x 3 seeds = 80 distinct models), the dry run's estimate, and `status` /
`collect` on a sweep dir of 1,000 finished runs. Prints seconds and peak memory (max RSS); run it before
and after a change to the engine, on the same machine.

    python analysis/sweep_scale.py            # all figures
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["expand", "estimate", "status"], help="one figure only")
    args = ap.parse_args(argv)
    def imports():
        import focalexp.models  # noqa: F401 - torch + timm: paid once by every command that builds runs
        import focalexp.train.config  # noqa: F401

    timed("imports (torch, timm, focalexp)", imports)
    from focalexp.sweep import estimate, expand, parse_spec, status
    from focalexp.sweep.collect import collect

    spec = parse_spec(grid_spec())
    runs = None
    if args.only in (None, "expand", "estimate"):
        runs = timed("expand + validate 1,200 runs (80 models)", lambda: expand(spec, check_data_present=False))
        assert len(runs) == 1200
    if args.only in (None, "estimate"):
        timed("dry-run estimate (GMACs of 80 models)", lambda: estimate(spec, runs))
    if args.only in (None, "status"):
        with tempfile.TemporaryDirectory() as tmp:
            sw = finished_sweep(Path(tmp))
            states = timed("status of 1,000 finished runs", lambda: status(sw))
            assert sum(s.state == "done" for s in states) == 1000
            df = timed("collect 1,000 finished runs", lambda: collect(sw))
            assert len(df) == 1000
    return 0


if __name__ == "__main__":
    sys.exit(main())
