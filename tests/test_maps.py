"""Maps API: modulator, gates, contexts, kernels, ERF, ViT/Swin attention, figures, photos."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from focalexp.analysis import figures, maps
from focalexp.analysis.images import load_images, sample_photos
from focalexp.errors import ConfigError
from focalexp.models import FocalNet, FocalNetConfig, create_model
from focalexp.models.checkpoint import load_state_into


def tiny(**kw) -> FocalNet:
    torch.manual_seed(0)
    base = dict(depths=(1, 2), embed_dim=16, patch_size=4, img_size=64, num_classes=5, focal_levels=2)
    base.update(kw)
    return FocalNet(FocalNetConfig(**base)).eval()


@pytest.fixture(scope="module")
def photos64():
    return load_images(size=64)


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---------------------------------------------------------------------------- photos
def test_sample_photos_are_real_images():
    paths = sample_photos()
    assert len(paths) >= 5 and paths[0].name == "cat.jpg"
    batch = load_images(paths[:3], size=96)
    assert batch.tensor.shape == (3, 3, 96, 96)
    assert batch.display.min() >= 0 and batch.display.max() <= 1
    # photographs, not noise: neighbouring pixels are strongly correlated
    d = batch.display
    corr = np.corrcoef(d[:, :, :-1].ravel(), d[:, :, 1:].ravel())[0, 1]
    assert corr > 0.8
    # normalised with ImageNet statistics
    assert abs(float(batch.tensor.mean())) < 1.5


def test_load_images_rejects_missing_and_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_images([tmp_path / "nope.jpg"])
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(ConfigError, match="not a readable image"):
        load_images([bad])


# ---------------------------------------------------------------------------- FocalNet maps
def test_modulation_maps_default_blocks_shapes_and_no_state(photos64):
    model = tiny()
    model.train()
    x = photos64.tensor[:2]
    out = maps.modulation_maps(model, x)
    assert list(out) == ["stages.0.blocks.0.modulation", "stages.1.blocks.1.modulation"]
    m0, m1 = out.values()
    assert m0.modulator.shape == (2, 16, 16) and m1.modulator.shape == (2, 8, 8)
    assert m1.gates.shape == (2, 3, 8, 8) and m1.gate_labels == ["level 1 (k=3)", "level 2 (k=5)", "global"]
    assert m1.context.shape == (2, 2, 8, 8) and m1.global_context.shape == (2,)
    assert (m1.modulator >= 0).all()
    # the model keeps nothing: hooks removed, mode restored, no tensors left on modules
    assert _no_hooks(model) and model.training
    assert not any(isinstance(v, torch.Tensor) for m in model.modules() for v in vars(m).values())


def test_modulator_map_is_the_norm_of_h_output(photos64):
    """Independent recomputation from the block's input with the module's own weights."""
    model = tiny()
    mod = model.stages[1].blocks[1].modulation
    seen = {}
    h = mod.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach()))
    x = photos64.tensor[:2]
    got = maps.modulation_maps(model, x, ["stages.1.blocks.1"])["stages.1.blocks.1.modulation"]
    h.remove()
    inp = seen["x"]  # (B, H, W, C) after norm1
    C = mod.dim
    f = F.linear(inp, mod.f.weight, mod.f.bias)
    ctx, g = f[..., C:2 * C].permute(0, 3, 1, 2), f[..., 2 * C:].permute(0, 3, 1, 2)  # (q is f[..., :C])
    agg = 0
    levels = []
    for lvl, layer in enumerate(mod.focal_layers):
        ctx = F.gelu(F.conv2d(ctx, layer[0].weight, padding=layer[0].padding, groups=C))
        levels.append(ctx)
        agg = agg + ctx * g[:, lvl:lvl + 1]
    glob = F.gelu(ctx.mean((2, 3), keepdim=True))
    agg = agg + glob * g[:, 2:3]
    modulator = F.conv2d(agg, mod.h.weight[:, :, None, None], mod.h.bias)
    torch.testing.assert_close(got.modulator, modulator.norm(dim=1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.gates, g, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.context, torch.stack([z.norm(dim=1) for z in levels], 1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.global_context, glob.flatten(1).norm(dim=1), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_maps_of_timm_focalnet_match_ours_with_the_same_weights(photos64):
    ref = timm.create_model("focalnet_tiny_srf", num_classes=10).eval()
    ours = create_model("focalnet_t_srf", num_classes=10).eval()
    load_state_into(ours, ref.state_dict())
    x = photos64.tensor[:1]
    a = maps.modulation_maps(ours, x, [-1])["stages.3.blocks.1.modulation"]
    b = maps.modulation_maps(ref, x, [-1])["layers.3.blocks.1.modulation"]
    for field in ("modulator", "gates", "context", "global_context"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=1e-3, atol=1e-4)
    assert a.gate_labels == b.gate_labels
    assert _no_hooks(ref)


@pytest.mark.parametrize("gating", ["sigmoid", "softmax", "none"])
def test_gate_maps_follow_the_gating_knob(photos64, gating):
    m = maps.modulation_maps(tiny(gating=gating), photos64.tensor[:2], [-1])
    g = next(iter(m.values())).gates
    if gating == "none":
        assert g is None
    elif gating == "sigmoid":
        assert (g > 0).all() and (g < 1).all()
    else:
        torch.testing.assert_close(g.sum(1), torch.ones_like(g[:, 0]))


def test_top_only_aggregation_labels_its_gates(photos64):
    m = next(iter(maps.modulation_maps(tiny(aggregation="top_only", focal_levels=3), photos64.tensor[:1], [-1]).values()))
    assert m.gate_labels == ["level 3 (k=7)", "global"] and m.gates.shape[1] == 2


def test_block_selection_and_errors():
    model = tiny()
    assert maps.resolve_blocks(model, "all") == [
        "stages.0.blocks.0.modulation", "stages.1.blocks.0.modulation", "stages.1.blocks.1.modulation"]
    assert maps.resolve_blocks(model, [0, "stages.1.blocks.0"]) == [
        "stages.0.blocks.0.modulation", "stages.1.blocks.0.modulation"]
    with pytest.raises(ConfigError, match="did you mean 'stages.1.blocks.1.modulation'"):
        maps.resolve_blocks(model, ["stages.1.blocks.1.modulaton"])
    with pytest.raises(ConfigError, match="out of range"):
        maps.resolve_blocks(model, [5])
    with pytest.raises(ConfigError, match="no focal modulation"):
        maps.modulation_maps(tiny(token_mixer="window_attention", head_dim=8), torch.zeros(1, 3, 64, 64))


def test_kernel_maps_are_channel_means():
    model = tiny(focal_levels=3)
    km = maps.kernel_maps(model)
    last = km["stages.1.blocks.1.modulation"]
    assert [k.shape[0] for k in last] == [3, 5, 7]
    w = model.stages[1].blocks[1].modulation.focal_layers[2][0].weight
    torch.testing.assert_close(last[2], w.mean(dim=(0, 1)))
    assert maps.kernel_maps(tiny(token_mixer="pooling"))["stages.1.blocks.1.modulation"] == []


# ---------------------------------------------------------------------------- ERF
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_erf_support_is_the_analytic_receptive_field(levels):
    """Without the global context, a one-block FocalNet's ERF spans exactly (1 + sum(k - 1)) tokens
    (the paper's analytic receptive field) times the patch size."""
    model = tiny(depths=(1,), focal_levels=levels, global_context=False, patch_size=4, img_size=128)
    torch.manual_seed(1)
    erf = maps.effective_receptive_field(model, torch.randn(2, 3, 128, 128))
    ys, xs = torch.nonzero(erf > 0, as_tuple=True)
    tokens = 1 + sum(k - 1 for k in model.config.stage_kernels(0))
    assert (ys.max() - ys.min() + 1).item() == tokens * 4
    assert (xs.max() - xs.min() + 1).item() == tokens * 4


def test_erf_of_the_global_context_reaches_the_whole_image():
    erf = maps.effective_receptive_field(tiny(depths=(1,), focal_levels=1), torch.randn(2, 3, 64, 64))
    assert (erf > 0).float().mean() > 0.5


def test_erf_area_ratio():
    e = torch.zeros(9, 9)
    e[4, 4] = 1.0
    assert maps.erf_area_ratio(e, (0.5, 0.99)) == {0.5: 1 / 81, 0.99: 1 / 81}
    e = torch.ones(9, 9)
    r = maps.erf_area_ratio(e, (0.1, 1.0))
    assert r[0.1] == 9 / 81 and r[1.0] == 1.0


def test_erf_of_timm_baselines_uses_their_feature_layout():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64).eval()
    fm = maps.feature_map(vit, torch.zeros(1, 3, 64, 64))
    assert fm.shape == (1, vit.num_features, 4, 4)
    swin = timm.create_model("swin_tiny_patch4_window7_224").eval()
    assert maps.feature_map(swin, torch.zeros(1, 3, 224, 224)).shape == (1, swin.num_features, 7, 7)
    erf = maps.effective_receptive_field(vit, torch.randn(1, 3, 64, 64))
    assert erf.shape == (64, 64) and (erf > 0).any()


# ---------------------------------------------------------------------------- attention
def test_vit_cls_attention_matches_a_manual_softmax(photos64):
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64).eval()
    x = photos64.tensor[:2]
    seen = {}
    last = vit.blocks[-1].attn
    h = last.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach()))
    att = maps.vit_attention_maps(vit, x)
    h.remove()
    B, N, C = seen["x"].shape
    qkv = last.qkv(seen["x"]).reshape(B, N, 3, last.num_heads, -1).permute(2, 0, 3, 1, 4)
    probs = ((qkv[0] * last.scale) @ qkv[1].transpose(-2, -1)).softmax(-1)
    expected = probs.mean(1)[:, 0, 1:].reshape(B, 4, 4)
    torch.testing.assert_close(att["cls"], expected, rtol=1e-4, atol=1e-6)
    # rollout rows are distributions: the patch share of the CLS row is below 1 and positive
    s = att["rollout"].sum((1, 2))
    assert ((s > 0) & (s < 1)).all()
    # fused attention is switched back on, hooks are gone
    assert all(m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")) and _no_hooks(vit)
    r = maps.vit_attention_maps(vit, x, discard_ratio=0.9, head_fusion="max")["rollout"]
    assert r.shape == (2, 4, 4) and not torch.allclose(r, att["rollout"])
    with pytest.raises(ConfigError, match="head_fusion"):
        maps.vit_attention_maps(vit, x, head_fusion="median")


@pytest.mark.slow
def test_swin_window_attention_of_a_query(photos64):
    swin = timm.create_model("swin_tiny_patch4_window7_224").eval()
    x = load_images(size=224).tensor[:1]
    a = maps.swin_window_attention(swin, x, stage=0, block=0, query=(0.0, 0.0))
    assert a.shape == (1, 56, 56)
    torch.testing.assert_close(a.sum(), torch.tensor(1.0))
    assert torch.nonzero(a[0]).amax(0).tolist() == [6, 6]  # the top-left 7x7 window
    # shifted block: the query at the corner attends within the wrapped region of its rolled window
    s = maps.swin_window_attention(swin, x, stage=0, block=1, query=(0.0, 0.0))
    torch.testing.assert_close(s[0, :4, :4].sum(), torch.tensor(1.0), atol=1e-4, rtol=0)
    assert _no_hooks(swin)


# ---------------------------------------------------------------------------- figures
def test_upsample_keeps_cells_aligned_with_their_pixels():
    m = torch.zeros(1, 4, 4)
    m[0, 1, 2] = 1.0
    up = figures.upsample(m, (32, 32))[0]
    y, x = divmod(int(up.argmax()), 32)
    assert 8 <= y < 16 and 16 <= x < 24  # inside the 8x8 block of cell (1, 2)


def test_map_panels_and_formats(tmp_path, photos64):
    out = maps.modulation_maps(tiny(), photos64.tensor[:2])
    cols = {k: v.modulator for k, v in out.items()}
    png = tmp_path / "m.png"
    fig = figures.plot_map_panels(photos64.display[:2], cols, row_labels=photos64.names[:2], title="t", out=png)
    assert len(fig.axes) == 2 * 3 + 2 * 2  # panels + one colour bar per map
    img = mpimg.imread(png)
    assert img.shape[0] > 200 and img[..., :3].std() > 0.05
    fig = figures.plot_map_panels(photos64.display[:2], cols, shared_scale=True, out=tmp_path / "m.pdf")
    assert len(fig.axes) == 2 * 3 + 1
    assert (tmp_path / "m.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(ConfigError, match=r"must end in \.png"):
        figures.plot_map_panels(photos64.display[:2], cols, out=tmp_path / "m.txt")
    assert not (tmp_path / "m.txt").exists()
