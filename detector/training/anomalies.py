"""Generic synthetic anomalies for training the map segmenter (model/segmenter.py), as DRAEM trains its
discriminative network: an irregular region (smooth random noise, thresholded) of a normal image is replaced by
something else, and the target is the set of pixels that changed.

What fills the region: another training image, uniform noise, a flat grey level, the image itself blurred, or
scaled or shifted in brightness, each blended at an opacity between 0.5 and 1 (or fully), some with soft edges.
Most regions are kept on the object (a dilated foreground), some fall anywhere. A share of each batch is left clean, so the segmenter also
learns to say nothing. Region shapes, sizes and fills are drawn independently of the benchmark's defects
(data/defects.py), which the maps are measured on and never trained on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detector.data.blur import gaussian_blur

CLEAN_SHARE = 0.3  # of each batch, left without an anomaly
ON_OBJECT_SHARE = 0.7  # of the regions, restricted to the dilated foreground
SOFT_SHARE = 0.3  # of the regions, with edges blurred (a soft blend, as a smudge or a glare has)
CHANGED = 2 / 255  # a pixel is in the target if it moved by more than this (as data/defects.py measures)
N_FILLS = 6


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def region_masks(n: int, h: int, w: int, g: torch.Generator, device) -> torch.Tensor:
    """(n, 1, h, w) 0/1 masks: noise on a coarse grid (2..7 cells a side), upsampled smoothly, above a per-image
    quantile between 0.8 and 0.98 (2% to 20% of the image)."""
    cells = int(torch.randint(2, 8, (1,), generator=g, device=device))
    noise = F.interpolate(torch.randn(n, 1, cells, cells, generator=g, device=device), size=(h, w), mode="bicubic",
                          align_corners=False)
    flat = noise.flatten(1).sort(dim=1).values
    at = (_uniform(n, 0.8, 0.98, g, device) * (h * w - 1)).long()
    return (noise > flat.gather(1, at[:, None]).view(n, 1, 1, 1)).float()


def _fills(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(N_FILLS, B, C, H, W): what a region may be replaced with."""
    b, device = x.shape[0], x.device
    col = lambda v: v.view(b, 1, 1, 1)  # noqa: E731
    other = x[torch.randperm(b, generator=g, device=device)]
    blurred = gaussian_blur(x, float(_uniform(1, 0.03, 0.09, g, device)) * max(x.shape[-2:]))
    darker = torch.rand(b, generator=g, device=device) < 0.5
    scale = torch.where(darker, _uniform(b, 0.2, 0.7, g, device), _uniform(b, 1.3, 2.5, g, device))
    grey = torch.randint(0, 3, (b,), generator=g, device=device).float() / 2
    shift = _uniform(b, -0.5, 0.5, g, device)
    return torch.stack([other, torch.rand(x.shape, generator=g, device=device), col(grey).expand_as(x), blurred,
                        (x * col(scale)).clamp(0, 1), (x + col(shift)).clamp(0, 1)])


def synthesize(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal images (B, C, H, W) in [0, 1] -> (images with anomalies, on the 8-bit grid; targets (B, H, W) 0/1)."""
    b, _, h, w = x.shape
    device = x.device
    mask = region_masks(b, h, w, g, device)
    foreground = F.max_pool2d((x.mean(1, keepdim=True) > 0.15).float(), 5, 1, 2)
    on_object = (torch.rand(b, 1, 1, 1, generator=g, device=device) < ON_OBJECT_SHARE).float()
    mask = mask * (on_object * foreground + 1 - on_object)
    soft = (torch.rand(b, 1, 1, 1, generator=g, device=device) < SOFT_SHARE).float()
    mask = soft * gaussian_blur(mask, 0.05 * max(h, w)) + (1 - soft) * mask
    kind = torch.randint(0, N_FILLS, (b,), generator=g, device=device)
    fill = _fills(x, g)[kind, torch.arange(b, device=device)]
    opaque = torch.rand(b, generator=g, device=device) < 0.5
    alpha = torch.where(opaque, torch.ones(b, device=device), _uniform(b, 0.5, 1.0, g, device)).view(b, 1, 1, 1)
    out = (x * (1 - mask * alpha) + fill * mask * alpha).mul(255).round().div(255)
    clean = (torch.rand(b, generator=g, device=device) < CLEAN_SHARE).view(b, 1, 1, 1)
    out = torch.where(clean, x, out)
    target = ((out - x).abs().amax(dim=1) > CHANGED).float()
    return out, target
