"""Train the anomaly-map segmenter (model/segmenter.py) on a trained, frozen VAE: normal training images get
synthetic anomalies (training/anomalies.py); the segmenter, reading each image beside the VAE's reconstruction of
it, learns which pixels changed, with the focal loss DRAEM uses (most pixels are normal and easy)."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from detector.config import TrainConfig
from detector.data.batches import to_float
from detector.model.segmenter import MapSegmenter, reconstruction
from detector.model.vae import VAE
from detector.progress import progress as progress_bar
from detector.training.anomalies import synthesize

FOCAL_GAMMA = 2.0
LR = 1e-3
WARMUP_STEPS, PROBE_STEPS = 5, 20  # the first steps run slower (allocation); the next are timed for the budget
MIN_BUDGET_S = 60.0  # the least a deadline leaves the segmenter (about 700 steps at 28x28 here)
REPLAN_EVERY = 50  # steps between re-timings: a machine that slows down mid-way (cores taken) cuts the steps again
BATCH = 64  # half the VAE's batch: 1,500 steps of 64 gave pixel AUROC 0.935 in 270 s; 1,500 of 128 (before the
# soft-edged regions were added, which alone moved 64's 0.925 to 0.935) 0.924 in 565 s: steps pay, not batch size.
# But not smaller: 240 s of batches of 32 (3,464 steps) gave 0.943 against 0.946-0.948 for batches of 64


def map_steps(cfg: TrainConfig, n_train: int) -> int:
    """``cfg.map_steps``, but no more than ``cfg.map_epochs`` passes over the training images (small sets). Not
    fewer for larger images: a larger image costs more a step, but the segmenter needs the steps (at 3x64x64, 375
    steps gave pixel AUROC 0.850, 1,000 gave 0.975); the time budget (``cfg.map_budget_s``) bounds the cost."""
    return min(cfg.map_steps, max(1, cfg.map_epochs * n_train // BATCH))


def segmenter_budget(cfg: TrainConfig, elapsed_s: float) -> float:
    """Seconds the segmenter may train, ``elapsed_s`` into the run (0: no limit): ``cfg.map_budget_s``, cut to what
    is left before ``cfg.map_deadline_s`` but never below MIN_BUDGET_S."""
    limits = [cfg.map_budget_s] if cfg.map_budget_s else []
    if cfg.map_deadline_s:
        limits.append(max(MIN_BUDGET_S, cfg.map_deadline_s - elapsed_s))
    return min(limits, default=0.0)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_true = torch.where(target > 0, p, 1 - p)
    return ((1 - p_true) ** gamma * bce).mean()


def _fitting_steps(planned: int, done: int, elapsed: float, pace: float, budget_s: float) -> int:
    """The steps that fit in ``budget_s``: ``done`` taken in ``elapsed`` seconds, the rest at ``pace`` seconds a step
    (at least one more than done)."""
    if not budget_s or pace <= 0:
        return planned
    return max(done + 1, min(planned, done + int((budget_s - elapsed) / pace)))


def _cosine(step: int, start: int, stop: int) -> float:
    """The learning rate at ``step`` of a cosine annealing from LR at ``start`` to 0 at ``stop``."""
    return LR * 0.5 * (1 + math.cos(math.pi * min(step - start, stop - start) / max(stop - start, 1)))


def train_segmenter(model: VAE, train_data: torch.Tensor, cfg: TrainConfig, device: torch.device,
                    progress: bool = True) -> MapSegmenter:
    """A segmenter for ``model`` (an image VAE, left as it is) from its training images (N, C, H, W). After
    WARMUP_STEPS + PROBE_STEPS at the full learning rate, the steps are cut to what fits in ``cfg.map_budget_s`` at
    the probe steps' pace, and the rate anneals over the rest (cosine); every REPLAN_EVERY steps the pace is timed
    again and the steps cut further if the machine has slowed (the annealing follows). The steps taken are in its
    config()."""
    steps = map_steps(cfg, train_data.shape[0])
    g = torch.Generator().manual_seed(cfg.seed)
    # Channels-last: its convolutions train faster on CPU at these widths (and suit cuDNN).
    segmenter = MapSegmenter(train_data.shape[1]).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(segmenter.parameters(), lr=LR)
    was_training = model.training
    model.eval()
    bar = progress_bar(steps, "anomaly-map segmenter", "step", enabled=progress)
    started, step = time.perf_counter(), 0
    timed_from = (step, started)  # the pace is measured from here
    anneal_from = None  # the step the annealing started at
    while step < steps:
        if step == min(WARMUP_STEPS, steps - 1):
            timed_from = (step, time.perf_counter())
        replan = anneal_from is not None and cfg.map_budget_s and (step - anneal_from) % REPLAN_EVERY == 0
        if step == min(WARMUP_STEPS + PROBE_STEPS, steps - 1) or replan:
            now = time.perf_counter()
            pace = (now - timed_from[1]) / max(step - timed_from[0], 1)
            steps = min(steps, _fitting_steps(steps, step, now - started, pace, cfg.map_budget_s))
            bar.total = steps
            timed_from = (step, now)
            anneal_from = step if anneal_from is None else anneal_from
        if anneal_from is not None:
            for group in optimizer.param_groups:
                group["lr"] = _cosine(step, anneal_from, steps)
        index = torch.randint(0, train_data.shape[0], (BATCH,), generator=g)
        x, target = synthesize(to_float(train_data[index]), g)
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        loss = focal_loss(segmenter(x, reconstruction(model, x)), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
        bar.update(1)
        step += 1
    bar.close()
    model.train(was_training)
    segmenter.steps = steps
    return segmenter.to(memory_format=torch.contiguous_format).eval()
