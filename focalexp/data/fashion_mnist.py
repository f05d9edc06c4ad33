"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; MIT licence): 60,000 training and 10,000 test images of
clothing, 28 x 28 grayscale, 10 balanced classes. Read offline from the IDX files that Debian's
``dataset-fashion-mnist`` installs (:data:`~focalexp.data.config.FASHION_MNIST_ROOT`), parsed by
:mod:`focalexp.data.idx` with every header and length checked. The test split is the validation set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..errors import ConfigError
from .config import FASHION_MNIST_MAX_ITEMS
from .idx import read_idx

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_fashion_mnist(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)`` in 0-9, from a checked pair of IDX files."""
    x = read_idx(images, 3, (None, 28, 28), FASHION_MNIST_MAX_ITEMS)
    y = read_idx(labels, 1, (len(x),), FASHION_MNIST_MAX_ITEMS)
    bad = np.flatnonzero(y >= len(CLASSES))
    if bad.size:
        raise ConfigError(f"'{labels}' holds label {int(y[bad[0]])} at item {int(bad[0])}; Fashion-MNIST's "
                          f"labels are 0-{len(CLASSES) - 1}", key="data.root")
    return x, y.astype(np.int64)


class FashionMNIST(Dataset):
    """One split as PIL grayscale images (mode ``L``) into ``transform``, with integer labels."""

    classes = CLASSES

    def __init__(self, images: Path, labels: Path, transform=None) -> None:
        self.data, self.targets = read_fashion_mnist(images, labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.data[i])  # 2-D uint8: mode L
        return (self.transform(img) if self.transform is not None else img), int(self.targets[i])
