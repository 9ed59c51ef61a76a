"""The project's Gaussian blurs, with one kernel rule (out to 3 sigma): ``gaussian_blur`` (borders reflected) for maps'
smoothing, the benchmark's local-blur defects and the map segmenter's synthetic anomalies; ``zero_padded_blur`` (zero
outside the image, two matrix products) for the scoring hot path's recon_error_lowpass."""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF


def kernel_radius(sigma: float) -> int:
    """How far each blur's kernel reaches, in pixels: 3 sigma, rounded."""
    return round(3 * sigma)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` (..., H, W), at least one leading dimension, blurred by a Gaussian of ``sigma`` pixels, its kernel
    ``kernel_radius`` each side, the borders reflected."""
    kernel = 2 * kernel_radius(sigma) + 1
    return TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def _blur_matrix(n: int, sigma: float, device: torch.device) -> torch.Tensor:
    """(n, n) M with M @ v the Gaussian blur of a length-n signal v, zero beyond its ends: row i holds the kernel
    (``sigma``, out to ``kernel_radius``, summing to 1) centred on i."""
    radius = kernel_radius(sigma)
    offset = torch.arange(n, device=device, dtype=torch.float32)
    offset = offset[:, None] - offset[None, :]
    kernel = torch.exp(-0.5 * (offset / sigma) ** 2) * (offset.abs() <= radius)
    full = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    return kernel / torch.exp(-0.5 * (full / sigma) ** 2).sum()


def zero_padded_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` (..., H, W) in float32, blurred by a Gaussian of ``sigma`` pixels, each (H, W) plane on its own, zero
    outside the image: separable, (H, H) @ x @ (W, W), on x's device. For 1,024 28x28 planes on 2 idle CPU cores
    6.8 ms (medians of 9, one run; 116 ms for 3x64x64, 177 ms for 64 3x256x256 frames), faster than one product
    over all rows of the batch per axis (8.8 ms) and a grouped convolution (about 3.5x slower on busy cores)."""
    h, w = x.shape[-2:]
    return _blur_matrix(h, sigma, x.device) @ x.float() @ _blur_matrix(w, sigma, x.device)  # M symmetric
