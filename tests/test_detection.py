"""The detect task: torchvision detectors over focalexp and timm backbones train, resume bit-exactly on the
CPU and evaluate with pycocotools' COCOeval; bad detection configs are one line."""

from __future__ import annotations

import json

import pytest
import torch

from focalexp.detection.config import resolve_detect_config
from focalexp.detection.trainer import train_detector
from focalexp.train.loop import read_metrics

from .conftest import invoke
from .test_train import _same_metrics, _same_state, sigterm_after_first_checkpoint

# Shapes-det at 64 px, slim heads: a step takes a fraction of a second
TINY_DET = {
    "model": {"preset": "focalnet_micro", "patch_size": 4, "embed_dim": 16, "depths": [1, 1, 1]},
    "detector": {"mask_channels": 16, "mask_layers": 1, "fpn_channels": 32, "representation_size": 64,
                 "box_batch_size_per_image": 16, "rpn_batch_size_per_image": 32},
    "data": {"train_size": 16, "val_size": 8},
    "train": {"epochs": 2, "batch_size": 8, "warmup_epochs": 0.5, "threads": 2, "trackers": []},
}


def tiny_det(**sections) -> dict:
    cfg = json.loads(json.dumps(TINY_DET))
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


SWIN = {"timm": "swin_tiny_patch4_window7_224", "img_size": 64, "window_size": 4}


@pytest.mark.parametrize("model,arch", [(None, "maskrcnn"), (SWIN, "maskrcnn"), (None, "fcos")],
                         ids=["focalnet-maskrcnn", "timm-swin_t-maskrcnn", "focalnet-fcos"])
def test_detector_trains_and_resumes_bit_exactly(tmp_path, model, arch):
    """Stopped after each epoch and resumed = uninterrupted, bit for bit (weights, optimizer, COCOeval
    numbers): RPN/RoI sampling, multi-scale and flips draw from restored RNG streams."""
    raw = tiny_det(detector={"arch": arch, "min_size": [56, 64], "fpn_channels": 64 if arch == "fcos" else 32},
                   train={"ema": arch == "fcos", "ema_decay": 0.9})  # FCOS: with an EMA of the weights
    if model is not None:  # Swin-T (28 M parameters): one step per epoch is enough to test the resume
        raw["model"] = model
        raw["data"] = {"train_size": 8, "val_size": 4}
    full = train_detector(resolve_detect_config(raw), tmp_path / "full", progress=False)
    assert full["status"] == "done" and full["epochs_done"] == 2
    for key in ("box_ap", "box_ap50", "box_ap75", "box_ap_s"):
        assert 0.0 <= full[key] <= 100.0, key
    assert (full.get("mask_ap") is not None) == (arch == "maskrcnn")
    assert (full.get("ema_box_ap") is not None) == (arch == "fcos")
    staged = resolve_detect_config({**raw, "train": {**raw["train"], "stop_after_epochs": 1}})
    results = [train_detector(staged, tmp_path / "staged", progress=False) for _ in range(2)]
    assert [r["status"] for r in results] == ["stopped", "done"]
    _same_metrics(read_metrics(tmp_path / "full"), read_metrics(tmp_path / "staged"))
    _same_state(tmp_path / "full", tmp_path / "staged")
    assert results[-1]["box_ap"] == full["box_ap"]
    rows = read_metrics(tmp_path / "full")
    assert all("box_ap" in r and r["train_loss"] > 0 for r in rows)
    best = torch.load(tmp_path / "full" / "best.pth", weights_only=True)
    assert best["format"] == "focalexp-detector" and best["box_ap"] == max(r["box_ap"] for r in rows)


def test_training_lowers_the_loss_and_finds_objects(tmp_path):
    """Three epochs on 48 images: the loss falls and the detector finds objects (AP50 > 0)."""
    raw = tiny_det(data={"train_size": 48, "val_size": 8},
                   train={"epochs": 3, "lr": 3e-3, "batch_size": 8, "warmup_epochs": 0.2})
    res = train_detector(resolve_detect_config(raw), tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    assert res["box_ap50"] > 0


def test_coco_evaluate_scores_ground_truth_100_and_nothing_0():
    from focalexp.data.shapes_det import ShapesDetection
    from focalexp.detection.evaluate import coco_evaluate, to_coco_results

    ds = ShapesDetection(6, seed=3)
    outs, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        n = len(t["boxes"])
        outs.append({"boxes": t["boxes"], "scores": torch.ones(n), "labels": t["labels"],
                     "masks": t["masks"][:, None].float()})
        ids.append(t["image_id"])
    perfect = coco_evaluate(ds.coco, to_coco_results(outs, ids), ("bbox", "segm"))
    assert perfect["box_ap"] == 100.0 and perfect["mask_ap"] == 100.0 and perfect["box_ap50"] == 100.0
    assert perfect["box_ap_m"] is None  # no object of COCO's medium size in 64 px images: nothing to measure
    assert set(perfect["box_ap_per_class"]) == set(ds.classes)
    shifted = [{**o, "boxes": o["boxes"] + torch.tensor([3.0, 3.0, 3.0, 3.0])} for o in outs]
    worse = coco_evaluate(ds.coco, to_coco_results(shifted, ids, masks=False), ("bbox",))
    assert 0 < worse["box_ap"] < 100.0 and worse["box_ap50"] >= worse["box_ap75"]
    nothing = coco_evaluate(ds.coco, [], ("bbox", "segm"))
    assert nothing["box_ap"] == 0.0 and nothing["mask_ap"] == 0.0


def test_detector_trains_on_a_coco_root(tmp_path):
    """The COCO path end to end: a root in the 2017 layout (PNG files, category ids that are not 1..K),
    labels mapped to contiguous ones for training and back for COCOeval."""
    from PIL import Image

    from focalexp.data.shapes_det import generate_shapes

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split, n, seed in (("train", 16, 1), ("val", 6, 2)):
        images, coco = generate_shapes(n, seed)
        (root / f"{split}2017").mkdir()
        for im, meta in zip(images, coco["images"]):
            Image.fromarray(im.transpose(1, 2, 0)).save(root / f"{split}2017" / meta["file_name"])
        for c in coco["categories"]:
            c["id"] *= 10  # COCO's ids have gaps: 10, 20, 30, 40
        for a in coco["annotations"]:
            a["category_id"] *= 10
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
    raw = tiny_det(data={"dataset": "coco", "root": str(root), "train_size": None, "val_size": None},
                   train={"epochs": 1})
    res = train_detector(resolve_detect_config(raw), tmp_path / "run", progress=False)
    assert res["status"] == "done" and res["box_ap"] is not None
    assert set(res["box_ap_per_class"]) == {"square", "disk", "triangle", "target"}


@pytest.mark.parametrize("sets,needle", [
    (["detector.arch=fcoss"], "detector.arch: unknown value 'fcoss' (did you mean 'fcos'?)"),
    (["model.timm=swin_tiny_patch4_window7_22"], "model.timm: unknown timm model 'swin_tiny_patch4_window7_22'"),
    (["model.num_classes=3"], "model.num_classes"),
    (["train.decay_milestones=[3, 2]"], "train.decay_milestones"),
    (["detectr.arch=fcos"], "detectr"),
    (["detector.backbone_init=/nonexistent/best.pth"], "detector.backbone_init"),
    (["data.dataset=coco", "data.root=/nonexistent"], "data.root"),
], ids=["arch", "timm-name", "num-classes", "milestones", "section", "init", "coco-root"])
def test_bad_detection_config_is_one_line_exit_2_and_writes_nothing(tmp_path, sets, needle):
    args = [a for s in sets for a in ("--set", s)]
    r = invoke("detect", *args, "--out", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_backbone_starts_from_a_classification_run_dir(tmp_path):
    """``detector.backbone_init: RUN_DIR`` loads the classifier's best.pth into the backbone (exactly:
    every stage's weights), and a run dir of another architecture is one line naming the mismatch."""
    from focalexp.detection.model import build_detector
    from focalexp.models.checkpoint import save_model
    from focalexp.models.factory import create_model

    cls_model = create_model({**TINY_DET["model"], "num_classes": 2, "img_size": 64})
    run = tmp_path / "cls"
    run.mkdir()
    save_model(cls_model, run / "best.pth")
    cfg = resolve_detect_config(tiny_det(detector={"backbone_init": str(run)}))
    det = build_detector(cfg, 4)
    body = det.backbone.backbone.body.state_dict()
    for k, v in cls_model.state_dict().items():
        if not k.startswith(("head.", "norm.")):
            assert torch.equal(body[k], v), k
    # kernels grown for detection (focal_windows 9 vs 3): the classifier's kernels are zero-padded, centred
    grown = build_detector(resolve_detect_config(tiny_det(model={"focal_windows": 9},
                                                          detector={"backbone_init": str(run)})), 4)
    k = "stages.0.blocks.0.modulation.focal_layers.0.0.weight"
    w = grown.backbone.backbone.body.state_dict()[k]
    assert w.shape[-1] == 9 and torch.equal(w[..., 3:6, 3:6], cls_model.state_dict()[k])
    ring = w.clone()
    ring[..., 3:6, 3:6] = 0
    assert not ring.any()  # zeros around the classifier's kernel
    # one focal level more (SRF -> LRF, as the official detection code grows them): q/ctx rows, old gates
    # and the global gate copied, the new level's gate zero, its kernel the model's own initialisation
    levels = cls_model.stages[0].blocks[0].modulation.focal_level
    lrf = build_detector(resolve_detect_config(tiny_det(model={"focal_levels": levels + 1},
                                                        detector={"backbone_init": str(run)})), 4)
    got, ref = lrf.backbone.backbone.body.state_dict(), cls_model.state_dict()
    for s, stage in enumerate(cls_model.stages):
        dim = stage.blocks[0].modulation.dim
        for part in ("weight", "bias"):
            k = f"stages.{s}.blocks.0.modulation.f.{part}"
            w, old = got[k], ref[k]
            assert w.shape[0] == old.shape[0] + 1
            assert torch.equal(w[: 2 * dim + levels], old[:-1]) and torch.equal(w[-1], old[-1]), k
            assert not w[2 * dim + levels].any(), k  # the new level's gate row
        for level in range(levels):
            k = f"stages.{s}.blocks.0.modulation.focal_layers.{level}.0.weight"
            assert torch.equal(got[k], ref[k]), k
        assert f"stages.{s}.blocks.0.modulation.focal_layers.{levels}.0.weight" in got
    r = invoke("detect", "--set", f"detector.backbone_init={run}", "--set", "model.embed_dim=24",
               "--set", "model.depths=[1,1,1]", "--set", "model.patch_size=4", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "does not fit" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("layout", ["official", "timm"])
def test_backbone_starts_from_a_weights_file_in_another_layout(tmp_path, layout):
    """``detector.backbone_init: FILE`` in microsoft/FocalNet's layout (``{'model': ...}``) or timm's:
    converted by layout detection, every stage's weights land in the detection backbone exactly."""
    from focalexp.detection.model import build_detector
    from focalexp.models.checkpoint import state_dict_in_layout
    from focalexp.models.factory import create_model

    cls_model = create_model({**TINY_DET["model"], "num_classes": 2, "img_size": 64})
    sd = state_dict_in_layout(cls_model, layout)
    path = tmp_path / f"{layout}.pth"
    torch.save({"model": sd} if layout == "official" else sd, path)
    det = build_detector(resolve_detect_config(tiny_det(detector={"backbone_init": str(path)})), 4)
    body = det.backbone.backbone.body.state_dict()
    mine = {k: v for k, v in cls_model.state_dict().items() if not k.startswith(("head.", "norm."))}
    assert mine and all(torch.equal(body[k], v) for k, v in mine.items())


def test_a_timm_backbone_starts_from_a_timm_weights_file(tmp_path):
    """A timm Swin-T detector from a file of timm's classifier weights (timm's own filter maps them into
    the features_only model): the backbone holds exactly those weights; random init would not."""
    import timm

    from focalexp.detection.model import build_detector

    cls_model = timm.create_model(SWIN["timm"], img_size=64, window_size=4, num_classes=3)
    path = tmp_path / "swin.pth"
    torch.save(cls_model.state_dict(), path)
    raw = tiny_det(detector={"backbone_init": str(path)})
    raw["model"] = dict(SWIN)
    import re

    body = build_detector(resolve_detect_config(raw), 4).backbone.backbone.body.state_dict()
    body = {re.sub(r"^layers_(\d+)", r"layers.\1", k): v for k, v in body.items()}  # timm's feature wrapper
    ref = cls_model.state_dict()
    assert set(body) <= set(ref) and len(body) >= len(ref) - 4  # all but the head (and final norm)
    assert all(torch.equal(v, ref[k]) for k, v in body.items())
    # another architecture's weights: one line naming what does not fit, nothing written
    other = tmp_path / "convnext.pth"
    torch.save(timm.create_model("convnext_tiny", num_classes=3).state_dict(), other)
    r = invoke("detect", "--set", f"model.timm={SWIN['timm']}", "--set", "model.img_size=64",
               "--set", f"detector.backbone_init={other}", "--out", str(tmp_path / "bad"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "does not fit" in r.stderr and "Missing key(s)" in r.stderr and not (tmp_path / "bad").exists()


def test_a_local_detection_sweep_reports_box_ap(tmp_path):
    """``task: detect`` through the local backend: two runs, their COCOeval numbers collected, the report
    comparing box AP (its figures named after it), status showing box AP."""
    import yaml

    base = tiny_det(train={"epochs": 1})
    spec = {"name": "local_detect", "task": "detect", "base": base, "grid": {"model.focal_levels": [0, 2]},
            "report": {"baseline": {"model.focal_levels": 2}},
            "launcher": {"cluster": "local", "cpus_per_task": 1, "mem_gb": 2}}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    r = invoke("sweep", str(p), "--dir", str(tmp_path / "sw"), "--cluster", "local")
    assert r.returncode == 0, r.stdout + r.stderr
    st = invoke("status", str(tmp_path / "sw"))
    assert "box AP" in st.stdout and "2 done" in st.stdout, st.stdout
    rep = invoke("report", str(tmp_path / "sw"), "--fig-format", "png")
    assert rep.returncode == 0, rep.stderr
    header = next(ln for ln in rep.stdout.splitlines() if ln.startswith("| model.focal_levels"))
    assert header.split("|")[2].strip() == "box AP" and "mask AP" in header and "GMACs" in header
    assert (tmp_path / "sw" / "report" / "box_ap_vs_gmacs.png").exists()


# FCOS (no RoI sampling, 0.1 s a step here) for the process-level tests
FCOS = {"arch": "fcos", "fpn_channels": 64, "min_size": [56, 64]}


def test_sigterm_mid_epoch_then_rerun_is_exact_and_tensorboard_gets_box_ap(tmp_path):
    """``focalexp detect`` stopped by SIGTERM mid-epoch (what a scheduler sends) leaves last.pth and an
    ``interrupted`` result; the same command again continues to the uninterrupted run's numbers, and
    TensorBoard holds the COCOeval numbers of every epoch once (``eval/box_ap``, ``eval/box_ap50``, ...)."""
    import subprocess
    import sys

    import yaml

    from .test_trackers import _tb_scalars

    raw = tiny_det(detector=FCOS, data={"train_size": 64, "val_size": 8},
                   train={"epochs": 2, "checkpoint_every_steps": 2, "trackers": ["tensorboard"]})
    ref = train_detector(resolve_detect_config(raw), tmp_path / "ref", progress=False)
    cfg = tmp_path / "det.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "cut"
    cmd = [sys.executable, "-m", "focalexp", "detect", str(cfg), "--out", str(out)]
    sigterm_after_first_checkpoint(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                                   out, epochs=2)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _same_metrics(read_metrics(tmp_path / "ref"), read_metrics(out))
    _same_state(tmp_path / "ref", out)
    assert json.loads((out / "result.json").read_text())["box_ap"] == ref["box_ap"]
    rows = read_metrics(out)
    sc = _tb_scalars(out)
    for key in ("box_ap", "box_ap50", "box_ap75"):
        assert [s for s, _ in sc[f"eval/{key}"]] == [8, 16], key  # 8 steps an epoch, each epoch once
        assert [v for _, v in sc[f"eval/{key}"]] == pytest.approx([row[key] for row in rows]), key
    assert not any(t.startswith("eval/box_ap_per_class") or t == "eval/top1" for t in sc)


def test_two_processes_detect_and_score_the_whole_validation_set(tmp_path):
    """DDP (2 gloo processes): each rank trains on its half and detects its share of the validation set;
    rank 0's COCOeval of the gathered detections equals one process's evaluation of the same weights."""
    from focalexp.detection.data import build_det_data
    from focalexp.detection.evaluate import coco_evaluate, to_coco_results
    from focalexp.detection.model import build_detector
    from focalexp.detection.trainer import DetectionTrainer
    from focalexp.train.multiprocess import train_multiprocess

    raw = tiny_det(detector=FCOS, data={"train_size": 32, "val_size": 7},  # odd: ranks get 4 and 3
                   train={"epochs": 1, "threads": 1, "trackers": ["tensorboard"]})
    cfg = resolve_detect_config(raw)
    train_multiprocess(cfg.to_dict(), str(tmp_path / "two"), nproc=2, progress=False,
                       trainer=DetectionTrainer)
    res = json.loads((tmp_path / "two" / "result.json").read_text())
    assert res["status"] == "done" and res["world_size"] == 2
    assert len(list((tmp_path / "two" / "tb").glob("events.out.tfevents.*"))) == 1  # only rank 0 logs
    row = read_metrics(tmp_path / "two")[-1]
    # the trained weights, evaluated again by one process over the whole validation set, image by image
    data = build_det_data(cfg)
    model = build_detector(cfg, data.num_classes).eval()
    model.load_state_dict(torch.load(tmp_path / "two" / "last.pth", weights_only=True)["model"])
    results = []
    with torch.no_grad():
        for i in range(len(data.val)):
            image, target = data.val[i]
            results += to_coco_results(model([image]), [target["image_id"]], data.category_of, masks=False)
    again = coco_evaluate(data.val_coco, results, ("bbox",))
    assert len(results) == row["detections"] > 0
    for key in ("box_ap", "box_ap50", "box_ap75"):
        assert again[key] == pytest.approx(row[key], abs=0.01), key


def _classifier_run(path, seed: int) -> dict:
    """A real (tiny) classification run of TINY_DET's backbone: what ``backbone_init: RUN_DIR`` reads."""
    from focalexp.train import resolve_run_config, train

    raw = {"seed": seed, "model": dict(TINY_DET["model"]), "data": {"dataset": "pathfinder", "train_size": 128,
                                                                      "val_size": 64},
           "train": {"epochs": 1, "batch_size": 32, "threads": 2, "trackers": []}}
    return train(resolve_run_config(raw), path, progress=False)


def test_box_ap_beside_the_backbones_top1_in_results_reports_and_figures(tmp_path):
    """A grid over ``detector.backbone_init`` (two classification run dirs): each detector's result.json
    names its backbone's run and top-1, the report shows that top-1 beside box AP, and the box-AP-vs-top-1
    figure is drawn exactly when the backbones' top-1s differ. A backbone run dir whose result.json is
    broken gives an unknown top-1, never a failed detection run."""
    import yaml

    cls = {s: _classifier_run(tmp_path / f"cls{s}", s) for s in (0, 1)}
    base = tiny_det(detector=FCOS, data={"train_size": 16, "val_size": 4}, train={"epochs": 1})
    spec = {"name": "init_grid", "task": "detect", "base": base,
            "grid": {"detector.backbone_init": [str(tmp_path / f"cls{s}") for s in (0, 1)]},
            "launcher": {"cluster": "local", "cpus_per_task": 1, "mem_gb": 2}}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    r = invoke("sweep", str(p), "--dir", str(tmp_path / "sw"), "--cluster", "local")
    assert r.returncode == 0, r.stdout + r.stderr
    results = [json.loads(f.read_text()) for f in sorted((tmp_path / "sw").rglob("result.json"))]
    assert len(results) == 2
    assert sorted((x["backbone_run"], x["backbone_top1"]) for x in results) == sorted(
        (c["run_id"], c["best_top1"]) for c in cls.values())
    rep = invoke("report", str(tmp_path / "sw"), "--fig-format", "png")
    assert rep.returncode == 0, rep.stderr
    lines = rep.stdout.splitlines()
    header = next(ln for ln in lines if ln.startswith("| detector.backbone_init"))
    cols = [c.strip() for c in header.split("|")]
    assert cols[2] == "box AP" and "backbone top-1 (%)" in cols
    at = cols.index("backbone top-1 (%)")
    for c in cls.values():
        assert any(ln.split("|")[at].strip() == f"{c['best_top1']:.2f}" for ln in lines if ln.startswith("| /")), c
    figure = tmp_path / "sw" / "report" / "box_ap_vs_backbone_top1.png"
    assert figure.exists() == (cls[0]["best_top1"] != cls[1]["best_top1"])
    # an unreadable result.json in the backbone's run dir: top-1 unknown, the detector trains
    (tmp_path / "cls0" / "result.json").write_text("{not json")
    cfg = resolve_detect_config(tiny_det(detector={**FCOS, "backbone_init": str(tmp_path / "cls0")},
                                         data={"train_size": 8, "val_size": 4}, train={"epochs": 1}))
    res = train_detector(cfg, tmp_path / "det", progress=False)
    assert res["status"] == "done" and res["backbone_top1"] is None and res["backbone_run"] is None


def test_a_timm_convnet_backbone_trains_and_evaluates(tmp_path):
    """ConvNeXt-T from timm (NCHW maps, unlike Swin's NHWC): the four stages feed the FPN, one epoch trains
    and COCOeval scores it; its stages' channels are what the FPN was built for."""
    raw = tiny_det(data={"train_size": 4, "val_size": 2}, train={"epochs": 1, "batch_size": 4})
    raw["model"] = {"timm": "convnext_tiny"}
    cfg = resolve_detect_config(raw)
    res = train_detector(cfg, tmp_path / "run", progress=False)
    assert res["status"] == "done" and res["box_ap"] is not None and res["model"] == "convnext_tiny"
    from focalexp.detection.model import build_detector

    body = build_detector(cfg, 4).backbone.backbone
    assert not body.nhwc and body.channels == [96, 192, 384, 768]
