"""Built-in datasets, read from files installed on the machine (nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

from detector.data.readers import _as_images, read_idx_array
from detector.data.sampleset import SampleSet
from detector.errors import DataError

FASHION_MNIST_DIR = Path(os.environ.get("DETECTOR_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_SPLITS = {"train": "train", "test": "t10k"}


def _find(stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        path = FASHION_MNIST_DIR / name
        if path.exists():
            return path
    raise DataError(
        f"Fashion-MNIST file {stem} not found in {FASHION_MNIST_DIR}: install it with "
        "'apt-get install -y dataset-fashion-mnist' (scripts/setup.sh does), "
        "or point DETECTOR_FASHION_MNIST_DIR at the IDX files"
    )


def fashion_mnist(split: str) -> SampleSet:
    if split not in _SPLITS:
        raise DataError(f"fashion-mnist split must be 'train' or 'test', got '{split}'")
    prefix = _SPLITS[split]
    x = read_idx_array(_find(f"{prefix}-images-idx3-ubyte"))
    y = read_idx_array(_find(f"{prefix}-labels-idx1-ubyte"))
    return _as_images(x, y, f"fashion-mnist:{split}")


BUILTINS = {"fashion-mnist": fashion_mnist}
