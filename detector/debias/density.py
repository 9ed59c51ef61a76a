"""Latent-density resampling weights after DB-VAE (Amini et al. 2019).

Per latent dimension, a histogram of the training set's encoder means estimates the
density Q_d. A sample's weight is prod_d 1 / (Q_d(mu_d) + alpha) (the paper; computed in
log space), or max_d of the per-dimension weights (the MIT lab's variant), normalised so
the training set's mean weight is 1: a weight of 3 means "draw this three times as often".
A sample is flagged for resampling when its weight is among the largest ``rare_fraction``
of the training set's weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMBINES = ("product", "max")


@dataclass
class LatentDensity:
    edges: np.ndarray  # (Z, bins + 1)
    density: np.ndarray  # (Z, bins), each row sums to 1 (probability mass per bin)
    alpha: float
    combine: str
    log_normalizer: float  # log of the training set's mean raw weight
    flag_log_weight: float  # normalised log weight at or above which a sample is flagged

    @classmethod
    def fit(cls, latent_means: np.ndarray, bins: int = 10, alpha: float = 0.01, combine: str = "product",
            rare_fraction: float = 0.05) -> "LatentDensity":
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine}")
        mus = np.asarray(latent_means, np.float64)
        z = mus.shape[1]
        edges = np.empty((z, bins + 1))
        density = np.empty((z, bins))
        for d in range(z):
            counts, edges[d] = np.histogram(mus[:, d], bins=bins)
            density[d] = counts / max(counts.sum(), 1)
        raw = cls(edges, density, alpha, combine, 0.0, np.inf)
        log_w = raw._raw_log_weights(mus)
        log_normalizer = float(np.logaddexp.reduce(log_w) - np.log(len(log_w)))
        normalised = log_w - log_normalizer
        flag = float(np.quantile(normalised, 1.0 - rare_fraction))
        return cls(edges, density, alpha, combine, log_normalizer, flag)

    def _raw_log_weights(self, mus: np.ndarray) -> np.ndarray:
        per_dim = np.empty(mus.shape)
        for d in range(mus.shape[1]):
            # Outside the training range counts as the edge bin: rare, but not infinitely so.
            idx = np.clip(np.searchsorted(self.edges[d], mus[:, d], side="right") - 1, 0, self.density.shape[1] - 1)
            per_dim[:, d] = -np.log(self.density[d, idx] + self.alpha)
        return per_dim.sum(axis=1) if self.combine == "product" else per_dim.max(axis=1)

    def log_weights(self, latent_means: np.ndarray) -> np.ndarray:
        return self._raw_log_weights(np.asarray(latent_means, np.float64)) - self.log_normalizer

    def weights(self, latent_means: np.ndarray) -> np.ndarray:
        """(N,) resampling weights; the training set averages 1."""
        return np.exp(self.log_weights(latent_means)).astype(np.float32)

    def flags(self, latent_means: np.ndarray) -> np.ndarray:
        return self.log_weights(latent_means) >= self.flag_log_weight

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"hist_edges": self.edges, "hist_density": self.density,
                "hist_params": np.array([self.alpha, COMBINES.index(self.combine), self.log_normalizer,
                                         self.flag_log_weight])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "LatentDensity | None":
        if "hist_edges" not in arrays:
            return None
        alpha, combine, log_norm, flag = arrays["hist_params"].tolist()
        return cls(arrays["hist_edges"], arrays["hist_density"], alpha, COMBINES[int(combine)], log_norm, flag)
