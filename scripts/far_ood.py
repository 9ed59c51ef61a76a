"""Far-OOD test sets for a 28x28 grayscale model, built from data that packages ship (no downloads).

simpler than Fashion-MNIST: scikit-learn's 8x8 handwritten digits upscaled like MNIST,
blank (constant) images; more complex: grayscale patches of scikit-image's photographs,
textures, uniform noise. All uint8, (N, 1, 28, 28).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))


def digits(n: int | None = None) -> np.ndarray:
    """sklearn digits (0..16), upscaled to 20x20 and centred in 28x28, as MNIST is laid out."""
    from sklearn.datasets import load_digits

    imgs = load_digits().images  # (1797, 8, 8)
    out = np.zeros((len(imgs), 1, 28, 28), np.uint8)
    for i, img in enumerate(imgs):
        out[i, 0, 4:24, 4:24] = _resize((img * (255 / 16)).astype(np.uint8), (20, 20))
    return out[:n]


def blank(n: int = 500, seed: int = 0) -> np.ndarray:
    """Constant images: black, white and levels between."""
    levels = np.random.default_rng(seed).integers(0, 256, n)
    levels[: n // 4] = 0
    return np.broadcast_to(levels[:, None, None, None], (n, 1, 28, 28)).astype(np.uint8)


def _patches(images: list[np.ndarray], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, 1, 28, 28), np.uint8)
    for i in range(n):
        img = images[rng.integers(len(images))]
        side = int(rng.integers(28, min(img.shape[:2]) // 2))
        r, c = rng.integers(0, img.shape[0] - side), rng.integers(0, img.shape[1] - side)
        out[i, 0] = _resize(np.ascontiguousarray(img[r : r + side, c : c + side]), (28, 28))
    return out


def _gray(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3:
        img = (img[..., :3] @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    return img.astype(np.uint8)


def photo_patches(n: int = 2000, seed: int = 0) -> np.ndarray:
    from skimage import data

    names = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text", "hubble_deep_field")
    return _patches([_gray(getattr(data, name)()) for name in names], n, seed)


def textures(n: int = 1000, seed: int = 1) -> np.ndarray:
    from skimage import data

    return _patches([_gray(getattr(data, name)()) for name in ("brick", "grass", "gravel")], n, seed)


def noise(n: int = 500, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


FAR_OOD_SETS = {
    "digits (simpler)": digits,
    "blank (simpler)": blank,
    "photo patches (more complex)": photo_patches,
    "textures (more complex)": textures,
    "uniform noise (more complex)": noise,
}


if __name__ == "__main__":
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Write the far-OOD sets as .npz files (array x).")
    parser.add_argument("out", type=Path, help="folder to write digits.npz, blank.npz, ... into")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, make in FAR_OOD_SETS.items():
        path = args.out / f"{name.split()[0]}.npz"
        np.savez(path, x=make()[:, 0])
        print(f"wrote {path}")
