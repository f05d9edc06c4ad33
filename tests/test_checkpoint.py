"""Weights: official, timm and focalexp layouts load into our model and give the same logits."""

from __future__ import annotations

import pytest
import torch
from timm.models import focalnet as timm_focalnet

from focalexp import create_model
from focalexp.errors import CheckpointError, ConfigError
from focalexp.models.checkpoint import detect_layout, load_checkpoint, save_model
from focalexp.models.config import FocalNetConfig

from .official_ref import make_official_state_dict, official_forward


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """timm's random init, plus what it leaves constant: LayerScale gammas (1e-4, which would hide a
    wrong mapping of the blocks) and LayerNorm affines / biases (ones and zeros) get random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=g))
            elif p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)


def _timm_model(name: str | None = None, **kw) -> torch.nn.Module:
    model = timm_focalnet.FocalNet(**kw) if name is None else getattr(timm_focalnet, name)(**kw)
    _randomize(model.eval())
    return model


# timm model -> saved file -> our create_model(checkpoint=...) -> same logits
TIMM_CASES = [
    ("focalnet_t_srf", dict(name="focalnet_tiny_srf"), {}, 224),
    ("focalnet_t_lrf", dict(name="focalnet_tiny_lrf"), {}, 224),
    (
        # shaped like large_fl4 (post-norm, LayerScale, 4 levels, overlapped), small enough for CPU;
        # plus LN in the modulation (huge's layout)
        "focalnet_l_fl4",
        dict(embed_dim=16, depths=(1, 1, 2, 1), focal_levels=(4,) * 4, focal_windows=(3,) * 4,
             use_overlap_down=True, use_post_norm=True, use_post_norm_in_modulation=True,
             layerscale_value=1e-4, num_classes=10),
        dict(embed_dim=16, depths=[1, 1, 2, 1], num_classes=10, use_postln_in_modulation=True,
             normalize_modulator=False),
        64,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("preset,timm_kw,ours_kw,size", TIMM_CASES, ids=[c[0] for c in TIMM_CASES])
def test_timm_weights_give_equal_logits(tmp_path, preset, timm_kw, ours_kw, size):
    kw = dict(timm_kw)
    name = kw.pop("name", None)
    ref = _timm_model(name, **kw)
    path = tmp_path / "timm.pth"
    torch.save(ref.state_dict(), path)
    ours = create_model(preset, checkpoint=path, **ours_kw).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert a.abs().max() > 0.1  # the comparison is not between two near-zero outputs
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


OFFICIAL_CASES = {
    "t_srf": ("focalnet_t_srf", dict(embed_dim=16, depths=[1, 1, 2, 1], num_classes=10), 64),
    "t_lrf": ("focalnet_t_lrf", dict(embed_dim=16, depths=[1, 1, 2, 1], num_classes=10), 64),
    # the released focalnet_base_iso_16.pth layout: LayerScale + LN inside the modulation
    "b_iso": ("focalnet_b_iso", dict(embed_dim=32, depths=[3], num_classes=10), 64),
    "large_like": (
        "focalnet_l_fl4",
        dict(embed_dim=16, depths=[1, 1, 2, 1], num_classes=10),  # post-norm, LS, normalize_modulator, overlap
        64,
    ),
    "huge_like": ("focalnet_h_fl3", dict(embed_dim=16, depths=[1, 1, 2, 1], num_classes=10, img_size=64), 64),
}


@pytest.mark.parametrize("case", list(OFFICIAL_CASES))
def test_official_layout_gives_equal_logits(tmp_path, case):
    preset, kw, size = OFFICIAL_CASES[case]
    model = create_model(preset, **kw)
    cfg = model.config
    sd = make_official_state_dict(cfg)
    path = tmp_path / "official.pth"
    torch.save({"model": sd, "epoch": 3}, path)  # as main.py saves them
    ours = create_model(preset, checkpoint=path, **kw).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = official_forward(sd, cfg, x)
        out = ours(x)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_synthetic_official_layout_is_what_timm_expects():
    """timm's own official->timm filter accepts our synthetic official dict strictly."""
    cfg = FocalNetConfig(embed_dim=16, depths=(1, 1, 2, 1), num_classes=10, use_layerscale=True,
                         use_postln=True, use_conv_embed=True, focal_levels=3)
    sd = make_official_state_dict(cfg)
    tm = timm_focalnet.FocalNet(embed_dim=16, depths=(1, 1, 2, 1), num_classes=10, focal_levels=(3,) * 4,
                                use_overlap_down=True, use_post_norm=True, layerscale_value=1e-4)
    tm.load_state_dict(timm_focalnet.checkpoint_filter_fn({"model": sd}, tm), strict=True)


def test_layout_detection():
    cfg = FocalNetConfig(embed_dim=16, depths=(1, 1, 1, 1), num_classes=5)
    assert detect_layout(make_official_state_dict(cfg)) == "official"
    assert detect_layout(timm_focalnet.FocalNet(embed_dim=16, depths=(1, 1, 1, 1)).state_dict()) == "timm"
    assert detect_layout(create_model(cfg).state_dict()) == "focalexp"
    with pytest.raises(CheckpointError, match="unknown layout"):
        detect_layout({"foo.weight": torch.zeros(1)})


def test_own_format_roundtrip_rebuilds_config(tmp_path):
    m = create_model("focalnet_t_lrf", embed_dim=16, depths=[1, 1, 1, 1], gating="sigmoid", num_classes=7).eval()
    path = tmp_path / "m.pth"
    save_model(m, path)
    # no name: the architecture comes from the checkpoint
    m2 = create_model(checkpoint=path).eval()
    assert m2.config == m.config
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x), atol=0, rtol=0)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_mismatch_names_the_keys(tmp_path):
    ref = timm_focalnet.FocalNet(embed_dim=16, depths=(1, 1, 1, 1), focal_levels=(3,) * 4, num_classes=10)
    path = tmp_path / "lrf.pth"
    torch.save(ref.state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        create_model("focalnet_t_srf", checkpoint=path, embed_dim=16, depths=[1, 1, 1, 1], num_classes=10)
    msg = str(e.value)
    assert "\n" not in msg
    assert "timm layout" in msg
    assert "unexpected stages.0.blocks.0.modulation.focal_layers.2.0.weight" in msg
    assert "shape stages.0.blocks.0.modulation.f.weight (36, 16, 1, 1) vs model (35, 16)" in msg
    # non-strict loads what fits and reports the rest
    m = create_model("focalnet_t_srf", embed_dim=16, depths=[1, 1, 1, 1], num_classes=10)
    rep = load_checkpoint(m, path, strict=False)
    assert rep["shape_mismatch"] and rep["unexpected"]
    torch.testing.assert_close(m.stem.proj.weight, ref.stem.proj.weight)


def test_backbone_mode_ignores_head(tmp_path):
    ref = _timm_model("focalnet_tiny_srf")
    path = tmp_path / "t.pth"
    torch.save(ref.state_dict(), path)
    bb = create_model("focalnet_t_srf", checkpoint=path, features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = bb(x)
        ref_feats = ref.forward_intermediates(x, intermediates_only=True)
    for a, b in zip(feats, ref_feats):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


class Evil:
    """Stands for any pickled object a checkpoint should not get to construct."""


def test_safetensors_and_unsafe_pickles(tmp_path):
    from safetensors.torch import save_file

    ref = timm_focalnet.FocalNet(embed_dim=16, depths=(1, 1, 1, 1), num_classes=3)
    st = tmp_path / "model.safetensors"
    save_file(ref.state_dict(), str(st))
    create_model("focalnet_t_srf", checkpoint=st, embed_dim=16, depths=[1, 1, 1, 1], num_classes=3)

    bad = tmp_path / "evil.pth"
    torch.save({"model": ref.state_dict(), "x": Evil()}, bad)
    with pytest.raises(CheckpointError, match=r"refused .*Evil.*nothing from the file was run") as e:
        create_model("focalnet_t_srf", checkpoint=bad, embed_dim=16, depths=[1, 1, 1, 1], num_classes=3)
    assert "weights_only=False" not in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="no such file"):
        create_model("focalnet_t_srf", checkpoint=tmp_path / "missing.pth")


def test_official_checkpoint_with_yacs_config_loads(tmp_path):
    from yacs.config import CfgNode

    cfg = FocalNetConfig(embed_dim=16, depths=(1, 1, 1, 1), num_classes=4)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": make_official_state_dict(cfg), "config": CfgNode({"MODEL": CfgNode({"TYPE": "focal"})})}, path)
    create_model(cfg, checkpoint=path)


def test_pretrained_offline_fails_fast_in_one_line(monkeypatch, tmp_path):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as e:
        create_model("focalnet_t_srf", pretrained=True)
    assert "could not fetch focalnet_tiny_srf.ms_in1k" in str(e.value) and "\n" not in str(e.value)
    # no offline flag, but the hub does not answer: a closed local port stands for a dead network
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match=r"cannot reach http://127.0.0.1:9"):
        create_model("focalnet_t_lrf", pretrained=True)
    assert time.monotonic() - t0 < 10
    with pytest.raises(CheckpointError, match="no weights on the Hugging Face hub"):
        create_model("focalnet_t_iso", pretrained=True)
    with pytest.raises(ConfigError, match="needs a preset name"):
        create_model(FocalNetConfig(), pretrained=True)


def test_pretrained_from_the_hub_cache(monkeypatch, tmp_path):
    """pretrained=True reads timm's published file format from the HF cache (no network needed)."""
    from safetensors.torch import save_file

    ref = _timm_model("focalnet_tiny_srf")
    snap = tmp_path / "models--timm--focalnet_tiny_srf.ms_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file(ref.state_dict(), str(snap / "model.safetensors"))
    (tmp_path / "models--timm--focalnet_tiny_srf.ms_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--focalnet_tiny_srf.ms_in1k" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = create_model("focalnet_tiny_srf", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    # fine-tuning: a new 10-class head, every other weight from the hub
    ft = create_model("focalnet_t_srf", pretrained=True, num_classes=10)
    assert ft.head.out_features == 10
    torch.testing.assert_close(ft.stages[2].blocks[0].mlp.fc1.weight, ref.layers[2].blocks[0].mlp.fc1.weight.flatten(1))
    # a grayscale model from RGB weights: timm's rule for the first conv (channels summed), as
    # timm.create_model(..., pretrained=True, in_chans=1) does for timm's own models
    gray = create_model("focalnet_t_srf", pretrained=True, in_chans=1).eval()
    torch.testing.assert_close(gray.stem.proj.weight, ref.stem.proj.weight.sum(1, keepdim=True))
    g = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray(g), ref(g.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


def test_atomic_save_keeps_the_previous_file_and_a_full_disk_leaves_both_intact(small_disk):
    """``previous``: the file replaced is kept there; on a real full disk torch's writer fails, the OSError
    (ENOSPC) comes out instead of torch's "unexpected pos", the temporary file is gone and both files
    read as before."""
    import errno
    import os

    from focalexp.models.checkpoint import atomic_save

    last, prev = small_disk.path / "last.pth", small_disk.path / "last.prev.pth"
    atomic_save({"n": torch.zeros(10)}, last, previous=prev)
    assert not prev.exists()
    atomic_save({"n": torch.ones(10)}, last, previous=prev)
    assert torch.equal(torch.load(last, weights_only=True)["n"], torch.ones(10))
    assert torch.equal(torch.load(prev, weights_only=True)["n"], torch.zeros(10))
    small_disk.resize(256)
    with pytest.raises(OSError) as e:
        atomic_save({"n": torch.zeros(200_000)}, last, previous=prev)  # 800 kB
    assert e.value.errno == errno.ENOSPC
    assert sorted(os.listdir(small_disk.path)) == ["last.pth"]  # the older copy made room; no temporary file
    assert torch.equal(torch.load(last, weights_only=True)["n"], torch.ones(10))
