"""timm's model contract (what pytorch-image-models' tests/test_models.py checks of its own models), for
the focalexp presets registered as ``focalexp_<preset>``.

Each check mirrors one of timm's tests (named in its docstring) on small models (narrow, shallow
overrides of the preset) and small inputs, so the whole file runs in well under a minute on 2 CPUs.
The presets cover the hierarchical default, the isotropic model (feature levels are its blocks), window
attention (shape-dependent geometry) and a conv-embed + LayerScale + post-norm + post-norm-in-modulation
model.
"""

import math
import warnings

import pytest
import timm
import torch
from timm.models import FeatureInfo, PretrainedCfg, group_parameters

import focalexp.models  # noqa: F401  (registers the presets in timm)
from focalexp.errors import ConfigError
from focalexp.models import FocalNet
from focalexp.models.presets import list_presets
from focalexp.models.timm_registry import PREFIX, default_cfgs

# small versions of the presets: the same architecture knobs, narrow and shallow
PRESETS = {
    "focalnet_t_srf": dict(embed_dim=16, depths=[1, 1, 2, 1]),
    "focalnet_t_iso": dict(embed_dim=32, depths=[3]),
    "focalnet_t_lrf_window_attention": dict(embed_dim=32, depths=[2, 1, 1, 1], head_dim=16),
    "focalnet_h_fl3": dict(embed_dim=16, depths=[1, 1, 1, 1]),  # conv embed, LayerScale, post-norms
}
# timm's min_input_size for these presets (what timm's tests run them at): a multiple of every stride;
# window attention's first stage is an 8x8 map in padded 7x7 windows, unshifted then shifted
SIZE = 32
ALL = pytest.mark.parametrize("preset", list(PRESETS))


@pytest.fixture(scope="module", autouse=True)
def _jit_executor_without_profiling():
    """As timm's test file: TorchScript's profiling runs cost seconds and test nothing here."""
    before = torch._C._jit_set_profiling_mode(False)
    yield
    torch._C._jit_set_profiling_mode(before)


def _model(preset, **kw):
    torch.manual_seed(0)
    return timm.create_model(PREFIX + preset, **{**PRESETS[preset], **kw})


def _x(batch=1, size=SIZE, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _levels(m):
    return len(m.feature_info)


# ---------------------------------------------------------------------------- default cfgs, heads
@ALL
def test_default_cfg(preset):
    """test_model_default_cfgs: cfg fields, forward_features vs pool_size/num_features, forward_head, resets."""
    name = PREFIX + preset
    PretrainedCfg(**default_cfgs[name])  # every field is one of timm's
    registered = timm.get_pretrained_cfg(name).to_dict()
    for key in ("url", "hf_hub_id", "num_classes", "input_size", "pool_size", "crop_pct", "interpolation", "mean",
                "std", "first_conv", "classifier", "license", "min_input_size"):
        assert key in default_cfgs[name], key  # to_dict() leaves out None values (hf_hub_id without weights)
    m = _model(preset).eval()
    cfg = m.default_cfg
    assert cfg is m.pretrained_cfg and cfg["pool_size"] == registered["pool_size"]
    assert m.num_classes >= 0 and m.num_features > 0 and m.head_hidden_size == m.num_features
    sd = m.state_dict()
    assert cfg["classifier"] + ".weight" in sd and cfg["first_conv"] + ".weight" in sd
    x = torch.randn(1, *cfg["input_size"])  # the preset's own resolution: the pool size is the real one
    with torch.no_grad():
        feats = m.forward_features(x)
        pre = m.forward_head(feats, pre_logits=True)
        assert tuple(feats.shape[-2:]) == cfg["pool_size"] and feats.shape[1] == m.num_features
        assert pre.shape == (1, m.head_hidden_size)
        torch.testing.assert_close(m.forward_head(feats), m.head(pre))
        m.reset_classifier(0)
        assert m.num_classes == 0 and m(x).shape == pre.shape
        m.reset_classifier(0, "")
        assert m(x).shape == feats.shape
        m2 = _model(preset, num_classes=0, global_pool="").eval()
        assert m2(x).shape == feats.shape


@ALL
def test_pool_size_follows_the_stride(preset):
    """The registered pool_size is the final map at input_size (stride 16 for isotropic models)."""
    p = {q.name: q for q in list_presets()}[preset]
    cfg = default_cfgs[PREFIX + preset]
    assert cfg["pool_size"] == (p.config.img_size // p.config.stride,) * 2
    assert cfg["min_input_size"] == (3, p.config.stride, p.config.stride)


@ALL
def test_reset_classifier_to_n(preset):
    m = _model(preset, num_classes=5).eval()
    x = _x(2)
    with torch.no_grad():
        feats = m.forward_features(x)
        m.reset_classifier(7, "avg")
        assert m(x).shape == (2, 7) and m.get_classifier().out_features == 7
        m.reset_classifier(3, "")  # no pooling: the head at every position, NCHW
        out = m(x)
        assert out.shape == (2, 3, *feats.shape[-2:])
        torch.testing.assert_close(out.mean((2, 3)), m.head(feats.mean((2, 3))), rtol=1e-4, atol=1e-5)
        assert m.forward_head(feats, pre_logits=True).shape == feats.shape
    with pytest.raises(ConfigError, match="global_pool: FocalNet pools by average"):
        m.reset_classifier(3, "max")


@ALL
def test_forward_backward_and_grad_checkpointing(preset):
    """test_model_forward / test_model_backward: outputs, a gradient for every parameter, checkpointing."""
    m = _model(preset, num_classes=42)
    m.train()
    out = m(_x(2))
    assert out.shape == (2, 42) and torch.isfinite(out).all()
    out.mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.eval()
    x = _x(1)
    with torch.no_grad():
        ref = m(x)
        m.set_grad_checkpointing()
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5)
        final, _ = m.forward_intermediates(x)
        torch.testing.assert_close(final, m.forward_features(x), rtol=1e-4, atol=1e-5)


@ALL
def test_group_matcher_covers_every_parameter(preset):
    m = _model(preset)
    for coarse in (False, True):
        groups = group_parameters(m, m.group_matcher(coarse=coarse))
        assert sorted(n for ns in groups.values() for n in ns) == sorted(n for n, _ in m.named_parameters())
        import re

        pats = [m.group_matcher(coarse)["stem"]] + [p for p, _ in m.group_matcher(coarse)["blocks"]]
        unmatched = [n for n, _ in m.named_parameters() if not n.startswith("head.")
                     and not any(re.match(p, n) for p in pats)]
        assert not unmatched


# ---------------------------------------------------------------------------- intermediates
@ALL
def test_forward_intermediates(preset):
    """test_model_forward_intermediates: channels and reductions of feature_info, final == forward_features."""
    m = _model(preset).eval()
    info = FeatureInfo(m.feature_info, len(m.feature_info))  # what timm's test builds from the model's
    assert isinstance(m.feature_info, FeatureInfo) and len(info.channels()) >= 3
    x = _x(1)
    with torch.no_grad():
        final, inter = m.forward_intermediates(x, output_fmt="NCHW")
        torch.testing.assert_close(final, m.forward_features(x))
    assert len(inter) == len(info.channels())
    for c, r, o in zip(info.channels(), info.reduction(), inter):
        assert o.shape[1] == c and o.shape[-1] <= math.ceil(SIZE / r) + 1 and o.shape[-2] <= math.ceil(SIZE / r) + 1


@ALL
def test_forward_intermediates_arguments(preset):
    """indices (None, last n, lists, negatives), norm, stop_early, intermediates_only: timm's semantics."""
    m = _model(preset).eval()
    n = _levels(m)
    x = _x(1)
    with torch.no_grad():
        feats = m.forward_features(x)
        _, every = m.forward_intermediates(x)
        assert len(every) == n
        for indices, want in ((None, range(n)), (2, [n - 2, n - 1]), ([0, -2], [0, n - 2])):
            for stop_early, norm in ((False, False), (True, True), (True, False), (False, True)):
                final, got = m.forward_intermediates(x, indices=indices, norm=norm, stop_early=stop_early)
                assert len(got) == len(list(want))
                for w, g in zip(want, got):
                    if norm and w == n - 1:
                        torch.testing.assert_close(g, feats)  # the final norm on the last level only
                    else:
                        torch.testing.assert_close(g, every[w])
                last_taken = max(want)
                if stop_early and last_taken < n - 1:
                    torch.testing.assert_close(final, every[last_taken])  # un-normed: the last level did not run
                else:
                    torch.testing.assert_close(final, feats)
                if stop_early and norm:
                    only = m.forward_intermediates(x, indices=indices, norm=norm, stop_early=stop_early,
                                                   intermediates_only=True)
                    assert isinstance(only, list) and all(torch.equal(a, b) for a, b in zip(only, got))
    for bad in (n + 1, [n], [-n - 1], []):
        with pytest.raises(ConfigError, match="indices: "):
            m.forward_intermediates(x, indices=bad)
    with pytest.raises(ConfigError, match="output_fmt: FocalNet's intermediates are NCHW only"):
        m.forward_intermediates(x, output_fmt="NHWC")


@ALL
def test_prune_intermediate_layers(preset):
    m = _model(preset).eval()
    n = _levels(m)
    x = _x(1)
    with torch.no_grad():
        _, every = m.forward_intermediates(x)
        take = m.prune_intermediate_layers([0, -2])
        assert take == [0, n - 2]
        assert m.num_classes == 0 and m.global_pool == ""
        got = m.forward_intermediates(x, indices=take, intermediates_only=True)
    assert m.num_feature_levels() == n - 1
    for a, b in zip(got, [every[0], every[n - 2]]):
        torch.testing.assert_close(a, b)
    m2 = _model(preset).eval()
    m2.prune_intermediate_layers(n, prune_norm=True, prune_head=False)
    assert isinstance(m2.norm, torch.nn.Identity) and m2.num_classes == m2.default_cfg["num_classes"] > 0


# ---------------------------------------------------------------------------- features_only through timm
@ALL
@pytest.mark.parametrize("feature_cls", [None, "getter", "hook", "fx", "list"])
def test_features_only(preset, feature_cls):
    """test_model_forward_features / test_model_forward_intermediates_features: timm's wrappers."""
    kw = {} if feature_cls is None else dict(feature_cls=feature_cls)
    if feature_cls == "list" and preset == "focalnet_t_iso":
        with pytest.raises(ConfigError, match="feature_cls: 'list'/'dict' take whole stages"):
            _model(preset, features_only=True, **kw)
        return
    m = _model(preset, features_only=True, **kw).eval()
    ref = _model(preset).eval()
    info = m.feature_info
    assert isinstance(info, FeatureInfo) and len(info.channels()) >= 3
    assert info.module_name() == [ref.feature_info.info[i]["module"] for i in range(_levels(ref))]
    assert "num_classes" not in m.pretrained_cfg and m.pretrained_cfg["input_size"][0] == 3
    x = _x(1)
    with torch.no_grad():
        outs = m(x)
        _, want = ref.forward_intermediates(x)
    outs = list(outs.values()) if isinstance(outs, dict) else outs
    assert len(outs) == len(info.channels())
    for c, r, o, w in zip(info.channels(), info.reduction(), outs, want):
        assert o.shape[1] == c and o.shape[-1] <= math.ceil(SIZE / r) + 1
        torch.testing.assert_close(o, w, rtol=1e-4, atol=1e-5)


@ALL
def test_features_only_out_indices_and_output_stride(preset):
    ref = _model(preset)
    n = _levels(ref)
    m = _model(preset, features_only=True, out_indices=(1, -1)).eval()
    assert m.feature_info.channels() == [ref.feature_info.info[i]["num_chs"] for i in (1, n - 1)]
    assert m.feature_info.reduction() == [ref.feature_info.info[i]["reduction"] for i in (1, n - 1)]
    with torch.no_grad():
        assert [o.shape[1] for o in m(_x(1))] == m.feature_info.channels()
    stride = ref.config.stride
    assert isinstance(_model(preset, output_stride=stride), FocalNet)  # the network's own stride: accepted
    with pytest.raises(ConfigError, match=f"output_stride: FocalNet has no dilated stages; its output stride is {stride}, got 8") as e:
        _model(preset, features_only=True, output_stride=8)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="feature_cls: picks timm's feature wrapper; it needs features_only=True"):
        _model(preset, feature_cls="hook")


# ---------------------------------------------------------------------------- torch.fx, TorchScript, trace
def _fx_model(model, train=False):
    """timm's _create_fx_model: torchvision's feature extractor with timm's leaf modules/functions."""
    from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names
    from timm.models import get_notrace_functions, get_notrace_modules

    kw = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
              param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kw)
    train_return = [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**kw).trace(model)
        nodes = list(reversed(graph.nodes))
        names = [nd.name for nd in nodes]
        train_return = [train_nodes[-names.index(nd.name)] for nd in nodes[0]._input_nodes.keys()]
    return create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=kw)


@ALL
def test_fx_forward_and_backward(preset):
    """test_model_forward_fx (outputs identical) and test_model_backward_fx (every parameter gets a gradient);
    plain torch.fx.symbolic_trace too."""
    m = _model(preset).eval()
    x = _x(1)
    with torch.inference_mode():
        ref = m(x)
        fx_out = torch.cat(tuple(_fx_model(m)(x).values()))
        assert torch.equal(fx_out, ref)
    mt = _model(preset, num_classes=42).train()
    fx = _fx_model(mt, train=True) if preset == "focalnet_t_lrf_window_attention" else torch.fx.symbolic_trace(mt)
    out = fx(_x(2))
    out = torch.cat(tuple(out.values())) if isinstance(out, dict) else out
    out.mean().backward()
    assert out.shape[-1] == 42
    assert all(p.grad is not None for p in fx.parameters())


@ALL
def test_torchscript(preset):
    """test_model_forward_torchscript, and test_model_forward_fx_torchscript for window attention (the one
    whose fx graph calls focalexp's own functions, which TorchScript then compiles)."""
    with timm.layers.set_layer_config(scriptable=True):
        m = _model(preset).eval()
    x = _x(1)
    with torch.no_grad():
        ref = m(x)
        torch.testing.assert_close(torch.jit.script(m)(x), ref, rtol=1e-5, atol=1e-5)
        if preset == "focalnet_t_lrf_window_attention":
            scripted_fx = torch.jit.script(_fx_model(m))
            torch.testing.assert_close(torch.cat(tuple(scripted_fx(x).values())), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", ["focalnet_t_srf", "focalnet_t_lrf_window_attention"])
def test_jit_trace_passes_its_check(preset):
    m = _model(preset).eval()
    x = _x(1)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(m, x)  # check_trace: re-traces and compares graphs and outputs
        torch.testing.assert_close(traced(_x(1, seed=1)), m(_x(1, seed=1)), rtol=1e-5, atol=1e-5)
    assert not [w for w in caught if "does not match" in str(w.message) or "differ" in str(w.message)]


def test_capture_pads_inputs_like_eager():
    """pad_input under torch.fx (sizes are Proxies: the pad is always applied, by zero where none is needed) and
    TorchScript: the eager model's outputs on a size that is not a multiple of the stride, and on one that is."""
    m = _model("focalnet_t_lrf_window_attention", pad_input=True, img_size=40).eval()
    fx, scripted = torch.fx.symbolic_trace(m), torch.jit.script(m)
    for size in (40, 32):
        x = _x(1, size)
        with torch.no_grad():
            ref = m(x)
            torch.testing.assert_close(fx(x), ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(scripted(x), ref, rtol=1e-5, atol=1e-5)
