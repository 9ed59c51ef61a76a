"""DB-VAE adaptive resampling during training: each epoch, refit the latent histograms on the
current encoder and draw that epoch's batches with the resulting weights."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from detector.config import DebiasConfig
from detector.debias.density import LatentDensity
from detector.distributed import DistContext
from detector.model.vae import VAE
from detector.scoring.latent import latent_means_of


def debias_weights_fn(data: torch.Tensor, debias: DebiasConfig) -> Callable[[VAE, DistContext], torch.Tensor]:
    """Each call: the current encoder's latent means -> a fresh density -> this epoch's draw weights, for
    every row of ``data``. Under torchrun each rank encodes every world-th row and the means are gathered:
    the density is global, the encoding work is split."""
    def weights(model: VAE, dist: DistContext) -> torch.Tensor:
        device = next(model.parameters()).device
        local = torch.from_numpy(latent_means_of(model, dist.stride(data), device)).to(device)
        mus = dist.gather_strided(local, data.shape[0]).cpu().numpy()
        return torch.from_numpy(LatentDensity.from_config(mus, debias).weights(mus).astype(np.float64))

    return weights
