"""`create_model`: a FocalNet from a preset name, an alias, a config or a dict, with optional weights."""

from __future__ import annotations

import os
from typing import Any

from ..errors import CheckpointError, ConfigError
from .checkpoint import load_state_into, read_state, unwrap
from .focalnet import FocalNet
from .presets import canonical_name, get_preset, resolve_config  # noqa: F401 (resolve_config: its old home)


def create_model(
    name_or_config: Any = None,
    checkpoint: str | os.PathLike | None = None,
    *,
    pretrained: bool = False,
    strict: bool = True,
    features_only: bool = False,
    **overrides: Any,
) -> FocalNet:
    """Build a FocalNet.

    Args:
        name_or_config: a preset name or alias (``focalnet_t_srf``, ``focalnet_tiny_srf``), a
            :class:`FocalNetConfig`, or a dict (see :func:`resolve_config`). ``None`` with a focalexp
            checkpoint builds the checkpoint's own config.
        checkpoint: a local weights file in the official, timm, Hugging Face or focalexp layout (detected),
            or a Hugging Face ``save_pretrained`` folder (config.json + weights; its config builds the model
            when ``name_or_config`` is None).
        pretrained: fetch timm's published weights for the preset from the Hugging Face hub.
        strict: a checkpoint must fit exactly (otherwise mismatching tensors are skipped).
        features_only: backbone mode; forward returns the stages' feature maps (all stages unless
            ``out_indices`` is given).
        **overrides: any :class:`FocalNetConfig` field.
    """
    state = None
    if checkpoint is not None and os.path.isdir(checkpoint):
        from .hf_config import read_pretrained_dir

        state, dir_cfg = read_pretrained_dir(checkpoint)
        if name_or_config is None:
            name_or_config = dir_cfg
    elif checkpoint is not None:
        state = read_state(checkpoint)
        if name_or_config is None:
            _, stored = unwrap(state)
            if stored is None:
                from .checkpoint import detect_layout

                raise ConfigError(
                    f"model: the checkpoint carries no focalexp config (its weights are in the "
                    f"{detect_layout(unwrap(state)[0])} layout); name the architecture (--model PRESET, or "
                    "create_model('focalnet_t_srf', checkpoint=...))"
                )
            name_or_config = stored
            _check_stored_size(stored, checkpoint)
    cfg = resolve_config(name_or_config, **overrides)
    if features_only and cfg.out_indices is None:
        cfg = cfg.replace(out_indices=tuple(range(cfg.num_stages)))
    model = FocalNet(cfg)
    if pretrained:
        if not isinstance(name_or_config, str):
            raise ConfigError("pretrained: needs a preset name (published weights belong to a preset)")
        _load_pretrained(model, canonical_name(name_or_config))
    if state is not None:
        load_state_into(model, state, strict=strict, source=f"checkpoint '{checkpoint}'")
    return model


def _check_stored_size(stored: dict, checkpoint: Any) -> None:
    """A checkpoint's own config is untrusted too: one that describes more than 3 B parameters is refused
    (naming the file and the key) before torch tries to allocate them."""
    from .footprint import check_size_cap

    try:
        check_size_cap(stored, prefix="config.")
    except ConfigError as e:
        raise CheckpointError(f"checkpoint '{checkpoint}': {e}") from None


def _hub_reachable(endpoint: str, timeout: float = 5.0) -> bool:
    import socket
    from urllib.parse import urlparse

    u = urlparse(endpoint)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _fetch_timm_weights(tag: str) -> str:
    """Local path of timm's published weights for ``tag``: from the HF cache, else downloaded.

    Fails fast offline: ``HF_HUB_OFFLINE`` is honoured, and the hub is probed with a 5 s connect
    timeout before a download is attempted (huggingface_hub alone retries for close to a minute).
    """
    import timm
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    pcfg = timm.models.get_pretrained_cfg(tag)
    repo = getattr(pcfg, "hf_hub_id", None)
    if not repo:
        raise CheckpointError(f"pretrained: timm lists no hub weights for {tag}")
    cache_dir = os.environ.get("HF_HUB_CACHE") or None  # read now, not at huggingface_hub's import
    for fname in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
        if isinstance(cached, str):
            return cached
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        reason = "HF_HUB_OFFLINE is set and the weights are not in the local cache"
    elif not _hub_reachable(os.environ.get("HF_ENDPOINT", constants.ENDPOINT)):
        reason = f"cannot reach {os.environ.get('HF_ENDPOINT', constants.ENDPOINT)}"
    else:
        try:
            return hf_hub_download(repo, "model.safetensors", cache_dir=cache_dir)
        except Exception as e:  # hub or cache errors: one line, no traceback
            msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            reason = f"{type(e).__name__}{': ' + msg if msg else ''}"
    raise CheckpointError(
        f"pretrained: could not fetch {tag} from the Hugging Face hub ({reason}); "
        "offline? pass a downloaded file as checkpoint=PATH"
    )


def _adapt_first_conv(sd: dict, in_chans: int, base_chans: int) -> dict:
    """Weights published for ``base_chans`` input channels, for a model with ``in_chans`` (e.g. 1 for
    grayscale): timm's rule (summed for 1 channel, repeated and rescaled otherwise), as timm does for its
    own models' ``pretrained=True, in_chans=N``."""
    if in_chans == base_chans:
        return sd
    from timm.models import adapt_input_conv

    key = "stem.proj.weight"  # the first conv in timm's layout, which the hub weights use
    if key not in sd:
        raise CheckpointError(f"pretrained: no {key} to adapt to in_chans={in_chans}")
    return {**sd, key: adapt_input_conv(in_chans, sd[key], base_chans)}


def _load_pretrained(model: FocalNet, name: str) -> None:
    preset = get_preset(name)
    if preset.timm_name is None:
        raise CheckpointError(
            f"pretrained: {name} has no weights on the Hugging Face hub (timm publishes none for it); "
            "download the official .pth and pass checkpoint=PATH"
        )
    tag = f"{preset.timm_name}.{preset.timm_tag}"
    path = _fetch_timm_weights(tag)
    sd, _ = unwrap(read_state(path))
    sd = _adapt_first_conv(sd, model.config.in_chans, preset.config.in_chans)
    if model.config.num_classes != preset.config.num_classes:  # a new head: keep everything else
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        report = load_state_into(model, sd, strict=False, source=f"timm weights {tag}")
        stray = [k for k in report["missing"] if not k.startswith("head.")] + report["unexpected"]
        if stray or report["shape_mismatch"]:
            raise CheckpointError(f"timm weights {tag} do not fit the model: {', '.join((stray + report['shape_mismatch'])[:3])}")
    else:
        load_state_into(model, sd, source=f"timm weights {tag}")
