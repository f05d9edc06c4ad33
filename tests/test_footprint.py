"""The memory a training run needs, estimated from its config (focalexp.models.footprint): the estimates
are close lower bounds of what torch really holds, and a run that cannot fit is refused before anything
is built or written, naming the key to change."""

from __future__ import annotations

import pytest
import torch

from focalexp.detection.config import check_memory as check_detect_memory
from focalexp.detection.config import resolve_detect_config
from focalexp.detection.model import build_detector
from focalexp.detection.trainer import train_detector
from focalexp.errors import ConfigError
from focalexp.models.config import FocalNetConfig
from focalexp.models.focalnet import FocalNet
from focalexp.models.footprint import BYTES_PER_PARAM, activation_bytes, approx_params, inference_bytes
from focalexp.train.config import check_memory, resolve_run_config
from focalexp.train.loop import train

from .conftest import tiny_run
from .test_detection import tiny_det


def saved_bytes(model: torch.nn.Module, *inputs) -> int:
    """Bytes of the tensors autograd keeps for backward in one training forward (parameters left out)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(*inputs)
    return sum(seen.values())


KNOBS = [
    {}, {"focal_levels": 0}, {"focal_levels": 4, "mlp_ratio": 2.0}, {"use_layerscale": True},
    {"gating": "softmax", "use_postln_in_modulation": True}, {"use_conv_embed": True, "use_postln": True},
    {"token_mixer": "window_attention"}, {"token_mixer": "window_attention", "window_size": 4},
    {"token_mixer": "pooling"}, {"token_mixer": "dwconv"}, {"use_checkpoint": True},
    {"isotropic": True, "depths": [4], "patch_size": 16, "embed_dim": 64},
]


@pytest.mark.parametrize("knobs", KNOBS, ids=[",".join(f"{k}={v}" for k, v in k.items()) or "default" for k in KNOBS])
def test_activation_estimate_is_a_close_lower_bound_of_what_autograd_keeps(knobs):
    cfg = FocalNetConfig(**{"embed_dim": 32, "depths": [2, 2, 2, 2], "num_classes": 10, "img_size": 128, **knobs})
    torch.manual_seed(0)
    measured = saved_bytes(FocalNet(cfg), torch.randn(1, 3, 128, 128))
    assert 0.75 <= activation_bytes(cfg, 128) / measured <= 1.0, (activation_bytes(cfg, 128), measured)


@pytest.mark.parametrize("knobs", KNOBS, ids=[",".join(f"{k}={v}" for k, v in k.items()) or "default" for k in KNOBS])
def test_parameter_estimate_is_a_lower_bound_exact_for_focal_modulation(knobs):
    cfg = FocalNetConfig(**{"embed_dim": 32, "depths": [2, 2, 2, 2], "num_classes": 10, **knobs})
    real = sum(p.numel() for p in FocalNet(cfg).parameters())
    low = 0.97 if cfg.token_mixer == "focal_modulation" else 0.5
    assert low <= approx_params(cfg) / real <= 1.0, (approx_params(cfg), real)


@pytest.mark.parametrize("knobs", KNOBS[:4] + KNOBS[-1:], ids=["default", "L0", "L4-mlp2", "layerscale", "isotropic"])
def test_inference_estimate_is_what_the_largest_block_holds_at_once(knobs):
    """An evaluation forward holds at least a block's input and its MLP's hidden layer at the same time."""
    cfg = FocalNetConfig(**{"embed_dim": 32, "depths": [2, 2, 2, 2], "num_classes": 10, **knobs})
    model, held = FocalNet(cfg).eval(), []
    for block in (m for m in model.modules() if type(m).__name__ == "FocalNetBlock"):
        block.register_forward_hook(lambda mod, args, out: held.append(args[0].nbytes + mod._hidden))
        block.mlp.fc1.register_forward_hook(lambda mod, args, out, block=block: setattr(block, "_hidden", out.nbytes))
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 96))
    assert inference_bytes(cfg, 96) == max(held)


@pytest.mark.parametrize("arch", ["maskrcnn", "fasterrcnn", "retinanet", "fcos"])
def test_detector_estimate_is_a_lower_bound_of_what_autograd_keeps(arch):
    side = 128
    cfg = resolve_detect_config(tiny_det(detector={"arch": arch, "min_size": [side], "max_size": side,
                                                   "fpn_channels": 64}), check_data_present=False)
    torch.manual_seed(0)
    model = build_detector(cfg, 3)
    images = [torch.rand(3, side, side) for _ in range(2)]
    masks = torch.zeros(2, side, side, dtype=torch.uint8)
    masks[:, 8:40, 8:40] = 1
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0], [20.0, 30.0, 90.0, 70.0]]),
                "labels": torch.tensor([1, 2]), "masks": masks} for _ in images]
    measured = saved_bytes(model, images, targets) / len(images)
    from focalexp.detection.config import head_footprint

    bb = cfg.backbone_config().replace(num_classes=0)
    estimate = activation_bytes(bb, side) + head_footprint(cfg.detector, bb.stage_dims, side, side)[1]
    assert 0.5 <= estimate / measured <= 1.0, (estimate, measured)
    real = sum(p.numel() for p in model.parameters())
    assert 0.5 <= (approx_params(bb) + head_footprint(cfg.detector, bb.stage_dims, side, side)[0]) / real <= 1.0


def test_the_batch_it_says_fits_is_the_largest_that_passes():
    cfg = resolve_run_config(tiny_run(train={"batch_size": 4096}, data={"train_size": 5000}), check_data_present=False)
    mcfg = cfg.model_config()
    weights, per_image = approx_params(mcfg) * BYTES_PER_PARAM, activation_bytes(mcfg, cfg.data.img_size)
    gb = (weights + 1000.5 * per_image) / 2 ** 30  # room for 1000 images and a half
    with pytest.raises(ConfigError) as e:
        check_memory(cfg, memory_gb=gb)
    assert e.value.key == "train.batch_size" and "about 1,000 images fit" in str(e.value)
    for batch, fits in ((1000, True), (1001, False)):
        cfg.train.batch_size = batch
        if fits:
            check_memory(cfg, memory_gb=gb)
        else:
            with pytest.raises(ConfigError):
                check_memory(cfg, memory_gb=gb)
    # two processes on this machine: each holds the weights and AdamW state
    cfg.train.batch_size = 1000
    with pytest.raises(ConfigError, match="x 2 processes"):
        check_memory(cfg, processes=2, memory_gb=gb)


@pytest.mark.parametrize("model,key", [
    ({"depths": [300, 300, 300]}, "model.depths"),
    ({"depths": [1, 1, 1], "embed_dim": 1024}, "model.embed_dim"),
    ({"focal_levels": 100}, "model.focal_levels"),
])
def test_a_model_too_large_for_one_image_names_the_knob_that_makes_it_so(model, key):
    raw = tiny_run(model=model)
    cfg = resolve_run_config(raw, check_data_present=False)
    with pytest.raises(ConfigError) as e:
        check_memory(cfg, memory_gb=0.2)
    assert e.value.key == key, str(e.value)
    cfg = resolve_run_config(tiny_run(), check_data_present=False)
    check_memory(cfg, memory_gb=0.2)  # the tiny model itself fits in 0.2 GiB


def test_the_detector_names_its_own_knobs():
    cfg = resolve_detect_config(tiny_det(detector={"fpn_channels": 4096}), check_data_present=False)
    with pytest.raises(ConfigError) as e:
        check_detect_memory(cfg, memory_gb=1.0)
    assert e.value.key == "detector.fpn_channels", str(e.value)
    cfg = resolve_detect_config(tiny_det(detector={"min_size": [4000], "max_size": 4000}), check_data_present=False)
    with pytest.raises(ConfigError) as e:
        check_detect_memory(cfg, memory_gb=1.0)
    assert e.value.key == "detector.min_size", str(e.value)


def test_an_auto_device_run_is_checked_on_the_machine_it_starts_on(tmp_path, monkeypatch):
    """``device: auto`` is checked when the run starts (on a cluster node the GPU holds the batch), before
    anything is built or written; a run that says cpu is refused when its config is read."""
    monkeypatch.setattr("focalexp.fileio.machine_memory_gb", lambda: 0.008)  # the data fits, the batches do not
    cfg = resolve_run_config(tiny_run(train={"batch_size": 256}), check_data_present=False)  # auto: not refused here
    with pytest.raises(ConfigError, match="train.batch_size"):
        train(cfg, tmp_path / "run", progress=False)
    det = resolve_detect_config(tiny_det(train={"batch_size": 16}), check_data_present=False)
    with pytest.raises(ConfigError, match="train.batch_size"):
        train_detector(det, tmp_path / "det", progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "det").exists()
    with pytest.raises(ConfigError, match="train.batch_size"):
        resolve_run_config(tiny_run(train={"device": "cpu", "batch_size": 256}), check_data_present=False)


def test_every_way_of_building_refuses_a_model_beyond_the_size_cap():
    """The library paths too: FocalNet(config), create_model, timm.create_model through the registry
    (torch never tries to allocate the terabytes)."""
    import timm

    from focalexp import create_model

    with pytest.raises(ConfigError, match="model: describes a model of 2,976,010.1 B parameters"):
        FocalNet(FocalNetConfig(embed_dim=1_000_000, depths=[2, 2, 6, 2]))
    with pytest.raises(ConfigError, match="B parameters"):
        create_model("focalnet_micro", embed_dim=1_000_000)
    with pytest.raises(ConfigError, match="B parameters"):
        timm.create_model("focalexp_focalnet_t_srf", embed_dim=1_000_000)
    with pytest.raises(ConfigError, match="blocks in all"):
        FocalNetConfig(depths=[500, 501])
