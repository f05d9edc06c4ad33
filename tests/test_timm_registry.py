"""timm builds every focalexp preset under the focalexp_ prefix."""

from __future__ import annotations

import pytest
import timm
import torch

import focalexp.models  # noqa: F401  (registers the presets in timm)
from focalexp.errors import ConfigError
from focalexp.models import FocalNet, list_models


def test_every_preset_is_registered():
    registered = set(timm.list_models("focalexp_*"))
    assert {f"focalexp_{n}" for n in list_models()} == registered


def test_timm_create_model_builds_our_model_with_timm_kwargs():
    m = timm.create_model("focalexp_focalnet_t_lrf_no_gating", num_classes=7, drop_path_rate=0.05,
                          proj_drop_rate=0.1, embed_dim=16, depths=[1, 1, 1, 1])
    assert isinstance(m, FocalNet)
    assert m.config.gating == "none" and m.config.num_classes == 7
    assert m.config.drop_path_rate == 0.05 and m.config.drop_rate == 0.1
    with pytest.raises(ConfigError, match="did you mean 'focal_levels'"):
        timm.create_model("focalexp_focalnet_t_srf", focal_level=3)


def test_features_only_and_data_config():
    m = timm.create_model("focalexp_focalnet_l_fl3", features_only=True, out_indices=(2, 3),
                          embed_dim=16, depths=[1, 1, 1, 1])
    with torch.no_grad():
        feats = m(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [64, 128]
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("focalexp_focalnet_l_fl3", embed_dim=16,
                                                                    depths=[1, 1, 1, 1]))
    assert cfg["input_size"] == (3, 384, 384)
