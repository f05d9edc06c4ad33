"""Bad and hostile input, as a table: every case ends with exit code 2 and one line on stderr that names the
bad key or value (and the closest valid choice where there is one), no traceback, nothing written to
disk, nothing submitted, and nothing from a file executed (the payloads would create MARKER).

Each row runs the real CLI in-process, inside an empty working directory (so a default ``sweeps/NAME``
or run dir would show up); the directory tree is compared before and after.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

from . import hostile
from .conftest import tiny_run

MARKER = "MARKER"


@dataclass
class Case:
    id: str
    argv: list[str]  # "{tmp}" and "{marker}" are filled in
    needles: tuple[str, ...]
    setup: Callable[[Path], None] | None = None
    marks: list = field(default_factory=list)


def write(rel: str, content: str | bytes) -> Callable[[Path], None]:
    def _setup(tmp: Path) -> None:
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return _setup


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def _setup(tmp: Path) -> None:
        for s in setups:
            s(tmp)
    return _setup


def yaml_file(rel: str, obj) -> Callable[[Path], None]:
    return write(rel, yaml.safe_dump(obj, sort_keys=False))


def spec(**over) -> dict:
    base = tiny_run()
    base.pop("seed")
    s = {"name": "t", "base": base, "grid": {"model.focal_levels": [1, 2]},
         "launcher": {"cluster": "local", "cpus_per_task": 1}}
    s.update(over)
    return s


def spec_file(rel: str = "s.yaml", **over) -> Callable[[Path], None]:
    return yaml_file(rel, spec(**over))


def launcher(**over) -> dict:
    return {"cluster": "local", "cpus_per_task": 1, **over}


def evil_file(rel: str, kind: str) -> Callable[[Path], None]:
    def _setup(tmp: Path) -> None:
        (tmp / rel).write_bytes(hostile.evil_checkpoints(tmp / MARKER)[kind])
    return _setup


def image_folder(classes: tuple[str, ...] = ("a", "b"), with_images: bool = True, val: tuple[str, ...] | None = None):
    def _setup(tmp: Path) -> None:
        from PIL import Image

        for split, names in (("train", classes), ("val", val if val is not None else classes)):
            for c in names:
                d = tmp / "data" / split / c
                d.mkdir(parents=True, exist_ok=True)
                if with_images:
                    Image.new("RGB", (8, 8)).save(d / "0.png")
                else:
                    (d / "notes.txt").write_text("no images here")
    return _setup


def run_ckpt(rel: str, mutate: Callable[[dict], None] | None = None) -> Callable[[Path], None]:
    """A focalexp run checkpoint (last.pth) of the tiny run, optionally damaged."""
    def _setup(tmp: Path) -> None:
        from focalexp.train.config import resolve_run_config

        from focalexp.config import parse_set_args

        cfg = resolve_run_config({}, parse_set_args([TRAIN[i + 1] for i, a in enumerate(TRAIN) if a == "--set"]))
        st = {"format": "focalexp-run", "version": 1, "config": cfg.to_dict(), "run_id": cfg.run_id,
              "experiment": cfg.experiment_dict(), "model": {}, "epoch": 0, "step": 0}
        if mutate:
            mutate(st)
        torch.save(st, tmp / rel)
    return _setup


def sweep_dir(manifest: str | None, rel: str = "sw") -> Callable[[Path], None]:
    def _setup(tmp: Path) -> None:
        d = tmp / rel
        d.mkdir(parents=True)
        if manifest is not None:
            (d / "sweep.json").write_text(manifest)
    return _setup


GOOD_MANIFEST = json.dumps({"name": "t", "axes": ["model.focal_levels"], "task": "train", "cluster": "local",
                            "runs": [{"run_id": "0123456789ab", "axes": {"model.focal_levels": 1}, "seed": 0}]})
TRAIN = ["train", "--set", "data.train_size=64", "--set", "data.val_size=32", "--set", "model.embed_dim=16",
         "--set", "model.depths=[1,1,1]", "--set", "train.batch_size=32", "--set", "train.epochs=1"]
VIZ = ["viz", "--model", "focalnet_micro", "--what", "kernels", "--out", "{tmp}/fig.png"]

CASES: list[Case] = []


def case(id: str, argv: list[str], *needles: str, setup=None, marks=()) -> None:
    CASES.append(Case(id, argv, needles, setup, list(marks)))


# -- checkpoints that would run code, in every format torch reads (three entry points)
for kind in ["plain_pickle_p0", "plain_pickle_p2", "plain_pickle_p4", "plain_pickle_p5", "plain_pickle_exec",
             "plain_pickle_inst", "plain_pickle_obj", "plain_pickle_ext", "plain_pickle_nested_torch", "torch_zip",
             "torch_zip_exec", "torch_zip_tensor_rebuild", "torch_legacy", "torch_legacy_header",
             "zip_with_evil_pickle"]:
    case(f"viz-checkpoint-{kind}", [*VIZ, "--checkpoint", "{tmp}/evil.pth"], "refused", "evil.pth",
         setup=evil_file("evil.pth", kind))
for kind in ["plain_pickle_p2", "torch_zip", "torch_legacy", "torch_legacy_header", "zip_with_evil_pickle"]:
    case(f"train-resume-{kind}", [*TRAIN, "--out", "{tmp}/run", "--resume", "{tmp}/evil.pth"], "refused",
         setup=evil_file("evil.pth", kind))
    case(f"viz-baseline-{kind}", [*VIZ[:4], "erf", "--baseline", "resnet18={tmp}/evil.pth", "--out", "{tmp}/f.png"],
         "refused", setup=evil_file("evil.pth", kind))
DETECT = ["detect", "--set", "data.train_size=8", "--set", "data.val_size=4", "--set", "train.epochs=1",
          "--set", "train.batch_size=4", "--set", "train.trackers=[]"]
for kind in ["plain_pickle_p2", "torch_zip_exec", "torch_legacy", "zip_with_evil_pickle"]:
    case(f"detect-backbone-init-{kind}", [*DETECT, "--set", "detector.backbone_init={tmp}/evil.pth", "--out",
                                          "{tmp}/run"], "refused", "evil.pth", setup=evil_file("evil.pth", kind))
case("viz-checkpoint-build-on-class", [*VIZ, "--checkpoint", "{tmp}/evil.pth"], "corrupt", "BUILD",
     setup=evil_file("evil.pth", "plain_pickle_build_class"))
case("viz-checkpoint-torchscript", [*VIZ, "--checkpoint", "{tmp}/ts.pt"], "TorchScript program",
     setup=evil_file("ts.pt", "torchscript"))

# -- checkpoints that are damaged or not checkpoints at all
case("ckpt-empty", [*VIZ, "--checkpoint", "{tmp}/e.pth"], "is empty", "not a checkpoint", setup=write("e.pth", b""))
case("ckpt-text", [*VIZ, "--checkpoint", "{tmp}/t.pth"], "text file", "not a checkpoint",
     setup=write("t.pth", "model: focalnet\n"))
case("ckpt-random-bytes", [*VIZ, "--checkpoint", "{tmp}/r.pth"], "not a checkpoint",
     setup=write("r.pth", bytes(np.random.default_rng(0).integers(128, 256, 512, dtype=np.uint8))))
case("ckpt-truncated-zip", [*VIZ, "--checkpoint", "{tmp}/c.pth"], "corrupt",
     setup=write("c.pth", hostile.torch_zip({"w": torch.zeros(1000)})[:700]))
case("ckpt-truncated-legacy", [*VIZ, "--checkpoint", "{tmp}/c.pth"], "corrupt",
     setup=write("c.pth", hostile.torch_legacy({"w": torch.zeros(1000)})[:300]))
case("ckpt-zip-not-torch", [*VIZ, "--checkpoint", "{tmp}/z.pth"], "not a torch checkpoint",
     setup=write("z.pth", (lambda b: (b.getvalue()))(
         (lambda buf: (zipfile.ZipFile(buf, "w").writestr("hello.txt", "hi") or buf))(__import__("io").BytesIO()))))
def _tar(tmp: Path) -> None:
    import tarfile

    (tmp / "storages").write_bytes(b"x" * 10)
    with tarfile.open(tmp / "t.tar", "w") as t:
        t.add(tmp / "storages", arcname="storages")
    (tmp / "storages").unlink()


case("ckpt-tar", [*VIZ, "--checkpoint", "{tmp}/t.tar"], "tar archive", setup=_tar)
case("ckpt-safetensors-garbage", [*VIZ, "--checkpoint", "{tmp}/m.safetensors"], "corrupt safetensors",
     setup=write("m.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage"))
case("ckpt-list", [*VIZ, "--checkpoint", "{tmp}/l.pth"], "expected a dict of tensors",
     setup=lambda tmp: torch.save([torch.zeros(1)], tmp / "l.pth"))
case("ckpt-no-tensors", [*VIZ, "--checkpoint", "{tmp}/n.pth"], "found no tensors",
     setup=lambda tmp: torch.save({"a": "b"}, tmp / "n.pth"))
case("ckpt-wrong-model", [*VIZ, "--checkpoint", "{tmp}/w.pth"], "does not fit the model",
     setup=lambda tmp: torch.save({"stem.proj.weight": torch.zeros(3)}, tmp / "w.pth"))
case("ckpt-directory", [*VIZ, "--checkpoint", "{tmp}"], "is a directory")
case("ckpt-missing", [*VIZ, "--checkpoint", "{tmp}/nope.pth"], "no such file")
case("ckpt-under-a-file", [*VIZ, "--checkpoint", "{tmp}/f.txt/x.pth"], "is a file", setup=write("f.txt", "x"))

# -- train --resume
case("resume-missing", [*TRAIN, "--out", "{tmp}/run", "--resume", "{tmp}/nope.pth"], "--resume", "no such file")
case("resume-corrupt", [*TRAIN, "--out", "{tmp}/run", "--resume", "{tmp}/c.pth"], "corrupt",
     setup=write("c.pth", hostile.torch_zip({"w": torch.zeros(1000)})[:700]))
case("resume-weights-only", [*TRAIN, "--out", "{tmp}/run", "--resume", "{tmp}/w.pth"],
     "not a focalexp run checkpoint", setup=lambda tmp: torch.save({"w": torch.zeros(1)}, tmp / "w.pth"))
case("resume-other-config", [*TRAIN, "--out", "{tmp}/run", "--resume", "{tmp}/last.pth"], "different config",
     setup=run_ckpt("last.pth", lambda st: st.update(run_id="ffffffffffff",
                                                    experiment={**st["experiment"], "seed": 7})))
case("resume-damaged-run-checkpoint", [*TRAIN, "--set", "train.threads=2", "--out", "{tmp}/run", "--resume",
                                       "{tmp}/last.pth"], "optimizer", setup=run_ckpt("last.pth"))

# -- a run dir to continue whose checkpoints cannot be read (never a silent restart over its history)
CUT_ZIP = hostile.torch_zip({"w": torch.zeros(1000)})[:700]
case("resume-run-dir-last-cut-short", [*TRAIN, "--out", "{tmp}/run"], "{tmp}/run/last.pth", "corrupt",
     "no last.prev.pth", "not training from scratch", setup=write("run/last.pth", CUT_ZIP))
case("resume-run-dir-last-empty", [*TRAIN, "--out", "{tmp}/run"], "last.pth", "is empty", "not training from scratch",
     setup=write("run/last.pth", b""))
case("resume-run-dir-last-garbage", [*TRAIN, "--out", "{tmp}/run"], "last.pth", "not a checkpoint",
     "not training from scratch",
     setup=write("run/last.pth", bytes(np.random.default_rng(1).integers(128, 256, 512, dtype=np.uint8))))
case("resume-run-dir-last-evil", [*TRAIN, "--out", "{tmp}/run"], "refused", "last.pth", "not training from scratch",
     setup=lambda tmp: ((tmp / "run").mkdir(), evil_file("run/last.pth", "torch_zip")(tmp)))
case("resume-run-dir-last-damaged-state", [*TRAIN, "--out", "{tmp}/run"], "last.pth", "damaged", "optimizer",
     "not training from scratch", setup=lambda tmp: ((tmp / "run").mkdir(), run_ckpt("run/last.pth")(tmp)))
case("resume-run-dir-both-corrupt", [*TRAIN, "--out", "{tmp}/run"], "{tmp}/run/last.pth", "{tmp}/run/last.prev.pth",
     "not training from scratch", setup=both(write("run/last.pth", CUT_ZIP), write("run/last.prev.pth", b"")))
case("resume-run-dir-last-missing-prev-corrupt", [*TRAIN, "--out", "{tmp}/run"], "last.pth' is missing",
     "last.prev.pth", "corrupt", setup=write("run/last.prev.pth", CUT_ZIP))
case("resume-run-dir-metrics-without-checkpoint", [*TRAIN, "--out", "{tmp}/run"], "metrics.jsonl",
     "records 2 trained epoch(s)", "no checkpoint", setup=write("run/metrics.jsonl", '{"epoch": 1}\n{"epoch": 2}\n'))
case("resume-flag-garbage", [*TRAIN, "--out", "{tmp}/run", "--resume", "{tmp}/g.pth"], "--resume", "g.pth",
     "not a checkpoint", setup=write("g.pth", bytes(np.random.default_rng(2).integers(128, 256, 4096, dtype=np.uint8))))
case("resume-flag-evil-and-evil-previous", [*TRAIN, "--out", "{tmp}/run", "--resume", "{tmp}/old/last.pth"],
     "--resume", "refused", "last.prev.pth", "nothing to resume from", setup=lambda tmp: ((tmp / "old").mkdir(),
                                                             evil_file("old/last.pth", "torch_zip")(tmp),
                                                             evil_file("old/last.prev.pth", "plain_pickle_p2")(tmp)))

# -- a sweep dir written by a newer focalexp (or with a nonsense format): refused by every command
NEWER_MANIFEST = json.dumps({"format": 2, **json.loads(GOOD_MANIFEST)})
for cmd in ("status", "collect", "report", "cancel"):
    case(f"{cmd}-manifest-newer-format", [cmd, "{tmp}/sw"], "{tmp}/sw/sweep.json", "format 2", "newer focalexp",
         setup=sweep_dir(NEWER_MANIFEST))
case("sweep-dir-newer-format", ["sweep", "{tmp}/s.yaml", "--dir", "{tmp}/sw"], "sweep.json", "format 2",
     "newer focalexp", setup=both(spec_file(), sweep_dir(NEWER_MANIFEST)))
case("status-manifest-format-not-a-version", ["status", "{tmp}/sw"], "sweep.json", "'format'",
     setup=sweep_dir(json.dumps({"format": "2.0-beta", **json.loads(GOOD_MANIFEST)})))

# -- YAML files given as specs or run configs
case("spec-binary", ["sweep", "{tmp}/s.yaml"], "not a text file", setup=write("s.yaml", b"\x89PNG\r\n\x1a\n\xff\xfe"))
case("spec-nul-bytes", ["sweep", "{tmp}/s.yaml"], "NUL", setup=write("s.yaml", "name: a\x00\n"))
case("spec-empty", ["sweep", "{tmp}/s.yaml"], "is empty", "name, base, grid", setup=write("s.yaml", ""))
case("spec-only-comments", ["sweep", "{tmp}/s.yaml"], "is empty", setup=write("s.yaml", "# nothing\n"))
case("spec-a-list", ["sweep", "{tmp}/s.yaml"], "expected a mapping", setup=write("s.yaml", "- 1\n- 2\n"))
case("spec-a-scalar", ["sweep", "{tmp}/s.yaml"], "expected a mapping", setup=write("s.yaml", "hello\n"))
case("spec-is-a-run-config", ["sweep", "{tmp}/r.yaml"], "looks like a run config", "focalexp train",
     setup=yaml_file("r.yaml", tiny_run()))
case("run-config-is-a-spec", ["train", "{tmp}/s.yaml", "--out", "{tmp}/run"], "looks like a sweep spec",
     "focalexp sweep", setup=spec_file())
case("spec-duplicate-key", ["sweep", "{tmp}/s.yaml"], "duplicate key 'grid'",
     setup=write("s.yaml", "name: t\ngrid:\n  model.focal_levels: [1]\ngrid:\n  model.focal_levels: [2]\n"))
case("config-duplicate-nested-key", ["train", "{tmp}/r.yaml", "--out", "{tmp}/run"], "duplicate key 'epochs'",
     setup=write("r.yaml", "train:\n  epochs: 1\n  epochs: 2\n"))
case("spec-python-tag", ["sweep", "{tmp}/s.yaml"], "malformed YAML", "python/object",
     setup=write("s.yaml", "name: !!python/object/apply:os.system ['touch MARKER']\n"))
case("spec-alias-bomb", ["sweep", "{tmp}/s.yaml"], "expands to more than",
     setup=write("s.yaml", "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
         f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))))
case("spec-recursive-anchor", ["sweep", "{tmp}/s.yaml"], "refers to itself", setup=write("s.yaml", "a: &a [*a]\n"))
case("spec-deep-nesting", ["sweep", "{tmp}/s.yaml"], "nested too deeply", setup=write("s.yaml", "[" * 5000))
case("spec-syntax-error", ["sweep", "{tmp}/s.yaml"], "s.yaml:3", "malformed YAML",
     setup=write("s.yaml", "name: t\ngrid: [unclosed\n"))
case("spec-directory", ["sweep", "{tmp}"], "is a directory, not a file")
case("spec-missing", ["sweep", "{tmp}/nope.yaml"], "no such file")
case("spec-too-big", ["sweep", "{tmp}/s.yaml"], "small text file",
     setup=write("s.yaml", "# " + "x" * (17 * 2**20) + "\n"))
case("config-binary", ["train", "{tmp}/r.yaml", "--out", "{tmp}/run"], "not a text file",
     setup=write("r.yaml", bytes(range(128, 256))))

# -- spec contents
case("spec-unknown-key", ["sweep", "{tmp}/s.yaml"], "unknown key 'grids'", "did you mean 'grid'",
     setup=yaml_file("s.yaml", {**{k: v for k, v in spec().items() if k != "grid"}, "grids": {"seed": [1]}}))
case("spec-grid-not-list", ["sweep", "{tmp}/s.yaml"], "grid.model.focal_levels", "expected a list",
     setup=spec_file(grid={"model.focal_levels": 3}))
case("spec-grid-empty-list", ["sweep", "{tmp}/s.yaml"], "grid.model.focal_levels", "empty",
     setup=spec_file(grid={"model.focal_levels": []}))
case("spec-grid-unknown-axis", ["sweep", "{tmp}/s.yaml"], "model.focal_level", "did you mean 'model.focal_levels'",
     setup=spec_file(grid={"model.focal_level": [1, 2]}))
case("spec-grid-bad-value", ["sweep", "{tmp}/s.yaml"], "focal_levels", "-1",
     setup=spec_file(grid={"model.focal_levels": [-1, 2]}))
case("spec-grid-bad-gating", ["sweep", "{tmp}/s.yaml"], "gating", "did you mean 'sigmoid'",
     setup=spec_file(grid={"model.gating": ["sigmod"]}))
case("spec-zip-lengths", ["sweep", "{tmp}/s.yaml"], "zip[0]", "different lengths",
     setup=spec_file(zip=[{"model.focal_windows": [1, 3], "train.lr": [0.001]}]))
case("spec-exclude-unknown-axis", ["sweep", "{tmp}/s.yaml"], "exclude[0].model.gating", "not an axis",
     setup=spec_file(exclude=[{"model.gating": "softmax"}]))
case("spec-seeds-empty", ["sweep", "{tmp}/s.yaml"], "seeds", "empty", setup=spec_file(seeds=[]))
case("spec-seeds-negative", ["sweep", "{tmp}/s.yaml"], "seeds", "non-negative", setup=spec_file(seeds=[-1]))
case("spec-seeds-duplicate", ["sweep", "{tmp}/s.yaml"], "seeds", "distinct", setup=spec_file(seeds=[1, 1]))
case("spec-name-traversal", ["sweep", "{tmp}/s.yaml"], "name", "letters, digits", setup=spec_file(name="../../etc"))
case("spec-name-slash", ["sweep", "{tmp}/s.yaml"], "name", "letters, digits", setup=spec_file(name="a/b"))
case("spec-name-missing", ["sweep", "{tmp}/s.yaml"], "name", "needs a name", setup=spec_file(name=""))
case("spec-task-unknown", ["sweep", "{tmp}/s.yaml"], "task", "did you mean 'train'", setup=spec_file(task="trian"))
case("spec-cluster-unknown", ["sweep", "{tmp}/s.yaml"], "launcher.cluster", "did you mean 'slurm'",
     setup=spec_file(launcher=launcher(cluster="slurn")))
case("spec-base-seed", ["sweep", "{tmp}/s.yaml"], "base.seed", setup=spec_file(base={**tiny_run()}))
case("spec-lr-not-a-number", ["sweep", "{tmp}/s.yaml"], "train.lr", "expected a number",
     setup=spec_file(grid={"train.lr": ["fast"]}))
case("spec-all-excluded", ["sweep", "{tmp}/s.yaml"], "every combination is excluded",
     setup=spec_file(exclude=[{"model.focal_levels": [1, 2]}]))
case("spec-million-runs", ["sweep", "{tmp}/s.yaml"], "1,000,000 runs", "--yes",
     setup=spec_file(grid={"model.focal_levels": list(range(100)), "train.lr": [i * 1e-4 + 1e-4 for i in range(100)],
                           "train.epochs": list(range(1, 101))}))
case("spec-setup-lines", ["sweep", "{tmp}/s.yaml"], "launcher.setup", "--allow-setup",
     setup=spec_file(launcher=launcher(setup=["touch {marker}"])))
case("spec-nodes-local", ["sweep", "{tmp}/s.yaml"], "launcher.nodes", "one node",
     setup=spec_file(launcher=launcher(nodes=2)))
case("spec-mem-too-large-local", ["sweep", "{tmp}/s.yaml"], "launcher.mem_gb", "this machine has",
     setup=spec_file(launcher=launcher(mem_gb=100000)))
case("spec-cpus-too-many-local", ["sweep", "{tmp}/s.yaml"], "launcher.cpus_per_task", "this machine has",
     setup=spec_file(launcher=launcher(cpus_per_task=4096)))
case("spec-gpus-local-without-gpu", ["sweep", "{tmp}/s.yaml"], "launcher.gpus_per_node", "no GPU",
     setup=spec_file(launcher=launcher(gpus_per_node=1)))
case("spec-mem-negative", ["sweep", "{tmp}/s.yaml"], "launcher.mem_gb", ">= 0",
     setup=spec_file(launcher=launcher(mem_gb=-1)))
case("spec-data-root-missing", ["sweep", "{tmp}/s.yaml"], "data.root", "not a directory",
     setup=spec_file(base={**spec()["base"], "data": {"dataset": "imagefolder", "root": "/nonexistent/x"}}))

case("spec-report-baseline-not-an-axis", ["sweep", "{tmp}/s.yaml"], "report.baseline.model.focal_level",
     "did you mean 'model.focal_levels'", setup=spec_file(report={"baseline": {"model.focal_level": 1}}))
case("spec-report-baseline-no-such-value", ["sweep", "{tmp}/s.yaml"], "report.baseline.model.focal_levels",
     "not a value", setup=spec_file(report={"baseline": {"model.focal_levels": 9}}))
case("spec-report-baseline-a-list", ["sweep", "{tmp}/s.yaml"], "report.baseline", "expected a mapping",
     setup=spec_file(report={"baseline": [1]}))
case("spec-report-metric-unknown", ["sweep", "{tmp}/s.yaml"], "report.metric", "did you mean 'top1'",
     setup=spec_file(report={"metric": "top-1"}))
case("spec-paper-unknown-key", ["sweep", "{tmp}/s.yaml"], "paper.value", "did you mean 'paper.values'",
     setup=spec_file(paper={"source": "Table 14", "value": []}))
case("spec-paper-no-source", ["sweep", "{tmp}/s.yaml"], "paper.source",
     setup=spec_file(paper={"values": [{"match": {"model.focal_levels": 1}, "value": 82.0}]}))
case("spec-paper-value-text", ["sweep", "{tmp}/s.yaml"], "paper.values[0].value", "expected a number",
     setup=spec_file(paper={"source": "T", "values": [{"match": {"model.focal_levels": 1}, "value": "82.0%"}]}))
case("spec-paper-value-nan", ["sweep", "{tmp}/s.yaml"], "paper.values[0].value", "expected a number",
     setup=write("s.yaml", yaml.safe_dump(spec(), sort_keys=False) + "paper: {source: T, values: "
                 "[{match: {model.focal_levels: 1}, value: .nan}]}\n"))
case("spec-paper-match-not-an-axis", ["sweep", "{tmp}/s.yaml"], "paper.values[0].match.model.gating", "not an axis",
     setup=spec_file(paper={"source": "T", "values": [{"match": {"model.gating": "none"}, "value": 1.0}]}))
case("spec-paper-match-empty", ["sweep", "{tmp}/s.yaml"], "paper.values[0].match", "expected a mapping",
     setup=spec_file(paper={"source": "T", "values": [{"match": {}, "value": 1.0}]}))
case("spec-paper-two-values-one-arm", ["sweep", "{tmp}/s.yaml"], "paper.values[1].match", "already has",
     setup=spec_file(paper={"source": "T", "values": [{"match": {"model.focal_levels": 1}, "value": 1.0},
                                                      {"match": {"model.focal_levels": 1}, "value": 2.0}]}))
case("report-baseline-not-an-axis", ["report", "{tmp}/sw", "--baseline", "model.focal_level=1"], "--baseline",
     "did you mean 'model.focal_levels'", setup=sweep_dir(GOOD_MANIFEST))

# -- sweep flags
case("sweep-dir-is-a-file", ["sweep", "{tmp}/s.yaml", "--dir", "{tmp}/f.txt"], "--dir", "is a file",
     setup=both(spec_file(), write("f.txt", "x")))
case("sweep-dir-under-a-file", ["sweep", "{tmp}/s.yaml", "--dir", "{tmp}/f.txt/sw"], "--dir", "is a file",
     setup=both(spec_file(), write("f.txt", "x")))
case("sweep-set-malformed", ["sweep", "{tmp}/s.yaml", "--set", "launcher.cluster"], "--set", "key=value",
     setup=spec_file())
case("sweep-set-unknown-section", ["sweep", "{tmp}/s.yaml", "--set", "lancher.cluster=local"], "lancher",
     "did you mean 'launcher'", setup=spec_file())
case("sweep-cluster-choice", ["sweep", "{tmp}/s.yaml", "--cluster", "k8s"], "invalid choice", setup=spec_file())
case("sweep-dir-other-sweep", ["sweep", "{tmp}/s.yaml", "--dir", "{tmp}/sw"], "holds sweep",
     setup=both(spec_file(), sweep_dir(GOOD_MANIFEST.replace('"t"', '"other"'))))

# -- data
case("imagefolder-no-images", [*TRAIN, "--set", "data.dataset=imagefolder", "--set", "data.root={tmp}/data",
                               "--set", "data.img_size=32", "--out", "{tmp}/run"], "data.root", "no images",
     setup=image_folder(with_images=False))
case("imagefolder-one-class", [*TRAIN, "--set", "data.dataset=imagefolder", "--set", "data.root={tmp}/data",
                               "--set", "data.img_size=32", "--out", "{tmp}/run"], "data.root", "one class",
     setup=image_folder(classes=("a",)))
case("imagefolder-class-mismatch", [*TRAIN, "--set", "data.dataset=imagefolder", "--set", "data.root={tmp}/data",
                                    "--set", "data.img_size=32", "--out", "{tmp}/run"], "different class folders",
     setup=image_folder(classes=("a", "b"), val=("a", "c")))
case("imagefolder-root-is-a-file", [*TRAIN, "--set", "data.dataset=imagefolder", "--set", "data.root={tmp}/f.txt",
                                    "--out", "{tmp}/run"], "data.root", "not a directory", setup=write("f.txt", "x"))
IMAGEFOLDER = [*TRAIN, "--set", "data.dataset=imagefolder", "--set", "data.root={tmp}/data", "--set", "data.img_size=32",
               "--out", "{tmp}/run"]


def linked(rel: str, target: str) -> Callable[[Path], None]:
    """``rel`` a link to ``target`` (both under the test's directory; the target made an image if new)."""
    def _setup(tmp: Path) -> None:
        from PIL import Image

        t = tmp / target
        if not t.exists():
            t.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(t)
        (tmp / rel).symlink_to(t)
    return _setup


case("imagefolder-image-link-out", IMAGEFOLDER, "data.root", "links to '{tmp}/outside.png', outside",
     setup=both(image_folder(), linked("data/train/a/1.png", "outside.png")))
case("imagefolder-folder-link-out", IMAGEFOLDER, "data.root", "train/b/more' links to '{tmp}/elsewhere', outside",
     setup=both(image_folder(), linked("elsewhere.png", "elsewhere/x.png"),
                lambda tmp: (tmp / "data/train/b/more").symlink_to(tmp / "elsewhere")))
case("imagefolder-link-cycle", IMAGEFOLDER, "data.root", "a cycle",
     setup=both(image_folder(), lambda tmp: (tmp / "data/train/a/loop").symlink_to(tmp / "data/train")))


def coco_root(mutate: Callable[[dict], None] | None = None, hook: Callable[[Path], None] | None = None,
              val_mutate: Callable[[dict], None] | None = None):
    """A COCO root of four Shapes-det images (both splits the same), its instances file mutated."""
    def _setup(tmp: Path) -> None:
        import copy

        from PIL import Image

        from focalexp.data.shapes_det import generate_shapes

        images, data = generate_shapes(4, seed=11)
        (tmp / "coco" / "annotations").mkdir(parents=True)
        for split in ("train", "val"):
            (tmp / "coco" / f"{split}2017").mkdir()
            for info, im in zip(data["images"], images):
                Image.fromarray(im.transpose(1, 2, 0)).save(tmp / "coco" / f"{split}2017" / info["file_name"])
            d = copy.deepcopy(data)
            for m in (mutate, val_mutate if split == "val" else None):
                if m:
                    m(d)
            (tmp / "coco" / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(d))
        if hook:
            hook(tmp / "coco")
    return _setup


def first_ann(**kv) -> Callable[[dict], None]:
    return lambda d: d["annotations"][0].update(kv)


def first_image_file(write_it: Callable[[Path], None]) -> Callable[[Path], None]:
    def _hook(root: Path) -> None:
        for split in ("train", "val"):
            p = root / f"{split}2017" / "shapes_11_0000001.png"
            p.unlink()
            write_it(p)
    return _hook


COCO = ["detect", "--set", "data.dataset=coco", "--set", "data.root={tmp}/coco", "--set", "train.epochs=1",
        "--set", "train.batch_size=2", "--set", "train.trackers=[]", "--out", "{tmp}/run"]
case("coco-polygon-far-outside", COCO, "annotations[0]", "polygon leaves the 64x64 image",
     setup=coco_root(first_ann(segmentation=[[0, 0, 1e9, 0, 1e9, 1e9]])))  # crashed the process (C rasteriser)
case("coco-rle-size-huge", COCO, "annotations[0]", "[100000, 100000]",
     setup=coco_root(first_ann(segmentation={"size": [100000, 100000], "counts": "abc"})))
case("coco-rle-counts-overrun", COCO, "annotations[0]", "compressed COCO RLE",
     setup=coco_root(first_ann(segmentation={"size": [64, 64], "counts": "o" * 40})))
case("coco-rle-counts-negative", COCO, "annotations[0]", "non-negative",
     setup=coco_root(first_ann(segmentation={"size": [64, 64], "counts": [-5, 4101]})))
case("coco-bbox-huge", COCO, "annotations[0]", "'bbox'", setup=coco_root(first_ann(bbox=[0, 0, 1e30, 1e30])))
case("coco-area-missing", COCO, "annotations[0]", "'area'", setup=coco_root(lambda d: d["annotations"][0].pop("area")))
case("coco-iscrowd-string", COCO, "annotations[0]", "'iscrowd'", setup=coco_root(first_ann(iscrowd="yes")))
case("coco-file-name-dotdot", COCO, "images[0]", "'../../../etc/passwd'",
     setup=coco_root(lambda d: d["images"][0].update(file_name="../../../etc/passwd")))
case("coco-image-gigapixel", COCO, "images[0]", "'width' and 'height'",
     setup=coco_root(lambda d: d["images"][0].update(width=10**6, height=10**6)))
case("coco-category-without-name", COCO, "categories[0]", "'name'",
     setup=coco_root(lambda d: d["categories"][0].pop("name")))
case("coco-image-link-out", COCO, "image 1", "leads outside",
     setup=both(lambda tmp: (tmp / "outside.png").write_bytes(_png(64)),
                coco_root(hook=first_image_file(lambda p: p.symlink_to(p.parents[2] / "outside.png")))))
case("coco-image-not-an-image", COCO, "image 1", "not a readable image",
     setup=coco_root(hook=first_image_file(lambda p: p.write_text("<html>"))))
case("coco-image-bomb", COCO, "image 1", "too many pixels",
     setup=coco_root(hook=first_image_file(lambda p: p.write_bytes(hostile.png_bomb(20000, 20000)))))
case("coco-image-wrong-size", COCO, "image 1", "is 32x50; its annotation says 64x64",
     setup=coco_root(hook=first_image_file(lambda p: __import__("PIL.Image").Image.new("RGB", (32, 50)).save(p))))
case("coco-image-missing", COCO, "image 1", "no such file", setup=coco_root(hook=first_image_file(lambda p: None)))
case("coco-split-categories-differ", COCO, "data.root", "categories (ids, names) differ",
     setup=coco_root(val_mutate=lambda d: d["categories"][0].update(name="other")))
case("cifar-hostile-batches", [*TRAIN, "--set", "data.dataset=cifar10", "--set", "data.root={tmp}/cifar",
                               "--out", "{tmp}/run"], "data.root", "refused",
     setup=lambda tmp: hostile.cifar_root(tmp / "cifar", tmp / MARKER) and None)
def cifar_lie(**change) -> Callable[[Path], None]:
    """A CIFAR-10 folder of plain (code-free) batches, one of which says ``change``."""
    def _setup(tmp: Path) -> None:
        import pickle

        d = tmp / "cifar" / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
            batch = {"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3], **(change if k == 2 else {})}
            (d / name).write_bytes(pickle.dumps(batch, protocol=2))
        (d / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}, protocol=2))
    return _setup


case("cifar-label-out-of-range", [*TRAIN, "--set", "data.dataset=cifar10", "--set", "data.root={tmp}/cifar", "--out",
                                  "{tmp}/run"], "data_batch_3", "label 500 at item 3", setup=cifar_lie(labels=[0, 1, 2, 500]))
case("cifar-float-pixels", [*TRAIN, "--set", "data.dataset=cifar10", "--set", "data.root={tmp}/cifar", "--out",
                            "{tmp}/run"], "data_batch_3", "float64 data", setup=cifar_lie(data=np.zeros((4, 3072))))
# generated data that cannot fit any machine: the OOM killer ended the process without a word (exit 137)
case("pathfinder-size-beyond-memory", ["train", "--set", "data.train_size=1000000000", "--out", "{tmp}/run"],
     "data.train_size", "1,000,002,000 generated 32x32 Pathfinder images", "GiB of memory")
case("shapes-det-size-beyond-memory", ["detect", "--set", "data.val_size=1000000000", "--out", "{tmp}/run"],
     "data.val_size", "generated 64 px Shapes-det images", "GiB of memory")
# models and batches that cannot fit: torch tried to allocate terabytes (an internal error after the run dir
# was written) or the OOM killer ended the run without a word (focalexp.models.footprint)
case("model-beyond-size-cap", [*TRAIN, "--set", "model.embed_dim=1000000", "--out", "{tmp}/run"], "model.embed_dim",
     "B parameters (more than 3 B)")
case("focal-levels-beyond-size-cap", [*TRAIN, "--set", "model.focal_levels=1000", "--out", "{tmp}/run"],
     "model.focal_levels", "B parameters")
case("depths-beyond-memory", [*TRAIN, "--set", "model.depths=[300,300,300]", "--set", "model.embed_dim=32",
                              "--set", "train.batch_size=1000", "--set", "data.train_size=2000", "--out", "{tmp}/run"],
     "train.batch_size", "GiB", "fit")
case("cpu-batch-beyond-memory", [*TRAIN, "--set", "train.device=cpu", "--set", "model.embed_dim=256", "--set",
                                 "train.batch_size=100000", "--set", "data.train_size=100000", "--out", "{tmp}/run"],
     "train.batch_size", "images fit")
case("eval-batch-beyond-memory", [*TRAIN, "--set", "eval.batch_size=100000000", "--out", "{tmp}/run"],
     "eval.batch_size", "images fit")
case("detect-eval-batch-beyond-memory", [*DETECT, "--set", "eval.batch_size=100000000", "--out", "{tmp}/run"],
     "eval.batch_size", "images fit")
case("sweep-axis-beyond-size-cap", ["sweep", "{tmp}/s.yaml"], "model.embed_dim", "B parameters",
     setup=spec_file(grid={"model.embed_dim": [16, 1000000]}))
case("detect-image-side-beyond-memory", [*DETECT, "--set", "detector.min_size=[50000]", "--set",
                                         "detector.max_size=100000", "--out", "{tmp}/run"], "detector.min_size", "GiB")
case("detect-fpn-beyond-size-cap", [*DETECT, "--set", "detector.fpn_channels=1000000", "--out", "{tmp}/run"],
     "detector.fpn_channels", "B parameters")
case("detect-backbone-beyond-size-cap", [*DETECT, "--set", "model.embed_dim=100000", "--out", "{tmp}/run"],
     "model.embed_dim", "B parameters")
case("flops-set-beyond-size-cap", ["flops", "--model", "focalnet_micro", "--set", "embed_dim=1000000"],
     "--set embed_dim", "B parameters")
case("flops-depths-beyond-block-cap", ["flops", "--model", "focalnet_micro", "--set", "depths=[100000,2,2,2]"],
     "depths", "100,006 blocks in all; at most 1,000")
case("flops-timm-knob-beyond-size-cap", ["flops", "--model", "vit_tiny_patch16_224", "--set", "embed_dim=192000",
                                         "--set", "num_heads=3"], "--set", "B parameters")
case("viz-set-beyond-size-cap", [*VIZ, "--set", "embed_dim=1000000"], "--set embed_dim", "B parameters")
case("bench-batch-beyond-memory", ["bench", "--model", "focalnet_micro", "--batch-size", "100000000", "--steps", "1",
                                   "--rounds", "1"], "--batch-size", "images fit")
case("bench-timm-image-batch-beyond-memory", ["bench", "--model", "resnet18", "--img-size", "4096", "--batch-size",
                                              "4096", "--steps", "1", "--rounds", "1"], "--batch-size", "resnet18")


def own_ckpt_config(**change) -> Callable[[Path], None]:
    """A focalexp checkpoint whose stored config is changed (its weights are a micro model's)."""
    def _setup(tmp: Path) -> None:
        from focalexp import create_model
        from focalexp.models.checkpoint import FORMAT

        m = create_model("focalnet_micro", num_classes=2)
        torch.save({"format": FORMAT, "config": {**m.config.to_dict(), **change}, "state_dict": m.state_dict()},
                   tmp / "big.pth")
    return _setup


for argv in (["viz", "--what", "kernels", "--checkpoint", "{tmp}/big.pth", "--out", "{tmp}/f.png"],
             ["export", "{tmp}/big.pth", "--to", "hf", "--out", "{tmp}/out"]):
    case(f"{argv[0]}-checkpoint-config-beyond-size-cap", argv, "big.pth", "config.embed_dim", "B parameters",
         setup=own_ckpt_config(embed_dim=1000000))
# counts that forked, spun or built until the machine gave out (data.workers 100000: the OOM killer)
case("workers-beyond-cap", [*TRAIN, "--set", "data.workers=100000", "--out", "{tmp}/run"], "data.workers",
     "expected <= 64")
case("threads-beyond-cap", [*TRAIN, "--set", "train.threads=100000", "--out", "{tmp}/run"], "train.threads",
     "expected <= 256")
case("detect-workers-beyond-cap", [*DETECT, "--set", "data.workers=100000", "--out", "{tmp}/run"], "data.workers")
case("detect-mask-layers-beyond-cap", [*DETECT, "--set", "detector.mask_layers=100000", "--out", "{tmp}/run"],
     "detector.mask_layers", "expected <= 32")
case("flops-num-classes-beyond-size-cap", ["flops", "--model", "focalnet_micro", "--set", "num_classes=1000000000"],
     "--set num_classes", "B parameters")
case("cifar-missing", [*TRAIN, "--set", "data.dataset=cifar10", "--set", "data.root={tmp}", "--out", "{tmp}/run"],
     "no cifar10")
FM = [*TRAIN, "--set", "data.dataset=fashion_mnist", "--set", "data.root={tmp}/fm", "--out", "{tmp}/run"]
FM_IMAGES, FM_LABELS = hostile.FASHION_NAMES["train"]


def fashion(**replace: bytes) -> Callable[[Path], None]:
    """A small Fashion-MNIST folder at tmp/fm; ``replace``: file name (``_`` for ``-``) -> contents."""
    return lambda tmp: hostile.fashion_root(tmp / "fm", replace={k.replace("_", "-"): v for k, v in replace.items()}) and None


def fashion_linked(target: Callable[[Path], str]) -> Callable[[Path], None]:
    """tmp/fm with its training images replaced by a link to ``target(tmp)`` (a valid file outside fm)."""
    def _setup(tmp: Path) -> None:
        root = hostile.fashion_root(tmp / "fm")
        (tmp / "outside.gz").write_bytes((root / f"{FM_IMAGES}.gz").read_bytes())
        (root / f"{FM_IMAGES}.gz").unlink()
        (root / f"{FM_IMAGES}.gz").symlink_to(target(tmp))
    return _setup


def fashion_fifo(tmp: Path) -> None:
    import os

    root = hostile.fashion_root(tmp / "fm")
    (root / f"{FM_IMAGES}.gz").unlink()
    os.mkfifo(root / FM_IMAGES)  # opening it would block for ever


X2, _ = hostile.fashion_arrays(40)
case("fashion-missing", FM, "data.root", "no Fashion-MNIST", "apt-get install dataset-fashion-mnist",
     setup=lambda tmp: (tmp / "fm").mkdir())
case("fashion-root-absent", FM, "data.root", "is not a directory", "apt-get install dataset-fashion-mnist")
case("fashion-root-dotdot", [*FM[:-4], "--set", "data.root={tmp}/fm" + "/.." * 40, "--out", "{tmp}/run"],
     "data.root", "no Fashion-MNIST at '/'", "apt-get install dataset-fashion-mnist", setup=fashion())
case("fashion-truncated", FM, "data.root", FM_IMAGES, "not a valid IDX file", "truncated or corrupt",
     setup=lambda tmp: (fashion()(tmp), (tmp / "fm" / f"{FM_IMAGES}.gz").write_bytes(
         hostile.gz(hostile.idx_bytes(X2))[:-100])) and None)
case("fashion-truncated-raw", FM, "data.root", FM_IMAGES, "header declares",
     setup=fashion(train_images_idx3_ubyte=hostile.idx_bytes(X2)[:-1]))
case("fashion-wrong-magic", FM, "data.root", "magic 504b0803",
     setup=fashion(train_images_idx3_ubyte=b"PK" + hostile.idx_bytes(X2)[2:]))
case("fashion-signed-bytes", FM, "data.root", "element type 0x09",
     setup=fashion(train_images_idx3_ubyte=b"\0\0\x09\x03" + hostile.idx_bytes(X2)[4:]))
case("fashion-huge-dims", FM, "data.root", "declares 4,000,000,000 items, more than the 1,000,000 allowed",
     setup=fashion(train_images_idx3_ubyte=hostile.idx_bytes(X2, dims=(4_000_000_000, 28, 28))))
case("fashion-gzip-declares-gigabytes", FM, "data.root", "more than a",
     setup=fashion(train_images_idx3_ubyte=hostile.gzip_claiming(900_000)))
case("fashion-gzip-bomb", FM, "data.root", "gzip says it inflates to",
     setup=fashion(train_images_idx3_ubyte=hostile.gzip_bomb(2, 32 << 20)))
case("fashion-label-out-of-range", FM, "data.root", "label 200 at item 0", "0-9",
     setup=fashion(train_labels_idx1_ubyte=hostile.idx_bytes([200] + [1] * 39)))
case("fashion-labels-count", FM, "data.root", FM_LABELS, "dimension 0 is 39, expected 40",
     setup=fashion(train_labels_idx1_ubyte=hostile.idx_bytes([1] * 39)))
case("fashion-link-out-absolute", FM, "data.root", "leads outside", setup=fashion_linked(lambda tmp: str(tmp / "outside.gz")))
case("fashion-link-out-relative", FM, "data.root", "leads outside", setup=fashion_linked(lambda tmp: "../outside.gz"))
case("fashion-link-to-device", FM, "data.root", "leads outside", setup=fashion_linked(lambda tmp: "/dev/zero"))
case("fashion-fifo", FM, "data.root", "not a regular file", setup=fashion_fifo)
case("fashion-in-chans", [*FM, "--set", "model.in_chans=2"], "model.in_chans", "1 or 3")
case("pathfinder-in-chans-1", [*TRAIN, "--set", "model.in_chans=1", "--out", "{tmp}/run"], "model.in_chans",
     "pathfinder images have 3 channels")
FM_SPEC = spec()
FM_SPEC["base"]["data"] = {"dataset": "fashion_mnist", "train_size": 64, "val_size": 32}
case("sweep-fashion-missing", ["sweep", "{tmp}/s.yaml", "--set", "base.data.root={tmp}"], "run [", "data.root",
     "apt-get install dataset-fashion-mnist", setup=yaml_file("s.yaml", FM_SPEC))
case("dataset-unknown", [*TRAIN, "--set", "data.dataset=imagenet", "--out", "{tmp}/run"], "data.dataset",
     "did you mean 'imagefolder'")
case("data-root-env-unset", [*TRAIN, "--set", "data.dataset=imagefolder", "--set",
                             "data.root=${FOCALEXP_NOT_SET_ANYWHERE}", "--out", "{tmp}/run"], "FOCALEXP_NOT_SET_ANYWHERE")

# -- train flags and keys
case("train-out-is-a-file", [*TRAIN, "--out", "{tmp}/f.txt"], "--out", "is a file", setup=write("f.txt", "x"))
case("train-out-under-a-file", [*TRAIN, "--out", "{tmp}/f.txt/run"], "--out", "is a file", setup=write("f.txt", "x"))
case("train-out-hostile-config", [*TRAIN, "--out", "{tmp}/run"], "--out", "config.yaml",
     setup=write("run/config.yaml", "- not\n- a config\n"))
case("train-nproc-zero", [*TRAIN, "--out", "{tmp}/run", "--nproc", "0"], "--nproc", ">= 1")
case("train-nproc-huge", [*TRAIN, "--out", "{tmp}/run", "--nproc", "100000"], "--nproc", "this machine has")
case("train-epochs-zero", [*TRAIN, "--set", "train.epochs=0", "--out", "{tmp}/run"], "train.epochs", ">= 1")
case("train-lr-string", [*TRAIN, "--set", "train.lr=fast", "--out", "{tmp}/run"], "train.lr", "expected a number")
case("train-lr-nan", [*TRAIN, "--set", "train.lr=.nan", "--out", "{tmp}/run"], "train.lr", "expected a number")
case("train-unknown-key", [*TRAIN, "--set", "train.epoch=3", "--out", "{tmp}/run"], "train.epoch",
     "did you mean 'train.epochs'")
case("train-unknown-section", [*TRAIN, "--set", "trian.epochs=3", "--out", "{tmp}/run"], "trian",
     "did you mean 'train'")
case("train-unknown-model", ["train", "--model", "focalnet_t_sfr", "--out", "{tmp}/run"], "focalnet_t_sfr",
     "focalnet_t_srf")
case("train-unknown-recipe", [*TRAIN, "--set", "recipe=imagenet", "--out", "{tmp}/run"], "recipe",
     "did you mean 'imagenet_paper'")
case("train-unknown-optimizer", [*TRAIN, "--set", "train.opt=adamww", "--out", "{tmp}/run"], "train.opt",
     "did you mean 'adamw'")
case("train-batch-larger-than-data", [*TRAIN, "--set", "train.batch_size=100000", "--out", "{tmp}/run"],
     "train.batch_size", "larger than the training set")
case("train-mixup-pathfinder", [*TRAIN, "--set", "train.mixup=0.8", "--out", "{tmp}/run"], "train.mixup")
case("train-section-not-mapping", [*TRAIN, "--set", "train=3", "--out", "{tmp}/run"], "train", "mapping")

# -- flops / bench / models
case("flops-unknown-timm-name", ["flops", "--model", "resnet19"], "resnet19", "resnet18")
case("flops-timm-bad-knob", ["flops", "--model", "resnet18", "--set", "drop_rat=0.1"], "drop_rat",
     "did you mean 'drop_rate'")
case("flops-timm-checkpoint-knob", ["flops", "--model", "resnet18", "--set", "checkpoint_path={tmp}/evil.pth"],
     "checkpoint_path", "not a model knob", setup=evil_file("evil.pth", "torch_zip"))
case("flops-timm-pretrained-knob", ["flops", "--model", "resnet18", "--set", "pretrained=true"], "pretrained",
     "not a model knob")
case("flops-timm-bad-size", ["flops", "--model", "swin_tiny_patch4_window7_224", "--img-size", "100"],
     "--img-size", "100")
case("flops-img-size-zero", ["flops", "--model", "focalnet_t_srf", "--img-size", "0"], "--img-size")
case("flops-img-size-huge", ["flops", "--model", "focalnet_t_srf", "--img-size", "65536"], "--img-size", "at most")
case("flops-depth-negative", ["flops", "--model", "focalnet_t_srf", "--depth", "-1", "--by", "module"], "--depth")
case("flops-preset-bad-knob", ["flops", "--model", "focalnet_t_srf", "--set", "focal_levels=-2"], "focal_levels")
case("bench-batch-zero", ["bench", "--model", "focalnet_micro", "--batch-size", "0"], "--batch-size")
case("bench-rounds-zero", ["bench", "--model", "focalnet_micro", "--rounds", "0"], "--rounds")
case("bench-threads-zero", ["bench", "--model", "focalnet_micro", "--threads", "0"], "--threads")
case("bench-cuda-missing", ["bench", "--model", "focalnet_micro", "--device", "cuda"], "cuda")
case("bench-device-unknown", ["bench", "--model", "focalnet_micro", "--device", "tpu"], "--device", "cpu")
case("bench-unknown-model", ["bench", "--model", "focalnet_mikro"], "focalnet_micro")
case("bench-img-size-huge", ["bench", "--model", "focalnet_micro", "--img-size", "100000"], "--img-size", "at most")

# -- viz
case("viz-out-is-a-dir", ["viz", "--model", "focalnet_micro", "--what", "kernels", "--out", "{tmp}/d.png"],
     "--out", "is a directory", setup=lambda tmp: (tmp / "d.png").mkdir())
case("viz-out-suffix", ["viz", "--model", "focalnet_micro", "--what", "kernels", "--out", "{tmp}/f.jpg"],
     "--out", ".png")
case("viz-out-under-a-file", ["viz", "--model", "focalnet_micro", "--what", "kernels", "--out", "{tmp}/f.txt/o.png"],
     "--out", "is a file", setup=write("f.txt", "x"))
case("viz-image-directory", ["viz", "--model", "focalnet_micro", "--what", "modulator", "--image", "{tmp}",
                             "--out", "{tmp}/o.png"], "--image", "is a directory")
case("viz-image-text", ["viz", "--model", "focalnet_micro", "--what", "modulator", "--image", "{tmp}/a.png",
                        "--out", "{tmp}/o.png"], "--image", "not a readable image", setup=write("a.png", "hello"))
case("viz-image-truncated", ["viz", "--model", "focalnet_micro", "--what", "modulator", "--image", "{tmp}/a.png",
                             "--out", "{tmp}/o.png"], "--image", "not a readable image",
     setup=lambda tmp: (tmp / "a.png").write_bytes(_png(64)[:120]))
case("viz-image-bomb", ["viz", "--model", "focalnet_micro", "--what", "modulator", "--image", "{tmp}/bomb.png",
                        "--out", "{tmp}/o.png"], "--image", "pixels",
     setup=lambda tmp: __import__("PIL.Image").Image.new("1", (30000, 30000)).save(tmp / "bomb.png"))
case("viz-image-missing", ["viz", "--model", "focalnet_micro", "--what", "modulator", "--image", "{tmp}/x.png",
                           "--out", "{tmp}/o.png"], "--image", "no such file")
case("viz-levels-on-kernels", ["viz", "--model", "focalnet_micro", "--what", "kernels", "--levels", "2",
                               "--out", "{tmp}/o.png"], "--levels")
case("viz-bad-block", ["viz", "--model", "focalnet_micro", "--what", "gates", "--block", "stages.9.blocks.0",
                       "--out", "{tmp}/o.png"], "--block", "stages.9.blocks.0")
case("viz-img-size-zero", ["viz", "--model", "focalnet_micro", "--what", "modulator", "--img-size", "0",
                           "--out", "{tmp}/o.png"], "--img-size")
case("viz-unknown-baseline", ["viz", "--model", "focalnet_micro", "--what", "erf", "--baseline", "swin_tinny",
                              "--out", "{tmp}/o.png"], "swin_tinny")
case("viz-no-model", ["viz", "--what", "kernels", "--out", "{tmp}/o.png"], "--model")
case("viz-what-unknown", ["viz", "--model", "focalnet_micro", "--what", "gate", "--out", "{tmp}/o.png"],
     "invalid choice", "gates")

# -- sweep dirs given to status / collect / report
case("status-manifest-cut-short", ["status", "{tmp}/sw"], "sweep.json", "corrupt",
     setup=sweep_dir(GOOD_MANIFEST[:40]))
case("status-manifest-a-list", ["status", "{tmp}/sw"], "sweep.json", "corrupt", setup=sweep_dir("[1, 2]"))
case("status-manifest-no-runs", ["status", "{tmp}/sw"], "sweep.json", "runs", setup=sweep_dir('{"name": "t"}'))
case("status-manifest-run-traversal", ["status", "{tmp}/sw"], "sweep.json", "run_id",
     setup=sweep_dir(GOOD_MANIFEST.replace("0123456789ab", "../../../etc")))
case("status-manifest-binary", ["status", "{tmp}/sw"], "sweep.json", "corrupt",
     setup=lambda tmp: (sweep_dir(None)(tmp), (tmp / "sw" / "sweep.json").write_bytes(b"\xff\xfe\x00")))
case("status-not-a-sweep", ["status", "{tmp}"], "not a sweep dir")
case("status-a-file", ["status", "{tmp}/f.txt"], "is a file", setup=write("f.txt", "x"))
case("status-missing", ["status", "{tmp}/nope"], "no such")
case("collect-manifest-cut-short", ["collect", "{tmp}/sw"], "sweep.json", "corrupt", setup=sweep_dir(GOOD_MANIFEST[:40]))
case("report-manifest-cut-short", ["report", "{tmp}/sw"], "sweep.json", "corrupt", setup=sweep_dir(GOOD_MANIFEST[:40]))
case("report-not-a-sweep", ["report", "{tmp}"], "not a sweep dir")


# -- export: Hugging Face folders (config.json is untrusted JSON), weights, --out, --to
def own_ckpt(rel: str = "m.pth") -> Callable[[Path], None]:
    """A focalexp checkpoint (carries its config) of a small model."""
    def _setup(tmp: Path) -> None:
        from focalexp import create_model, save_model

        save_model(create_model("focalnet_t_srf", embed_dim=8, depths=[1, 1], num_classes=2, img_size=32), tmp / rel)
    return _setup


def hf_dir(rel: str = "hf", config: dict | None = None, raw_config: str | bytes | None = None,
           drop: str | None = None, add: str | None = None, weights: str | None = "model.safetensors",
           evil: str | None = None, extra: dict | None = None, with_config: bool = True) -> Callable[[Path], None]:
    """A save_pretrained-style folder made by focalexp's own HF layout, then damaged as asked: config keys
    changed (``config``) or the whole file replaced (``raw_config``), a weight dropped or added, the weights
    file left out, or a pickle that runs code as pytorch_model.bin (``evil``); ``extra``: more files."""
    def _setup(tmp: Path) -> None:
        from safetensors.torch import save_file

        from focalexp import create_model
        from focalexp.models.checkpoint import state_dict_in_layout
        from focalexp.models.hf_config import config_to_hf

        d = tmp / rel
        d.mkdir(parents=True)
        m = create_model("focalnet_t_srf", embed_dim=8, depths=[1, 1], num_classes=2, img_size=32)
        cfg = {**config_to_hf(m.config), **(config or {})}
        if with_config:
            (d / "config.json").write_bytes(raw_config if isinstance(raw_config, bytes)
                                            else (raw_config if raw_config is not None else json.dumps(cfg)).encode())
        sd = state_dict_in_layout(m, "hf")
        if drop:
            sd.pop(drop)
        if add:
            sd[add] = torch.zeros(3)
        if evil:
            (d / "pytorch_model.bin").write_bytes(hostile.evil_checkpoints(tmp / MARKER)[evil])
        elif weights:
            save_file(sd, str(d / weights))
        for name, content in (extra or {}).items():
            (d / name).write_text(content)
    return _setup


EXPORT = ["export", "{tmp}/hf", "--to", "onnx", "--out", "{tmp}/out"]
OWN = ["export", "{tmp}/m.pth", "--to", "hf", "--out", "{tmp}/out"]
case("export-hf-config-unknown-key", EXPORT, "config.json", "unknown key 'embed_dimm'", "did you mean 'embed_dim'",
     setup=hf_dir(config={"embed_dimm": 8}))
case("export-hf-config-huge-value", EXPORT, "config.json", "embed_dim: expected an integer in [1, 8192]",
     setup=hf_dir(config={"embed_dim": 10**15}))
case("export-hf-config-huge-model", EXPORT, "config.json", "B parameters", "refused",
     setup=hf_dir(config={"embed_dim": 8192, "depths": [10, 10]}))
case("export-hf-config-many-stages", EXPORT, "config.json", "depths", "1 to 16",
     setup=hf_dir(config={"depths": [1] * 1000}))
case("export-hf-config-not-json", EXPORT, "config.json", "not valid JSON", setup=hf_dir(raw_config="{model_type: focalnet"))
case("export-hf-config-nan", EXPORT, "config.json", "not valid JSON", "NaN",
     setup=hf_dir(raw_config='{"model_type": "focalnet", "mlp_ratio": NaN}'))
case("export-hf-config-a-list", EXPORT, "config.json", "not an object", setup=hf_dir(raw_config="[1, 2]"))
case("export-hf-config-binary", EXPORT, "config.json", "not UTF-8", setup=hf_dir(raw_config=b"\xff\xfe\x00{"))
case("export-hf-config-deep", EXPORT, "config.json", "not valid JSON", setup=hf_dir(raw_config="[" * 200_000))
case("export-hf-config-huge-file", EXPORT, "config.json", "bytes",
     setup=hf_dir(raw_config='{"model_type": "focalnet", "x": "' + "a" * (2 << 20) + '"}'))
case("export-hf-config-model-type", EXPORT, "config.json", "model_type", "swin", setup=hf_dir(config={"model_type": "swin"}))
case("export-hf-config-bool-as-int", EXPORT, "config.json", "use_conv_embed", "true or false",
     setup=hf_dir(config={"use_conv_embed": 1}))
case("export-hf-config-activation", EXPORT, "config.json", "hidden_act", setup=hf_dir(config={"hidden_act": "relu"}))
case("export-hf-config-levels-mismatch", EXPORT, "config.json", "focal_levels", "one per stage",
     setup=hf_dir(config={"focal_levels": [2, 2, 2]}))
case("export-hf-labels-vs-classifier", EXPORT, "classifier of shape (2, 16)", "lists 5 labels",
     setup=hf_dir(config={"id2label": {str(i): str(i) for i in range(5)}}))
case("export-hf-no-config", EXPORT, "no config.json", "not a Hugging Face save_pretrained folder",
     setup=hf_dir(with_config=False))
case("export-hf-no-weights", EXPORT, "has no model.safetensors or pytorch_model.bin", setup=hf_dir(weights=None))
case("export-hf-sharded", EXPORT, "sharded", setup=hf_dir(weights=None, extra={"model.safetensors.index.json": "{}"}))
case("export-hf-missing-weight", EXPORT, "does not fit", "missing stages.1.blocks.0.modulation.h.weight",
     setup=hf_dir(drop="focalnet.encoder.stages.1.layers.0.modulation.projection_context.weight"))
case("export-hf-odd-weight", EXPORT, "does not fit", "unexpected", "evil",
     setup=hf_dir(add="focalnet.encoder.stages.0.layers.0.modulation.evil"))
case("export-hf-odd-stage-index", EXPORT, "does not fit", "unexpected",
     setup=hf_dir(add="focalnet.encoder.stages.99999999999999999999.downsample.norm.weight"))
for kind in ["plain_pickle_p2", "torch_zip", "torch_zip_tensor_rebuild", "torch_legacy", "plain_pickle_nested_torch"]:
    case(f"export-hf-bin-{kind}", EXPORT, "refused", "pytorch_model.bin", setup=hf_dir(weights=None, evil=kind))
    case(f"export-checkpoint-{kind}", ["export", "{tmp}/evil.pth", "--model", "focalnet_micro", "--to", "hf",
                                       "--out", "{tmp}/out"], "refused", "evil.pth", setup=evil_file("evil.pth", kind))
case("export-hf-file-wrong-arch", ["export", "{tmp}/hf/model.safetensors", "--model", "focalnet_t_lrf", "--set",
                                   "embed_dim=8", "--set", "depths=[1,1]", "--set", "num_classes=2", "--to", "hf",
                                   "--out", "{tmp}/out"], "hf layout", "does not fit", setup=hf_dir())
case("export-out-not-empty", [*OWN[:-1], "{tmp}/busy"], "--out", "exists and is not empty", "--force",
     setup=both(own_ckpt(), write("busy/notes.txt", "mine")))
case("export-out-force-not-an-export", [*OWN[:-1], "{tmp}/busy", "--force"], "--out", "not an earlier export",
     setup=both(own_ckpt(), write("busy/notes.txt", "mine")))
case("export-out-holds-checkpoint", [*OWN[:-1], "{tmp}", "--force"], "--out", "holds the checkpoint",
     setup=own_ckpt())
case("export-out-is-checkpoint-folder", [*EXPORT[:-1], "{tmp}/hf", "--force"], "--out", "is the checkpoint",
     setup=hf_dir())
case("export-out-inside-checkpoint", [*EXPORT[:-1], "{tmp}/hf/sub"], "--out", "is inside the checkpoint",
     setup=hf_dir())
case("export-out-symlink", [*OWN[:-1], "{tmp}/link"], "--out", "symbolic link",
     setup=both(own_ckpt(), lambda tmp: (tmp / "elsewhere").mkdir(), lambda tmp: (tmp / "link").symlink_to(tmp / "elsewhere")))
case("export-out-a-file", [*OWN[:-1], "{tmp}/f.txt"], "--out", "is a file", setup=both(own_ckpt(), write("f.txt", "x")))
case("export-out-under-a-file", [*OWN[:-1], "{tmp}/f.txt/x"], "--out", "is a file",
     setup=both(own_ckpt(), write("f.txt", "x")))
case("export-to-typo", ["export", "{tmp}/m.pth", "--to", "onx", "--out", "{tmp}/out"], "--to", "did you mean 'onnx'",
     setup=own_ckpt())
case("export-to-typo-long", ["export", "{tmp}/m.pth", "--to", "huggingfce", "--out", "{tmp}/out"], "did you mean 'hf'",
     setup=own_ckpt())
case("export-timm-cannot-hold", ["export", "{tmp}/m.pth", "--set", "gating=sigmoid", "--to", "timm", "--out",
                                 "{tmp}/out"], "timm layout cannot hold", "gating=sigmoid", setup=own_ckpt())
case("export-no-config-no-model", ["export", "{tmp}/hf/model.safetensors", "--to", "timm", "--out", "{tmp}/out"],
     "carries no focalexp config", setup=hf_dir())
case("export-set-unknown-key", [*OWN, "--set", "focal_levle=3"], "focal_levle", "focal_levels", setup=own_ckpt())
case("export-missing-checkpoint", OWN, "no such file")
case("export-no-to", ["export", "{tmp}/m.pth", "--out", "{tmp}/out"], "--to", setup=own_ckpt())


def _png(size: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(c: Case, run, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    if c.setup:
        c.setup(work)
    before = _tree(work)
    fill = lambda s: s.replace("{tmp}", str(work)).replace("{marker}", str(work / MARKER))  # noqa: E731
    p = run(*[fill(a) for a in c.argv], check_rc=None)
    assert not (work / MARKER).exists(), "a payload ran"
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for needle in c.needles:
        assert fill(needle) in lines[0], lines[0]
    assert p.stdout == ""
    assert _tree(work) == before, "something was written"


def test_the_table_is_broad():
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES)
