"""The analytic MAC count (focalexp.models.macs) equals fvcore's, for every preset and every knob."""

from __future__ import annotations

import ast
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from focalexp.analysis.flops import _FREE_OPS, PAPER_OPS, measure_flops, model_for_counting
from focalexp.errors import ConfigError
from focalexp.models import FocalNet, list_presets
from focalexp.models.config import GATED_MIXERS, FocalNetConfig
from focalexp.models.macs import MacCount, NotAnalytic, count_macs, gmacs

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(depths=(1, 1, 1), embed_dim=8, img_size=32)


def _check_against_fvcore(cfg: FocalNetConfig, img: int | None = None) -> MacCount:
    size = cfg.img_size if img is None else img
    rep = measure_flops(model_for_counting(cfg), size, in_chans=cfg.in_chans, cross_check=False)
    mc = count_macs(cfg, img)
    # window attention builds its mask with masked_fill_ (free; flops.py lists only masked_fill as free)
    assert [op for op in rep.unsupported if op.split("::")[-1].rstrip("_") not in _FREE_OPS] == []
    assert mc.gmacs == pytest.approx(rep.gmacs, rel=1e-9, abs=0)
    assert mc.by_stage.keys() == rep.by_stage.keys()
    for k, v in rep.by_stage.items():
        assert mc.by_stage[k] == pytest.approx(v, rel=1e-9, abs=0), k
    fv_ops = {k: v for k, v in rep.by_operator.items() if k in PAPER_OPS}
    assert mc.by_operator == pytest.approx(fv_ops, rel=1e-9, abs=0)
    return mc


# ---------------------------------------------------------------------------- (a) presets
def _rows():
    for p in list_presets():
        for i, row in enumerate(p.rows):
            if row.gmacs is not None:
                yield pytest.param(p, row, id=f"{p.name}-{i}")


@pytest.mark.parametrize("preset,row", list(_rows()))
def test_presets_reproduce_the_reference_gmacs(preset, row):
    # the same rows and precision as tests/test_presets.py::test_fvcore_gmacs, without running fvcore
    cfg = preset.config if row.num_classes is None else preset.config.replace(num_classes=row.num_classes)
    decimals = len(repr(row.gmacs).split(".")[1])
    assert round(gmacs(cfg, row.img_size), decimals) == row.gmacs


SMALL_PRESETS = [p for p in list_presets() if p.config.embed_dim <= 128 and not p.config.isotropic]


@pytest.mark.parametrize("preset", SMALL_PRESETS[:2], ids=lambda p: p.name)
def test_presets_match_fvcore_at_a_small_size(preset):
    """Every preset's exact structure (full widths and depths), at twice its stride instead of 224."""
    _check_against_fvcore(preset.config, 2 * preset.config.stride)


@pytest.mark.slow
@pytest.mark.parametrize("preset", SMALL_PRESETS[2:], ids=lambda p: p.name)
def test_presets_match_fvcore_at_a_small_size_rest(preset):
    _check_against_fvcore(preset.config, 2 * preset.config.stride)


def test_every_preset_is_counted():
    for p in list_presets():
        mc = count_macs(p.config)
        assert mc.macs > 0 and mc.img_size == p.config.img_size
        assert sum(mc.stage_macs.values()) == mc.macs == sum(mc.operator_macs.values())


# ---------------------------------------------------------------------------- (b) every knob
WA = dict(token_mixer="window_attention", head_dim=4)
CASES = {
    "default_tiny": dict(),
    "two_stages_dim16": dict(depths=(1, 2), embed_dim=16),
    "four_stages": dict(depths=(2, 1, 1, 1), img_size=64),
    "dim12": dict(embed_dim=12),
    "mlp_ratio_2_5": dict(mlp_ratio=2.5),
    "mlp_ratio_truncated": dict(mlp_ratio=1.7),  # int(8 * 1.7) = 13 hidden channels
    "patch_size_2": dict(patch_size=2),
    "patch_size_8": dict(depths=(1, 1), patch_size=8),
    "in_chans_1": dict(in_chans=1),
    "in_chans_4": dict(in_chans=4),
    "no_head": dict(num_classes=0),
    "head_7": dict(num_classes=7),
    "img_48": dict(img_size=48),
    "img_64": dict(img_size=64),
    "pad_odd_33": dict(img_size=33, pad_input=True),
    "pad_odd_45": dict(img_size=45, pad_input=True),
    "pad_small_7": dict(img_size=7, pad_input=True),
    "isotropic": dict(depths=(2,), isotropic=True, patch_size=16, embed_dim=16, img_size=64),
    "isotropic_pad_50": dict(depths=(1,), isotropic=True, patch_size=16, embed_dim=16, img_size=50, pad_input=True),
    "conv_embed": dict(use_conv_embed=True),
    "conv_embed_pad_45": dict(use_conv_embed=True, img_size=45, pad_input=True),
    "conv_embed_pad_17_4stages": dict(use_conv_embed=True, depths=(1, 1, 1, 1), img_size=17, pad_input=True),
    "layerscale": dict(use_layerscale=True, layerscale_value=0.5),
    "postln": dict(use_postln=True),
    "postln_in_modulation": dict(use_postln_in_modulation=True),
    "big_model_knobs": dict(use_conv_embed=True, use_layerscale=True, use_postln=True, use_postln_in_modulation=True,
                            normalize_modulator=True),
    "normalize_modulator": dict(normalize_modulator=True),
    "levels_0": dict(focal_levels=0),
    "levels_1": dict(focal_levels=1),
    "levels_3": dict(focal_levels=3),
    "levels_per_stage": dict(focal_levels=[1, 2, 3]),
    "windows_5": dict(focal_windows=5),
    "windows_per_stage": dict(focal_windows=[1, 5, 7]),
    "factor_0": dict(focal_factor=0),
    "factor_4": dict(focal_factor=4, focal_levels=3),
    "kernel_sizes_13": dict(kernel_sizes=[13], focal_levels=1),
    "kernel_sizes_per_stage": dict(kernel_sizes=[[3], [5, 7], [9]], focal_levels=[1, 2, 1]),
    "gating_none": dict(gating="none"),
    "gating_sigmoid": dict(gating="sigmoid"),
    "gating_softmax": dict(gating="softmax"),
    "modulation_add": dict(modulation="add"),
    "top_only": dict(aggregation="top_only", focal_levels=3),
    "no_global_context": dict(global_context=False),
    "pooling": dict(token_mixer="pooling"),
    "pooling_knobs": dict(token_mixer="pooling", gating="sigmoid", aggregation="top_only", global_context=False,
                          modulation="add", use_postln_in_modulation=True),
    "dwconv": dict(token_mixer="dwconv"),
    "dwconv_levels_1_postln": dict(token_mixer="dwconv", focal_levels=1, use_postln_in_modulation=True),
    "window_attention_default_ws": dict(**WA, depths=(2, 1, 1)),  # 8x8 map, window 7: padded to 14x14, shift 3
    "window_attention_shift": dict(**WA, depths=(2, 2), window_size=2, img_size=64),
    "window_attention_odd_pad": dict(**WA, depths=(2, 2), window_size=3, img_size=37, pad_input=True),
    "window_attention_larger_than_map": dict(**WA, depths=(1, 2), window_size=16),
    "window_attention_head_dim_8": dict(token_mixer="window_attention", head_dim=8, depths=(2, 1), embed_dim=16,
                                        window_size=3, use_postln_in_modulation=True, use_postln=True),
    "window_attention_isotropic": dict(**WA, depths=(2,), isotropic=True, patch_size=8, img_size=72, window_size=4),
    "out_indices_0": dict(out_indices=[0]),
    "out_indices_1": dict(out_indices=[1]),
    "out_indices_0_2": dict(out_indices=[0, 2]),
    "out_indices_pad": dict(out_indices=[1, 2], img_size=41, pad_input=True, use_conv_embed=True),
    "no_effect_knobs": dict(init="timm", use_checkpoint=True, drop_rate=0.1, drop_path_rate=0.3, norm_eps=1e-6),
}


@pytest.mark.parametrize("knobs", list(CASES.values()), ids=list(CASES))
def test_matches_fvcore_on_every_knob(knobs):
    _check_against_fvcore(FocalNetConfig(**{**TINY, **knobs}))


@pytest.mark.parametrize("img", [32, 35, 50])
def test_img_size_argument_overrides_the_config(img):
    cfg = FocalNetConfig(**TINY, pad_input=True, token_mixer="window_attention", head_dim=4, window_size=3)
    mc = _check_against_fvcore(cfg, img)
    assert mc.img_size == img


# ---------------------------------------------------------------------------- (c) random combinations
def _random_configs(n: int, seed: int = 0) -> list[FocalNetConfig]:
    rng = random.Random(seed)
    out: list[FocalNetConfig] = []
    seen: set[str] = set()
    while len(out) < n:
        depths = rng.choice([(1,), (2,), (1, 1), (2, 1), (1, 1, 1), (1, 2, 1), (1, 1, 1, 1)])
        isotropic = len(depths) == 1 and rng.random() < 0.5
        mixer = rng.choice(["focal_modulation", "focal_modulation", "pooling", "dwconv", "window_attention"])
        conv_embed = not isotropic and rng.random() < 0.3
        kw = dict(
            depths=depths,
            isotropic=isotropic,
            embed_dim=rng.choice([8, 12, 16]),
            mlp_ratio=rng.choice([1.0, 1.5, 2.0, 3.3, 4.0]),
            patch_size=4 if conv_embed else rng.choice([8, 16] if isotropic else [2, 4]),
            in_chans=rng.choice([1, 3]),
            num_classes=rng.choice([0, 3, 10]),
            use_conv_embed=conv_embed,
            use_layerscale=rng.random() < 0.3,
            use_postln=rng.random() < 0.3,
            use_postln_in_modulation=rng.random() < 0.3,
            normalize_modulator=rng.random() < 0.3,
            token_mixer=mixer,
            window_size=rng.choice([2, 3, 4, 7]),
            head_dim=rng.choice([4, 8]),
            pad_input=rng.random() < 0.6,
        )
        if rng.random() < 0.2:
            kw["kernel_sizes"] = [rng.choice([1, 3, 5, 9]) for _ in range(rng.randint(1, 3))]
            kw["focal_levels"] = len(kw["kernel_sizes"])
        else:
            kw["focal_levels"] = [rng.randint(0, 3) for _ in depths] if rng.random() < 0.5 else rng.randint(0, 3)
            kw["focal_windows"] = rng.choice([1, 3, 5])
            kw["focal_factor"] = rng.choice([0, 2, 4])
        if mixer in GATED_MIXERS:
            kw.update(gating=rng.choice(["linear", "none", "sigmoid", "softmax"]),
                      modulation=rng.choice(["multiply", "add"]),
                      aggregation=rng.choice(["hierarchical", "top_only"]),
                      global_context=rng.random() < 0.8)
        stride = kw["patch_size"] * 2 ** (len(depths) - 1)
        if kw["pad_input"]:
            kw["img_size"] = rng.randint(max(8, stride // 2), 72)
        else:
            kw["img_size"] = stride * rng.randint(1, max(1, 64 // stride))
        if rng.random() < 0.2:
            kw["out_indices"] = sorted(rng.sample(range(len(depths)), rng.randint(1, len(depths))))
        try:
            cfg = FocalNetConfig(**kw)
        except ConfigError:
            continue
        if repr(cfg) not in seen:
            seen.add(repr(cfg))
            out.append(cfg)
    return out


RANDOM = _random_configs(30)


@pytest.mark.parametrize("cfg", RANDOM, ids=[f"r{i}" for i in range(len(RANDOM))])
def test_matches_fvcore_on_random_knob_combinations(cfg):
    _check_against_fvcore(cfg)


def test_random_sample_covers_every_mixer():
    assert {c.token_mixer for c in RANDOM} == {"focal_modulation", "pooling", "dwconv", "window_attention"}


# ---------------------------------------------------------------------------- inputs, errors, speed
def test_input_rules_follow_the_model():
    cfg = FocalNetConfig(**TINY)
    with pytest.raises(ConfigError, match="not a multiple of the network stride 16"):
        count_macs(cfg, 40)
    import torch

    with pytest.raises(ConfigError, match="not a multiple of the network stride 16"):
        FocalNet(cfg)(torch.zeros(1, 3, 40, 40))
    for bad in (0, -16, 32.0, True):
        with pytest.raises(ConfigError, match="img_size"):
            count_macs(cfg, bad)
    with pytest.raises(TypeError):
        count_macs(cfg.to_dict())


def test_unknown_mixer_is_not_analytic():
    cfg = FocalNetConfig(**TINY)
    object.__setattr__(cfg, "token_mixer", "mystery")  # a mixer added to the config but not to macs.py
    with pytest.raises(NotAnalytic, match="mystery"):
        count_macs(cfg)


def test_counting_80_models_takes_milliseconds():
    cfgs = _random_configs(80, seed=1)
    t0 = time.perf_counter()
    total = sum(gmacs(c) for c in cfgs)
    assert total > 0
    assert time.perf_counter() - t0 < 1.0


# ---------------------------------------------------------------------------- (d) no torch
def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_module_imports_only_the_stdlib_config_and_errors():
    allowed = set(sys.stdlib_module_names) | {"__future__", ".config", "..errors"}
    for rel in ("focalexp/models/macs.py", "focalexp/models/config.py", "focalexp/errors.py"):
        assert {n.split(".")[0] or n for n in _imports(ROOT / rel)} <= allowed, rel


def test_module_runs_without_torch_when_the_package_init_is_bypassed():
    # focalexp.models is replaced by a bare package object, so only config, errors and macs execute
    code = (
        "import sys, types; import focalexp; "
        "pkg = types.ModuleType('focalexp.models'); pkg.__path__ = [focalexp.__path__[0] + '/models']; "
        "sys.modules['focalexp.models'] = pkg; "
        "from focalexp.models.config import FocalNetConfig; from focalexp.models.macs import gmacs; "
        "g = gmacs(FocalNetConfig(drop_path_rate=0.2)); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(round(g, 3))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4.421"


def test_light_import_does_not_import_torch():
    """In a light-imports process (the CLI's sweep engine) the counter and the configs load without torch;
    a plain ``import focalexp.models`` still registers the presets in timm (that needs torch)."""
    code = ("import sys, focalexp; focalexp.light_imports(); import focalexp.models.macs as m; "
            "from focalexp.models import resolve_config; m.gmacs(resolve_config('focalnet_t_srf')); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]


def test_every_config_the_validation_accepts_builds():
    """The sweep validates model configs without building modules; that is sound only if every config that
    FocalNetConfig accepts builds. A seeded sample of accepted knob combinations, built on the meta device
    and run forward at the config's size."""
    import torch

    from focalexp.models.focalnet import FocalNet, skip_weight_init

    cfgs = _random_configs(60, seed=12)
    assert len(cfgs) >= 40
    for cfg in cfgs:
        with torch.device("meta"), skip_weight_init():
            model = FocalNet(cfg)
        out = model(torch.empty(1, cfg.in_chans, cfg.img_size, cfg.img_size, device="meta"))
        outs = out if isinstance(out, list) else [out]  # backbone mode (out_indices): feature maps
        assert outs and all(o.shape[0] == 1 for o in outs), cfg
