"""DB-VAE latent-density debiasing: resampling weights and the training sampler."""
