"""The CPU-inference fast path (oneDNN linears, GELU fused into fc1) gives the reference path's numbers."""

from __future__ import annotations

import pytest
import torch

from focalexp.analysis.flops import measure_flops
from focalexp.models import FocalNet, FocalNetConfig
from focalexp.models import layers
from focalexp.models.layers import reference_path

pytestmark = pytest.mark.skipif(not layers.fast_path_enabled(), reason="torch built without oneDNN")


def model(**kw) -> FocalNet:
    torch.manual_seed(0)
    base = dict(depths=(1, 1), embed_dim=16, patch_size=4, img_size=256, num_classes=7, focal_levels=2)
    base.update(kw)
    return FocalNet(FocalNetConfig(**base)).eval()


@pytest.fixture
def calls(monkeypatch):
    n = {"fast": 0}
    real = layers._MKLDNN_LINEAR

    def counting(*a):
        n["fast"] += 1
        return real(*a)

    monkeypatch.setattr(layers, "_MKLDNN_LINEAR", counting)
    return n


@pytest.mark.parametrize("knobs", [
    {},
    {"gating": "softmax", "use_postln": True, "use_layerscale": True},
    {"token_mixer": "window_attention", "head_dim": 8},
    {"token_mixer": "dwconv", "use_postln_in_modulation": True},
])
def test_fast_path_matches_the_reference(calls, knobs):
    m = model(**knobs)
    x = torch.randn(2, 3, 256, 256)  # stage 0: 2 x 64 x 64 = 8192 rows, the fast path's threshold
    with torch.inference_mode():
        fast = m(x)
        taken = calls["fast"]
        with reference_path():
            ref = m(x)
    assert taken > 0 and calls["fast"] == taken  # taken on the fast pass only
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_training_autocast_and_small_inputs_take_the_reference_path(calls):
    m = model()
    x = torch.randn(2, 3, 256, 256)
    m.train()
    m(x).sum().backward()  # gradients flow: the reference ops
    m.eval()
    with torch.inference_mode():
        m(torch.randn(1, 3, 64, 64))  # 256 rows: below the threshold
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(x)
    assert calls["fast"] == 0


def test_hooks_on_the_mlp_still_fire():
    m = model()
    seen = []
    m.stages[0].blocks[0].mlp.act.register_forward_hook(lambda mod, a, out: seen.append(out.shape))
    with torch.inference_mode():
        m(torch.randn(2, 3, 256, 256))
    assert seen == [(2, 64, 64, 64)]


def test_flop_counts_do_not_see_the_fast_path():
    cfg = FocalNetConfig(depths=(1, 1), embed_dim=16, patch_size=4, img_size=512, num_classes=7)
    with torch.no_grad():
        a = measure_flops(FocalNet(cfg), 512, config=cfg)
        with reference_path():
            b = measure_flops(FocalNet(cfg), 512, config=cfg)
    assert a.gmacs == b.gmacs and a.gmacs_elementwise == b.gmacs_elementwise
    assert a.flop_counter_gmacs == b.flop_counter_gmacs
    assert not a.unsupported


def test_switch():
    assert layers.fast_path_enabled()
    layers.set_fast_path(False)
    try:
        assert not layers.fast_path_enabled()
    finally:
        layers.set_fast_path(True)
