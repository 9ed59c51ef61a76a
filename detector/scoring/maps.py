"""Per-pixel anomaly maps: where in an image the model sees the anomaly.

A bundle trained with this version holds a map segmenter (model/segmenter.py): a small U-Net that reads the image
beside the VAE's reconstruction of it and gives each pixel a logit for "departs from what the model knows here",
trained after the VAE on normal training images with generic synthetic anomalies (training/anomalies.py), as DRAEM
trains its discriminative network. Its logits, smoothed by a Gaussian of ``SEGMENTER_SMOOTHING`` pixels at 28x28,
are the map. Bundles without one (trained with ``map_steps = 0``, or written before it) keep the earlier map: the
reconstruction residual at the posterior mean, weighted by how strongly the pixel pulls on the negative ELBO,
sqrt(sum_c (x - x_hat)^2) * sum_c |d neg_elbo / d x| (the "combined" map of Zimmerer et al. 2019), smoothed by a
Gaussian of ``smoothing_sigma(H, W, SMOOTHING)`` pixels (2 at 28x28).

Either map is then standardised by one centre and one spread fitted on held-out normal data, so 0 is its median
pixel and 2.33 its 99th percentile pixel (as for a standard normal variable): most of a normal image's pixels, being
background, sit near 0, so a spread measured around the median would make every edge look anomalous.

Chosen by measurement on synthetic defects (scripts/bench_maps.py, docs/benchmarks/maps.md; the segmenter never
trains on those defects' generator): pixel AUROC 0.952 and PRO 0.723 for the segmenter, against 0.858 and 0.550 for
the residual map, 0.814 for the residual alone, 0.565 for the input gradient alone, 0.941 for the sum of the
segmenter's and the residual map (each standardised), 0.932 for the segmenter standardised per location (each pixel
against the normal maps' mean and spread at that location, as anomaly-map tools often do: a detailed region is
detailed wherever a garment puts it, so the standardisation is one affine map for the whole image, which leaves the
ranking of pixels as it is). The segmenter's map smoothed by 0, 1 and 2 pixels at 28x28 gave 0.949, 0.952 and 0.952,
PRO 0.728, 0.723 and 0.701 (1 pixel added 0.002-0.006 in each of 14 other segmenters measured); the
residual map's 1, 2 and 3 pixels gave 0.845, 0.858, 0.858. The bundle stores the smoothing its scale was fitted with
(bundles calibrated before it was stored used ``LEGACY_SMOOTHING``; those of 2026-12-01 hold 0 for the segmenter).

The segmenter's map costs one more encoder and decoder pass and the segmenter's forward pass; the residual map one
more encoder and decoder pass with a backward pass to the input. Either is computed only when asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from detector.data.blur import gaussian_blur
from detector.errors import BundleError
from detector.model.segmenter import MapSegmenter, segment
from detector.model.vae import VAE, kl_divergence

Z_99 = 2.326  # the 99th percentile of a standard normal: the normal maps' 99th percentile pixel maps to it
CENTER, SPREAD = "map/center", "map/spread"  # the bundle's calibration arrays
MAX_FIT_PIXELS = 1_000_000
SMOOTHING_KEY = "map/smoothing"
MAP_CHUNK_DIMS = 1024 * 28 * 28  # input values per backward pass: 1,024 28x28 images, 16 3x128x128 frames
SMOOTHING = 2.0  # the Gaussian's sigma in pixels per 28 pixels of the image's longer side
SEGMENTER_SMOOTHING = 1.0  # the segmenter's maps: measured in scripts/bench_maps.py
LEGACY_SMOOTHING = 1.0  # what bundles calibrated before the smoothing was stored were fitted with


def smoothing_sigma(height: int, width: int, smoothing: float) -> float:
    """``smoothing`` pixels at 28x28, growing with the image (a defect covers more pixels of a larger frame)."""
    return smoothing * max(height, width) / 28.0


def map_terms(model: VAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of the map, (B, H, W) each: the residual's norm over channels at the posterior mean, and
    the sum over channels of |d neg_elbo / d x| (scripts/bench_maps.py also measures each alone)."""
    with torch.inference_mode(False), torch.enable_grad(), model.autograd_safe():
        x = x.detach().clone().float().requires_grad_(True)
        mu, logvar = model.encode(x)
        params = model.decode(mu.float())
        neg_elbo = -model.log_likelihood(x, params) + kl_divergence(mu.float(), logvar.float())
        (grad,) = torch.autograd.grad(neg_elbo.sum(), x)
        residual = (model.reconstruct(params).detach() - x.detach()).pow(2).sum(dim=1).sqrt()
    return residual, grad.abs().sum(dim=1)


def smooth(maps: torch.Tensor, smoothing: float) -> torch.Tensor:
    if smoothing <= 0:
        return maps.float()
    return gaussian_blur(maps[:, None], smoothing_sigma(*maps.shape[-2:], smoothing))[:, 0].float()


def raw_maps(model: VAE, x: torch.Tensor, smoothing: float, segmenter: MapSegmenter | None = None) -> torch.Tensor:
    """Unstandardised maps (B, H, W) float32 for a model-space batch ``x`` (B, C, H, W): the segmenter's logits
    when the bundle has one, else the residual x gradient map; computed MAP_CHUNK_DIMS input values at a time (the
    residual map's backward pass keeps every activation, so its memory grows with the chunk)."""
    per_call = max(1, MAP_CHUNK_DIMS // math.prod(x.shape[1:]))
    parts = []
    for start in range(0, x.shape[0], per_call):
        chunk = x[start:start + per_call]
        if segmenter is not None:
            parts.append(smooth(segment(segmenter, model, chunk), smoothing))
        else:
            residual, grad = map_terms(model, chunk)
            parts.append(smooth(residual * grad, smoothing))
    return torch.cat(parts)


def fitted_smoothing(segmenter: MapSegmenter | None) -> float:
    """The smoothing a new map scale is fitted with: the segmenter's maps are smooth already."""
    return SMOOTHING if segmenter is None else SEGMENTER_SMOOTHING


@dataclass(frozen=True)
class MapScale:
    center: float
    spread: float
    smoothing: float  # what the maps were smoothed with (``smooth``) when the centre and spread were fitted

    @classmethod
    def fit(cls, normal_maps: np.ndarray, smoothing: float) -> "MapScale":
        """From raw maps of held-out normal images (N, H, W) smoothed with ``smoothing``; a subsample of their
        pixels is enough."""
        values = np.asarray(normal_maps, dtype=np.float32).ravel()
        if len(values) > MAX_FIT_PIXELS:
            values = np.random.default_rng(0).choice(values, MAX_FIT_PIXELS, replace=False)
        values = values.astype(np.float64)
        center, q99 = (float(v) for v in np.quantile(values, [0.5, 0.99]))
        spread = (q99 - center) / Z_99 or float(values.std()) or 1.0
        return cls(center, spread, smoothing)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {CENTER: np.array([self.center]), SPREAD: np.array([self.spread]),
                SMOOTHING_KEY: np.array([self.smoothing])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "MapScale | None":
        """None for bundles calibrated before maps existed."""
        if CENTER not in arrays:
            return None
        smoothing = float(arrays[SMOOTHING_KEY][0]) if SMOOTHING_KEY in arrays else LEGACY_SMOOTHING
        return cls(float(arrays[CENTER][0]), float(arrays[SPREAD][0]), smoothing)

    def maps(self, model: VAE, x: torch.Tensor, segmenter: MapSegmenter | None = None) -> torch.Tensor:
        """Standardised maps (B, H, W) of a model-space batch, smoothed as the scale was fitted."""
        return (raw_maps(model, x, self.smoothing, segmenter) - self.center) / self.spread


def require_map_scale(scale: MapScale | None) -> MapScale:
    if scale is None:
        raise BundleError("this bundle has no anomaly-map calibration (written before maps existed): run "
                          "'detector calibrate' on it to add one")
    return scale
