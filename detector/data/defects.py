"""Synthetic local defects with ground-truth masks, for measuring anomaly maps (scripts/bench_maps.py, tests).

Each defect is placed on the object (a pixel brighter than the background), sized relative to the image, and the
mask holds the pixels it changed by more than 2/255. Kinds: a patch of another image pasted in, a scratch (a thin
bright or dark line), a hole (a black disc), a blob (a soft bright or dark spot), a local blur, a local brightness
change. A development aid like ood_suite: acceptance uses other, hidden defects.
"""

from __future__ import annotations

import numpy as np
import torch

from detector.data.blur import gaussian_blur

KINDS = ("patch", "scratch", "hole", "blob", "blur", "brightness")
SIZES = {"small": (1.5, 2.5), "medium": (2.5, 4.0), "large": (4.0, 6.0)}  # radius in pixels at 28x28
CHANGED = 2 / 255


def _box(cy: int, cx: int, half: int, h: int, w: int) -> tuple[slice, slice]:
    y0, x0 = int(np.clip(cy - half, 0, h - 2 * half)), int(np.clip(cx - half, 0, w - 2 * half))
    return slice(y0, y0 + 2 * half), slice(x0, x0 + 2 * half)


def _one(img: np.ndarray, donor: np.ndarray, kind: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    """``img`` (C, H, W) float 0..1 with one defect of ``kind``; returns the defective copy."""
    c, h, w = img.shape
    grey = img.mean(0)
    fg = np.argwhere(grey > 0.15)
    cy, cx = fg[rng.integers(len(fg))] if len(fg) else (h // 2, w // 2)
    yy, xx = np.mgrid[:h, :w]
    out = img.copy()
    half = max(1, int(round(radius)))
    if kind == "patch":
        box = _box(cy, cx, half, h, w)
        sy, sx = rng.integers(0, h - 2 * half + 1), rng.integers(0, w - 2 * half + 1)
        out[:, box[0], box[1]] = donor[:, sy:sy + 2 * half, sx:sx + 2 * half]
    elif kind == "scratch":
        angle = rng.uniform(0, np.pi)
        across = np.abs((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle))
        along = np.abs((yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle))
        line = (across < 0.5 + 0.02 * h) & (along < 3 * radius)
        out[:, line] = rng.choice([0.0, 1.0])
    elif kind == "hole":
        out[:, (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = 0.0
    elif kind == "blob":
        bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (radius / 1.5) ** 2))
        out = np.clip(img + 0.8 * rng.choice([-1.0, 1.0]) * bump[None], 0, 1)
    elif kind == "blur":
        box = _box(cy, cx, half + 1, h, w)
        blurred = gaussian_blur(torch.from_numpy(img), 0.07 * h).numpy()
        out[:, box[0], box[1]] = blurred[:, box[0], box[1]]
    elif kind == "brightness":
        box = _box(cy, cx, half + 1, h, w)
        out[:, box[0], box[1]] = np.clip(img[:, box[0], box[1]] * rng.choice([0.5, 1.5]), 0, 1)
    else:
        raise ValueError(f"unknown defect kind {kind!r}; one of {', '.join(KINDS)}")
    return out


def add_defects(images: np.ndarray, seed: int = 0, kinds=KINDS, size: str = "medium"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images (N, C, H, W) -> (defective uint8 images, masks (N, H, W) bool, kind index per image).
    Image i gets kinds[i % len(kinds)]; patches come from another image of the batch."""
    rng = np.random.default_rng(seed)
    x = images.astype(np.float32) / 255.0
    donors = x[rng.permutation(len(x))]
    lo, hi = SIZES[size]
    scale = images.shape[-2] / 28.0
    out = np.empty_like(x)
    kind_index = np.arange(len(x)) % len(kinds)
    for i in range(len(x)):
        out[i] = _one(x[i], donors[i], kinds[kind_index[i]], rng.uniform(lo, hi) * scale, rng)
    defective = (out * 255).round().astype(np.uint8)
    masks = np.abs(defective.astype(np.int16) - images.astype(np.int16)).max(axis=1) > CHANGED * 255
    return defective, masks, kind_index
