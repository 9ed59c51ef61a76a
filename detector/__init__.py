"""vae-detector: anomaly detection with variational autoencoders."""

__version__ = "0.1.0"
