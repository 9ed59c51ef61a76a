"""Latent-density resampling weights after DB-VAE (Amini et al. 2019).

Per latent dimension, a histogram of the training set's encoder means estimates the
density Q_d. A sample's weight is prod_d 1 / (Q_d(mu_d) + alpha) (the paper; computed in
log space), or max_d of the per-dimension weights (the MIT lab's variant), normalised so
the training set's mean weight is 1: a weight of 3 means "draw this three times as often".

Two departures from the paper, both measured on Fashion-MNIST with one class cut to 2% of
its share (scripts/bench_debias.py): the histograms are taken along the principal axes of the
latent means, whitened (the aggregate posterior's means are correlated, so a region that is
rare jointly can look common along every raw axis), and weights are capped at
``max_ratio`` x the mean (a product over 16 dimensions otherwise gives a handful of outliers
weights of 1e6 and everyone else nearly nothing). A sample is flagged for resampling when
its uncapped weight is among the largest ``rare_fraction`` of the training set's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from detector.config import DebiasConfig
from detector.model.device import numpy_or_tensor, on_device

COMBINES = ("product", "max")


@dataclass
class LatentDensity:
    edges: np.ndarray  # (Z, bins + 1)
    density: np.ndarray  # (Z, bins), each row sums to 1 (probability mass per bin)
    alpha: float
    combine: str
    log_normalizer: float  # subtracted from raw log weights: capped weights average 1 on the training set
    flag_log_weight: float  # normalised log weight at or above which a sample is flagged
    center: np.ndarray | None = None  # (Z,) whitening: coordinates are (mu - center) @ transform
    transform: np.ndarray | None = None  # (Z, Z)
    log_cap: float = np.inf  # log of the largest weight
    _on_device: dict = field(default_factory=dict, repr=False, compare=False)  # tensor copies (on_device)

    @classmethod
    def fit(cls, latent_means: np.ndarray, bins: int = 10, alpha: float = 0.01, combine: str = "product",
            rare_fraction: float = 0.05, whiten: bool = True, max_ratio: float = np.inf) -> "LatentDensity":
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine}")
        mus = np.asarray(latent_means, np.float64)
        center, transform = _whitening(mus) if whiten else (None, None)
        coords = mus if center is None else (mus - center) @ transform
        z = mus.shape[1]
        edges = np.empty((z, bins + 1))
        density = np.empty((z, bins))
        for d in range(z):
            counts, edges[d] = np.histogram(coords[:, d], bins=bins)
            density[d] = counts / max(counts.sum(), 1)
        raw = cls(edges, density, alpha, combine, 0.0, np.inf, center, transform)
        raw_log_w = raw._raw_log_weights(mus)
        mean_log = float(np.logaddexp.reduce(raw_log_w) - np.log(len(raw_log_w)))
        log_w = raw_log_w - mean_log  # uncapped, mean weight 1
        log_cap = float(np.log(max_ratio))
        shift = _cap_shift(log_w, log_cap)
        flag = float(np.quantile(log_w - shift, 1.0 - rare_fraction))
        log_normalizer = mean_log + shift
        return cls(edges, density, alpha, combine, log_normalizer, flag, center, transform, log_cap)

    @classmethod
    def from_config(cls, latent_means: np.ndarray, debias: DebiasConfig) -> "LatentDensity":
        """Fitted with the ``[debias]`` settings."""
        return cls.fit(latent_means, debias.bins, debias.alpha, debias.combine, debias.rare_fraction, debias.whiten,
                       debias.max_draw_ratio)

    @numpy_or_tensor
    def _raw_log_weights(self, mus: torch.Tensor) -> torch.Tensor:
        as_t = lambda name: on_device(self._on_device, name, getattr(self, name), mus.device)  # noqa: E731
        coords = mus if self.center is None else (mus - as_t("center")) @ as_t("transform")  # (N, Z)
        # Outside the training range counts as the edge bin: rare, but not infinitely so.
        idx = torch.searchsorted(as_t("edges"), coords.T.contiguous(), right=True) - 1  # (Z, N)
        idx = idx.clamp(0, self.density.shape[1] - 1)
        per_dim = -torch.log(torch.gather(as_t("density"), 1, idx) + self.alpha)  # (Z, N)
        return per_dim.sum(dim=0) if self.combine == "product" else per_dim.max(dim=0).values

    def log_weights(self, latent_means):
        """Uncapped log weights: their order says how rare a latent region is. numpy or tensors (on any device)."""
        return self._raw_log_weights(latent_means) - self.log_normalizer

    def weights(self, latent_means):
        """(N,) float32 resampling weights, at most the cap; the training set averages 1."""
        log_w = self.log_weights(latent_means)
        if isinstance(log_w, torch.Tensor):
            return torch.exp(log_w.clamp_max(self.log_cap)).float()
        return np.exp(np.minimum(log_w, self.log_cap)).astype(np.float32)

    def flags(self, latent_means):
        return self.log_weights(latent_means) >= self.flag_log_weight

    def to_arrays(self) -> dict[str, np.ndarray]:
        z = self.edges.shape[0]
        return {"hist_edges": self.edges, "hist_density": self.density,
                "hist_center": np.zeros(z) if self.center is None else self.center,
                "hist_transform": np.eye(z) if self.transform is None else self.transform,
                "hist_params": np.array([self.alpha, COMBINES.index(self.combine), self.log_normalizer,
                                         self.flag_log_weight, self.log_cap])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "LatentDensity | None":
        if "hist_edges" not in arrays:
            return None
        # Bundles written before whitening and capping hold 4 parameters and no transform: raw axes, no cap.
        alpha, combine, log_norm, flag, *rest = arrays["hist_params"].tolist()
        return cls(arrays["hist_edges"], arrays["hist_density"], alpha, COMBINES[int(combine)], log_norm, flag,
                   arrays.get("hist_center"), arrays.get("hist_transform"), rest[0] if rest else np.inf)


def _whitening(mus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Center and (Z, Z) map onto unit-variance principal axes; collapsed directions keep unit scale."""
    center = mus.mean(axis=0)
    _, s, vt = np.linalg.svd(mus - center, full_matrices=False)
    scale = s / np.sqrt(max(len(mus) - 1, 1))
    return center, vt.T / np.maximum(scale, 1e-6)


def _cap_shift(log_w: np.ndarray, log_cap: float) -> float:
    """The shift S <= 0 for which exp(min(log_w - S, log_cap)) averages 1 (log_w averages 1 uncapped)."""
    if not np.isfinite(log_cap) or log_w.max() <= log_cap:
        return 0.0

    def mean_weight(shift: float) -> float:
        return float(np.exp(np.minimum(log_w - shift, log_cap)).mean())

    lo, hi = float(log_w.min()) - log_cap, 0.0  # at lo every weight sits at the cap (mean >= 1), at hi mean <= 1
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_weight(mid) > 1.0 else (lo, mid)
    return (lo + hi) / 2
