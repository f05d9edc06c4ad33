"""`focalexp flops --detector`: a whole detector's GMACs, part by part, beside the paper's row.

Small configs only (the det_cpu_small recipe's slim heads, 64-128 px images): the paper-scale counts
(FocalNet-T at 1280x800, tens of seconds on two cores) are in the README, measured by the same code.
"""

from __future__ import annotations

import json

import pytest

from focalexp.detection.config import resolve_detect_config
from focalexp.detection.flops import detector_flops


@pytest.fixture(autouse=True)
def _own_count_cache(tmp_path, monkeypatch):
    """Count for real, in a cache of this test's own (not the user's)."""
    monkeypatch.delenv("FOCALEXP_CACHE_DIR", raising=False)
    monkeypatch.delenv("FOCALEXP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _small(**over):
    return resolve_detect_config({}, over, check_data_present=False)  # det_cpu_small: focalnet_micro, slim heads


def test_mask_rcnn_count_is_its_parts_and_each_part_is_what_it_computes():
    from focalexp.models import macs

    cfg = _small()
    det = cfg.detector
    rep = detector_flops(cfg, 128, 128, num_classes=3, cache=False)
    assert list(rep.gmacs) == ["backbone", "neck", "rpn", "box_head", "mask_head"]
    assert rep.total_gmacs == pytest.approx(sum(rep.gmacs.values()), abs=1e-12)
    assert sum(rep.params.values()) == rep.total_params and rep.backbone_params == rep.params["backbone"]
    assert (rep.box_rois, rep.mask_rois) == (det.rpn_proposals_test, det.detections_per_img) == (150, 50)
    assert rep.paper is None and rep.kernels == [[3, 5]] * 3

    # the backbone: focalexp's own FocalNet count (backbone mode) plus the output LayerNorms (5 per element)
    fc = cfg.backbone_config()
    body = macs.count_macs(fc.replace(out_indices=tuple(range(fc.num_stages))), 128).macs
    norms = sum(5 * c * (128 // (fc.patch_size * 2**i)) ** 2 for i, c in enumerate(fc.stage_dims))
    assert round(rep.gmacs["backbone"] * 1e9) == body + norms

    # the heads on fixed RoI counts, by hand: box MLP + predictor (classes + background, 4 deltas each)
    C, R, rep_ = det.fpn_channels, det.rpn_proposals_test, det.representation_size
    assert round(rep.gmacs["box_head"] * 1e9) == R * (C * 49 * rep_ + rep_ * rep_ + rep_ * 4 * 5)
    # the RPN: a 3x3 conv and two 1x1s (3 anchors: 3 logits, 12 deltas) on each level, strides 4..32
    positions = sum((128 // s) ** 2 for s in (4, 8, 16, 32))
    assert round(rep.gmacs["rpn"] * 1e9) == positions * (C * C * 9 + C * 15)
    # the mask head: convs and a 2x deconv on detections_per_img RoIs of 14x14, logits at 28x28
    M, mc, layers = det.detections_per_img, det.mask_channels, det.mask_layers
    mask = M * (196 * (9 * C * mc + (layers - 1) * 9 * mc * mc) + 196 * mc * mc * 4 + 784 * mc * 4)
    assert round(rep.gmacs["mask_head"] * 1e9) == mask


def test_one_stage_detectors_count_a_dense_head_and_a_non_square_image():
    rep = detector_flops(_small(**{"detector.arch": "retinanet"}), 96, 64, num_classes=3, cache=False)
    assert list(rep.gmacs) == ["backbone", "neck", "head"] and rep.box_rois is None
    assert rep.total_gmacs == pytest.approx(sum(rep.gmacs.values()), abs=1e-12)
    assert sum(rep.params.values()) == rep.total_params
    assert (rep.height, rep.width) == (96, 64) and rep.gmacs["head"] > rep.gmacs["neck"] > 0


def test_report_is_kept_in_the_count_cache(tmp_path):
    cfg = _small(**{"detector.arch": "fasterrcnn"})
    first = detector_flops(cfg, 64, 64, num_classes=3)
    assert list((tmp_path / "cache" / "focalexp" / "detector_flops").glob("*.json"))
    again = detector_flops(cfg, 64, 64, num_classes=3)
    assert again.to_dict() == first.to_dict() and "mask_head" not in again.gmacs


def test_cli_prints_the_table_and_the_papers_row(run):
    small = ("--set", "recipe=det_cpu_small", "--size", "64x64", "--num-classes", "3")
    p = run("flops", "--detector", "maskrcnn", "--model", "focalnet_micro", *small)
    rep = detector_flops(_small(), 64, 64, num_classes=3)
    lines = p.stdout.splitlines()
    assert lines[0].startswith("Mask R-CNN over focalnet_micro (kernels 3,5 | 3,5 | 3,5), image 64x64 (HxW)")
    for part in ("backbone", "neck", "rpn", "box_head", "mask_head"):
        row = next(ln for ln in lines if ln.startswith(part + " "))
        assert f"{rep.gmacs[part]:.4f}" in row and f"{rep.params[part] / 1e6:.4f}" in row
    total = next(ln for ln in lines if ln.startswith("total "))
    assert f"{rep.total_gmacs:.4f}" in total and not any(ln.startswith("paper ") for ln in lines)
    assert p.stderr == ""

    # a backbone of the paper's Table 6: its row beside ours, and the note on its detection kernels
    p = run("flops", "--detector", "maskrcnn", "--model", "focalnet_t_srf", *small)
    paper = next(ln for ln in p.stdout.splitlines() if ln.startswith("paper "))
    assert "267" in paper and "48.6" in paper and "at 1280x800, 80 classes" in paper
    assert "kernels 9,11 per stage" in p.stdout and "--set model.focal_windows=9 counts the paper's" in p.stdout


def test_paper_rows_name_the_detection_kernels():
    from focalexp.detection.flops import PAPER_DETECTORS, flops_config, paper_kernels, paper_row

    cfg = flops_config(model="focalnet_tiny_lrf", arch="maskrcnn", overrides={"model.focal_windows": 9})
    assert paper_row(cfg) == PAPER_DETECTORS[("focalnet_t_lrf", "maskrcnn")] and paper_row(cfg).gflops == 268
    assert paper_kernels(cfg) == [[9, 11, 13]] * 4 == [list(cfg.backbone_config().stage_kernels(i)) for i in range(4)]
    swin = flops_config(timm="swin_tiny_patch4_window7_224", arch="maskrcnn")
    assert paper_row(swin).params_m == 47.8 and paper_kernels(swin) is None
    assert paper_row(flops_config(model="focalnet_t_srf", arch="retinanet")) is None  # Table 6 is Mask R-CNN


def test_cli_json_has_every_part(run):
    d = json.loads(run("flops", "--detector", "fasterrcnn", "--model", "focalnet_micro", "--set",
                       "recipe=det_cpu_small", "--size", "64x96", "--num-classes", "3", "--json").stdout)
    assert set(d["gmacs"]) == set(d["params"]) == {"backbone", "neck", "rpn", "box_head"}
    assert d["total_gmacs"] == pytest.approx(sum(d["gmacs"].values())) and d["paper"] is None
    assert (d["height"], d["width"], d["num_classes"], d["box_rois"], d["mask_rois"]) == (64, 96, 3, 150, None)


def test_cli_reads_a_detection_run_config(run, tmp_path):
    (tmp_path / "det.yaml").write_text("recipe: det_cpu_small\ndetector:\n  arch: fcos\n")
    p = run("flops", "--config", str(tmp_path / "det.yaml"), "--size", "64", "--num-classes", "3")
    assert p.stdout.startswith("FCOS over focalnet_micro") and "\nhead " in p.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--detector", "maskrcnn", "--model", "focalnet_micro", "--size", "abc"], "--size: expected HxW"),
        (["--detector", "maskrcnn", "--model", "focalnet_micro", "--size", "8x8"], "--size: expected an image height"),
        (["--detector", "maskrcnn", "--model", "focalnet_micro", "--set", "recipe=det_cpu_small", "--size", "40x40"],
         "--size: the backbone does not take a 40x40 image"),
        (["--detector", "maskrcnn", "--model", "focalnet_micro", "--num-classes", "0"], "--num-classes: expected"),
        (["--detector", "mask_rcnn", "--model", "focalnet_micro"], "invalid choice: 'mask_rcnn'"),
        (["--detector", "maskrcnn", "--model", "focalnet_mikro"], "closest: focalnet_micro"),
        (["--detector", "maskrcnn", "--timm", "swin_tny"], "model.timm: unknown timm model 'swin_tny'"),
        (["--detector", "maskrcnn", "--model", "focalnet_micro", "--set", "detector.fpn_channel=8"],
         "did you mean 'detector.fpn_channels'"),
        (["--detector", "maskrcnn", "--model", "focalnet_micro", "--img-size", "224"], "--img-size: a classifier's"),
        (["--detector", "maskrcnn"], "--detector: name the backbone"),
        (["--timm", "swin_tiny_patch4_window7_224"], "--timm: counts a detector; add --detector"),
        (["--config", "no/such.yaml"], "no such file"),
    ],
)
def test_bad_detector_flags_exit_2_with_one_line(run, args, needle):
    p = run("flops", *args, check_rc=2)
    assert needle in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr and p.stdout == ""


@pytest.mark.parametrize("text,needle", [("- not\n- a config\n", "expected a detection run config"),
                                         ("recipe: det_cpu_small\nmodel: [1]\n", "model:"),
                                         ("recipe: coco_2x\n", "unknown recipe 'coco_2x'")])
def test_a_bad_config_file_exits_2_with_one_line(run, tmp_path, text, needle):
    (tmp_path / "det.yaml").write_text(text)
    p = run("flops", "--config", str(tmp_path / "det.yaml"), check_rc=2)
    assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1 and p.stdout == ""
