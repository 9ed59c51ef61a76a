"""The anomaly-map head: a small U-Net that reads an image beside the VAE's reconstruction of it and gives, per
pixel, a logit for "this pixel departs from what the model knows" (the discriminative network of DRAEM, Zavrtanik et
al. 2021, on a VAE's reconstruction instead of a separately trained restorer).

Trained after the VAE, which stays frozen, on normal training images with generic synthetic anomalies
(detector/training/anomalies.py). It sees the reconstruction, so it learns where image and reconstruction disagree
in a way normal images do not: a VAE's blur on a garment's print is normal, a pasted patch the VAE cannot follow is
not. Its weights live in the bundle's model.safetensors under ``PREFIX`` (so they are part of the model version);
bundles written before it have none and keep the residual map (scoring/maps.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PREFIX = "map_segmenter."  # its weights' names in model.safetensors
CONFIG_KEY = "map_segmenter"  # its shape in config.json
WIDTHS = (16, 32, 64)  # channels at full, half and quarter resolution. (8, 24, 64) trained 1.45x faster but gave
# pixel AUROC 0.917 against 0.935 (scripts/bench_maps.py's defects, 1,500 steps)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class MapSegmenter(nn.Module):
    """(image, reconstruction), (B, C, H, W) each in model space -> per-pixel logits (B, H, W). Any H, W."""

    def __init__(self, channels: int, widths: tuple[int, int, int] = WIDTHS):
        super().__init__()
        self.channels, self.widths = channels, tuple(widths)
        self.steps = 0  # optimiser steps it was trained for (training/segmenter.py), kept in config.json
        w1, w2, w3 = self.widths
        self.down1, self.down2, self.down3 = _block(2 * channels, w1), _block(w1, w2), _block(w2, w3)
        self.up2, self.up1 = _block(w3 + w2, w2), _block(w2 + w1, w1)
        self.out = nn.Conv2d(w1, 1, 1)

    def forward(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(torch.cat([x, reconstruction], dim=1))
        d2 = self.down2(F.max_pool2d(d1, 2))
        d3 = self.down3(F.max_pool2d(d2, 2))
        u2 = self.up2(torch.cat([F.interpolate(d3, size=d2.shape[-2:]), d2], dim=1))
        u1 = self.up1(torch.cat([F.interpolate(u2, size=d1.shape[-2:]), d1], dim=1))
        return self.out(u1)[:, 0]

    def config(self) -> dict:
        """What the bundle's config.json stores under CONFIG_KEY to rebuild it (``from_bundle``)."""
        return {"channels": self.channels, "widths": list(self.widths), "steps": self.steps}

    def stored_with(self, config: dict, weights: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
        """A bundle's config and weights with this segmenter in them, replacing any it held (the inverse of
        ``from_bundle``); the arguments are left as they are."""
        mine = {PREFIX + k: v.detach().cpu() for k, v in self.state_dict().items()}
        return {**config, CONFIG_KEY: self.config()}, {**model_weights(weights), **mine}

    @classmethod
    def from_bundle(cls, config: dict, weights: dict[str, torch.Tensor]) -> "MapSegmenter | None":
        """The bundle's segmenter, or None for bundles written before it (config.json has no "map_segmenter")."""
        spec = config.get(CONFIG_KEY)
        if spec is None:
            return None
        segmenter = cls(int(spec["channels"]), tuple(int(w) for w in spec["widths"]))
        segmenter.steps = int(spec.get("steps", 0))
        segmenter.load_state_dict({k[len(PREFIX):]: v for k, v in weights.items() if k.startswith(PREFIX)})
        return segmenter.eval()


@torch.no_grad()
def reconstruction(model, x: torch.Tensor) -> torch.Tensor:
    """The VAE's point reconstruction at the posterior mean, in model space: what the segmenter reads beside x."""
    mu, _ = model.encode(x)
    return model.reconstruct(model.decode(mu))


@torch.no_grad()
def segment(segmenter: MapSegmenter, model, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel logits (B, H, W) float32 of a model-space batch."""
    return segmenter(x, reconstruction(model, x)).float()


def model_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE's own weights: a bundle's weights without the segmenter's."""
    return {k: v for k, v in weights.items() if not k.startswith(PREFIX)}

