"""Decoder likelihoods p(x|z). Each maps decoder output to per-sample log-likelihoods.

Pure functions of tensors; one value per sample, summed over every dimension of a sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def params_per_dim(likelihood: str) -> int:
    """How many decoder outputs each input dimension needs."""
    return 1 if likelihood == "cbernoulli" else 2


def _split(params: torch.Tensor, min_log_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean, raw_scale = params.chunk(2, dim=1)
    # softplus floor: the scale never drops below exp(min_log_scale), so flat backgrounds
    # cannot drive the density to infinity.
    return mean, min_log_scale + F.softplus(raw_scale - min_log_scale)


def _sum_per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(dim=1)  # (B,)


def log_likelihood(likelihood: str, x: torch.Tensor, params: torch.Tensor, min_log_scale: float) -> torch.Tensor:
    """log p(x|z) per sample, (B,). ``x`` is in model space (images in [0, 1])."""
    if likelihood == "cbernoulli":
        dist = torch.distributions.ContinuousBernoulli(logits=params, validate_args=False)
        return _sum_per_sample(dist.log_prob(x))
    mean, log_scale = _split(params, min_log_scale)
    if likelihood == "gaussian":
        log_prob = -0.5 * ((x - mean) * torch.exp(-log_scale)) ** 2 - log_scale - 0.5 * math.log(2 * math.pi)
        return _sum_per_sample(log_prob)
    if likelihood == "logistic":
        return _sum_per_sample(_discretized_logistic(x, mean, log_scale))
    raise ValueError(f"unknown likelihood {likelihood}")


def _discretized_logistic(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Log-probability of 8-bit pixels under a logistic discretized into 256 bins (Salimans 2017).

    ``x`` in [0, 1] is mapped to [-1, 1]; ``mean`` lives in [-1, 1] space.
    """
    x = x * 2.0 - 1.0
    centered = x - mean
    inv_scale = torch.exp(-log_scale)
    plus_in = inv_scale * (centered + 1.0 / 255.0)
    min_in = inv_scale * (centered - 1.0 / 255.0)
    log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid(plus_in), for the 0 bin
    log_one_minus_cdf_min = -F.softplus(min_in)  # for the 255 bin
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_scale * centered
    # When the bin mass underflows, use the density at the bin centre times the bin width.
    log_pdf_mid = mid_in - log_scale - 2.0 * F.softplus(mid_in) - math.log(127.5)
    inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp_min(1e-12)), log_pdf_mid)
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, inner))


def reconstruction(likelihood: str, params: torch.Tensor, min_log_scale: float) -> torch.Tensor:
    """The decoder's point reconstruction in model space."""
    if likelihood == "cbernoulli":
        return torch.sigmoid(params)
    mean, _ = _split(params, min_log_scale)
    if likelihood == "logistic":
        return ((mean + 1.0) / 2.0).clamp(0.0, 1.0)
    return mean
