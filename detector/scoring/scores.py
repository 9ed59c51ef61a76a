"""Per-sample score functions: pure functions of a model and a batch, batched on its device.

Every stochastic estimate uses one fixed set of standard-normal draws shared by all samples
(common random numbers), so a sample's scores do not depend on which batch it travelled in:
the server, the audit and the CLI give identical numbers.

What the server returns by default costs one encoder pass, one decoder pass (at the ELBO's draw, which
also gives the reconstruction error) and tensor arithmetic; the costlier diagnostics are computed only
when asked for by name (``DIAGNOSTICS``).
"""

from __future__ import annotations

import math

import torch

from detector.data.blur import kernel_radius, zero_padded_blur
from detector.model.vae import N_TRANSFORMS, VAE, kl_divergence
from detector.scoring.complexity import residual_statistics, wavelet_statistics
from detector.scoring.latent import LatentReference

# Asked for by name, never computed by default: iw_nll costs K decoder passes; complexity is a JPEG 2000 encode
# per sample on the CPU (it and complexity_corrected are filled in by the Scorer, which holds the raw bytes).
DIAGNOSTICS = ("iw_nll", "complexity")
_LOG_2PI = math.log(2 * math.pi)
# ``chunk`` counts decoded samples of this many dimensions (a 28x28 image): a decoder call holds about chunk x
# CHUNK_DIMS output values whatever the image size, so 3x128x128 frames go 63 times fewer per call than 28x28 ones
# (at 4096, a whole-chunk decode of 3x128x128 frames peaked at 8 GB of RSS).
CHUNK_DIMS = 28 * 28
# recon_error_lowpass: the residual blurred by a Gaussian of this many pixels (the kernel reaches LOWPASS_RADIUS)
# before it is squared. A VAE's reconstruction lacks the finest detail of normal and novel inputs alike; without
# it the error measures shape. As the fusion's part and statistic in place of recon_error, one-class Fashion-MNIST
# went from 0.944 to 0.948 mean novelty AUROC over twenty models (docs/benchmarks/quality.md); alone 0.906 -> 0.929,
# and widths of 1 to 2 pixels within 0.0003 of each other fused (README, "Scores").
LOWPASS_SIGMA = 1.5
LOWPASS_RADIUS = kernel_radius(LOWPASS_SIGMA)  # 4


def fixed_noise(k: int, latent_dim: int, seed: int = 1234) -> torch.Tensor:
    """The shared K x Z draws used by every stochastic estimate."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, latent_dim, generator=g)  # (K, Z)


def _sampled_terms(model: VAE, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor,
                   chunk: int, recon_at: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Mean log p(x|z_k) and the importance-weighted log p(x) estimate over the K draws z_k = mu + std * eps_k,
    each (B,), evaluated ``chunk`` samples x K at a time; and with ``recon_at`` the reconstruction (B, ...): at the
    first draw ("draw": no extra decoding) or at the posterior mean ("mean": decoded in the same call as the draws,
    B more samples)."""
    k = eps.shape[0]
    with_mean = recon_at == "mean"
    std = torch.exp(0.5 * logvar)
    expected_ll, iw, recon = [], [], []
    per_chunk = max(1, chunk * CHUNK_DIMS // ((k + with_mean) * max(model.input_dims, CHUNK_DIMS)))
    for start in range(0, x.shape[0], per_chunk):
        sl = slice(start, start + per_chunk)
        z = mu[sl, None, :] + std[sl, None, :] * eps[None]  # (b, K, Z)
        b = z.shape[0]
        params = model.decode(torch.cat([mu[sl], z.reshape(b * k, -1)]) if with_mean else z.reshape(b * k, -1))
        params_k = params[b:] if with_mean else params
        if recon_at is not None:  # the mean's row of each sample, or its first draw's (rows are sample-major)
            recon.append(model.reconstruct(params[:b] if with_mean else params_k.unflatten(0, (b, k))[:, 0]))
        x_k = x[sl].unsqueeze(1).expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
        ll = model.log_likelihood(x_k, params_k).view(b, k)  # (b, K)
        log_pz = -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)
        log_qz = -0.5 * (eps.pow(2)[None] + _LOG_2PI + logvar[sl, None, :]).sum(-1)
        expected_ll.append(ll.mean(dim=1))
        iw.append(torch.logsumexp(ll + log_pz - log_qz, dim=1) - math.log(k))
    return torch.cat(expected_ll), torch.cat(iw), torch.cat(recon) if recon_at is not None else None


def lowpass_error(residual: torch.Tensor) -> torch.Tensor:
    """Mean square of image residuals (B, C, H, W) after a Gaussian blur of LOWPASS_SIGMA pixels, each channel on
    its own (zero outside the image), (B,): ``zero_padded_blur``, about 10 ms of a 450 ms Scorer call at batch 1024
    on 2 CPU cores."""
    return zero_padded_blur(residual, LOWPASS_SIGMA).pow(2).flatten(1).mean(dim=1)


@torch.inference_mode()
def raw_scores(
    model: VAE,
    x: torch.Tensor,
    eps: torch.Tensor,
    reference: LatentReference,
    chunk: int = 4096,
    iw_eps: torch.Tensor | None = None,
    transform_views: int = N_TRANSFORMS,
    recon_at: str = "draw",
) -> dict[str, torch.Tensor]:
    """Every raw score for a model-space batch ``x`` (B, ...), each (B,) float32.

    neg_elbo: -E_q[log p(x|z)] + KL(q||p), nats: a Monte Carlo estimate over the K = len(eps) shared draws
        (default 1), analytic KL.
    recon_error: mean squared error of the decoder's reconstruction at the ELBO's first draw (``recon_at`` "draw":
        the decoder pass the ELBO already makes; the draws are fixed, so the value is too) or at the posterior mean
        ("mean": one more decoder pass; bundles written before 2026-12-02).
    recon_error_lowpass (images): the same residual's mean square after a Gaussian blur (``lowpass_error``).
    kl: KL(q(z|x) || N(0, I)), the rate; posterior_log_var: sum of the posterior's log-variances.
    latent_distance, latent_knn: distances of the posterior mean from the training latents (latent.py).
    transform_nll: how badly the transform head tells the image's turns apart, over the first ``transform_views``
        of them (VAE.transform_nll); not computed with transform_views = 0.
    code_length, residual_log_magnitude, residual_magnitude (images): how complex the input is, from a predictive
        lossless code of its pixels; wavelet_level_1..3 (images): how much detail it has at each of three scales
        (complexity.py);
    intensity_mean, intensity_std: the input's own mean and spread, in model space.
    iw_nll (only with ``iw_eps``): -log (1/K sum_k p(x,z_k)/q(z_k|x)) over K = len(iw_eps) draws (Burda 2016).
    """
    mu, logvar, features = model.encode_with_features(x)  # (B, Z) each; conv features or None
    mu, logvar = mu.float(), logvar.float()
    expected_ll, iw, recon = _sampled_terms(model, x, mu, logvar, eps, chunk, recon_at)
    kl = kl_divergence(mu, logvar)
    neg_elbo = -expected_ll + kl
    flat = x.float().flatten(1)
    residual = recon - x
    out = {
        "neg_elbo": neg_elbo,
        "neg_elbo_bpd": neg_elbo / (model.input_dims * math.log(2)),
        "recon_error": residual.pow(2).flatten(1).mean(dim=1),
        "kl": kl,
        "posterior_log_var": logvar.sum(dim=1),
        **reference.distances(mu),
        "intensity_mean": flat.mean(dim=1),
        "intensity_std": flat.std(dim=1),
        "latent_mean_": mu,  # not a score: handed on for debiasing and audit plots
    }
    if model.cfg.kind == "conv":
        out["recon_error_lowpass"] = lowpass_error(residual)
        out.update(residual_statistics(x))
        out.update(wavelet_statistics(x))
    if model.transform_head is not None and transform_views > 0:
        out["transform_nll"] = model.transform_nll(x, features, transform_views)
    if iw_eps is not None:  # the same draws as the ELBO's (bundles from before this split): computed once
        out["iw_nll"] = -(iw if iw_eps is eps else _sampled_terms(model, x, mu, logvar, iw_eps, chunk)[1])
    return out
