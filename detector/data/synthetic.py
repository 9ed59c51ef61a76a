"""Small synthetic datasets for tests and demos: seeded, structured, with a known anomaly type."""

from __future__ import annotations

import numpy as np


def bars(n: int, size: int = 16, channels: int = 1, seed: int = 0, vertical: bool = False) -> np.ndarray:
    """uint8 images (N, C, size, size): a soft bright bar at a random position on a dark, noisy ground.

    Normal data has horizontal bars; ``vertical=True`` gives the anomalous kind.
    """
    rng = np.random.default_rng(seed)
    coords = np.arange(size, dtype=np.float32)
    centre = rng.uniform(2, size - 3, n).astype(np.float32)
    width = rng.uniform(0.8, 1.6, n).astype(np.float32)
    profile = np.exp(-0.5 * ((coords[None, :] - centre[:, None]) / width[:, None]) ** 2)  # (N, size)
    img = profile[:, :, None] * np.ones((1, 1, size), np.float32)  # bar along rows
    if vertical:
        img = img.transpose(0, 2, 1)
    img = img * rng.uniform(0.6, 1.0, (n, 1, 1)) + rng.normal(0, 0.03, (n, size, size))
    img = np.repeat(img[:, None], channels, axis=1)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def manifold_vectors(n: int, dim: int = 8, seed: int = 0, anomalous: bool = False) -> np.ndarray:
    """float32 vectors (N, dim) near a 2-D curved manifold; anomalies lie off it."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(12345).normal(size=(4, dim)).astype(np.float32)
    t = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    feats = np.concatenate([t, t**2], axis=1)  # (N, 4)
    x = feats @ basis + rng.normal(0, 0.05, (n, dim)).astype(np.float32)
    if anomalous:
        x = x + rng.normal(0, 1.0, (n, dim)).astype(np.float32)
    return x.astype(np.float32)
