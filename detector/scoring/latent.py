"""Where a posterior mean lies relative to the training set's latent means.

Two distances, both in whitened latent coordinates (the training latents' covariance mapped
to the identity, so no latent direction dominates by scale):

- ``latent_distance``: squared Mahalanobis distance from the training latents' mean (one
  Gaussian; cheap, misses gaps between the modes of a multi-modal class);
- ``latent_knn``: mean Euclidean distance to the K nearest training latent means (follows
  the set's actual shape: a bag of an unusual kind sits between clusters, far from any).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from detector.config import DebiasConfig
from detector.data.batches import sequential_batches
from detector.debias.density import LatentDensity
from detector.model.vae import VAE

# Neighbours averaged. 2 since the reference shrank to 4,096 points: at 5, the far-OOD suite's sketches were
# caught 0.88 of the time at the 1% threshold, at 2 0.90 (1 to 20 were within 0.001 one-class AUROC); bundles
# written before keep 5 (README, "Scores").
KNN_K = 2
LEGACY_KNN_K = 5
KNN_MAX_REFERENCE = 4096  # training latents kept for the k-NN: its cost grows with the count (16,384 until the
# on-device score: a quarter of the Scorer's time; bundles written then keep theirs)
KNN_CANDIDATES = 16  # nearest by the fast matrix-product distance, then measured exactly
_MAX_DISTANCES = 1 << 22  # query x reference distances held at once (16 MB of float32)


def latent_means_of(model: VAE, data: torch.Tensor, device: torch.device, batch_size: int = 1024) -> np.ndarray:
    """The encoder's posterior means of ``data``, (N, Z) float32, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        mus = [model.encode(x)[0].float().cpu() for x in sequential_batches(data, batch_size, device)]
    model.train(was_training)
    return torch.cat(mus).numpy()


def fit_latent_density(model: VAE, data: torch.Tensor, device: torch.device, debias: DebiasConfig) -> dict:
    """From the training set's encoder means: a Gaussian (latent_distance), the whitened means
    themselves (latent_knn) and DB-VAE's per-dimension histograms (resampling weights)."""
    mus = torch.from_numpy(latent_means_of(model, data, device)).double()
    cov = torch.cov(mus.T) + 1e-6 * torch.eye(mus.shape[1], dtype=torch.float64)
    hist = LatentDensity.from_config(mus.numpy(), debias)
    mean, precision = mus.mean(0).numpy(), torch.linalg.inv(cov).numpy()
    return {"latent_mean": mean, "latent_precision": precision,
            "knn_reference": knn_reference(mus.numpy(), mean, precision), **hist.to_arrays()}


def whitening(precision: np.ndarray) -> np.ndarray:
    """(Z, Z) matrix W with (mu - mean) @ W whitened: the lower Cholesky factor of the precision. The stored
    reference and the queries must be whitened by this one function, or their distances mean nothing."""
    return np.linalg.cholesky(precision)


def knn_reference(mus: np.ndarray, mean: np.ndarray, precision: np.ndarray, seed: int = 0) -> np.ndarray:
    """Whitened training latent means, a seeded subsample of ``KNN_MAX_REFERENCE`` rows at most: (N, Z) float32."""
    if len(mus) > KNN_MAX_REFERENCE:
        mus = mus[np.sort(np.random.default_rng(seed).choice(len(mus), KNN_MAX_REFERENCE, replace=False))]
    return ((mus - mean) @ whitening(precision)).astype(np.float32)


@dataclass
class LatentReference:
    """The training latents' Gaussian and (optionally) k-NN reference, on the scoring device."""

    mean: torch.Tensor  # (Z,)
    precision: torch.Tensor  # (Z, Z)
    whiten: torch.Tensor  # (Z, Z): lower Cholesky factor of the precision
    points: torch.Tensor | None  # (N, Z) whitened training latent means, or None (bundles before k-NN)
    k: int = KNN_K  # neighbours averaged
    _norms: torch.Tensor | None = field(default=None, repr=False)  # squared norms of the points, computed once

    @classmethod
    def from_arrays(cls, density: dict[str, np.ndarray], latent_dim: int, device: torch.device,
                    k: int = KNN_K) -> "LatentReference":
        mean = np.asarray(density.get("latent_mean", np.zeros(latent_dim)), dtype=np.float64)
        precision = np.asarray(density.get("latent_precision", np.eye(latent_dim)), dtype=np.float64)
        points = density.get("knn_reference")
        as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
        return cls(as_t(mean), as_t(precision), as_t(whitening(precision)),
                   None if points is None or len(points) < k else as_t(points), k)

    def distances(self, mu: torch.Tensor) -> dict[str, torch.Tensor]:
        """``latent_distance`` and, with a reference, ``latent_knn`` for posterior means ``mu`` (B, Z)."""
        diff = mu - self.mean
        out = {"latent_distance": ((diff @ self.precision) * diff).sum(dim=1)}
        if self.points is not None:
            white = diff @ self.whiten  # (B, Z)
            rows = max(1, _MAX_DISTANCES // self.points.shape[0])
            out["latent_knn"] = torch.cat([self._knn(white[i:i + rows]) for i in range(0, white.shape[0], rows)])
        return out

    def _knn(self, white: torch.Tensor) -> torch.Tensor:
        """Mean distance to the k nearest reference points, (b,). Candidates come from the matrix-product form
        |p|^2 - 2 q.p (fast, but it loses the precision of small distances and changes with the batch); the
        distances averaged are then measured directly, so a sample's score does not depend on its batch."""
        if self._norms is None:
            self._norms = self.points.pow(2).sum(dim=1)  # (N,)
        approx = torch.addmm(self._norms[None], white, self.points.T, alpha=-2.0)  # (b, N)
        near = approx.topk(min(KNN_CANDIDATES, self.points.shape[0]), dim=1, largest=False).indices  # (b, C)
        exact = (white[:, None, :] - self.points[near]).pow(2).sum(dim=-1).sqrt()  # (b, C)
        return exact.topk(self.k, dim=1, largest=False).values.mean(dim=1)
