"""Measurement and analysis: FLOPs, throughput and memory, maps of what the modulator looks at.

- :mod:`.flops`: parameters and FLOPs (fvcore, the papers' convention, and cross-checks)
- :mod:`.countcache`: the on-disk cache that keeps FLOP counts of configs between runs
- :mod:`.presets_table`: every preset counted beside its published numbers (``focalexp models``)
- :mod:`.bench`: ``focalexp bench``, models side by side; :mod:`.timing` (interleaved rounds, ratios) and
  :mod:`.memory` (peak memory, and what each "peak memory" in focalexp means)
- :mod:`.maps`: modulator, gate, context and kernel maps; effective receptive field; ViT/Swin attention
- :mod:`.figures`: the paper's panel layout for any of those maps
- :mod:`.images`: offline sample photographs and their preprocessing
- :mod:`.viz`: one call from a model to a figure (``focalexp viz``)
"""

from .images import ImageBatch, load_images, sample_photos
from .maps import (
    FocalMaps,
    effective_receptive_field,
    erf_area_ratio,
    feature_map,
    kernel_maps,
    modulation_maps,
    swin_window_attention,
    vit_attention_maps,
)

__all__ = [
    "ImageBatch", "load_images", "sample_photos", "FocalMaps", "modulation_maps", "kernel_maps",
    "effective_receptive_field", "erf_area_ratio", "feature_map", "vit_attention_maps", "swin_window_attention",
]
