"""The CPU-inference fast path (oneDNN linears, GELU fused into fc1) gives the reference path's numbers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from focalexp.analysis.flops import measure_flops
from focalexp.models import FocalNet, FocalNetConfig
from focalexp.models import fastpath, layers
from focalexp.models.fastpath import reference_path

pytestmark = pytest.mark.skipif(not fastpath.fast_path_enabled(), reason="torch built without oneDNN")


def model(**kw) -> FocalNet:
    torch.manual_seed(0)
    base = dict(depths=(1, 1), embed_dim=16, patch_size=4, img_size=256, num_classes=7, focal_levels=2)
    base.update(kw)
    return FocalNet(FocalNetConfig(**base)).eval()


@pytest.fixture
def calls(monkeypatch):
    n = {"fast": 0}
    real = fastpath._MKLDNN_LINEAR

    def counting(*a):
        n["fast"] += 1
        return real(*a)

    monkeypatch.setattr(fastpath, "_MKLDNN_LINEAR", counting)
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
    assert fastpath.fast_path_enabled()
    fastpath.set_fast_path(False)
    try:
        assert not fastpath.fast_path_enabled()
        with reference_path():
            assert not fastpath.fast_path_enabled()
        assert not fastpath.fast_path_enabled()  # the block restores what was set before it
    finally:
        fastpath.set_fast_path(True)
    with reference_path():
        assert not fastpath.fast_path_enabled()
    assert fastpath.fast_path_enabled()


def test_old_import_paths_still_work():
    # the fast path's public names moved from layers to fastpath; layers re-exports them
    for name in ("fast_path_enabled", "set_fast_path", "reference_path", "linear", "Linear", "ChannelLinear"):
        assert getattr(layers, name) is getattr(fastpath, name)
    layers.set_fast_path(False)  # switches the one flag the models read
    try:
        assert not fastpath.fast_path_enabled()
    finally:
        layers.set_fast_path(True)


def test_environment_variable_turns_it_off():
    code = "from focalexp.models import fastpath; print(fastpath.fast_path_enabled())"
    env = {**os.environ, "FOCALEXP_FAST_PATH": "0"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
