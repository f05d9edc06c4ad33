"""Real photographs available offline, and the preprocessing the maps use.

No model hub or dataset is reachable on a fresh machine, so focalexp ships four small photographs
(CC0 / public domain, from scikit-image's sample data; see ``focalexp/assets/photos/SOURCES.md``) and
also uses the photograph matplotlib ships (``grace_hopper.jpg``, US Navy, public domain). They are
real images, never noise: a map of noise says nothing about what a network looks at.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..fileio import MAX_PIXELS  # noqa: F401 - its home was here; kept importable

PHOTO_DIR = Path(__file__).resolve().parent.parent / "assets" / "photos"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sample_photos() -> list[Path]:
    """Paths of the photographs shipped with focalexp and its dependencies (cat first)."""
    order = ["cat.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"]
    paths = [PHOTO_DIR / n for n in order if (PHOTO_DIR / n).is_file()]
    try:
        from matplotlib import cbook

        hopper = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
        if hopper.is_file():
            paths.append(hopper)
    except Exception:  # matplotlib built without its sample data
        pass
    if not paths:
        raise ConfigError(f"images: no sample photographs found under {PHOTO_DIR}; pass --image PATH")
    return paths


@dataclass
class ImageBatch:
    """A batch ready for a model (normalised) and the same pixels for display (0..1, HWC)."""

    tensor: torch.Tensor  # (B, 3, H, W), ImageNet-normalised
    display: np.ndarray  # (B, H, W, 3) float in [0, 1]
    names: list[str]

    def __len__(self) -> int:
        return self.tensor.shape[0]


def read_image(path: str | os.PathLike, what: str = "--image"):
    """An RGB PIL image from a file a user passed, or one line saying why not (missing, a directory,
    not an image, truncated, or more than :data:`~focalexp.fileio.MAX_PIXELS` pixels: a decompression
    bomb); :func:`focalexp.fileio.read_image`."""
    from ..fileio import read_image as _read

    return _read(path, what)


def load_images(
    paths: Sequence[str | os.PathLike] | None = None,
    size: int = 224,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ImageBatch:
    """Resize the shorter side to ``size`` (bicubic) and centre-crop ``size x size``.

    The official notebook resizes without cropping (a non-square grid); a square crop lets images of
    different shapes share one batch and one figure layout. ``paths=None`` uses :func:`sample_photos`.
    """
    from PIL import Image

    from .modelspec import MAX_IMG_SIZE

    if not 1 <= size <= MAX_IMG_SIZE:
        raise ConfigError(f"--img-size: expected a size from 1 to {MAX_IMG_SIZE}, got {size}")
    paths = list(paths) if paths else sample_photos()
    arrays, names = [], []
    for p in paths:
        p = Path(p)
        im = read_image(p)
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        arrays.append(np.asarray(im, dtype=np.float32) / 255.0)
        names.append(p.stem)
    display = np.stack(arrays)
    t = torch.from_numpy(display).permute(0, 3, 1, 2).contiguous()
    t = (t - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return ImageBatch(t, display, names)
