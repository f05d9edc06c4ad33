"""Model behaviour: every knob does what it says, hooks reach the internals, no state is kept."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from focalexp import create_model
from focalexp.errors import ConfigError
from focalexp.models import config as config_module
from focalexp.models import mixers
from focalexp.models.config import GATED_MIXERS, TOKEN_MIXERS, FocalNetConfig
from focalexp.models.fastpath import Linear
from focalexp.models.mixers import DWConvMixer, FocalModulation, TokenMixer, WindowAttention, register_mixer

TINY = dict(embed_dim=16, depths=[1, 1, 2, 1], num_classes=10)


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


VARIANTS = {
    "official": {},
    "gating_none": dict(gating="none"),
    "gating_sigmoid": dict(gating="sigmoid"),
    "gating_softmax": dict(gating="softmax"),
    "additive": dict(modulation="add"),
    "top_only": dict(aggregation="top_only"),
    "no_global": dict(global_context=False),
    "levels_0": dict(focal_levels=0),
    "kernel_13": dict(kernel_sizes=[13]),
    "per_stage_kernels": dict(kernel_sizes=[[3, 9], [3, 9], [5], [3]], focal_levels=[2, 2, 1, 1]),
    "dwconv": dict(token_mixer="dwconv"),
    "pooling": dict(token_mixer="pooling"),
    "window_attention": dict(token_mixer="window_attention", head_dim=8),
    "postln_ls_norm": dict(use_postln=True, use_layerscale=True, normalize_modulator=True, use_postln_in_modulation=True),
    "overlap": dict(use_conv_embed=True),
    "timm_init": dict(init="timm"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_a_step(variant):
    m = create_model("focalnet_t_lrf", **TINY, **VARIANTS[variant])
    x = _x(2, 3, 64, 64)
    out = m(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def _mod(**kw) -> FocalModulation:
    torch.manual_seed(0)
    m = FocalModulation(8, (3, 5), **kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return m


def _manual(m: FocalModulation, x: torch.Tensor, *, gating, modulation, aggregation, global_context, normalize):
    """Focal modulation written out plainly from the paper's Eq. 6 with the ablation knobs."""
    C = m.dim
    y = F.linear(x, m.f.weight, m.f.bias).permute(0, 3, 1, 2)
    q, z = y[:, :C], y[:, C : 2 * C]
    g = y[:, 2 * C :]
    if gating == "sigmoid":
        g = torch.sigmoid(g)
    elif gating == "softmax":
        g = torch.softmax(g, 1)
    ctxs = []
    for layer in m.focal_layers:
        conv = layer[0]
        z = F.gelu(F.conv2d(z, conv.weight, None, 1, conv.weight.shape[-1] // 2, 1, C))
        ctxs.append(z)
    if aggregation == "top_only":
        ctxs = ctxs[-1:]
    if global_context:
        ctxs.append(F.gelu(z.mean((2, 3), keepdim=True)))
    weights = [1.0] * len(ctxs) if gating == "none" else [g[:, i : i + 1] for i in range(len(ctxs))]
    agg = sum(w * c for w, c in zip(weights, ctxs))
    if normalize:
        agg = agg / len(ctxs)
    mod = F.conv2d(agg, m.h.weight[:, :, None, None], m.h.bias)
    out = q * mod if modulation == "multiply" else q + mod
    return F.linear(out.permute(0, 2, 3, 1), m.proj.weight, m.proj.bias)


@pytest.mark.parametrize(
    "knobs",
    [
        dict(gating="linear", modulation="multiply", aggregation="hierarchical", global_context=True, normalize=False),
        dict(gating="none", modulation="multiply", aggregation="hierarchical", global_context=True, normalize=False),
        dict(gating="sigmoid", modulation="add", aggregation="hierarchical", global_context=False, normalize=True),
        dict(gating="softmax", modulation="multiply", aggregation="top_only", global_context=True, normalize=False),
        dict(gating="linear", modulation="add", aggregation="top_only", global_context=False, normalize=True),
    ],
)
def test_focal_modulation_knobs_match_the_equation(knobs):
    normalize = knobs.pop("normalize")
    m = _mod(**knobs, normalize_modulator=normalize)
    x = _x(2, 7, 9, 8)  # non-square map
    with torch.no_grad():
        torch.testing.assert_close(m(x), _manual(m, x, **knobs, normalize=normalize), atol=1e-5, rtol=1e-5)
    expected_gates = {"none": 0}.get(knobs["gating"], (2 if knobs["aggregation"] == "hierarchical" else 1) + int(knobs["global_context"]))
    assert m.f.out_features == 16 + expected_gates


def test_dwconv_mixer_is_q_gelu_h_of_top_level():
    torch.manual_seed(0)
    m = DWConvMixer(8, (3, 5)).eval()
    x = _x(1, 6, 6, 8)
    with torch.no_grad():
        z = F.linear(x, m.f.weight, m.f.bias).permute(0, 3, 1, 2)
        for layer in m.focal_layers:
            z = layer(z)
        ref = F.linear(F.linear(F.gelu(F.linear(z.permute(0, 2, 3, 1), m.h.weight, m.h.bias)), m.q.weight, m.q.bias),
                       m.proj.weight, m.proj.bias)
        torch.testing.assert_close(m(x), ref)


def test_pooling_mixer_has_no_depthwise_weights():
    m = create_model("focalnet_t_lrf_pooling", **TINY)
    mod = m.stages[0].blocks[0].modulation
    assert all(isinstance(layer[0], torch.nn.AvgPool2d) for layer in mod.focal_layers)
    assert [layer[0].kernel_size for layer in mod.focal_layers] == [3, 5, 7]
    assert not any("focal_layers" in n for n, _ in m.named_parameters())


def _copy_swin_weights(ours, swin):
    with torch.no_grad():
        for a, b in (("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
                     ("modulation.qkv", "attn.qkv"), ("modulation.proj", "attn.proj")):
            ma, mb = ours.get_submodule(a), swin.get_submodule(b)
            mb.weight.copy_(ma.weight)
            mb.bias.copy_(ma.bias)
        swin.attn.relative_position_bias_table.copy_(ours.modulation.relative_position_bias_table)


@pytest.mark.parametrize("block", [0, 1], ids=["W-MSA", "SW-MSA"])
def test_window_attention_block_equals_timm_swin_block(block):
    from timm.models.swin_transformer import SwinTransformerBlock

    m = create_model("focalnet_t_lrf_window_attention", embed_dim=32, depths=[2, 2, 2, 2], num_classes=10).eval()
    ours = m.stages[1].blocks[block]  # 64 channels, 2 heads
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    swin = SwinTransformerBlock(64, (14, 14), num_heads=2, window_size=7, shift_size=3 * block).eval()
    _copy_swin_weights(ours, swin)
    x = _x(2, 14, 14, 64)
    with torch.no_grad():
        ref = swin(x)  # timm's block is channels-last
        out = ours(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_window_attention_pads_and_masks_partial_windows():
    """On a 9x11 map (windows of 7) every real token attends only to real tokens of its window."""
    torch.manual_seed(0)
    wa = WindowAttention(16, 2, window_size=7, shifted=False).eval()
    x = _x(1, 9, 11, 16)
    with torch.no_grad():
        out = wa(x)
        ref = torch.zeros_like(out)
        hd = 8
        for r0 in range(0, 9, 7):
            for c0 in range(0, 11, 7):
                win = x[:, r0 : r0 + 7, c0 : c0 + 7]
                h, w = win.shape[1:3]
                tok = win.reshape(1, h * w, 16)
                qkv = wa.qkv(tok).reshape(1, h * w, 3, 2, hd).permute(2, 0, 3, 1, 4)
                q, k, v = qkv[0], qkv[1], qkv[2]
                coords = [(i, j) for i in range(h) for j in range(w)]
                idx = torch.tensor([[(a[0] - b[0] + 6) * 13 + (a[1] - b[1] + 6) for b in coords] for a in coords])
                bias = wa.relative_position_bias_table[idx].permute(2, 0, 1)
                att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, -1)
                o = (att @ v).transpose(1, 2).reshape(1, h, w, 16)
                ref[:, r0 : r0 + h, c0 : c0 + w] = wa.proj(o)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_window_attention_shifted_on_padded_maps_runs_and_is_finite():
    m = create_model("focalnet_t_lrf_window_attention", embed_dim=32, depths=[2, 2, 2, 2], num_classes=10).eval()
    with torch.no_grad():
        out = m(_x(1, 3, 320, 288))  # stage maps 80x72, 40x36, 20x18, 10x9: none a multiple of 7
    assert torch.isfinite(out).all()


def test_hooks_reach_gates_contexts_and_modulator_and_model_keeps_no_state():
    m = create_model("focalnet_t_lrf", **TINY).eval()
    blk = m.stages[1].blocks[0].modulation
    seen = {}
    hooks = [
        blk.gates.register_forward_hook(lambda mod, i, o: seen.__setitem__("gates", o)),
        blk.focal_layers[2].register_forward_hook(lambda mod, i, o: seen.__setitem__("level3", o)),
        blk.global_context.register_forward_hook(lambda mod, i, o: seen.__setitem__("global", o)),
        blk.h.register_forward_hook(lambda mod, i, o: seen.__setitem__("modulator", (i[0], o))),
    ]
    before = {n: type(v) for mod in m.modules() for n, v in vars(mod).items()}
    with torch.no_grad():
        m(_x(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert seen["gates"].shape == (2, 4, 8, 8)  # 3 levels + global, stage 2 of a 64 px input
    assert seen["level3"].shape == (2, 32, 8, 8)
    assert seen["global"].shape == (2, 32, 1, 1)
    ctx_all, modulator = seen["modulator"]
    assert ctx_all.shape == modulator.shape == (2, 32, 8, 8)
    after = {n: type(v) for mod in m.modules() for n, v in vars(mod).items()}
    assert before == after  # nothing stored on any module by the forward
    assert not any(isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter)
                   for mod in m.modules() for k, v in vars(mod).items() if k not in ("_parameters", "_buffers"))


def test_input_sizes():
    m = create_model("focalnet_t_srf", **TINY).eval()
    with torch.no_grad():
        assert m(_x(1, 3, 96, 160)).shape == (1, 10)
    with pytest.raises(ConfigError, match=r"input: 100x160 is not a multiple of the network stride 32") as e:
        m(_x(1, 3, 100, 160))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="expected 3 channels"):
        m(_x(1, 1, 64, 64))
    padded = create_model("focalnet_t_srf", **TINY, pad_input=True, img_size=100).eval()
    with torch.no_grad():
        feats = padded.forward_intermediates(_x(1, 3, 100, 130), intermediates_only=True)
    # zero-padded at the bottom/right to 128x160, the next multiples of 32
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 40), (16, 20), (8, 10), (4, 5)]


def test_backbone_features():
    m = create_model("focalnet_t_srf", features_only=True, out_indices=(1, 3)).eval()
    assert m.feature_channels == [192, 768] and m.feature_strides == [8, 32]
    assert not hasattr(m, "head")
    with torch.no_grad():
        feats = m(_x(1, 3, 128, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 192, 16, 12), (1, 768, 4, 3)]
    assert m.feature_info.channels() == [192, 768] and m.feature_info.reduction() == [8, 32]
    iso = create_model("focalnet_t_iso", features_only=True).eval()
    # an isotropic model's feature levels are its blocks (as timm's ViTs); backbone mode returns the last
    assert iso.feature_channels == [192] and iso.feature_strides == [16]
    assert iso.feature_info.module_name() == ["stages.0.blocks.11"] and len(iso.feature_info) == 12
    with torch.no_grad():
        assert iso(_x(1, 3, 224, 224))[0].shape == (1, 192, 14, 14)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = create_model("focalnet_t_lrf", **TINY).train()
    b = create_model("focalnet_t_lrf", **TINY, use_checkpoint=True).train()
    b.load_state_dict(a.state_dict())
    x = _x(2, 3, 64, 64)
    # drop path is on (0.2): the recomputation must replay the same random masks
    torch.manual_seed(1)
    a(x).sum().backward()
    torch.manual_seed(1)
    b(x).sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_drop_path_schedule_and_eval_determinism():
    m = create_model("focalnet_t_srf", **TINY, drop_path_rate=0.3)
    rates = [blk.drop_path1.drop_prob if hasattr(blk.drop_path1, "drop_prob") else 0.0
             for s in m.stages for blk in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 5).tolist())
    m.eval()
    x = _x(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x), atol=0, rtol=0)


def test_official_and_timm_init():
    off = create_model("focalnet_t_srf", init="official")
    tim = create_model("focalnet_t_srf", init="timm")
    dw_off = off.stages[2].blocks[0].modulation.focal_layers[0][0].weight
    dw_tim = tim.stages[2].blocks[0].modulation.focal_layers[0][0].weight
    # PyTorch's default conv init (official) draws U(+-1/3) for a 3x3 depthwise kernel: std ~0.19
    assert dw_off.std().item() > 0.1 and dw_tim.std().item() == pytest.approx(0.02, abs=0.004)
    assert off.stages[2].blocks[0].modulation.f.weight.std().item() == pytest.approx(0.02, abs=0.002)
    assert (off.stages[0].blocks[0].norm1.weight == 1).all()


# ---------------------------------------------------------------------------- the token-mixer registry
def test_registry_and_the_configs_choices_agree():
    """config.py names the built-in mixers without torch; mixers.py registers one class under each."""
    reg = mixers.registered_mixers()
    assert set(TOKEN_MIXERS) <= set(reg)
    assert set(reg) == set(config_module.token_mixer_choices())
    assert set(GATED_MIXERS) <= set(config_module.gated_mixers())
    for name, cls in reg.items():
        assert issubclass(cls, TokenMixer), name
    assert {n: reg[n].__name__ for n in TOKEN_MIXERS} == {
        "focal_modulation": "FocalModulation", "pooling": "PoolingModulation", "dwconv": "DWConvMixer",
        "window_attention": "WindowAttention"}


@pytest.mark.parametrize("mixer", TOKEN_MIXERS)
@pytest.mark.parametrize("postln", [False, True])
def test_every_mixer_ends_in_the_shared_output_tail(mixer, postln):
    kw = dict(head_dim=8) if mixer == "window_attention" else {}
    m = create_model("focalnet_t_lrf", **TINY, token_mixer=mixer, use_postln_in_modulation=postln, drop_rate=0.1, **kw)
    mod = m.stages[1].blocks[0].modulation
    assert isinstance(mod, TokenMixer)
    assert isinstance(mod.proj, Linear) and mod.proj_drop.p == 0.1
    assert (mod.norm is not None) == postln
    # the tail comes last: the parameter order (seeded init, optimizer state in checkpoints) is the old one
    names = [n for n, _ in mod.named_parameters()]
    assert names[-2:] == ["proj.weight", "proj.bias"]
    if postln:
        assert names[-4:-2] == ["norm.weight", "norm.bias"]


@pytest.fixture
def scratch_registry(monkeypatch):
    """Register test mixers into copies of both registries (restored afterwards)."""
    monkeypatch.setattr(mixers, "_MIXERS", dict(mixers._MIXERS))
    monkeypatch.setattr(config_module, "_ADDED_MIXERS", dict(config_module._ADDED_MIXERS))


def test_a_new_mixer_is_one_class_and_its_registration(scratch_registry):
    with pytest.raises(ConfigError, match="token_mixer: unknown value 'token_mlp'"):
        FocalNetConfig(token_mixer="token_mlp")

    @register_mixer("token_mlp")
    class TokenMLP(TokenMixer):
        def __init__(self, dim, *, postln=False, proj_drop=0.0, eps=1e-5):
            super().__init__(dim)
            self.fc = Linear(dim, dim)
            self.add_output(postln=postln, proj_drop=proj_drop, eps=eps)

        @classmethod
        def from_config(cls, cfg, stage, block):
            return cls(cfg.stage_dims[stage], **cls.output_kwargs(cfg))

        def mix(self, x):
            return self.fc(x)

    m = create_model("focalnet_t_lrf", **TINY, token_mixer="token_mlp", use_postln_in_modulation=True)
    assert isinstance(m.stages[0].blocks[0].modulation, TokenMLP)
    assert m(_x(2, 3, 64, 64)).shape == (2, 10)
    # not gated: the gating knobs are refused for it, as for dwconv
    with pytest.raises(ConfigError, match="gating: applies to token_mixer focal_modulation or pooling, not 'token_mlp'"):
        FocalNetConfig(token_mixer="token_mlp", gating="sigmoid")


def test_registration_mistakes_are_refused(scratch_registry):
    with pytest.raises(ValueError, match="'dwconv' is already registered"):
        register_mixer("dwconv")(type("Other", (TokenMixer,), {}))
    with pytest.raises(TypeError, match="expected a TokenMixer subclass"):
        register_mixer("plain")(torch.nn.Linear)
    with pytest.raises(ValueError, match="built in with gated=True"):
        register_mixer("focal_modulation", gated=False)(FocalModulation)
    assert "plain" not in config_module.token_mixer_choices()
    # re-running the same definition (a notebook cell) replaces it
    first = register_mixer("again")(type("Again", (TokenMixer,), {"__module__": __name__}))
    second = register_mixer("again")(type("Again", (TokenMixer,), {"__module__": __name__}))
    assert mixers.mixer_class("again") is second is not first
