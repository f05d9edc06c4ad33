"""Measurement and analysis: FLOPs, throughput and memory, maps of what the modulator looks at.

- :mod:`.flops`: parameters and FLOPs (fvcore, the papers' convention, and cross-checks)
- :mod:`.bench`: throughput and memory, models timed side by side
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
