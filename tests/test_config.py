"""FocalNetConfig: normalisation, validation (one line naming the field), overrides."""

from __future__ import annotations

import pytest

from focalexp import create_model
from focalexp.errors import ConfigError, UnknownNameError
from focalexp.models import FocalNetConfig, get_preset
from focalexp.models.factory import resolve_config


def test_per_stage_values_are_expanded():
    c = FocalNetConfig(focal_levels=3, focal_windows=[3, 3, 5, 5])
    assert c.focal_levels == (3, 3, 3, 3)
    assert c.focal_windows == (3, 3, 5, 5)
    assert c.stage_kernels(2) == (5, 7, 9)
    assert c.stage_dims == (96, 192, 384, 768) and c.stage_strides == (4, 8, 16, 32)


def test_kernel_sizes_override_windows():
    c = FocalNetConfig(focal_levels=1, kernel_sizes=[13])
    assert all(c.stage_kernels(i) == (13,) for i in range(4))
    c = FocalNetConfig(focal_levels=[2, 2, 1, 1], kernel_sizes=[[3, 7], [3, 7], [11], [13]])
    assert c.stage_kernels(0) == (3, 7) and c.stage_kernels(3) == (13,)
    assert c.receptive_field(0) == 9


def test_replace_derives_levels_from_kernels_and_back():
    t = get_preset("focalnet_t_srf").config
    c = t.replace(kernel_sizes=[13])
    assert c.focal_levels == (1, 1, 1, 1)
    # changing the levels of a kernel-list config drops the inherited kernels
    k13 = get_preset("focalnet_t_fl1_k13").config
    c = k13.replace(focal_levels=3)
    assert c.kernel_sizes is None and c.stage_kernels(0) == (3, 5, 7)


def test_replace_new_depths_collapses_uniform_stage_values():
    c = get_preset("focalnet_t_lrf").config.replace(depths=[1, 1])
    assert c.focal_levels == (3, 3)
    iso = get_preset("focalnet_t_srf").config.replace(depths=[4], isotropic=True, patch_size=16)
    assert iso.num_stages == 1 and iso.stride == 16


def test_roundtrip_dict():
    c = get_preset("focalnet_l_fl4").config
    assert FocalNetConfig.from_dict(c.to_dict()) == c
    assert resolve_config({"preset": "focalnet_t_srf", "focal_levels": 3}) == get_preset("focalnet_t_lrf").config


BAD = [
    (dict(gating="sigmod"), "gating: unknown value 'sigmod' (did you mean 'sigmoid'?)"),
    (dict(token_mixer="attention"), "token_mixer: unknown value 'attention'"),
    (dict(modulation="mul"), "modulation: unknown value 'mul' (did you mean 'multiply'?)"),
    (dict(aggregation="top"), "aggregation: unknown value 'top'"),
    (dict(focal_levels=[2, 2]), "focal_levels: expected one value or 4 (one per stage), got 2"),
    (dict(focal_levels=-1), "focal_levels: expected levels >= 0"),
    (dict(focal_windows=4), "focal_windows/focal_factor: stage 0 gets kernel 4; kernels must be odd"),
    (dict(focal_factor=1), "kernels must be odd"),
    (dict(kernel_sizes=[12], focal_levels=1), "kernel_sizes: stage 0 gets kernel 12"),
    (dict(kernel_sizes=[3, 5], focal_levels=1), "kernel_sizes: stage 0 lists 2 kernel(s)"),
    (dict(kernel_sizes="big"), "kernel_sizes: expected a list of kernels"),
    (dict(depths=[]), "depths: expected a non-empty list"),
    (dict(depths=[2, 0, 2, 2]), "depths: expected a non-empty list of block counts >= 1"),
    (dict(isotropic=True), "isotropic: the isotropic layout has one stage"),
    (dict(embed_dim=0), "embed_dim: expected an integer >= 1"),
    (dict(embed_dim=9.5), "embed_dim: expected an integer, got 9.5"),
    (dict(use_postln="yes"), "use_postln: expected true or false, got 'yes'"),
    (dict(drop_path_rate=1.5), "drop_path_rate: expected a rate in [0, 1)"),
    (dict(mlp_ratio=0), "mlp_ratio: expected > 0"),
    (dict(num_classes=-1), "num_classes: expected >= 0"),
    (dict(img_size=225), "img_size: 225 is not a multiple of the network stride 32"),
    (dict(focal_levels=0, global_context=False), "nothing is left to aggregate"),
    (dict(gating="softmax", focal_levels=0), "gating: 'softmax' over levels needs >= 2 aggregated levels"),
    (dict(aggregation="top_only", focal_levels=0), "aggregation: 'top_only' needs focal_levels >= 1"),
    (dict(token_mixer="dwconv", focal_levels=0), "token_mixer 'dwconv'"),
    (dict(token_mixer="window_attention", gating="sigmoid"), "gating: applies to token_mixer focal_modulation or pooling"),
    (dict(token_mixer="window_attention", head_dim=40), "head_dim: stage 0 has 96 channels"),
    (dict(out_indices=[0, 4]), "out_indices: expected distinct stage indices in 0..3"),
    (dict(use_conv_embed=True, depths=[12], isotropic=True, patch_size=16), "use_conv_embed: the overlapped stem"),
    (dict(init="xavier"), "init: unknown value 'xavier'"),
]


@pytest.mark.parametrize("kw,msg", BAD, ids=[next(iter(k)) + str(i) for i, (k, _) in enumerate(BAD)])
def test_bad_values_fail_in_one_line(kw, msg):
    with pytest.raises(ConfigError) as e:
        FocalNetConfig(**kw)
    text = str(e.value)
    assert msg in text
    assert "\n" not in text


def test_unknown_keys_suggest_the_closest():
    with pytest.raises(ConfigError, match=r"unknown model key 'focal_level' \(did you mean 'focal_levels'\?\)"):
        FocalNetConfig.from_dict({"focal_level": 3})
    with pytest.raises(ConfigError, match="did you mean 'use_postln'"):
        get_preset("focalnet_t_srf").config.replace(use_post_ln=True)
    with pytest.raises(ConfigError, match="did you mean 'gating'"):
        create_model("focalnet_t_srf", gatting="none")


def test_unknown_model_names_the_closest():
    with pytest.raises(UnknownNameError) as e:
        create_model("focalnet_tiny")
    assert "closest: focalnet_tiny_srf, focalnet_tiny_lrf, focalnet_tiny_iso" in str(e.value)
    with pytest.raises(UnknownNameError, match="focalnet_t_lrf"):
        create_model("focalnet_t_lfr")


def test_describe_lists_non_defaults():
    assert "gating=sigmoid" in FocalNetConfig(gating="sigmoid").describe()
    assert FocalNetConfig().describe() == "(defaults)"
