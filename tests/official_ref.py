"""An independent, functional transcription of the official FocalNet forward pass (test reference).

It reads tensors by the official checkpoint key names (reference §1, §7.4) and follows the official
math and layout step by step: tokens ``(B, L, C)``, ``nn.Linear`` projections, ``h`` as a 1x1 conv,
the downsample at the end of a stage, ``gamma_1/2``, ``modulation.ln``. It shares no code with
focalexp, so agreement between the two tests the conversion *and* the math.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _ln(x, sd, p, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], eps)


def make_official_state_dict(cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for every key an official checkpoint of ``cfg`` has, with official shapes."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    one = lambda n: 1.0 + rnd(n)  # noqa: E731
    sd: dict[str, torch.Tensor] = {}

    def norm(p, n):
        sd[p + ".weight"], sd[p + ".bias"] = one(n), rnd(n)

    dims = [cfg.embed_dim * 2**i for i in range(len(cfg.depths))]
    k0 = 7 if cfg.use_conv_embed else cfg.patch_size
    sd["patch_embed.proj.weight"] = rnd(dims[0], cfg.in_chans, k0, k0)
    sd["patch_embed.proj.bias"] = rnd(dims[0])
    norm("patch_embed.norm", dims[0])
    for i, depth in enumerate(cfg.depths):
        C, L = dims[i], cfg.focal_levels[i]
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}"
            norm(p + ".norm1", C)
            sd[p + ".modulation.f.weight"] = rnd(2 * C + L + 1, C)
            sd[p + ".modulation.f.bias"] = rnd(2 * C + L + 1)
            sd[p + ".modulation.h.weight"] = rnd(C, C, 1, 1)
            sd[p + ".modulation.h.bias"] = rnd(C)
            sd[p + ".modulation.proj.weight"] = rnd(C, C)
            sd[p + ".modulation.proj.bias"] = rnd(C)
            for lvl in range(L):
                k = cfg.focal_factor * lvl + cfg.focal_windows[i]
                sd[p + f".modulation.focal_layers.{lvl}.0.weight"] = rnd(C, 1, k, k)
            if cfg.use_postln_in_modulation:
                norm(p + ".modulation.ln", C)
            norm(p + ".norm2", C)
            hidden = int(C * cfg.mlp_ratio)
            sd[p + ".mlp.fc1.weight"], sd[p + ".mlp.fc1.bias"] = rnd(hidden, C), rnd(hidden)
            sd[p + ".mlp.fc2.weight"], sd[p + ".mlp.fc2.bias"] = rnd(C, hidden), rnd(C)
            if cfg.use_layerscale:
                sd[p + ".gamma_1"], sd[p + ".gamma_2"] = one(C), one(C)
        if i < len(cfg.depths) - 1:
            kd = 3 if cfg.use_conv_embed else 2
            sd[f"layers.{i}.downsample.proj.weight"] = rnd(dims[i + 1], C, kd, kd)
            sd[f"layers.{i}.downsample.proj.bias"] = rnd(dims[i + 1])
            norm(f"layers.{i}.downsample.norm", dims[i + 1])
    norm("norm", dims[-1])
    sd["head.weight"], sd["head.bias"] = rnd(cfg.num_classes, dims[-1]), rnd(cfg.num_classes)
    return sd


def _modulation(x, sd, p, cfg, level):
    # x: (B, H, W, C)
    C = x.shape[-1]
    y = F.linear(x, sd[p + ".f.weight"], sd[p + ".f.bias"]).permute(0, 3, 1, 2)
    q, ctx, gates = torch.split(y, (C, C, level + 1), 1)
    ctx_all = 0
    for lvl in range(level):
        w = sd[p + f".focal_layers.{lvl}.0.weight"]
        ctx = F.gelu(F.conv2d(ctx, w, None, 1, w.shape[-1] // 2, 1, C))
        ctx_all = ctx_all + ctx * gates[:, lvl : lvl + 1]
    ctx_global = F.gelu(ctx.mean(2, keepdim=True).mean(3, keepdim=True))
    ctx_all = ctx_all + ctx_global * gates[:, level:]
    if cfg.normalize_modulator:
        ctx_all = ctx_all / (level + 1)
    modulator = F.conv2d(ctx_all, sd[p + ".h.weight"], sd[p + ".h.bias"])
    out = (q * modulator).permute(0, 2, 3, 1)
    if cfg.use_postln_in_modulation:
        out = _ln(out, sd, p + ".ln")
    return F.linear(out, sd[p + ".proj.weight"], sd[p + ".proj.bias"])


def official_forward(sd: dict[str, torch.Tensor], cfg, x: torch.Tensor) -> torch.Tensor:
    """Logits of the official FocalNet with weights ``sd`` (official keys) for images ``x``."""
    stride0, pad0 = (4, 2) if cfg.use_conv_embed else (cfg.patch_size, 0)
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride0, pad0)
    B, C, H, W = x.shape
    x = _ln(x.flatten(2).transpose(1, 2), sd, "patch_embed.norm")
    for i, depth in enumerate(cfg.depths):
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}"
            shortcut = x
            h = x if cfg.use_postln else _ln(x, sd, p + ".norm1")
            h = _modulation(h.view(B, H, W, C), sd, p + ".modulation", cfg, cfg.focal_levels[i]).view(B, H * W, C)
            if cfg.use_postln:
                h = _ln(h, sd, p + ".norm1")
            g1 = sd.get(p + ".gamma_1", 1.0)
            g2 = sd.get(p + ".gamma_2", 1.0)
            x = shortcut + g1 * h

            def mlp(t):
                t = F.gelu(F.linear(t, sd[p + ".mlp.fc1.weight"], sd[p + ".mlp.fc1.bias"]))
                return F.linear(t, sd[p + ".mlp.fc2.weight"], sd[p + ".mlp.fc2.bias"])

            m = _ln(mlp(x), sd, p + ".norm2") if cfg.use_postln else mlp(_ln(x, sd, p + ".norm2"))
            x = x + g2 * m
        if i < len(cfg.depths) - 1:
            x = x.transpose(1, 2).reshape(B, C, H, W)
            pad = 1 if cfg.use_conv_embed else 0
            x = F.conv2d(x, sd[f"layers.{i}.downsample.proj.weight"], sd[f"layers.{i}.downsample.proj.bias"], 2, pad)
            B, C, H, W = x.shape
            x = _ln(x.flatten(2).transpose(1, 2), sd, f"layers.{i}.downsample.norm")
    x = _ln(x, sd, "norm").mean(1)
    return F.linear(x, sd["head.weight"], sd["head.bias"])
