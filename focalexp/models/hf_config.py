"""Hugging Face transformers' FocalNet ``config.json`` <-> :class:`FocalNetConfig`, and ``save_pretrained`` folders.

A folder written by ``FocalNetForImageClassification.save_pretrained`` (or ``FocalNetModel``) holds
``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``. The JSON is untrusted input: it is read
with a size limit, as plain JSON (no NaN/Infinity), every key must be one transformers writes (architecture
keys are mapped, generic ``PretrainedConfig`` keys are ignored, anything else is an error naming the closest
key), every value is type- and range-checked, and the model it describes must stay under
:data:`MAX_PARAMS` parameters before anything is built. Every failure is one line naming the file and key.

Name map (transformers -> focalexp): ``embed_dim``, ``depths``, ``focal_levels``, ``focal_windows``,
``mlp_ratio``, ``drop_path_rate``, ``use_conv_embed``, ``use_layerscale``, ``layerscale_value``,
``normalize_modulator`` keep their names; ``image_size`` -> ``img_size``, ``num_channels`` -> ``in_chans``,
``hidden_dropout_prob`` -> ``drop_rate``, ``use_post_layernorm`` -> ``use_postln``,
``use_post_layernorm_in_modulation`` -> ``use_postln_in_modulation``, ``layer_norm_eps`` -> ``norm_eps``,
``len(id2label)`` (else ``num_labels``) -> ``num_classes``. transformers' FocalNet has ``focal_factor`` 2,
exact GELU and the official modulation; ``hidden_sizes``, ``encoder_stride``, ``initializer_range`` and
the backbone keys (``out_features``, ``out_indices``, ``stage_names``) do not change the classifier.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError, ConfigError, FocalexpError, closest
from .config import FocalNetConfig
from .footprint import MAX_PARAMS, approx_params, check_model_size  # noqa: F401 (approx_params: its old home)

MAX_CONFIG_BYTES = 1 << 20  # a FocalNet config.json is ~2 kB (~30 kB with 22k labels)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# transformers key -> (focalexp key, kind, lower, upper)
_ARCH: dict[str, tuple[str, str, float, float]] = {
    "embed_dim": ("embed_dim", "int", 1, 8192),
    "depths": ("depths", "ints", 1, 1024),
    "focal_levels": ("focal_levels", "ints", 0, 16),
    "focal_windows": ("focal_windows", "ints", 1, 127),
    "mlp_ratio": ("mlp_ratio", "float", 1e-3, 64),
    "hidden_dropout_prob": ("drop_rate", "float", 0, 1),
    "drop_path_rate": ("drop_path_rate", "float", 0, 1),
    "use_conv_embed": ("use_conv_embed", "bool", 0, 0),
    "use_layerscale": ("use_layerscale", "bool", 0, 0),
    "layerscale_value": ("layerscale_value", "float", 0, 1e6),
    "use_post_layernorm": ("use_postln", "bool", 0, 0),
    "use_post_layernorm_in_modulation": ("use_postln_in_modulation", "bool", 0, 0),
    "normalize_modulator": ("normalize_modulator", "bool", 0, 0),
    "layer_norm_eps": ("norm_eps", "float", 0, 1),
    "image_size": ("img_size", "size", 1, 16384),
    "patch_size": ("patch_size", "size", 1, 1024),
    "num_channels": ("in_chans", "int", 1, 1024),
}
MAX_STAGES = 16
MAX_LABELS = 1_000_000
# read and checked, but they do not change the classifier
_CHECKED = {"model_type", "hidden_act", "id2label", "label2id", "num_labels", "architectures"}
# written by transformers (v4 and v5) on every config, or by FocalNetConfig for its backbone: ignored
_GENERIC = {
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "return_dict", "output_hidden_states",
    "output_attentions", "torchscript", "use_bfloat16", "tf_legacy_loss", "pruned_heads", "tie_word_embeddings",
    "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "cross_attention_hidden_size",
    "add_cross_attention", "tie_encoder_decoder", "max_length", "min_length", "do_sample", "early_stopping",
    "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "finetuning_task", "tokenizer_class", "prefix", "bos_token_id", "pad_token_id",
    "eos_token_id", "sep_token_id", "decoder_start_token_id", "task_specific_params", "problem_type",
    "hidden_sizes", "encoder_stride", "initializer_range", "out_features", "out_indices", "stage_names",
    "_out_features", "_out_indices",
}
KNOWN_KEYS = sorted(set(_ARCH) | _CHECKED | _GENERIC)


# ---------------------------------------------------------------------------- reading
def _value(key: str, v: Any, kind: str, lo: float, hi: float) -> Any:
    def bad(expected: str) -> ConfigError:
        shown = (f"a list of {len(v)}" if isinstance(v, list) and len(json.dumps(v)) > 60
                 else json.dumps(v)[:60] if not isinstance(v, float) else repr(v))
        return ConfigError(f"expected {expected}, got {shown}", key=key)

    def num(x: Any, integer: bool) -> Any:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or (integer and not isinstance(x, int)):
            raise bad(f"{'an integer' if integer else 'a number'} in [{lo:g}, {hi:g}]")
        if not (isinstance(x, int) or math.isfinite(x)) or not lo <= x <= hi:
            raise bad(f"{'an integer' if integer else 'a number'} in [{lo:g}, {hi:g}]")
        return x

    if kind == "bool":
        if not isinstance(v, bool):
            raise bad("true or false")
        return v
    if kind == "int":
        return num(v, True)
    if kind == "float":
        return float(num(v, False))
    if kind == "ints":
        if not isinstance(v, list) or not 1 <= len(v) <= MAX_STAGES:
            raise bad(f"a list of 1 to {MAX_STAGES} integers")
        return [num(x, True) for x in v]
    if kind == "size":  # an int, or [h, w] with h == w (focalexp's models are square)
        if isinstance(v, list) and len(v) == 2:
            a, b = num(v[0], True), num(v[1], True)
            if a != b:
                raise bad("a square size (focalexp takes one side)")
            return a
        return num(v, True)
    raise AssertionError(kind)


def config_from_hf(d: Mapping[str, Any], source: str = "config.json") -> FocalNetConfig:
    """The :class:`FocalNetConfig` of a transformers FocalNet ``config.json`` (see the module docstring)."""
    try:
        return _config_from_hf(d)
    except FocalexpError as e:
        raise ConfigError(f"{source}: {e}") from None


def _config_from_hf(d: Mapping[str, Any]) -> FocalNetConfig:
    for k in d:
        if k not in KNOWN_KEYS:
            hits = closest(k, KNOWN_KEYS, n=1)
            raise ConfigError(key=k, unknown=True, suggestion=hits[0] if hits else None,
                              message="not a key of transformers' FocalNetConfig")
    mt = d.get("model_type")
    if mt != "focalnet":
        raise ConfigError(f"expected 'focalnet' (a transformers FocalNet config), got {json.dumps(mt)[:40]}",
                          key="model_type")
    act = d.get("hidden_act", "gelu")
    if act != "gelu":
        raise ConfigError(f"focalexp's FocalNet uses exact GELU ('gelu'), got {json.dumps(act)[:40]}", key="hidden_act")
    kw: dict[str, Any] = {}
    for hf_key, (ours, kind, lo, hi) in _ARCH.items():
        if hf_key in d:
            kw[ours] = _value(hf_key, d[hf_key], kind, lo, hi)
    kw["num_classes"] = _num_labels(d)
    n = len(kw.get("depths", FocalNetConfig().depths))
    for k in ("focal_levels", "focal_windows"):
        if k in kw and len(kw[k]) != n:
            raise ConfigError(f"expected {n} values (one per stage of depths), got {len(kw[k])}", key=k)
    if not kw.get("use_layerscale", False):
        kw.pop("layerscale_value", None)
    try:
        cfg = FocalNetConfig(**kw)
    except ConfigError as e:  # name the transformers key, not focalexp's
        back = {ours: hf for hf, (ours, *_) in _ARCH.items()}
        if e.key in back:
            e = ConfigError(e.message, key=back[e.key])
        raise e from None
    check_size(cfg)
    return cfg


def _num_labels(d: Mapping[str, Any]) -> int:
    id2label = d.get("id2label")
    if id2label is not None:
        if not isinstance(id2label, dict):
            raise ConfigError(f"expected an object of class names, got a JSON {type(id2label).__name__}", key="id2label")
        if len(id2label) > MAX_LABELS:
            raise ConfigError(f"{len(id2label):,} labels; at most {MAX_LABELS:,}", key="id2label")
        if not all(isinstance(k, str) and k.lstrip("-").isdigit() for k in id2label):
            raise ConfigError("expected class indices as keys (\"0\", \"1\", ...)", key="id2label")
        return len(id2label)
    if "num_labels" in d:
        return _value("num_labels", d["num_labels"], "int", 0, MAX_LABELS)
    return 2  # transformers' PretrainedConfig default


def check_size(cfg: FocalNetConfig) -> None:
    """Refuse a config whose model would have more than :data:`MAX_PARAMS` parameters, before anything is built."""
    check_model_size(cfg, key=None)


def read_pretrained_dir(path: str | os.PathLike) -> tuple[dict, FocalNetConfig]:
    """``(state dict, config)`` of a ``save_pretrained`` folder: config.json + model.safetensors (or
    pytorch_model.bin, read through the same allowlist as every checkpoint). A checkpoint whose weights
    hold no classifier (the bare ``FocalNetModel``) gives a config with ``num_classes=0``."""
    from ..fileio import read_json_object
    from .checkpoint import detect_layout, read_state, unwrap

    d = Path(path)
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        present = ", ".join(sorted(p.name for p in d.iterdir())[:4]) if d.is_dir() else ""
        raise CheckpointError(f"checkpoint: folder '{d}' has no config.json (not a Hugging Face save_pretrained "
                              f"folder{'; it holds ' + present if present else ''}); pass the weights file itself")
    raw = read_json_object(cfg_file, "checkpoint", MAX_CONFIG_BYTES)
    if "architecture" in raw and "model_type" not in raw:
        raise CheckpointError(f"checkpoint: '{cfg_file}' is a timm hub config; pass "
                              f"{d / 'model.safetensors'} with the model name instead of the folder")
    cfg = config_from_hf(raw, f"checkpoint '{cfg_file}'")
    weights = next((d / f for f in WEIGHT_FILES if (d / f).is_file()), None)
    if weights is None:
        sharded = [f for f in (d / "model.safetensors.index.json", d / "pytorch_model.bin.index.json") if f.exists()]
        why = "sharded checkpoints (*.index.json) are not supported" if sharded else "found neither"
        raise CheckpointError(f"checkpoint: folder '{d}' has no {' or '.join(WEIGHT_FILES)} ({why})")
    state = read_state(weights)
    sd, _ = unwrap(state)
    layout = detect_layout(sd)
    if layout != "hf":
        raise CheckpointError(f"checkpoint: '{weights}' holds {layout}-layout weights, but '{cfg_file}' is a "
                              "transformers config (expected focalnet.* keys)")
    head = sd.get("classifier.weight")
    if head is None:
        cfg = cfg.replace(num_classes=0)
    elif head.dim() != 2 or head.shape[0] != cfg.num_classes:
        raise CheckpointError(f"checkpoint: '{weights}' has a classifier of shape {tuple(head.shape)}, but "
                              f"'{cfg_file}' lists {cfg.num_classes} labels")
    return sd, cfg


# ---------------------------------------------------------------------------- writing
def config_to_hf(cfg: FocalNetConfig, labels: list[str] | None = None) -> dict[str, Any]:
    """transformers' ``config.json`` for ``cfg`` (FocalNetForImageClassification); the caller checks first
    that the architecture fits (:func:`focalexp.models.weight_layouts.official_architecture_limits`)."""
    n = cfg.num_stages
    labels = labels if labels is not None else [f"LABEL_{i}" for i in range(cfg.num_classes)]
    return {
        "architectures": ["FocalNetForImageClassification"],
        "model_type": "focalnet",
        "image_size": cfg.img_size,
        "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans,
        "embed_dim": cfg.embed_dim,
        "depths": list(cfg.depths),
        "focal_levels": list(cfg.focal_levels),
        "focal_windows": list(cfg.focal_windows),
        "hidden_sizes": [cfg.embed_dim * 2 ** (i + 1) for i in range(n - 1)] + [cfg.stage_dims[-1]],
        "hidden_act": "gelu",
        "mlp_ratio": cfg.mlp_ratio,
        "hidden_dropout_prob": cfg.drop_rate,
        "drop_path_rate": cfg.drop_path_rate,
        "use_conv_embed": cfg.use_conv_embed,
        "use_layerscale": cfg.use_layerscale,
        "layerscale_value": cfg.layerscale_value,
        "use_post_layernorm": cfg.use_postln,
        "use_post_layernorm_in_modulation": cfg.use_postln_in_modulation,
        "normalize_modulator": cfg.normalize_modulator,
        "layer_norm_eps": cfg.norm_eps,
        "initializer_range": 0.02,
        "encoder_stride": cfg.stride,
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
    }
