"""How many of timm's model tests each focalexp preset passes, counted per preset.

    python analysis/timm_contract.py --timm-tests ~/src/pytorch-image-models/tests/test_models.py
    python analysis/timm_contract.py                  # no copy of timm's file: tests/test_timm_contract.py
    python analysis/timm_contract.py --presets focalnet_t_srf,focalnet_h_fl3 --timm-tests PATH

With timm's own ``tests/test_models.py`` (a copy of the file from pytorch-image-models, matching the
installed timm), the file runs unchanged in a scratch directory beside a conftest that registers the
presets (``import focalexp.models``), keeps only the ``focalexp_<preset>`` models of each test, and
counts them in the tests timm runs on its own ``focalnet`` module (its ``forward_intermediates`` and
``feature_cls='getter'`` tests select models by module). Without it, focalexp's mirror of those checks,
``tests/test_timm_contract.py``, runs instead. Prints passed/failed/skipped per preset and the failures.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PRESETS = ("focalnet_t_srf", "focalnet_t_iso", "focalnet_t_lrf_window_attention", "focalnet_h_fl3")

CONFTEST = '''
import os

import timm

import focalexp.models  # noqa: F401  (registers focalexp_<preset> in timm)

WANTED = set(os.environ["FOCALEXP_CONTRACT_MODELS"].split(","))
_list_models = timm.list_models


def list_models(*args, module="", **kwargs):
    """timm's tests select some models by their file (module); ours count as its focalnet file's."""
    names = _list_models(*args, module=module, **kwargs)
    mods = [module] if isinstance(module, str) else list(module)
    if "focalnet" in mods:
        names = sorted(set(names) | set(_list_models(*args, module="timm_registry", **kwargs)))
    return names


timm.list_models = list_models


def pytest_collection_modifyitems(config, items):
    keep = [it for it in items if getattr(it, "callspec", None) and it.callspec.params.get("model_name") in WANTED]
    config.hook.pytest_deselected(items=[it for it in items if it not in keep])
    items[:] = keep
'''


def _run(cmd: list[str], cwd: Path, env: dict) -> None:
    print("$", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=cwd, env=env, check=False)


def _preset_of(case: str, presets: list[str]) -> str | None:
    params = case[case.find("[") + 1 : -1] if "[" in case else ""
    hits = [p for p in presets if p in params.replace("focalexp_", "").split("-")]
    return hits[0] if hits else None


def count(junit: Path, presets: list[str]) -> dict[str, dict[str, list[str]]]:
    """{preset: {"passed"|"failed"|"skipped": [test names]}} from a junit XML report."""
    out: dict[str, dict[str, list[str]]] = {p: collections.defaultdict(list) for p in presets}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        preset = _preset_of(name, presets)
        if preset is None:
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            state = "failed"
        elif case.find("skipped") is not None:
            state = "skipped"
        else:
            state = "passed"
        out[preset][state].append(name.split("[")[0])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timm-tests", type=Path, help="a copy of pytorch-image-models' tests/test_models.py")
    ap.add_argument("--presets", default=",".join(DEFAULT_PRESETS), help="comma-separated preset names")
    ap.add_argument("--timeout", type=int, default=600, help="per test, seconds (pytest-timeout)")
    args = ap.parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        junit = tmp_path / "report.xml"
        base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--timeout={args.timeout}",
                f"--junitxml={junit}"]
        if args.timm_tests is not None:
            if not args.timm_tests.is_file():
                print(f"--timm-tests: no such file {args.timm_tests}", file=sys.stderr)
                return 2
            shutil.copy(args.timm_tests, tmp_path / "test_models.py")
            (tmp_path / "conftest.py").write_text(CONFTEST)
            env["FOCALEXP_CONTRACT_MODELS"] = ",".join("focalexp_" + p for p in presets)
            _run(base + ["--rootdir", tmp, "-c", os.devnull, "test_models.py"], tmp_path, env)
        else:
            _run(base + ["tests/test_timm_contract.py", "-k", " or ".join(presets)], ROOT, env)
        if not junit.exists():
            print("pytest wrote no report", file=sys.stderr)
            return 1
        counts = count(junit, presets)
    failed_any = False
    print(f"{'preset':40s} {'passed':>6s} {'failed':>6s} {'skipped':>7s}")
    for p in presets:
        c = counts[p]
        print(f"{p:40s} {len(c['passed']):6d} {len(c['failed']):6d} {len(c['skipped']):7d}")
        failed_any |= bool(c["failed"])
    for p in presets:
        for name in counts[p]["failed"]:
            print(f"  FAILED {p}: {name}")
    return 1 if failed_any else 0


if __name__ == "__main__":
    sys.exit(main())
