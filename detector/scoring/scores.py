"""Per-sample score functions: pure functions of a model and a batch, batched on its device.

Every stochastic estimate uses one fixed set of K standard-normal draws shared by all
samples (common random numbers), so a sample's scores do not depend on which batch it
travelled in: the server, the audit and the CLI give identical numbers.
"""

from __future__ import annotations

import math

import torch

from detector.model.vae import VAE, kl_divergence
from detector.scoring.latent import LatentReference

# Raw scores computed here; the primary novelty score is built from them in novelty.py.
# latent_knn needs a bundle with a k-NN reference, transform_nll a conv model with a transform head (all image
# bundles written since each was added).
RAW_SCORES = ("neg_elbo", "neg_elbo_bpd", "iw_nll", "recon_error", "kl", "latent_distance", "latent_knn",
              "transform_nll")
_LOG_2PI = math.log(2 * math.pi)


def fixed_noise(k: int, latent_dim: int, seed: int = 1234) -> torch.Tensor:
    """The shared K x Z draws used by every stochastic estimate."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, latent_dim, generator=g)  # (K, Z)


@torch.inference_mode()
def raw_scores(
    model: VAE,
    x: torch.Tensor,
    eps: torch.Tensor,
    reference: LatentReference,
    chunk: int = 4096,
) -> dict[str, torch.Tensor]:
    """Every raw score for a model-space batch ``x`` (B, ...), each (B,) float32.

    neg_elbo: -E_q[log p(x|z)] + KL(q||p), nats, K-sample Monte Carlo with analytic KL.
    iw_nll: -log (1/K sum_k p(x,z_k)/q(z_k|x)), the importance-weighted bound (Burda 2016).
    recon_error: mean squared error of the decoder's reconstruction at the posterior mean.
    kl: KL(q(z|x) || N(0, I)).
    latent_distance, latent_knn: distances of the posterior mean from the training latents (latent.py).
    transform_nll: how badly the transform head tells the image's rotations apart (VAE.transform_nll).
    """
    mu, logvar = model.encode(x)  # (B, Z) each
    mu, logvar = mu.float(), logvar.float()
    params = model.decode(mu)
    recon = model.reconstruct(params)
    recon_error = (recon - x).pow(2).flatten(1).mean(dim=1)  # (B,)
    kl = kl_divergence(mu, logvar)

    k = eps.shape[0]
    std = torch.exp(0.5 * logvar)
    expected_ll, iw = [], []
    per_chunk = max(1, chunk // k)
    for start in range(0, x.shape[0], per_chunk):
        sl = slice(start, start + per_chunk)
        z = mu[sl, None, :] + std[sl, None, :] * eps[None]  # (b, K, Z)
        b = z.shape[0]
        params_k = model.decode(z.reshape(b * k, -1))
        x_k = x[sl].unsqueeze(1).expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
        ll = model.log_likelihood(x_k, params_k).view(b, k)  # (b, K)
        log_pz = -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)
        log_qz = -0.5 * (eps.pow(2)[None] + _LOG_2PI + logvar[sl, None, :]).sum(-1)
        log_w = ll + log_pz - log_qz
        expected_ll.append(ll.mean(dim=1))
        iw.append(torch.logsumexp(log_w, dim=1) - math.log(k))
    neg_elbo = -torch.cat(expected_ll) + kl
    return {
        "neg_elbo": neg_elbo,
        "neg_elbo_bpd": neg_elbo / (model.input_dims * math.log(2)),
        "iw_nll": -torch.cat(iw),
        "recon_error": recon_error,
        "kl": kl,
        **reference.distances(mu),
        **({"transform_nll": model.transform_nll(x)} if model.transform_head is not None else {}),
        "latent_mean_": mu,  # not a score: handed on for debiasing and audit plots
    }
