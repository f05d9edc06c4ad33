"""Weights and export: Hugging Face FocalNet weights load with equal logits; every export reads back (through
layout detection and in timm / transformers themselves) with equal logits; torch.export and ONNX programs
match eager. Tiny configs at 64 px keep the file fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from focalexp import create_model
from focalexp.errors import CheckpointError, ConfigError
from focalexp.models.checkpoint import detect_layout, state_dict_in_layout
from focalexp.models.export import export_model, timm_architecture

from .conftest import invoke

transformers = pytest.importorskip("transformers")  # CI installs it (.[test]); a laptop may not have it

TINY = dict(embed_dim=16, depths=[1, 1, 2, 1])
SIZE = 64


def _x(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights where the init leaves constants (LayerNorm affines, biases, LayerScale's 1e-4), which
    would hide a wrong mapping."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gamma" in name:
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=g))
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


# (id, transformers FocalNetConfig kwargs, the focalexp preset it is shaped like, focalexp overrides, file format)
HF_CASES = [
    ("t_srf", dict(focal_levels=[2] * 4, focal_windows=[3] * 4), "focalnet_t_srf", {}, "bin"),
    ("t_lrf", dict(focal_levels=[3] * 4, focal_windows=[3] * 4), "focalnet_t_lrf", {}, "pth"),
    ("postln_layerscale_overlap",
     dict(focal_levels=[3] * 4, focal_windows=[5] * 4, use_conv_embed=True, use_layerscale=True,
          use_post_layernorm=True, use_post_layernorm_in_modulation=True, normalize_modulator=True),
     "focalnet_l_fl3", dict(use_postln_in_modulation=True, normalize_modulator=True), "safetensors"),
]


def _hf_model(kw: dict, num_labels: int = 10):
    from transformers import FocalNetConfig as HFConfig, FocalNetForImageClassification

    torch.manual_seed(0)
    return _perturb(FocalNetForImageClassification(HFConfig(num_labels=num_labels, image_size=SIZE, **TINY, **kw)))


@pytest.mark.parametrize("case", HF_CASES, ids=[c[0] for c in HF_CASES])
def test_hf_weights_give_equal_logits(tmp_path, case):
    _, hf_kw, preset, ours_kw, fmt = case
    ref = _hf_model(hf_kw)
    x = _x()
    with torch.no_grad():
        want = ref(x).logits
    assert want.abs().max() > 0.1
    sd = ref.state_dict()
    assert detect_layout(sd) == "hf"
    # a save_pretrained folder: the architecture comes from its config.json
    ref.save_pretrained(tmp_path / "dir")
    from_dir = create_model(checkpoint=tmp_path / "dir").eval()
    assert from_dir.config.num_classes == 10 and list(from_dir.config.depths) == TINY["depths"]
    # a single file (.bin, .pth or .safetensors), with the architecture named
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd if fmt == "bin" else {"model": sd}, path)
    from_file = create_model(preset, checkpoint=path, num_classes=10, **TINY, **ours_kw).eval()
    with torch.no_grad():
        for m in (from_dir, from_file):
            torch.testing.assert_close(m(x), want, atol=1e-5, rtol=1e-5)


def test_hf_bin_folder_and_bare_backbone(tmp_path):
    from transformers import FocalNetConfig as HFConfig, FocalNetModel

    cls = _hf_model(HF_CASES[1][1], num_labels=4)
    cls.save_pretrained(tmp_path / "bin", safe_serialization=False)  # pytorch_model.bin
    ours = create_model(checkpoint=tmp_path / "bin").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(_x()), cls(_x()).logits, atol=1e-5, rtol=1e-5)

    torch.manual_seed(0)
    bare = _perturb(FocalNetModel(HFConfig(image_size=SIZE, **TINY)))
    assert detect_layout(bare.state_dict()) == "hf" and not any(k.startswith("focalnet.") for k in bare.state_dict())
    bare.save_pretrained(tmp_path / "bare")
    feats = create_model(checkpoint=tmp_path / "bare").eval()  # no classifier: num_classes 0, pooled features out
    assert feats.config.num_classes == 0
    with torch.no_grad():
        torch.testing.assert_close(feats(_x()), bare(_x()).pooler_output, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- export round trips
def _ours(**kw) -> torch.nn.Module:
    # post-norm + LayerScale + LN in the modulation + overlapped embedding: every rename is exercised
    base = dict(**TINY, num_classes=10, img_size=SIZE, use_postln_in_modulation=True)
    return _perturb(create_model("focalnet_l_fl4", **{**base, **kw}))


@pytest.mark.parametrize("to,file", [("focalexp", "model.pth"), ("official", "model.pth"),
                                     ("timm", "model.safetensors"), ("hf", "model.safetensors")])
def test_export_layouts_load_back_with_identical_logits(tmp_path, to, file):
    m = _ours()
    res = export_model(m, to, tmp_path / to)
    assert res.max_abs_diff == 0.0
    assert {p.name for p in (tmp_path / to).iterdir()} == set(res.files)
    path = tmp_path / to / file
    from focalexp.models.checkpoint import read_state, unwrap

    assert detect_layout(unwrap(read_state(path))[0]) == to
    back = create_model(None if to == "focalexp" else m.config, checkpoint=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(_x()), m(_x()), atol=0, rtol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_timm_export_loads_in_timm(tmp_path):
    import timm
    from safetensors.torch import load_file
    from timm.models.focalnet import FocalNet as TimmFocalNet

    # no registered timm model is this small: timm's class with the exported arguments
    m = _ours()
    export_model(m, "timm", tmp_path / "tiny")
    arch, args = timm_architecture(m.config)
    assert arch is None and not (tmp_path / "tiny" / "config.json").exists()
    tm = TimmFocalNet(**args).eval()
    tm.load_state_dict(load_file(str(tmp_path / "tiny" / "model.safetensors")))
    with torch.no_grad():
        torch.testing.assert_close(tm(_x()), m(_x()), atol=1e-5, rtol=1e-5)

    # a released architecture (T-LRF, 28 M parameters; built without its init, which is most of the cost):
    # timm's own hub-folder reader takes the config.json, and its registered model the weights
    from timm.models._hub import load_model_config_from_path

    from focalexp.models.focalnet import FocalNet, skip_weight_init
    from focalexp.models.presets import get_preset

    with torch.device("meta"), skip_weight_init():
        t = FocalNet(get_preset("focalnet_t_lrf").config.replace(num_classes=10, img_size=SIZE))
    t = t.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in t.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (p.dim() == 1))
    export_model(t.eval(), "timm", tmp_path / "t_lrf", check=False)
    _, arch, args = load_model_config_from_path(tmp_path / "t_lrf")
    assert arch == "focalnet_tiny_lrf" and args["num_classes"] == 10
    with torch.device("meta"):
        tm = timm.create_model(arch, pretrained=False, **args)
    tm.load_state_dict(load_file(str(tmp_path / "t_lrf" / "model.safetensors")), assign=True)
    with torch.no_grad():
        torch.testing.assert_close(tm.eval()(_x(1)), t(_x(1)), atol=1e-5, rtol=1e-5)


def test_hf_export_loads_in_transformers(tmp_path):
    from transformers import FocalNetForImageClassification

    m = _ours(normalize_modulator=True)
    export_model(m, "hf", tmp_path / "hf")
    hf = FocalNetForImageClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(_x()).logits, m(_x()), atol=1e-5, rtol=1e-5)


def test_layouts_refuse_what_they_cannot_hold(tmp_path):
    m = create_model("focalnet_micro", gating="sigmoid", num_classes=3)
    for to in ("timm", "hf", "official"):
        with pytest.raises(CheckpointError, match=f"the {to} layout cannot hold this model: gating=sigmoid"):
            export_model(m, to, tmp_path / to)
    with pytest.raises(CheckpointError, match="patch_size=2"):
        export_model(create_model("focalnet_micro", num_classes=3), "timm", tmp_path / "t")
    assert list(tmp_path.iterdir()) == []
    export_model(m, "focalexp", tmp_path / "own")  # focalexp's own layout holds every variant


# ---------------------------------------------------------------------------- programs
MIXERS = {"focal_modulation": {}, "window_attention": dict(token_mixer="window_attention", window_size=2, head_dim=8)}


def _small(mixer: str) -> torch.nn.Module:
    # two stages at 32 px: tracing cost grows with the blocks; every op kind of the mixer is still there
    # (window attention: a shifted second block)
    depths = [1, 2] if mixer == "window_attention" else [1, 1]
    return _perturb(create_model("focalnet_l_fl3", embed_dim=16, depths=depths, num_classes=5, img_size=32,
                                 use_postln_in_modulation=True, normalize_modulator=True, **MIXERS[mixer]))


def _x32(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_torch_export_matches_eager(tmp_path, mixer, monkeypatch):
    from focalexp.models import fastpath

    monkeypatch.setattr(fastpath, "FAST_MIN_ROWS", 1)  # the fast path would apply to any shape: it must not be traced
    m = _small(mixer)
    export_model(m, "torch-export", tmp_path / "pt2", check=False)
    program = torch.export.load(str(tmp_path / "pt2" / "model.pt2"))
    assert "mkldnn" not in str(program.graph)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(_x32(3)), m(_x32(3)), atol=1e-5, rtol=1e-5)  # not the traced batch


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_onnx_matches_eager(tmp_path, mixer):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    m = _small(mixer)
    export_model(m, "onnx", tmp_path / "onnx", check=False)
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"pixel_values": _x32(3).numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, m(_x32(3)), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- the CLI
def _run_dir(root: Path) -> Path:
    from focalexp import save_model

    run = root / "run"
    run.mkdir()
    save_model(create_model("focalnet_micro", num_classes=2), run / "best.pth")
    (run / "result.json").write_text(json.dumps({"status": "done", "top1": 91.25, "top5": 100.0, "epochs_done": 2,
                                                 "params": 514798, "evil": "<script>" * 50}))
    return run


def test_cli_export_writes_a_card_and_replaces_only_with_force(tmp_path):
    run = _run_dir(tmp_path)
    out = tmp_path / "exports" / "demo"
    r = invoke("export", str(run / "best.pth"), "--to", "focalexp", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"exported {run / 'best.pth'} -> {out} (focalexp): model.pth, README.md, export.json")
    card = (out / "README.md").read_text()
    assert "| top1 | 91.25 |" in card and "| `embed_dim` | `32` |" in card and "evil" not in card
    meta = json.loads((out / "export.json").read_text())
    assert meta["results"]["top1"] == 91.25 and meta["max_abs_diff"] == 0.0

    again = invoke("export", str(run / "best.pth"), "--to", "hf", "--out", str(out))
    assert again.returncode == 2 and "exists and is not empty" in again.stderr and "--force" in again.stderr
    forced = invoke("export", str(run / "best.pth"), "--to", "official", "--out", str(out), "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["files"] == ["model.pth", "README.md", "export.json"]
    assert json.loads((out / "export.json").read_text())["to"] == "official"
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo"]  # no staging or old copy left

    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    r = invoke("export", str(run / "best.pth"), "--to", "hf", "--out", str(other), "--force")
    assert r.returncode == 2 and "not an earlier export" in r.stderr
    assert [p.name for p in other.iterdir()] == ["mine.txt"]


def test_failed_export_leaves_nothing(tmp_path):
    run = _run_dir(tmp_path)
    out = tmp_path / "new" / "deeper" / "x"
    r = invoke("export", str(run / "best.pth"), "--to", "timm", "--out", str(out))  # patch 2: timm cannot hold it
    assert r.returncode == 2 and "timm layout cannot hold" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "new").exists()


def test_hf_config_json_is_checked(tmp_path):
    ref = _hf_model(HF_CASES[0][1])
    ref.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for change, needle in [
        ({"embed_dimm": 16}, "unknown key 'embed_dimm' (did you mean 'embed_dim'?)"),
        ({"embed_dim": 10**12}, "embed_dim: expected an integer in [1, 8192]"),
        ({"depths": [10, 10, 10, 10], "embed_dim": 8192}, "parameters"),
        ({"depths": [1024] * 4, "embed_dim": 4096}, "4,096 blocks in all; at most 1,000"),
        ({"focal_levels": "2"}, "focal_levels: expected a list"),
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"model_type": "swin"}, "model_type"),
        ({"id2label": {"0": "a"}}, "classifier of shape (10, 128)"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises((ConfigError, CheckpointError)) as e:
            create_model(checkpoint=tmp_path)
        assert needle in str(e.value) and "config.json" in str(e.value) and "\n" not in str(e.value)
