"""DB-VAE adaptive resampling during training: each epoch, refit the latent histograms on the
current encoder and draw that epoch's batches with the resulting weights."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from detector.debias.density import LatentDensity
from detector.model.vae import VAE
from detector.data.batches import sequential_batches


def latent_means_of(model: VAE, data: torch.Tensor, device: torch.device, batch_size: int = 1024) -> np.ndarray:
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        mus = [model.encode(x)[0].float().cpu() for x in sequential_batches(data, batch_size, device)]
    model.train(was_training)
    return torch.cat(mus).numpy()


def debias_weights_fn(data: torch.Tensor, device: torch.device, bins: int, alpha: float, combine: str,
                      max_draw_ratio: float) -> Callable[[VAE], torch.Tensor]:
    def weights(model: VAE) -> torch.Tensor:
        mus = latent_means_of(model, data, device)
        w = LatentDensity.fit(mus, bins, alpha, combine).weights(mus).astype(np.float64)
        return torch.from_numpy(cap_weights(w, max_draw_ratio))

    return weights


def cap_weights(w: np.ndarray, max_ratio: float, rounds: int = 20) -> np.ndarray:
    """Clip weights at ``max_ratio`` x their mean (repeatedly, as clipping lowers the mean); mean 1."""
    w = w / w.mean()
    for _ in range(rounds):
        if w.max() <= max_ratio * (1 + 1e-9):
            break
        w = np.minimum(w, max_ratio)
        w = w / w.mean()
    return w

