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
# pixel AUROC 0.917 against 0.935 (scripts/bench_maps.py's defects, 1,500 steps); (16, 48, 96) 0.940 against 0.946
# in the same 200 s (fewer steps)
# How an up-block joins the coarser level to the finer: "add" (projected by a 1x1 convolution, then added, as a
# feature pyramid does) costs a third less per step than "concat" (U-Net's concatenation), and in the same 200 s of
# training gave pixel AUROC 0.946 against 0.933 (1,950 steps against 1,494). Bundles keep the one they trained with.
SKIPS = ("add", "concat")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class MapSegmenter(nn.Module):
    """(image, reconstruction), (B, C, H, W) each in model space -> per-pixel logits (B, H, W). Any H, W."""

    def __init__(self, channels: int, widths: tuple[int, int, int] = WIDTHS, skips: str = "add"):
        super().__init__()
        if skips not in SKIPS:
            raise ValueError(f"skips must be one of {SKIPS}, got {skips!r}")
        self.channels, self.widths, self.skips = channels, tuple(widths), skips
        self.steps = 0  # optimiser steps it was trained for (training/segmenter.py), kept in config.json
        w1, w2, w3 = self.widths
        self.down1, self.down2, self.down3 = _block(2 * channels, w1), _block(w1, w2), _block(w2, w3)
        if skips == "add":  # the coarser level, upsampled and projected (1x1), is added to the finer one
            self.lift2, self.lift1 = nn.Conv2d(w3, w2, 1), nn.Conv2d(w2, w1, 1)
            self.up2, self.up1 = _block(w2, w2), _block(w1, w1)
        else:  # "concat": bundles written before 2026-12-02
            self.up2, self.up1 = _block(w3 + w2, w2), _block(w2 + w1, w1)
        self.out = nn.Conv2d(w1, 1, 1)

    def _merge(self, level: int, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        """The input of up-block ``level``: ``coarse`` brought to ``fine``'s size, joined to it."""
        up = F.interpolate(coarse, size=fine.shape[-2:])
        if self.skips == "add":
            return getattr(self, f"lift{level}")(up) + fine
        return torch.cat([up, fine], dim=1)

    def forward(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(torch.cat([x, reconstruction], dim=1))
        d2 = self.down2(F.max_pool2d(d1, 2))
        d3 = self.down3(F.max_pool2d(d2, 2))
        u2 = self.up2(self._merge(2, d3, d2))
        u1 = self.up1(self._merge(1, u2, d1))
        return self.out(u1)[:, 0]

    def config(self) -> dict:
        """What the bundle's config.json stores under CONFIG_KEY to rebuild it (``from_bundle``)."""
        return {"channels": self.channels, "widths": list(self.widths), "skips": self.skips, "steps": self.steps}

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
        segmenter = cls(int(spec["channels"]), tuple(int(w) for w in spec["widths"]), spec.get("skips", "concat"))
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

