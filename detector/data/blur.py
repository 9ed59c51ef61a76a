"""The one Gaussian blur of the project: maps' smoothing, the benchmark's local-blur defects and the map segmenter's
synthetic anomalies all blur with it."""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` (..., H, W), at least one leading dimension, blurred by a Gaussian of ``sigma`` pixels, its kernel 3
    sigma each side."""
    kernel = 2 * round(3 * sigma) + 1
    return TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
