"""Detectors from torchvision over a focalexp FocalNet or a timm backbone: :func:`build_detector`.

The backbone's stages feed a torchvision :class:`~torchvision.ops.FeaturePyramidNetwork`: every stage
for the R-CNNs (plus a max-pooled level, as torchvision's and mmdet's Mask R-CNN), the stages after the
first for RetinaNet and FCOS (plus P6/P7). Heads, losses, anchor matching, RoIAlign and post-processing
are torchvision's own; focalexp only wires the backbone in and sizes the heads from the config.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError
from .config import ANCHOR_SCALE, DetectConfig

IMAGE_MEAN, IMAGE_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's, as the backbones were trained


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map (the official detection backbone's ``norm{i}``)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FeatureBackbone(nn.Module):
    """A backbone ``body`` returning its stages' maps (a list), with an optional norm per map; forward
    returns the maps named ``"0"``, ``"1"``, ... (NCHW, contiguous)."""

    def __init__(self, body: nn.Module, channels: list[int], strides: list[int], out_norm: bool,
                 nhwc: bool = False) -> None:
        super().__init__()
        self.body, self.channels, self.strides, self.nhwc = body, list(channels), list(strides), nhwc
        self.norms = nn.ModuleList(ChannelNorm(c) for c in channels) if out_norm else None

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = self.body(x)
        out = OrderedDict()
        for i, m in enumerate(maps):
            if self.nhwc:
                m = m.permute(0, 3, 1, 2)
            if self.norms is not None:
                m = self.norms[i](m)
            out[str(i)] = m.contiguous()
        return out


class BackboneWithFPN(nn.Module):
    """``backbone`` (a :class:`FeatureBackbone`) into an FPN over the levels ``keep``; ``out_channels``
    is what torchvision's detectors read."""

    def __init__(self, backbone: FeatureBackbone, keep: list[int], out_channels: int, extra) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.backbone, self.keep = backbone, [str(k) for k in keep]
        self.fpn = FeaturePyramidNetwork([backbone.channels[k] for k in keep], out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.backbone(x)
        return self.fpn(OrderedDict((k, feats[k]) for k in self.keep))


def _run_dir(init: str) -> str | None:
    """``detector.backbone_init`` as a classification run dir (a folder with ``best.pth``), else None."""
    path = os.path.expandvars(os.path.expanduser(init))
    return path if os.path.isdir(path) and os.path.isfile(os.path.join(path, "best.pth")) else None


def _init_path(init: str) -> str:
    run = _run_dir(init)
    return os.path.join(run, "best.pth") if run else os.path.expandvars(os.path.expanduser(init))


def backbone_origin(cfg: DetectConfig) -> dict[str, Any]:
    """Where the backbone's weights came from, for ``result.json``: ``backbone_run`` (the classification
    run's id) and ``backbone_top1`` (its best top-1) when ``detector.backbone_init`` is a run dir of
    ``focalexp train``, so that a report shows ImageNet-style top-1 beside box AP as the paper's tables do.
    The run's ``result.json`` is untrusted input: anything but a finite percentage reads as unknown (None),
    and never stops the detection run (the weights were checked when they were loaded)."""
    import math

    from ..errors import FocalexpError
    from ..fileio import read_json_object

    out: dict[str, Any] = {"backbone_run": None, "backbone_top1": None}
    init = cfg.detector.backbone_init
    run = None if init == "random" else _run_dir(init)
    if run is None:
        return out
    try:
        res = read_json_object(os.path.join(run, "result.json"), "result.json")
    except FocalexpError:
        return out
    top1 = res.get("best_top1", res.get("top1"))
    if isinstance(top1, (int, float)) and not isinstance(top1, bool) and math.isfinite(top1) and 0 <= top1 <= 100:
        out["backbone_top1"] = float(top1)
    if isinstance(res.get("run_id"), str) and len(res["run_id"]) <= 200:
        out["backbone_run"] = res["run_id"]
    return out


def focalnet_backbone(cfg: DetectConfig) -> FeatureBackbone:
    """A focalexp FocalNet in backbone mode (every stage out), initialised as ``detector.backbone_init`` says."""
    from ..models.checkpoint import load_state_into, read_state
    from ..models.factory import create_model

    det = cfg.detector
    knobs = dict(cfg.model)
    init = det.backbone_init
    if init != "random" and os.path.isdir(_init_path(init)):  # a Hugging Face save_pretrained folder
        body = create_model(knobs, checkpoint=_init_path(init), features_only=True)
    else:
        body = create_model(knobs, features_only=True)
        if init != "random":
            path = _init_path(init)
            load_state_into(body, expand_focal_levels(fit_focal_kernels(read_state(path, "detector.backbone_init"),
                                                                        body), body),
                            source=f"detector.backbone_init '{path}'")
    if det.frozen_stages >= 0:
        _freeze(body.stem if hasattr(body, "stem") else None)
        for s in list(body.stages)[: det.frozen_stages]:
            _freeze(s)
    return FeatureBackbone(body, body.feature_channels, body.feature_strides, det.out_norm)


def fit_focal_kernels(obj: Any, model: nn.Module) -> dict:
    """The checkpoint's weights in ``model``'s layout, each depthwise focal kernel zero-padded (centred) to
    the model's larger kernel or centre-cropped to a smaller one: how the official detection code starts
    a backbone whose kernels grew by 6 (``focal_windows`` 9) from ImageNet weights of kernels 3, 5(, 7)."""
    from ..models.checkpoint import convert_state_dict, detect_layout, unwrap

    sd, _ = unwrap(obj)
    sd = convert_state_dict(sd, model, detect_layout(sd))
    target = model.state_dict()
    for k, v in list(sd.items()):
        t = target.get(k)
        if (t is None or ".focal_layers." not in k or v.dim() != 4 or t.dim() != 4 or v.shape == t.shape
                or v.shape[:2] != t.shape[:2] or (v.shape[-1] - t.shape[-1]) % 2 or v.shape[-1] != v.shape[-2]):
            continue
        d = (t.shape[-1] - v.shape[-1]) // 2
        sd[k] = F.pad(v, (d, d, d, d)) if d > 0 else v[..., -d:v.shape[-2] + d, -d:v.shape[-1] + d].clone()
    return sd


def expand_focal_levels(sd: dict, model: nn.Module) -> dict:
    """Checkpoint weights of fewer focal levels in ``model``'s layout, as the official detection code
    starts an LRF backbone from SRF weights: in each focal modulation's ``f`` the q and context rows, the
    old levels' gate rows and the global gate row are copied, the new levels' gate rows are zero (their
    contexts start switched off), and the new levels' kernels keep ``model``'s initialisation. Applies to
    the paper's modulation (gated, hierarchical, with global context); other layouts are left to the
    strict check of the load, which names what does not fit."""
    target = model.state_dict()
    sd = dict(sd)
    for name, mod in model.named_modules():
        if not (hasattr(mod, "focal_layers") and getattr(mod, "gates", None) is not None
                and getattr(mod, "global_context", None) is not None and getattr(mod, "hierarchical_sum", False)):
            continue
        w, b = sd.get(f"{name}.f.weight"), sd.get(f"{name}.f.bias")
        tw = target[f"{name}.f.weight"]
        dim, gates = mod.dim, mod.num_gates
        if w is None or w.dim() != 2 or w.shape[1] != dim or tw.shape[0] == w.shape[0]:
            continue
        old = w.shape[0] - 2 * dim  # the checkpoint's gates: its levels + the global one
        if not 2 <= old < gates or (b is not None and b.shape != (w.shape[0],)):
            continue

        def grow(t: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((2 * dim + gates, *t.shape[1:]), dtype=t.dtype)
            out[: 2 * dim + old - 1] = t[: 2 * dim + old - 1]  # q, ctx, the old levels' gates
            out[-1] = t[-1]  # the global gate
            return out

        sd[f"{name}.f.weight"] = grow(w)
        if b is not None:
            sd[f"{name}.f.bias"] = grow(b)
        for level in range(old - 1, mod.focal_level):
            prefix = f"{name}.focal_layers.{level}."
            for k, v in target.items():
                if k.startswith(prefix) and k not in sd:
                    sd[k] = v.clone()
    return sd


def _freeze(module: nn.Module | None) -> None:
    if module is not None:
        for p in module.parameters():
            p.requires_grad_(False)


def timm_backbone(cfg: DetectConfig) -> FeatureBackbone:
    """A timm model with ``features_only`` (every stage), initialised from a local weights file (read
    through focalexp's allowlist, converted by timm's own filter) or randomly."""
    import timm

    kwargs: dict[str, Any] = {k: v for k, v in cfg.model.items() if k != "timm"}
    name = cfg.model["timm"]
    init = cfg.detector.backbone_init
    if init != "random":
        from ..models.checkpoint import read_state, unwrap

        path = _init_path(init)
        sd, _ = unwrap(read_state(path, "detector.backbone_init"))
        # a classifier's weights: its head is not part of the backbone (timm builds it with no classes and
        # loads strictly, so the head's keys would not fit; anything else that does not fit still fails)
        from timm.models import get_pretrained_cfg_value

        heads = get_pretrained_cfg_value(name, "classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        sd = {k: v for k, v in sd.items() if not any(k.startswith(h + ".") for h in heads)}
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"state_dict": sd, "num_classes": 0})
    try:
        body = timm.create_model(name, features_only=True, **kwargs)
    except (RuntimeError, KeyError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        # torch's load_state_dict: a header line, then what is missing / unexpected / of another shape
        line = (lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0])[:160]
        if init != "random":
            raise CheckpointError(f"detector.backbone_init '{init}' does not fit timm's {name} ({line})") from None
        raise ConfigError(f"timm cannot build {name} with {kwargs} ({line})", key="model") from None
    except TypeError as e:
        raise ConfigError(f"timm's {name} does not take these arguments ({e})", key="model") from None
    info = body.feature_info
    channels, strides = info.channels(), info.reduction()
    fmt = getattr(body, "output_fmt", None)  # timm's feature wrappers say it (Swin: NHWC)
    nhwc = str(getattr(fmt, "value", fmt)) == "NHWC" if fmt is not None else _probe_nhwc(body, channels)
    return FeatureBackbone(body, channels, strides, cfg.detector.out_norm, nhwc=nhwc)


def _probe_nhwc(body: nn.Module, channels: list[int]) -> bool:
    """Whether the model returns NHWC maps (timm's transformers do), read from one small forward."""
    size = getattr(body, "pretrained_cfg", {}).get("input_size", (3, 224, 224))
    with torch.no_grad():
        was = body.training
        body.eval()
        out = body(torch.zeros(1, 3, size[1], size[2]))
        body.train(was)
    return out[0].shape[1] != channels[0] and out[0].shape[-1] == channels[0]


def build_detector(cfg: DetectConfig, num_classes: int) -> nn.Module:
    """The torchvision detector of ``cfg`` for ``num_classes`` object classes (background added)."""
    from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    det = cfg.detector
    backbone = timm_backbone(cfg) if cfg.is_timm else focalnet_backbone(cfg)
    n_stages, C = len(backbone.channels), det.fpn_channels
    scale = det.anchor_scale if det.anchor_scale is not None else ANCHOR_SCALE[det.arch]
    common = dict(min_size=tuple(det.min_size), max_size=det.max_size, image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
    if det.arch in ("maskrcnn", "fasterrcnn"):
        keep = list(range(n_stages))
        net = BackboneWithFPN(backbone, keep, C, LastLevelMaxPool())
        strides = [backbone.strides[k] for k in keep] + [2 * backbone.strides[keep[-1]]]
        anchors = AnchorGenerator(tuple((scale * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
        names = [str(k) for k in keep]
        rcnn = dict(rpn_anchor_generator=anchors, rpn_batch_size_per_image=det.rpn_batch_size_per_image,
                    rpn_pre_nms_top_n_train=det.rpn_proposals_train, rpn_post_nms_top_n_train=det.rpn_proposals_train,
                    rpn_pre_nms_top_n_test=det.rpn_proposals_test, rpn_post_nms_top_n_test=det.rpn_proposals_test,
                    box_roi_pool=MultiScaleRoIAlign(names, 7, 2),
                    box_head=TwoMLPHead(C * 7 * 7, det.representation_size),
                    box_predictor=FastRCNNPredictor(det.representation_size, num_classes + 1),
                    box_batch_size_per_image=det.box_batch_size_per_image, box_score_thresh=det.score_thresh,
                    box_detections_per_img=det.detections_per_img)
        if det.arch == "fasterrcnn":
            return FasterRCNN(net, **common, **rcnn)
        return MaskRCNN(net, **common, **rcnn, mask_roi_pool=MultiScaleRoIAlign(names, 14, 2),
                        mask_head=MaskRCNNHeads(C, [det.mask_channels] * det.mask_layers, 1),
                        mask_predictor=MaskRCNNPredictor(det.mask_channels, det.mask_channels, num_classes + 1))
    # one-stage: the stages after the first (strides 8..) plus P6, P7 from the FPN's top
    keep = list(range(1, n_stages)) if n_stages > 1 else [0]
    net = BackboneWithFPN(backbone, keep, C, LastLevelP6P7(C, C))
    top = backbone.strides[keep[-1]]
    strides = [backbone.strides[k] for k in keep] + [2 * top, 4 * top]
    if det.arch == "retinanet":
        sizes = tuple(tuple(scale * s * 2 ** (o / 3) for o in range(3)) for s in strides)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))
        return RetinaNet(net, num_classes + 1, anchor_generator=anchors, score_thresh=det.score_thresh,
                         detections_per_img=det.detections_per_img, **common)
    anchors = AnchorGenerator(tuple((scale * s,) for s in strides), ((1.0,),) * len(strides))
    return FCOS(net, num_classes + 1, anchor_generator=anchors, score_thresh=det.score_thresh,
                detections_per_img=det.detections_per_img, **common)


__all__ = ["build_detector", "backbone_origin", "focalnet_backbone", "timm_backbone", "fit_focal_kernels",
           "expand_focal_levels", "FeatureBackbone", "BackboneWithFPN", "ChannelNorm"]
