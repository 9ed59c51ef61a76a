"""nn.Modules, likelihoods and the bundle format. Imports no transport."""

from detector.model.vae import VAE, kl_divergence, resolve_model_config

__all__ = ["VAE", "kl_divergence", "resolve_model_config"]
