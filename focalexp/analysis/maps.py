"""What the modulator looks at, and what attention looks at: maps captured with forward hooks.

The model keeps no analysis state. Each function registers hooks for one forward pass and removes them
before returning (also on error), so maps can be taken from any model at any time, in any number.

FocalNet (focalexp's model, timm's ``focalnet_*`` and the official module layout alike):

- :func:`modulation_maps`: per block, the modulator magnitude (per-pixel L2 norm over channels of
  ``h``'s output: the paper's Fig. 6/15), each level's gate and the global gate as applied (Fig. 5,
  12-14), and the magnitude of every level's context ``z_l`` and of the global context.
- :func:`kernel_maps`: the depthwise kernels averaged over channels, per stage and level (Fig. 10/11).

Any backbone:

- :func:`effective_receptive_field`: RepLKNet's recipe (gradient of the centre of the last feature
  map with respect to the input pixels, ReLU'd, summed over channels, averaged over images), and
  :func:`erf_area_ratio`, the smallest centred square that holds a given share of it.

timm baselines:

- :func:`vit_attention_maps`: attention rollout (Abnar & Zuidema, 2020) and the last block's CLS
  attention, with fused attention switched off for the pass so the weights exist.
- :func:`swin_window_attention`: the attention of one query token over its (shifted) window.

Maps come back as CPU float tensors on the feature grid ``(B, h, w)``;
:func:`focalexp.analysis.figures.upsample` brings them to image size.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, did_you_mean


# ---------------------------------------------------------------------------- hooks
@contextlib.contextmanager
def _hooks(pairs: Sequence[tuple[nn.Module, Callable]], *, pre: bool = False) -> Iterator[None]:
    handles = [
        (m.register_forward_pre_hook(fn) if pre else m.register_forward_hook(fn)) for m, fn in pairs
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """Switch timm's fused (SDPA) attention off for the duration, so attention weights are computed."""
    changed = [m for m in model.modules() if getattr(m, "fused_attn", False) is True]
    for m in changed:
        m.fused_attn = False
    try:
        yield
    finally:
        for m in changed:
            m.fused_attn = True


def _eval_forward(model: nn.Module, x: torch.Tensor) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x.to(_device_of(model)))
    finally:
        model.train(was_training)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ---------------------------------------------------------------------------- FocalNet
def find_modulations(model: nn.Module) -> dict[str, nn.Module]:
    """Every focal modulation module by name (focalexp, timm and official layouts)."""
    found = {
        name: m for name, m in model.named_modules()
        if all(hasattr(m, a) for a in ("f", "h", "focal_layers")) and isinstance(m.focal_layers, nn.ModuleList)
    }
    if not found:
        raise ConfigError(
            f"model: {type(model).__name__} has no focal modulation (modulator, gate and kernel maps need "
            f"a FocalNet with token_mixer=focal_modulation)"
        )
    return found


def _stage_of(name: str) -> str:
    return name.split(".blocks.")[0] if ".blocks." in name else name.rsplit(".", 1)[0]


def _last_per_stage(names: Sequence[str]) -> list[str]:
    last: dict[str, str] = {}
    for name in names:
        last[_stage_of(name)] = name
    return list(last.values())


def default_blocks(model: nn.Module) -> list[str]:
    """The last modulation of every stage (the layers the paper visualizes)."""
    return _last_per_stage(list(find_modulations(model)))


def resolve_blocks(model: nn.Module, blocks: Sequence[str | int] | str | int | None) -> list[str]:
    """Block names from names, stage indices (``-1`` = last stage) or ``"all"``; default: last of each stage."""
    mods = find_modulations(model)
    stages = _last_per_stage(list(mods))
    if blocks is None:
        return stages
    if blocks == "all":
        return list(mods)
    if isinstance(blocks, (str, int)):
        blocks = [blocks]
    out = []
    for b in blocks:
        if isinstance(b, int) or (isinstance(b, str) and b.lstrip("-").isdigit()):
            i = int(b)
            if not -len(stages) <= i < len(stages):
                raise ConfigError(f"--block: stage {i} out of range (the model has {len(stages)} stages)")
            out.append(stages[i])
            continue
        name = b if b in mods else f"{b}.modulation"
        if name not in mods:
            hint = did_you_mean(b, mods) or f" (e.g. '{stages[-1]}')"
            raise ConfigError(f"--block: no focal modulation named '{b}'{hint}")
        out.append(name)
    return out


def _context_conv(layer: nn.Module) -> nn.Module:
    """The first module of a focal level's context layer (the depthwise conv, or the pooling)."""
    return layer[0] if isinstance(layer, nn.Sequential) else layer


def _kernel_sizes(mod: nn.Module) -> list[int | None]:
    sizes = []
    for layer in mod.focal_layers:
        k = getattr(_context_conv(layer), "kernel_size", None)
        sizes.append(k[0] if isinstance(k, tuple) else k)
    return sizes


def _gate_labels(mod: nn.Module, n_gates: int) -> list[str]:
    ks = _kernel_sizes(mod)
    levels = [f"level {i + 1} (k={k})" for i, k in enumerate(ks)]
    has_global = getattr(mod, "global_context", True) is not None
    if getattr(mod, "hierarchical_sum", True):
        labels = levels + (["global"] if has_global else [])
    else:  # top_only: the last level (and the global context)
        labels = levels[-1:] + (["global"] if has_global else [])
    return labels[:n_gates] if len(labels) >= n_gates else [f"gate {i}" for i in range(n_gates)]


@dataclass
class FocalMaps:
    """Maps of one modulation block for a batch; every map is ``(B, h, w)`` or ``(B, n, h, w)``."""

    block: str
    modulator: torch.Tensor  # (B, h, w): ||h(ctx_all)||_2 over channels
    context: torch.Tensor  # (B, L, h, w): ||z_l||_2 over channels, per focal level
    context_labels: list[str]
    gates: torch.Tensor | None = None  # (B, G, h, w): the gates as applied (None without gating)
    gate_labels: list[str] = field(default_factory=list)
    global_context: torch.Tensor | None = None  # (B,): ||GELU(GAP(z_L))||_2

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.modulator.shape[-2:])  # type: ignore[return-value]


def modulation_maps(
    model: nn.Module, images: torch.Tensor, blocks: Sequence[str | int] | str | int | None = None
) -> dict[str, FocalMaps]:
    """Modulator, gate and context maps of ``blocks`` (default: last block of each stage) for ``images``.

    Runs one forward pass in eval mode without gradients; the model is left as it was.
    """
    names = resolve_blocks(model, blocks)
    mods = {n: model.get_submodule(n) for n in names}
    store: dict[str, dict] = {n: {"ctx": {}} for n in names}
    pairs: list[tuple[nn.Module, Callable]] = []

    def norm_c(t: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, h, w)
        return torch.linalg.vector_norm(t.float(), dim=1).cpu()

    for n in names:
        mod, rec = mods[n], store[n]

        def on_h(_m, _i, out, rec=rec):
            rec["modulator"] = norm_c(out)

        pairs.append((mod.h, on_h))
        for lvl, layer in enumerate(mod.focal_layers):
            def on_ctx(_m, _i, out, rec=rec, lvl=lvl):
                rec["ctx"][lvl] = out.detach()

            pairs.append((layer, on_ctx))
        gate_mod = getattr(mod, "gates", None)
        if isinstance(gate_mod, nn.Module):  # focalexp: the gates as applied (after the activation)
            def on_gates(_m, _i, out, rec=rec):
                rec["gates"] = out.detach().float().cpu()

            pairs.append((gate_mod, on_gates))
        elif not hasattr(mod, "num_gates"):  # timm / official: split f's output
            dim = mod.h.in_channels if isinstance(mod.h, nn.Conv2d) else mod.h.in_features

            def on_f(m, _i, out, rec=rec, dim=dim):
                g = out[:, 2 * dim:] if isinstance(m, nn.Conv2d) else out[..., 2 * dim:].permute(0, 3, 1, 2)
                rec["gates"] = g.detach().float().cpu()

            pairs.append((mod.f, on_f))
        gc = getattr(mod, "global_context", None)
        if isinstance(gc, nn.Module):
            def on_global(_m, _i, out, rec=rec):
                rec["global"] = torch.linalg.vector_norm(out.detach().float().flatten(1), dim=1).cpu()

            pairs.append((gc, on_global))

    with _hooks(pairs):
        _eval_forward(model, images)

    result = {}
    for n in names:
        rec, mod = store[n], mods[n]
        if "modulator" not in rec:
            raise ConfigError(f"--block: '{n}' did not run in the forward pass (backbone out_indices?)")
        levels = [rec["ctx"][i] for i in sorted(rec["ctx"])]
        glob = rec.get("global")
        if glob is None and levels and getattr(mod, "global_context", True) is not None and not hasattr(mod, "num_gates"):
            # timm / official compute it inline: GELU of the spatial mean of the last level
            glob = torch.linalg.vector_norm(F.gelu(levels[-1].float().mean((2, 3))), dim=1).cpu()
        gates = rec.get("gates")
        ks = _kernel_sizes(mod)
        result[n] = FocalMaps(
            block=n,
            modulator=rec["modulator"],
            context=torch.stack([norm_c(z) for z in levels], 1),
            context_labels=[f"level {i + 1} (k={k})" for i, k in enumerate(ks)],
            gates=gates,
            gate_labels=_gate_labels(mod, gates.shape[1]) if gates is not None else [],
            global_context=glob,
        )
    return result


def kernel_maps(model: nn.Module, blocks: Sequence[str | int] | str | int | None = None) -> dict[str, list[torch.Tensor]]:
    """Depthwise kernels averaged over channels: block -> one ``(k, k)`` map per focal level.

    Levels whose context layer is not a convolution (the pooling mixer) are left out.
    """
    out = {}
    for n in resolve_blocks(model, blocks):
        maps = []
        for layer in model.get_submodule(n).focal_layers:
            conv = _context_conv(layer)
            if isinstance(conv, nn.Conv2d):
                maps.append(conv.weight.detach().float().mean(dim=(0, 1)).cpu())
        out[n] = maps
    return out


# ---------------------------------------------------------------------------- any backbone
def feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's last feature map as ``(B, C, h, w)``, whatever layout the model returns.

    focalexp FocalNet, timm FocalNet/ConvNeXt/ResNet return NCHW; timm Swin returns NHWC; timm ViTs
    return tokens ``(B, N, C)`` whose prefix tokens (CLS, registers) are dropped.
    """
    feats = model.forward_features(x)
    if isinstance(feats, (list, tuple)):
        feats = feats[-1]
    nf = getattr(model, "num_features", None)
    if feats.dim() == 3:  # tokens
        prefix = getattr(model, "num_prefix_tokens", 0)
        tokens = feats[:, prefix:]
        n = tokens.shape[1]
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        if patch is not None:
            h, w = x.shape[-2] // patch[0], x.shape[-1] // patch[1]
        else:
            h = w = math.isqrt(n)
        if h * w != n:
            raise ConfigError(f"model: cannot arrange {n} tokens on a grid")
        return tokens.transpose(1, 2).reshape(feats.shape[0], -1, h, w)
    if feats.dim() == 4 and nf is not None and feats.shape[-1] == nf and feats.shape[1] != nf:
        return feats.permute(0, 3, 1, 2)
    return feats


def effective_receptive_field(model: nn.Module, images: torch.Tensor, *, batch_size: int = 8) -> torch.Tensor:
    """RepLKNet's effective receptive field, ``(H, W)`` on the input grid, averaged over ``images``.

    For each image: ``s = sum_c relu(F[c, h/2, w/2])`` of the last feature map ``F``; the map is
    ``sum_c relu(ds/dx)``. The model runs in eval mode (norms use running statistics, no drop path).
    """
    was_training = model.training
    model.eval()
    device = _device_of(model)
    total = None
    try:
        for chunk in images.split(batch_size):
            x = chunk.to(device).clone().requires_grad_(True)
            fm = feature_map(model, x)
            h, w = fm.shape[-2:]
            s = F.relu(fm[:, :, h // 2, w // 2]).sum()
            (g,) = torch.autograd.grad(s, x)
            contrib = F.relu(g).sum(1).detach().float().sum(0).cpu()
            total = contrib if total is None else total + contrib
    finally:
        model.train(was_training)
    return total / images.shape[0]


def erf_area_ratio(erf: torch.Tensor, thresholds: Sequence[float] = (0.2, 0.3, 0.5, 0.99)) -> dict[float, float]:
    """For each share ``t``: the area of the smallest square centred on the map that holds ``t`` of
    the total contribution, as a fraction of the map's area (RepLKNet's "high-contribution area ratio";
    larger = a wider effective receptive field)."""
    H, W = erf.shape
    total = float(erf.sum())
    cy, cx = H // 2, W // 2
    out = {}
    if total <= 0:
        return {t: float("nan") for t in thresholds}
    cums = []
    for r in range(max(H, W)):
        patch = erf[max(0, cy - r): cy + r + 1, max(0, cx - r): cx + r + 1]
        cums.append((float(patch.sum()) / total, patch.numel()))
    for t in thresholds:
        area = next((a for share, a in cums if share >= t - 1e-9), H * W)
        out[t] = area / (H * W)
    return out


# ---------------------------------------------------------------------------- attention (timm)
def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "fused_attn") and hasattr(m, "attn_drop")]


def vit_attention_maps(
    model: nn.Module, images: torch.Tensor, *, head_fusion: str = "mean", discard_ratio: float = 0.0
) -> dict[str, torch.Tensor]:
    """Attention rollout and last-block CLS attention of a timm ViT, each ``(B, h, w)``.

    Rollout: per block, fuse heads (``mean``/``max``/``min``), optionally zero the lowest
    ``discard_ratio`` of the weights (the CLS column kept), add the identity for the residual
    (``(A + I) / 2``), renormalise rows and multiply the blocks together; the map is the CLS row over
    the patch tokens. ``cls`` is the last block's CLS row averaged over heads.
    """
    if head_fusion not in ("mean", "max", "min"):
        raise ConfigError(f"head_fusion: expected mean, max or min, got '{head_fusion}'")
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None or not hasattr(model, "blocks"):
        raise ConfigError(f"model: {type(model).__name__} is not a timm VisionTransformer")
    if prefix < 1:
        raise ConfigError("model: attention rollout needs a CLS token (this ViT has none)")
    attn_mods = _attention_modules(model)
    probs: list[torch.Tensor] = []

    def grab(_m, _i, out):
        probs.append(out.detach().float().cpu())

    with unfused_attention(model), _hooks([(m.attn_drop, grab) for m in attn_mods]):
        _eval_forward(model, images)
    if not probs:
        raise ConfigError("model: no attention weights were captured")
    B, _, N, _ = probs[0].shape
    patch = model.patch_embed.patch_size
    h, w = images.shape[-2] // patch[0], images.shape[-1] // patch[1]
    eye = torch.eye(N)
    rollout = eye.expand(B, N, N).clone()
    for a in probs:
        a = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[head_fusion]
        if discard_ratio > 0:  # zero the weakest weights, never the CLS -> CLS entry
            flat = a.reshape(B, -1).clone()
            k = int(flat.shape[1] * discard_ratio)
            if k:
                ranked = flat.clone()
                ranked[:, 0] = float("inf")
                flat.scatter_(1, ranked.topk(k, dim=1, largest=False).indices, 0.0)
            a = flat.view(B, N, N)
        a = (a + eye) / 2
        a = a / a.sum(-1, keepdim=True)
        rollout = a @ rollout
    roll_map = rollout[:, 0, prefix:].reshape(B, h, w)
    cls_map = probs[-1].mean(1)[:, 0, prefix:].reshape(B, h, w)
    return {"rollout": roll_map, "cls": cls_map}


def query_token(query: tuple[float, float], grid: tuple[int, int]) -> tuple[int, int]:
    """The token at ``query`` (fractions of the map, ``(0.5, 0.5)`` = centre) on a ``grid`` of tokens."""
    if not all(0.0 <= q <= 1.0 for q in query):
        raise ConfigError(f"query: expected fractions of the map in [0, 1], got {tuple(query)}")
    return min(grid[0] - 1, int(query[0] * grid[0])), min(grid[1] - 1, int(query[1] * grid[1]))


def query_marker(query: tuple[float, float], grid: tuple[int, int]) -> tuple[float, float]:
    """Where the centre of the query token lies, as fractions of the image (for a figure's cross)."""
    qy, qx = query_token(query, grid)
    return (qy + 0.5) / grid[0], (qx + 0.5) / grid[1]


def swin_window_attention(
    model: nn.Module,
    images: torch.Tensor,
    *,
    stage: int = -1,
    block: int = -1,
    query: tuple[float, float] = (0.5, 0.5),
) -> torch.Tensor:
    """Attention of one query token over its window in a timm Swin block, ``(B, h, w)`` on the stage grid.

    ``query`` is the position as fractions of the grid (``(0.5, 0.5)`` = the centre). The weights are
    averaged over heads and placed back at the keys' positions in the unshifted map; positions outside
    the query's window are zero.
    """
    layers = getattr(model, "layers", None)
    if layers is None or not hasattr(layers[stage], "blocks"):
        raise ConfigError(f"model: {type(model).__name__} is not a timm SwinTransformer")
    blk = layers[stage].blocks[block]
    if not hasattr(blk, "attn") or not hasattr(blk, "shift_size"):
        raise ConfigError(f"model: {type(model).__name__} is not a timm SwinTransformer")
    rec: dict = {}

    def grab_in(_m, args):
        rec["shape"] = args[0].shape  # (B, H, W, C)

    def grab_attn(_m, _i, out):
        rec["attn"] = out.detach().float().mean(1).cpu()  # (B*nW, N, N)

    with unfused_attention(model), _hooks([(blk, grab_in)], pre=True), _hooks([(blk.attn.attn_drop, grab_attn)]):
        _eval_forward(model, images)
    B, H, W, _ = rec["shape"]
    wh, ww = blk.window_size
    sh, sw = blk.shift_size
    Hp, Wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww
    n_win = (Hp // wh) * (Wp // ww)
    qy, qx = query_token(query, (H, W))
    ry, rx = (qy - sh) % H, (qx - sw) % W  # position in the rolled map
    wy, wx = ry // wh, rx // ww
    widx = wy * (Wp // ww) + wx
    row = (ry % wh) * ww + (rx % ww)
    out = torch.zeros(B, H, W)
    attn = rec["attn"].view(B, n_win, wh * ww, wh * ww)
    for j in range(wh * ww):
        ky, kx = wy * wh + j // ww, wx * ww + j % ww
        if ky < H and kx < W:
            out[:, (ky + sh) % H, (kx + sw) % W] = attn[:, widx, row, j]
    return out
