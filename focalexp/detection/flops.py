"""FLOPs of a whole detector, part by part, in the papers' convention: :func:`detector_flops`.

The detection tables of FocalNet and Swin (Mask R-CNN: "48.6 M / 267 G") come from mmdetection's
``get_flops``: ``forward_dummy`` on one image of H=1280, W=800 (no resizing), the RPN on every FPN level,
the R-CNN box head on a fixed 1000 RoIs and the mask head on the first 100; RoIAlign, NMS, anchor decoding
and the pre-processing are not counted. This module counts the same parts of focalexp's torchvision
detectors, each by fvcore on the submodule alone with inputs of the right shapes (the RoI heads get
pooled features of ``rpn_proposals_test`` and ``detections_per_img`` RoIs), so the figure never depends
on how many boxes a (random) detector proposes. Units: GMACs, one fused multiply-add = 1 (the papers'
"GFLOPs"), fvcore's default handles only (:data:`focalexp.analysis.flops.PAPER_OPS`).

The model is built on the meta device (no init, no weights read), its feature shapes found by a meta
forward, then it is moved to the CPU with zeroed weights for fvcore (whose JIT trace does not run
convolutions on meta). FocalNet-T at 1280x800 takes tens of seconds on two cores, so a report is kept in
focalexp's count cache (:mod:`focalexp.analysis.countcache`), keyed by the backbone, the detector
section, the size and the code.

Measured (Mask R-CNN, 1280x800, 80 classes, coco_1x heads; ``focalexp flops --detector maskrcnn ...``):

==============================  =========  ===============  ================  =============
backbone                        kernels    params M (paper)  GMACs (paper G)   backbone GMACs
==============================  =========  ===============  ================  =============
FocalNet-T SRF                  3,5        47.94             261.29            90.26
FocalNet-T SRF, focal_windows 9 9,11       48.68 (48.6)      266.19 (267)      95.16
FocalNet-T LRF                  3,5,7      48.16             262.75            91.72
FocalNet-T LRF, focal_windows 9 9,11,13    49.43 (48.9)      271.16 (268)      100.12
Swin-T (timm)                   -          47.80 (47.8)      267.03 (264)      96.00
==============================  =========  ===============  ================  =============

Every row has FPN 53.11, RPN 50.62, box head 14.31 (1000 RoIs), mask head 53.01 (100 RoIs). Swin's 264 G
leaves out the window attention's matmuls (3.11 G here), which mmcv's module-hook counter cannot see.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from ..errors import ConfigError, FocalexpError
from .config import DetectConfig

PAPER_SIZE = (1280, 800)  # mmdet get_flops --shape 1280 800: H, W
PAPER_CLASSES = 80
PARTS = ("backbone", "neck", "rpn", "box_head", "mask_head", "head")
PART_HELP = {
    "backbone": "backbone + its output norms",
    "neck": "FPN (with its extra level)",
    "rpn": "RPN head, every level",
    "head": "dense head, every level",
    "box_head": "box head + predictor on {box_rois} RoIs, 7x7",
    "mask_head": "mask head + predictor on {mask_rois} RoIs, 14x14",
}


class PaperDetector(NamedTuple):
    """A detector's size and cost as a paper prints them; ``knobs``: the paper's detection backbone
    beyond the preset (FocalNet's kernels grow by 6 downstream: ``focal_windows`` 9, kernels 9, 11(, 13))."""

    params_m: float
    gflops: float
    source: str
    knobs: dict


_T6 = "FocalNet paper, Table 6 (Mask R-CNN, mmdet get_flops at 1280x800)"
_K9 = {"focal_windows": 9}
PAPER_DETECTORS: dict[tuple[str, str], PaperDetector] = {
    ("focalnet_t_srf", "maskrcnn"): PaperDetector(48.6, 267, _T6, _K9),
    ("focalnet_t_lrf", "maskrcnn"): PaperDetector(48.9, 268, _T6, _K9),
    ("focalnet_s_srf", "maskrcnn"): PaperDetector(70.8, 356, _T6, _K9),
    ("focalnet_s_lrf", "maskrcnn"): PaperDetector(72.3, 365, _T6, _K9),
    ("focalnet_b_srf", "maskrcnn"): PaperDetector(109.4, 496, _T6, _K9),
    ("focalnet_b_lrf", "maskrcnn"): PaperDetector(111.4, 507, _T6, _K9),
    ("swin_tiny_patch4_window7_224", "maskrcnn"): PaperDetector(47.8, 264, _T6, {}),
    ("swin_small_patch4_window7_224", "maskrcnn"): PaperDetector(69.1, 354, _T6, {}),
    ("swin_base_patch4_window7_224", "maskrcnn"): PaperDetector(107.1, 497, _T6, {}),
}


@dataclasses.dataclass
class DetectorFlops:
    """GMACs and parameters of one detector, part by part (``parts``: the keys of :data:`PARTS` this
    architecture has, in forward order); ``total_gmacs`` is their sum, ``params`` the whole model's."""

    backbone_name: str
    arch: str
    height: int
    width: int
    num_classes: int
    box_rois: int | None
    mask_rois: int | None
    gmacs: dict[str, float]
    params: dict[str, int]
    total_gmacs: float
    total_params: int
    backbone_params: int
    kernels: list[list[int]] | None  # a FocalNet's kernels per stage (the paper's detection ones: +6)
    not_counted: dict[str, int]  # ops fvcore has no handle for (op -> occurrences), e.g. max_pool2d
    paper: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- the parts, traceable
def _flat(out: Any) -> tuple[torch.Tensor, ...]:
    """Every tensor of a (nested) dict / list / tuple output, in order: what the JIT tracer returns."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, dict):
        out = list(out.values())
    return tuple(t for o in out for t in _flat(o))


class _Features(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _flat(self.backbone(x))


class _Neck(nn.Module):
    def __init__(self, fpn: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.fpn, self.names = fpn, names

    def forward(self, *maps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _flat(self.fpn(OrderedDict(zip(self.names, maps))))


class _OnLevels(nn.Module):
    """A head that takes the list of FPN levels (the RPN head, RetinaNet's and FCOS's)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, *maps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _flat(self.head(list(maps)))


class _Chain(nn.Module):
    """An RoI head then its predictor, on pooled features."""

    def __init__(self, head: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.head, self.predictor = head, predictor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _flat(self.predictor(self.head(x)))


def _params(*modules: nn.Module) -> int:
    """All parameters (frozen ones too: the model's size, as the tables give it)."""
    return sum(p.numel() for m in modules for p in m.parameters())


# ---------------------------------------------------------------------------- building
def _for_counting(cfg: DetectConfig, height: int, width: int) -> DetectConfig:
    """``cfg`` as counted: random init (nothing read), and a timm model told the input size where it
    has a fixed one (a Swin pads each stage to whole windows, as mmdet's Swin does)."""
    det = dataclasses.replace(cfg.detector, backbone_init="random")
    model = dict(cfg.model)
    if cfg.is_timm and "img_size" not in model and _timm_takes_img_size(model["timm"]):
        model["img_size"] = [height, width]
    return dataclasses.replace(cfg, model=model, detector=det)


def _timm_takes_img_size(name: str) -> bool:
    import inspect
    import sys

    import timm

    try:
        mod = sys.modules[timm.models.model_entrypoint(name).__module__]
    except Exception:  # noqa: BLE001 - unknown: build it as named
        return False
    return any(isinstance(o, type) and issubclass(o, nn.Module) and o.__module__ == mod.__name__
               and "img_size" in inspect.signature(o.__init__).parameters for o in vars(mod).values())


def _build(cfg: DetectConfig, num_classes: int) -> nn.Module:
    from ..models.focalnet import skip_weight_init
    from .model import build_detector

    with torch.device("meta"), skip_weight_init():
        return build_detector(cfg, num_classes)


def _materialize(model: nn.Module) -> nn.Module:
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.zero_()
    return model.eval()


def _zeros(shapes: list[torch.Size]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.zeros(s) for s in shapes)


def _check_size(height: Any, width: Any) -> None:
    for what, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or not 16 <= v <= 4096:
            raise ConfigError(f"expected an image {what} from 16 to 4096 pixels, got {v!r}", key="size")


def _kernels(cfg: DetectConfig) -> list[list[int]] | None:
    if cfg.is_timm:
        return None
    fc = cfg.backbone_config()
    return [list(fc.stage_kernels(i)) for i in range(fc.num_stages)]


def backbone_name(cfg: DetectConfig) -> str:
    """The preset's canonical name, or the timm model's."""
    if cfg.is_timm:
        return str(cfg.model["timm"])
    from ..models.presets import canonical_name

    return canonical_name(cfg.model["preset"])


def paper_row(cfg: DetectConfig) -> PaperDetector | None:
    return PAPER_DETECTORS.get((backbone_name(cfg), cfg.detector.arch))


def paper_kernels(cfg: DetectConfig) -> list[list[int]] | None:
    """The kernels of the paper's detection backbone for this preset (its knobs applied), or None."""
    row = paper_row(cfg)
    if row is None or cfg.is_timm:
        return None
    from ..models.presets import resolve_config

    fc = resolve_config(cfg.model["preset"], **row.knobs)
    return [list(fc.stage_kernels(i)) for i in range(fc.num_stages)]


def flops_config(config: str | Path | None = None, *, model: str | None = None, timm: str | None = None,
                 arch: str | None = None, overrides: dict[str, Any] | None = None) -> DetectConfig:
    """The detection config to count: a run config YAML (its recipe; the data need not be there) or the
    paper-scale ``coco_1x`` recipe, then the backbone (``model``: a preset or a timm name; ``timm``: a
    timm name), the architecture and dotted ``overrides`` (``model.focal_windows``, ``detector.*``)."""
    from ..config import load_yaml
    from .config import resolve_detect_config

    if model is not None and timm is not None:
        raise ConfigError("give one backbone: --model PRESET or --timm NAME", key="--timm")
    raw: Any = {"recipe": "coco_1x"}
    if config is not None:
        raw = load_yaml(config, "config")
        if not isinstance(raw, dict):
            raise ConfigError(f"'{config}': expected a detection run config (a mapping with sections recipe, "
                              "model, detector, ...)", key="config")
    over: dict[str, Any] = {}
    if model is not None:
        over["model.timm" if _is_timm_only(model) else "model.preset"] = model
    if timm is not None:
        over["model.timm"] = timm
    if arch is not None:
        over["detector.arch"] = arch
    over.update(overrides or {})
    return resolve_detect_config(raw, over, check_data_present=False)


def _is_timm_only(name: str) -> bool:
    """A timm model's name that no focalexp preset or alias has."""
    from ..errors import UnknownNameError
    from ..models.presets import canonical_name

    try:
        canonical_name(name)
        return False
    except UnknownNameError:
        import timm

        return timm.is_model(name)


# ---------------------------------------------------------------------------- counting
def _count(cfg: DetectConfig, height: int, width: int, num_classes: int) -> DetectorFlops:
    from ..analysis.flops import count_paper_macs

    counted = _for_counting(cfg, height, width)
    det = _build(counted, num_classes)
    net = det.backbone  # BackboneWithFPN
    bb = net.backbone
    x = torch.zeros(1, 3, height, width, device="meta")
    try:
        with torch.no_grad():
            feats = bb(x)
            levels = net.fpn(OrderedDict((k, feats[k]) for k in net.keep))
    except (FocalexpError, RuntimeError, AssertionError, ValueError, IndexError, TypeError) as e:
        why = (" ".join(str(e).split()) or type(e).__name__)[:200]
        raise ConfigError(f"the backbone does not take a {height}x{width} image ({why})", key="size") from None
    feat_shapes = [feats[k].shape for k in net.keep]
    level_shapes = [t.shape for t in levels.values()]
    det = _materialize(det)
    C = det.backbone.out_channels

    jobs: list[tuple[str, nn.Module, tuple]] = [
        ("backbone", _Features(bb), (torch.zeros(1, 3, height, width),)),
        ("neck", _Neck(net.fpn, net.keep), _zeros(feat_shapes)),
    ]
    params = {"backbone": _params(bb), "neck": _params(net.fpn)}
    box_rois = mask_rois = None
    if hasattr(det, "roi_heads"):  # the R-CNNs
        rh = det.roi_heads
        jobs.append(("rpn", _OnLevels(det.rpn.head), _zeros(level_shapes)))
        params["rpn"] = _params(det.rpn)
        box_rois = cfg.detector.rpn_proposals_test
        size = _pool_size(rh.box_roi_pool)
        jobs.append(("box_head", _Chain(rh.box_head, rh.box_predictor), (torch.zeros(box_rois, C, size, size),)))
        params["box_head"] = _params(rh.box_head, rh.box_predictor)
        if rh.has_mask():
            mask_rois = min(cfg.detector.detections_per_img, box_rois)
            size = _pool_size(rh.mask_roi_pool)
            jobs.append(("mask_head", _Chain(rh.mask_head, rh.mask_predictor),
                         (torch.zeros(mask_rois, C, size, size),)))
            params["mask_head"] = _params(rh.mask_head, rh.mask_predictor)
    else:  # RetinaNet, FCOS
        jobs.append(("head", _OnLevels(det.head), _zeros(level_shapes)))
        params["head"] = _params(det.head)

    gmacs: dict[str, float] = {}
    not_counted: dict[str, int] = {}
    total = 0
    for name, module, inputs in jobs:
        macs, skipped = count_paper_macs(module, inputs)
        total += macs
        gmacs[name] = macs / 1e9
        for op, n in skipped.items():
            not_counted[op] = not_counted.get(op, 0) + n
    return DetectorFlops(
        backbone_name=backbone_name(cfg), arch=cfg.detector.arch, height=height, width=width,
        num_classes=num_classes, box_rois=box_rois, mask_rois=mask_rois, gmacs=gmacs, params=params,
        total_gmacs=total / 1e9, total_params=_params(det), backbone_params=params["backbone"],
        kernels=_kernels(cfg), not_counted=not_counted,
    )


def _pool_size(pool: nn.Module) -> int:
    out = pool.output_size
    out = out[0] if isinstance(out, (tuple, list)) else out
    return int(out)


def _code_digest() -> str:
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for f in ("model.py", "flops.py"):
        h.update((here / f).read_bytes())
    return h.hexdigest()


def _valid(d: Any) -> bool:
    if not isinstance(d, dict) or set(d) != {f.name for f in dataclasses.fields(DetectorFlops)} - {"paper"}:
        return False
    ok_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    return (all(isinstance(d[k], dict) and all(ok_num(v) for v in d[k].values())
                for k in ("gmacs", "params", "not_counted"))
            and all(ok_num(d[k]) for k in ("total_gmacs", "total_params", "backbone_params", "height", "width"))
            and set(d["gmacs"]) <= set(PARTS))


def detector_flops(cfg: DetectConfig, height: int = PAPER_SIZE[0], width: int = PAPER_SIZE[1],
                   num_classes: int = PAPER_CLASSES, *, cache: bool = True) -> DetectorFlops:
    """GMACs (papers' convention) and parameters of the detector ``cfg`` builds for ``num_classes``
    classes, on one ``height x width`` image, part by part as mmdetection's ``get_flops`` counts them
    (see the module's docstring). ``paper`` holds the paper's row where there is one. Kept in the count
    cache unless ``cache=False``."""
    from ..analysis import countcache

    _check_size(height, width)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"expected a number of classes >= 1, got {num_classes!r}", key="num_classes")
    import timm

    detector = {k: v for k, v in dataclasses.asdict(cfg.detector).items() if k != "backbone_init"}
    key = {"model": dict(cfg.model), "detector": detector, "size": [height, width], "num_classes": num_classes,
           "timm": timm.__version__, "code": _code_digest()}
    hit = countcache.lookup("detector_flops", key, _valid) if cache else None
    rep = DetectorFlops(**hit) if hit is not None else _count(cfg, height, width, num_classes)
    if hit is None and cache:
        countcache.store("detector_flops", key, {k: v for k, v in rep.to_dict().items() if k != "paper"})
    row = paper_row(cfg)
    if row is not None:
        rep.paper = {"params_m": row.params_m, "gflops": row.gflops, "source": row.source, "knobs": dict(row.knobs),
                     "kernels": paper_kernels(cfg), "size": list(PAPER_SIZE), "num_classes": PAPER_CLASSES}
    return rep


def counted_size(cfg: DetectConfig) -> tuple[int, int, int]:
    """``(height, width, classes)`` a detection run's GMACs are counted at: Shapes-det's own image and 4
    classes; on COCO the papers' 1280 x 800 and 80 classes."""
    if cfg.data.dataset == "shapes":
        return cfg.data.img_size, cfg.data.img_size, 4
    return PAPER_SIZE[0], PAPER_SIZE[1], PAPER_CLASSES


@functools.lru_cache(maxsize=1024)
def _run_gmacs(config_json: str) -> tuple[float, float]:
    cfg = DetectConfig.from_resolved(json.loads(config_json))
    h, w, k = counted_size(cfg)
    report = detector_flops(cfg, height=h, width=w, num_classes=k)
    return report.total_gmacs, report.gmacs["backbone"]


def run_gmacs(cfg: DetectConfig) -> tuple[float, float]:
    """(detector GMACs, backbone GMACs) of a detection run config at :func:`counted_size` (what its
    ``result.json`` and the sweep's dry run show); cached in this process and, through
    :func:`detector_flops`, across processes."""
    return _run_gmacs(json.dumps(cfg.to_dict(), sort_keys=True))


__all__ = ["flops_config", "counted_size", "run_gmacs", "DetectorFlops", "PaperDetector", "PAPER_DETECTORS",
           "PAPER_SIZE", "PARTS", "detector_flops", "backbone_name", "paper_row", "paper_kernels"]
