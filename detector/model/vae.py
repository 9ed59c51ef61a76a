"""VAE modules: a convolutional VAE for images of any size and channel count, an MLP VAE for vectors.

``encode`` gives the posterior's mean and log-variance, ``decode`` the likelihood's
parameters; scoring can use the mean latent without sampling. A conv VAE also carries a
small self-supervised head that tells which of four transformations (rotations) an image
went through, read from the encoder's features (``transform_nll``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
from torch import nn

from detector.config import ModelConfig
from detector.errors import ConfigError
from detector.model import likelihoods


def _conv_sizes(h: int, w: int, min_side: int = 7) -> list[tuple[int, int]]:
    """Spatial sizes per level; each stride-2 conv gives ceil(s / 2)."""
    sizes = [(h, w)]
    while min(sizes[-1]) > min_side and len(sizes) < 6:
        ph, pw = sizes[-1]
        sizes.append(((ph + 1) // 2, (pw + 1) // 2))
    return sizes


class ConvEncoder(nn.Module):
    def __init__(self, channels: int, sizes: list[tuple[int, int]], base: int, latent_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        width, out = channels, base
        for _ in sizes[1:]:
            # One stride-2 conv per level: 2 CPU cores train 28x28 at ~2,000 samples/s.
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.SiLU()]
            width, out = out, min(out * 2, 256)
        self.features = nn.Sequential(*layers)
        flat = width * sizes[-1][0] * sizes[-1][1]
        self.head = nn.Linear(flat, 2 * latent_dim)
        self.width = width
        self.flat = flat

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Convolutional features, flattened: (B, width * h * w)."""
        # Channels-last convolutions: the Scorer at batch 256 on 2 CPU cores went from 515 to 623 samples/s
        # (same values to 1e-7 relative; only the memory order differs).
        return self.features(x.contiguous(memory_format=torch.channels_last)).flatten(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.trunk(x)).chunk(2, dim=1)  # (B, Z) each
        return mu, logvar


N_TRANSFORMS = 4
TRANSFORM_HIDDEN = 256


def transform_chance_nats(views: int = N_TRANSFORMS) -> float:
    """transform_nll over ``views`` transformations of a head that only guesses."""
    return views * math.log(N_TRANSFORMS)


def apply_transform(x: torch.Tensor, t: int) -> torch.Tensor:
    """Transformation ``t`` of N_TRANSFORMS of images (B, C, H, W): rotation by t quarter turns for square
    images; identity, half turn, left-right and up-down flips otherwise (shape-preserving)."""
    if x.shape[-2] == x.shape[-1]:
        return torch.rot90(x, t, (2, 3))
    return (x, x.flip(2, 3), x.flip(3), x.flip(2))[t]


class ConvDecoder(nn.Module):
    def __init__(self, out_channels: int, sizes: list[tuple[int, int]], base: int, width: int, latent_dim: int):
        super().__init__()
        self.start = (width, *sizes[-1])
        self.project = nn.Linear(latent_dim, width * sizes[-1][0] * sizes[-1][1])
        layers: list[nn.Module] = []
        steps = list(zip(reversed(sizes[:-1]), reversed(sizes[1:])))
        for i, ((th, tw), (ih, iw)) in enumerate(steps):
            last = i == len(steps) - 1
            out = out_channels if last else max(width // 2, base)
            # output_padding makes each transposed conv the exact inverse of the encoder's ceil(s/2).
            pad = (th - (2 * ih - 1), tw - (2 * iw - 1))
            layers += [nn.SiLU(), nn.ConvTranspose2d(width, out, 3, stride=2, padding=1, output_padding=pad)]
            width = out
        if not steps:  # inputs already at the smallest size: a plain conv head
            layers += [nn.SiLU(), nn.Conv2d(width, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(-1, *self.start).contiguous(memory_format=torch.channels_last)  # (B, width, h, w)
        return self.net(h)  # (B, P*C, H, W)


class MLPEncoder(nn.Module):
    def __init__(self, dim: int, hidden: tuple[int, ...], latent_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        layers.append(nn.Linear(width, 2 * latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=1)
        return mu, logvar


class MLPDecoder(nn.Module):
    def __init__(self, dim_out: int, hidden: tuple[int, ...], latent_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim
        for h in reversed(hidden):
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        layers.append(nn.Linear(width, dim_out))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VAE(nn.Module):
    """Encoder, decoder and likelihood. Vector inputs are standardised inside the module."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.kind not in ("conv", "mlp") or cfg.likelihood not in likelihoods_names():
            raise ValueError("ModelConfig must be resolved (kind and likelihood chosen) before building")
        if cfg.transform_head and cfg.kind != "conv":
            raise ValueError("the transform head needs a conv VAE (image inputs)")
        self.cfg = cfg
        self.latent_dim = cfg.latent_dim
        self.transform_head: nn.Module | None = None
        per_dim = likelihoods.params_per_dim(cfg.likelihood)
        if cfg.kind == "conv":
            c, h, w = cfg.input_shape
            sizes = _conv_sizes(h, w)
            self.encoder = ConvEncoder(c, sizes, cfg.base_channels, cfg.latent_dim)
            self.decoder = ConvDecoder(per_dim * c, sizes, cfg.base_channels, self.encoder.width, cfg.latent_dim)
            if cfg.transform_head:
                self.transform_head = nn.Sequential(nn.Linear(self.encoder.flat, TRANSFORM_HIDDEN), nn.SiLU(),
                                                    nn.Linear(TRANSFORM_HIDDEN, N_TRANSFORMS))
        else:
            (d,) = cfg.input_shape
            self.encoder = MLPEncoder(d, cfg.hidden, cfg.latent_dim)
            self.decoder = MLPDecoder(per_dim * d, cfg.hidden, cfg.latent_dim)
        # Per-feature standardisation for vectors (identity for images); set from training data.
        self.register_buffer("input_mean", torch.zeros(cfg.input_shape))
        self.register_buffer("input_std", torch.ones(cfg.input_shape))

    @contextlib.contextmanager
    def autograd_safe(self):
        """Activations not in place for the duration, so a backward pass through the model works (maps.py)."""
        silus = [m for m in self.modules() if isinstance(m, nn.SiLU) and m.inplace]
        for m in silus:
            m.inplace = False
        try:
            yield self
        finally:
            for m in silus:
                m.inplace = True

    def for_inference(self) -> "VAE":
        """eval(), with every activation computed in place: the Scorer at batch 1024 on 2 CPU cores went from about
        1.5 to 1.2 s (less memory traffic; same values). Never for training: autograd needs the activations' inputs."""
        self.eval()
        for module in self.modules():
            if isinstance(module, nn.SiLU):
                module.inplace = True
        return self

    @property
    def input_dims(self) -> int:
        return math.prod(self.cfg.input_shape)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance for model-space inputs, (B, Z) each."""
        return self.encoder(self.normalize(x))

    def encode_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``encode``, plus a conv encoder's flattened features (None for vectors), which ``transform_nll``
        reuses for the untransformed view."""
        if self.cfg.kind != "conv":
            return (*self.encode(x), None)
        h = self.encoder.trunk(self.normalize(x))
        mu, logvar = self.encoder.head(h).chunk(2, dim=1)
        return mu, logvar, h

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One-sample training terms per sample, each (B,): -log p(x|z), KL(q(z|x) || p(z)), and the
        transform head's cross-entropy (zeros without a head).

        The training step goes through forward() so DistributedDataParallel can sync gradients.
        """
        xn = self.normalize(x)
        if self.transform_head is None:
            mu, logvar = self.encoder(xn)
            aux = torch.zeros(x.shape[0], device=x.device)
        else:
            h = self.encoder.trunk(xn)
            mu, logvar = self.encoder.head(h).chunk(2, dim=1)
            aux = self._transform_loss(xn, h.detach())
        nll = -self.log_likelihood(x, self.decode(self.reparameterize(mu, logvar, eps)))
        return nll, kl_divergence(mu.float(), logvar.float()), aux

    def _transform_loss(self, xn: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the head, (B,), with sample i of the batch turned by transformation i mod N_TRANSFORMS:
        batches are shuffled, so each sample meets every transformation over the epochs, and a step costs one
        extra encoder pass (three quarters of a batch) rather than N_TRANSFORMS - 1 of them.

        The encoder's features are read without gradient: the head learns from them but never shapes
        them, so the VAE (and every other score) trains exactly as it would without the head."""
        loss = torch.zeros(xn.shape[0], device=xn.device)
        for t in range(N_TRANSFORMS):
            rows = slice(t, None, N_TRANSFORMS)
            if t == 0:
                h = features[rows]
            else:
                with torch.no_grad():
                    h = self.encoder.trunk(apply_transform(xn[rows], t))
            loss[rows] = self._head_nll(h, t)
        return loss

    def _head_nll(self, features: torch.Tensor, t: int) -> torch.Tensor:
        """-log p(transformation t | features of the transformed images), (B,): the head's loss in training and
        each term of ``transform_nll`` in scoring."""
        return -torch.log_softmax(self.transform_head(features).float(), dim=1)[:, t]

    def transform_nll(self, x: torch.Tensor, features: torch.Tensor | None = None,
                      views: int = N_TRANSFORMS) -> torch.Tensor:
        """Sum over the first ``views`` transformations t of -log p(t | features of t(x)), (B,), for model-space
        images. A normal image's orientation is easy to tell; an unfamiliar one's is not (Golan & El-Yaniv 2018).
        ``features``: the encoder's features of x itself, when the caller has them (saves one encoder pass);
        each further view costs one encoder pass."""
        if self.transform_head is None:
            raise ValueError("this model has no transform head")
        xn = self.normalize(x)
        total = torch.zeros(x.shape[0], device=x.device)
        for t in range(views):
            h = features if t == 0 and features is not None else self.encoder.trunk(apply_transform(xn, t))
            total = total + self._head_nll(h, t)
        return total

    def log_likelihood(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in model space, (B,): the standardisation's Jacobian is included."""
        ll = likelihoods.log_likelihood(self.cfg.likelihood, self.normalize(x), params.float(), self.cfg.min_log_scale)
        return ll - torch.log(self.input_std).sum()

    def reconstruct(self, params: torch.Tensor) -> torch.Tensor:
        """Point reconstruction in model space."""
        rec = likelihoods.reconstruction(self.cfg.likelihood, params.float(), self.cfg.min_log_scale)
        return rec * self.input_std + self.input_mean


def likelihoods_names() -> tuple[str, ...]:
    from detector.config import LIKELIHOODS

    return LIKELIHOODS


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per sample, (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def resolve_model_config(cfg: ModelConfig, kind: str, input_shape: tuple[int, ...]) -> ModelConfig:
    """Fill in what 'auto' leaves open from the data: architecture, likelihood, input shape."""
    model_kind = cfg.kind if cfg.kind != "auto" else ("conv" if kind == "image" else "mlp")
    if model_kind == "conv" and len(input_shape) != 3:
        raise ConfigError(f'[model] kind = "conv" needs images (C, H, W); this data has samples of shape '
                          f'{tuple(input_shape)}: use kind = "mlp" or "auto"')
    likelihood = cfg.likelihood if cfg.likelihood != "auto" else ("logistic" if kind == "image" else "gaussian")
    flat = (math.prod(input_shape),) if model_kind == "mlp" and len(input_shape) > 1 else tuple(input_shape)
    return dataclasses.replace(cfg, kind=model_kind, likelihood=likelihood, input_shape=flat,
                               transform_head=cfg.transform_head and model_kind == "conv")
