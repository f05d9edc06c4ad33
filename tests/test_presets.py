"""Every preset reproduces its published numbers: exact params, official flops(), fvcore GMACs."""

from __future__ import annotations

import json

import pytest
import torch

from focalexp.analysis.flops import config_flops, measure_flops, model_for_counting, official_flops
from focalexp.analysis.presets_table import compare_presets, preset_counts, row_config
from focalexp.models import FocalNet, get_preset, list_models, list_presets
from focalexp.models.presets import aliases

ROWS = [(p.name, i) for p in list_presets() for i in range(len(p.rows))]
RELEASED = [
    "focalnet_t_srf", "focalnet_t_lrf", "focalnet_s_srf", "focalnet_s_lrf", "focalnet_b_srf", "focalnet_b_lrf",
    "focalnet_t_iso", "focalnet_s_iso", "focalnet_b_iso", "focalnet_l_fl3", "focalnet_l_fl4", "focalnet_xl_fl3",
    "focalnet_xl_fl4", "focalnet_h_fl3", "focalnet_h_fl4",
]


def _cfg(name: str, i: int):
    p = get_preset(name)
    row = p.rows[i]
    return row_config(p, row), row


def test_all_released_variants_and_aliases_exist():
    assert set(RELEASED) <= set(list_models("released"))
    assert len(list_models("released")) == 15
    al = aliases()
    for short, long in (("t", "tiny"), ("s", "small"), ("b", "base")):
        for rf in ("srf", "lrf"):
            assert al[f"focalnet_{long}_{rf}"] == f"focalnet_{short}_{rf}"
    for name in ("focalnet_large_fl3", "focalnet_xlarge_fl4", "focalnet_huge_fl4", "focalnet_base_iso_16"):
        assert name in al
    for name in ("focalnet_l_srf", "focalnet_t_fl0", "focalnet_t_fl1", "focalnet_t_fl4", "focalnet_t_fl1_k13",
                 "focalnet_t_srf_overlap", "focalnet_t_srf_deep"):
        assert get_preset(name).kind == "paper"


def test_every_preset_has_a_docstring_and_builds_on_meta():
    for p in list_presets():
        assert len(p.doc) > 20, p.name
        with torch.device("meta"):
            FocalNet(p.config)


@pytest.mark.parametrize("name,i", ROWS, ids=[f"{n}-{i}" for n, i in ROWS])
def test_params_and_official_flops(name, i):
    cfg, row = _cfg(name, i)
    counts = preset_counts(cfg, fast=True)  # params on the meta device, official flops()
    n = counts.params
    if row.params is not None:
        assert n == row.params
    if row.params_m is not None:
        assert round(n / 1e6, row.params_m_digits) == pytest.approx(row.params_m, abs=1e-9)
    if row.official_flops_g is not None:
        assert official_flops(cfg, row.img_size) / 1e9 == pytest.approx(row.official_flops_g, abs=0.01)
        assert counts.official_gflops == official_flops(cfg, row.img_size) / 1e9


GMAC_ROWS = [(n, i) for n, i in ROWS if get_preset(n).rows[i].gmacs is not None]


_COUNTED: dict = {}


def fvcore_count(cfg, img_size: int | None = None):
    """fvcore's count of the model ``cfg`` builds, traced in this test session (never read from the on-disk
    cache), once per config and size: the paper-row and models-table tests ask for the same big models."""
    size = cfg.img_size if img_size is None else img_size
    key = (json.dumps(cfg.to_dict(), sort_keys=True, default=str), size)
    if key not in _COUNTED:
        _COUNTED[key] = config_flops(cfg, size, cross_check=False, cache=False)
    return _COUNTED[key]


def _big(name: str) -> bool:
    """The large/xlarge/huge presets: fvcore traces them for 3-10 s each on a laptop CPU."""
    cfg = get_preset(name).config
    return cfg.embed_dim * max(cfg.depths) >= 192 * 18


@pytest.mark.parametrize("name,i", [pytest.param(n, i, marks=[pytest.mark.slow] if _big(n) else [], id=f"{n}-{i}")
                                    for n, i in GMAC_ROWS])
def test_fvcore_gmacs(name, i):
    cfg, row = _cfg(name, i)
    rep = fvcore_count(cfg, row.img_size)  # counted here, not read back
    decimals = len(repr(row.gmacs).split(".")[1])  # the reference's printed precision (<= 0.005 G)
    assert round(rep.gmacs, decimals) == row.gmacs
    assert rep.unsupported == {}
    # the element-wise count only adds (gating multiplies, GELU, means)
    assert rep.gmacs < rep.gmacs_elementwise < rep.gmacs * 1.02


def test_paper_only_variants_counted_by_fvcore_differ_where_the_formula_is_blind():
    """The official formula counts overlapped embeddings as patch-size kernels; fvcore does not."""
    plain = measure_flops(model_for_counting(get_preset("focalnet_t_srf").config), 224, cross_check=False)
    over = measure_flops(model_for_counting(get_preset("focalnet_t_srf_overlap").config), 224, cross_check=False)
    assert official_flops(get_preset("focalnet_t_srf").config) == official_flops(get_preset("focalnet_t_srf_overlap").config)
    assert over.gmacs > plain.gmacs + 0.1
    assert round(over.gmacs, 3) == 4.667  # what `focalexp models` prints for it (moved from the CLI tests)


def test_flop_counter_cross_check_is_close():
    m = model_for_counting(get_preset("focalnet_t_lrf").config)
    rep = measure_flops(m, 224)
    # FlopCounterMode counts matmuls and convs only (no LayerNorm): a little below fvcore
    assert rep.flop_counter_gmacs == pytest.approx(4.475, abs=0.01)
    assert 0 < rep.gmacs - rep.flop_counter_gmacs < 0.03


@pytest.mark.parametrize("knobs,size", [
    ({}, 224),
    ({"token_mixer": "window_attention"}, 96),  # 24/12/6/3 maps: padded windows, masks, shifts
    ({"token_mixer": "pooling", "gating": "softmax"}, 96),
    ({"token_mixer": "dwconv", "use_postln_in_modulation": True}, 96),
])
def test_config_flops_is_measure_flops_with_the_cross_check_on_the_meta_device(knobs, size):
    """config_flops counts a model it builds itself and runs FlopCounterMode on a meta twin: same report."""
    cfg = get_preset("focalnet_t_lrf").config.replace(**knobs)
    ref = measure_flops(model_for_counting(cfg), size, name="x", config=cfg)
    got = config_flops(cfg, size, name="x", cache=False)
    assert got == ref
    assert got.to_dict() == ref.to_dict() and list(got.by_operator) == list(ref.by_operator)


def test_compare_presets_is_what_the_models_command_lists():
    fast = {r["name"]: r for r in compare_presets(fast=True)}
    assert list(fast) == list_models()
    assert all(r["gmacs"] is None for r in fast.values())
    t = fast["focalnet_t_srf"]
    assert t["params"] == 28_427_116 and t["official_gflops"] == pytest.approx(4.413, abs=5e-4)
    assert t["paper"] == {"source": get_preset("focalnet_t_srf").rows[0].source, "params": 28_427_116,
                          "params_m": 28.4, "gflops": 4.4, "gmacs": 4.421}
    assert t["aliases"] == ["focalnet_tiny_srf"] and t["timm_weights"] == "focalnet_tiny_srf.ms_in1k"
    seen = []
    (micro,) = compare_presets("toolkit", progress=lambda i, n, name: seen.append((i, n, name)), cache=False)
    assert seen == [(1, 1, "focalnet_micro")]
    rep = measure_flops(model_for_counting(get_preset("focalnet_micro").config), 32, cross_check=False)
    assert micro["gmacs"] == rep.gmacs and micro["params"] == rep.params == fast["focalnet_micro"]["params"]
    assert set(micro) == set(t)


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(p.name, id=p.name) for p in list_presets()])
def test_the_models_table_prints_fvcores_gmacs_for_every_preset(name):
    """`focalexp models` takes GMACs from the analytic counter: exactly fvcore's number, preset by preset."""
    cfg = get_preset(name).config
    counts = preset_counts(cfg)
    rep = fvcore_count(cfg)
    assert counts.gmacs == rep.gmacs and counts.params == rep.params


def test_a_mixer_without_an_analytic_count_is_traced_by_fvcore(monkeypatch, tmp_path):
    from focalexp.models import config as config_module
    from focalexp.models import mixers
    from focalexp.models.fastpath import Linear

    monkeypatch.setattr(mixers, "_MIXERS", dict(mixers._MIXERS))
    monkeypatch.setattr(config_module, "_ADDED_MIXERS", dict(config_module._ADDED_MIXERS))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("FOCALEXP_CACHE_DIR", raising=False)

    @mixers.register_mixer("token_mlp_for_counting")
    class TokenMLP(mixers.TokenMixer):
        def __init__(self, dim):
            super().__init__(dim)
            self.fc = Linear(dim, dim)
            self.add_output()

        @classmethod
        def from_config(cls, cfg, stage, block):
            return cls(cfg.stage_dims[stage])

        def mix(self, x):
            return self.fc(x)

    cfg = get_preset("focalnet_micro").config.replace(token_mixer="token_mlp_for_counting")
    counts = preset_counts(cfg)
    rep = measure_flops(model_for_counting(cfg), cfg.img_size, cross_check=False)
    assert counts.gmacs == rep.gmacs > 0 and counts.params == rep.params and counts.official_gflops is None


def test_receptive_fields_of_table_14():
    rf = {n: get_preset(n).config.receptive_field(0) for n in
          ("focalnet_t_srf", "focalnet_t_lrf", "focalnet_t_fl1", "focalnet_t_fl4", "focalnet_t_fl1_k13")}
    assert rf == {"focalnet_t_srf": 7, "focalnet_t_lrf": 13, "focalnet_t_fl1": 3, "focalnet_t_fl4": 21,
                  "focalnet_t_fl1_k13": 13}


def test_tiny_block_sanity_numbers():
    m = FocalNet(get_preset("focalnet_t_srf").config)
    blk = m.stages[0].blocks[0]
    assert sum(p.numel() for p in blk.parameters()) == 115_395
    assert sum(p.numel() for p in blk.modulation.parameters()) == 40_803
    feats = m.forward_intermediates(torch.zeros(1, 3, 224, 224), intermediates_only=True)
    assert [f.shape[-1] for f in feats] == [56, 28, 14, 7]
    assert [f.shape[1] for f in feats] == [96, 192, 384, 768]
