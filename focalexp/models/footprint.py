"""What training a FocalNet needs in memory, from its config alone (no module is built, no torch).

A config such as ``embed_dim: 1000000`` or ``depths: [1000, 1000, 1000]`` is valid knob by knob, but the
model it describes cannot be trained here: torch then tries to allocate terabytes (an internal error
after the run dir was written) or the kernel's OOM killer ends the process without a word. The checks
in this module refuse such a config first, with one line naming the key to change.

Two quantities, both deliberately **under**-estimates, so that a refusal is certain and a run that
would fit is never refused:

* :func:`approx_params`: parameters (weights of the blocks, the embeddings and the head). Training
  holds :data:`BYTES_PER_PARAM` bytes for each (fp32 weight, gradient and AdamW's two moments).
* :func:`activation_bytes`: the activations one image keeps for the backward pass, per block
  ``tokens x channels x K`` fp32 values. ``K`` was fitted to the tensors autograd saves
  (``torch.autograd.graph.saved_tensors_hooks``, parameters left out): ``10.6 + 2 L + 2 mlp_ratio``
  for focal modulation with ``L`` levels (+2 with LayerScale), the same form for the pooling mixer,
  ``9 + 2 mlp_ratio + 4.4 N / head_dim`` for window attention over ``N``-token windows, about 2.4 in
  all with activation checkpointing. The constants below are rounded down. ``tests/test_footprint.py``
  measures the saved tensors of a table of configs and checks the estimate stays within [0.75, 1] of
  them.

The process's real peak is higher still (temporaries of the backward pass, the data loader, the
interpreter): the estimates only decide what is certainly too much.
"""

from __future__ import annotations

from ..errors import ConfigError
from .config import FocalNetConfig

__all__ = ["BYTES_PER_PARAM", "MAX_PARAMS", "approx_params", "activation_bytes",
           "inference_bytes", "training_bytes", "describe_need", "check_training_fits", "check_size_cap",
           "check_model_size"]

MAX_PARAMS = 3_000_000_000  # FocalNet-H is ~0.7 B; more is refused on any machine
BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW's exp_avg and exp_avg_sq


def approx_params(cfg: FocalNetConfig) -> int:
    """Parameters of ``cfg``'s FocalNet counted from the formula (no module is built): blocks, embeddings
    and head; exact up to biases and norms for focal modulation, a lower bound for the other mixers."""
    total = cfg.in_chans * cfg.stage_dims[0] * (7 if cfg.use_conv_embed else cfg.patch_size) ** 2
    for i, (depth, c) in enumerate(zip(cfg.depths, cfg.stage_dims)):
        hidden = int(c * cfg.mlp_ratio)
        if cfg.token_mixer in ("focal_modulation", "pooling"):
            kernels = sum(k * k for k in cfg.stage_kernels(i)) if cfg.token_mixer == "focal_modulation" else 0
            mixer = c * (2 * c + cfg.focal_levels[i] + 1) + 2 * c * c + c * kernels
        elif cfg.token_mixer == "window_attention":
            mixer = 4 * c * c
        else:  # dwconv and registered mixers: at least two projections
            mixer = 2 * c * c
        block = mixer + 2 * c * hidden + 8 * c
        total += depth * block + ((c // 2) * c * (3 if cfg.use_conv_embed else 2) ** 2 if i else 0)
    return total + cfg.num_features * (cfg.num_classes + 2)


def _values_per_token_channel(cfg: FocalNetConfig, stage: int) -> float:
    """``K``: fp32 values one block keeps for backward per token and channel (rounded down, see above)."""
    if cfg.use_checkpoint:
        return 2.0
    r = cfg.mlp_ratio
    if cfg.token_mixer in ("focal_modulation", "pooling"):
        k = 10 + 2 * cfg.focal_levels[stage] + 2 * r
    elif cfg.token_mixer == "window_attention":
        n = cfg.window_size ** 2
        k = 8.5 + 2 * r + 4 * n / cfg.head_dim
    else:
        k = 10 + 2 * r
    return k + (2 if cfg.use_layerscale else 0)


def activation_bytes(cfg: FocalNetConfig, height: int, width: int | None = None) -> int:
    """Bytes of activations one ``height x width`` image keeps for the backward pass (fp32), all blocks."""
    width = height if width is None else width
    total = 0.0
    for i, (depth, c) in enumerate(zip(cfg.depths, cfg.stage_dims)):
        stride = cfg.patch_size * 2 ** i
        tokens = -(-height // stride) * -(-width // stride)
        total += depth * tokens * c * _values_per_token_channel(cfg, i)
    return int(4 * total)


def inference_bytes(cfg: FocalNetConfig, height: int, width: int | None = None) -> int:
    """Bytes one ``height x width`` image certainly needs at once in an evaluation forward (no autograd):
    the input and the MLP hidden layer of the block with the most tokens x channels (fp32)."""
    width = height if width is None else width
    most = 0
    for i, (depth, c) in enumerate(zip(cfg.depths, cfg.stage_dims)):
        stride = cfg.patch_size * 2 ** i
        if depth:
            most = max(most, -(-height // stride) * -(-width // stride) * (c + int(c * cfg.mlp_ratio)))
    return 4 * most


def training_bytes(params: int, per_image: int, batch: int, processes: int = 1) -> int:
    """What training needs at least: each process's copy of the weights, gradients and AdamW state, and
    the activations of the global batch (split over the processes)."""
    return processes * params * BYTES_PER_PARAM + batch * per_image


def _size(n: float) -> str:
    return f"{n / 2 ** 30:,.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:,.1f} MiB"


def describe_need(params: int, per_image: int, batch: int, processes: int, memory_gb: float) -> str:
    """The figures of a refusal: what the weights and the activations need against what the machine has."""
    procs = f" x {processes} processes" if processes > 1 else ""
    return (f"training needs at least {_size(training_bytes(params, per_image, batch, processes))} "
            f"({params / 1e6:,.1f} M parameters: {_size(processes * params * BYTES_PER_PARAM)} of weights, "
            f"gradients and AdamW state{procs}; activations: {_size(per_image)} an image x {batch:,}); "
            f"this machine has {memory_gb:.1f} GiB")


def check_training_fits(section, need, batch: int, processes: int = 1, *, memory_gb: float | None = None,
                        size_key: str = "data.img_size", alternatives=None, eval_batch: int | None = None,
                        eval_per_image: int = 0) -> None:
    """Refuse a training run that cannot fit this machine's memory (or :data:`MAX_PARAMS`, anywhere).

    ``section`` is the run config's ``model`` mapping (a preset and its overrides); ``need(cfg)`` gives
    ``(parameters, activation bytes per image)`` of a :class:`FocalNetConfig`. The error names the key to
    change: ``train.batch_size`` (with how many images fit) when a smaller batch would do, else the model
    knob whose removal shrinks the need most (``model.depths``; ``alternatives`` maps other keys to the
    ``need`` with that key at its default, e.g. ``detector.fpn_channels``), else ``model.preset`` or
    ``size_key``. ``eval_batch`` images of ``eval_per_image`` bytes (:func:`inference_bytes`) must fit
    beside the training state too, else ``eval.batch_size`` is named."""
    from ..fileio import machine_memory_gb
    from .presets import resolve_config

    cfg = resolve_config(dict(section))
    params, per_image = need(cfg)
    check_size_cap(section, need, alternatives)
    gb = machine_memory_gb() if memory_gb is None else memory_gb
    limit = None if gb is None else gb * 2 ** 30
    if limit is None:
        return
    if eval_batch and training_bytes(params, eval_per_image, eval_batch, processes) > limit \
            and training_bytes(params, per_image, batch, processes) <= limit:
        weights = processes * params * BYTES_PER_PARAM
        fits = int((limit - weights) // max(eval_per_image, 1))
        raise ConfigError(f"{eval_batch:,} images: evaluating needs at least "
                          f"{_size(weights + eval_batch * eval_per_image)} ({_size(eval_per_image)} an image beside "
                          f"{_size(weights)} of training state); this machine has {gb:.1f} GiB: about {fits:,} "
                          "images fit", key="eval.batch_size")
    if training_bytes(params, per_image, batch, processes) <= limit:
        return
    figures = describe_need(params, per_image, batch, processes, gb)
    fits = (limit - processes * params * BYTES_PER_PARAM) // max(per_image, 1)
    if fits >= processes:
        raise ConfigError(f"{batch:,} images: {figures}: about {int(fits):,} images fit", key="train.batch_size")
    key = _culprit(section, need, lambda p, a: training_bytes(p, a, processes, processes), alternatives)
    if key is None:
        key = size_key if per_image > params * BYTES_PER_PARAM else ("model.preset" if "preset" in section else "model")
    raise ConfigError(f"even one image per process: {figures}", key=key)


def check_size_cap(section, need=None, alternatives=None, prefix: str = "model.") -> None:
    """Refuse, on any machine, a model of more than :data:`MAX_PARAMS` parameters, naming the key of
    ``section`` (a preset and its overrides; ``prefix`` + key) or of ``alternatives`` that makes it so."""
    from .presets import resolve_config

    need = need or (lambda m: (approx_params(m), 0))
    params = need(resolve_config(dict(section)))[0]
    if params > MAX_PARAMS:
        raise too_large(params, _culprit(section, need, lambda p, a: p, alternatives, prefix) or prefix.rstrip(". "))


def check_model_size(cfg: FocalNetConfig, key: str | None = "model") -> None:
    """The same cap for a config alone (whatever built it: a checkpoint's stored config, a library call)."""
    params = approx_params(cfg)
    if params > MAX_PARAMS:
        raise too_large(params, key)


def too_large(params: int, key: str | None) -> ConfigError:
    return ConfigError(f"describes a model of {params / 1e9:,.1f} B parameters (more than {MAX_PARAMS / 1e9:g} B); "
                       "refused", key=key or None)


def _culprit(section, need, cost, alternatives=None, prefix: str = "model.") -> str | None:
    """The key of ``section`` (other than the preset), or of ``alternatives``, whose removal lowers
    ``cost(params, per_image)`` most."""
    from ..errors import FocalexpError
    from .presets import resolve_config

    full = resolve_config(dict(section))
    best, best_cost = None, cost(*need(full))
    for k, alt in (alternatives or {}).items():
        c = cost(*alt(full))
        if c < best_cost:
            best, best_cost = k, c
    for k in section:
        if k in ("preset", "out_indices"):
            continue
        try:
            c = cost(*need(resolve_config({kk: v for kk, v in section.items() if kk != k})))
        except (FocalexpError, ValueError, TypeError):
            continue
        if c < best_cost:
            best, best_cost = f"{prefix}{k}", c
    return best
