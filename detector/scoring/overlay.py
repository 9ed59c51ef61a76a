"""Anomaly maps for people: an input image with its map as a heat layer (PNG), and the files `detector score --maps`
writes (one .npy map and one .png overlay per sample)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

HEAT_RANGE = (2.33, 8.0)  # map values: below the normal 99th percentile transparent, from 8 fully opaque
MIN_SIDE = 112  # small images are enlarged (nearest neighbour) so a pixel is visible


def to_display(image: np.ndarray) -> np.ndarray:
    """A (C, H, W) image, uint8 0..255 or float 0..1, as (H, W, 3) float in 0..1."""
    img = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    img = np.clip(img, 0.0, 1.0)
    return np.repeat(img[0][..., None], 3, axis=2) if img.shape[0] == 1 else img[:3].transpose(1, 2, 0)


def overlay(image: np.ndarray, anomaly_map: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the image in grey or colour, the map as a heat layer whose opacity grows with its value."""
    base = to_display(image)
    lo, hi = HEAT_RANGE
    strength = np.clip((anomaly_map - lo) / (hi - lo), 0.0, 1.0)[..., None]
    heat = colormaps["inferno"](0.35 + 0.65 * strength[..., 0])[..., :3]
    out = (1 - 0.75 * strength) * base + 0.75 * strength * heat
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def enlarged(rgb: np.ndarray) -> Image.Image:
    img = Image.fromarray(rgb)
    factor = max(1, -(-MIN_SIDE // max(rgb.shape[:2])))
    return img.resize((img.width * factor, img.height * factor), Image.NEAREST) if factor > 1 else img


class MapWriter:
    """Per sample, ``DIR/<index>.npy`` (the map, float32 [H, W]) and ``DIR/<index>.png`` (the overlay). Each file is
    written under a temporary name and renamed, so an interrupted run leaves no half-written file."""

    def __init__(self, folder: Path, digits: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.digits = digits

    def write(self, start: int, images: np.ndarray, maps: np.ndarray) -> None:
        for offset, (image, anomaly_map) in enumerate(zip(images, maps)):
            stem = self.folder / f"{start + offset:0{self.digits}d}"
            tmp = stem.with_name(f".{stem.name}.tmp.npy")
            np.save(tmp, anomaly_map.astype(np.float32))
            os.replace(tmp, stem.with_suffix(".npy"))
            tmp = stem.with_name(f".{stem.name}.tmp.png")
            enlarged(overlay(image, anomaly_map)).save(tmp, format="PNG")
            os.replace(tmp, stem.with_suffix(".png"))
