"""The training loop: Adam, KL warm-up, early stopping on validation loss, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from detector.config import ModelConfig, TrainConfig, resolve_epochs
from detector.data.batches import sequential_batches, shuffled_batches
from detector.model.vae import VAE
from detector.progress import progress as progress_bar
from detector.training.checkpoint import load_checkpoint, save_checkpoint
from detector.training.distributed import DistContext


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    max_epochs: int = 0  # the epoch limit this run had (TrainConfig.epochs, resolved when auto)
    rank: int = 0  # torchrun rank that produced this history; only rank 0 writes the bundle
    samples_seen: int = 0
    seconds: float = 0.0

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / self.seconds if self.seconds else 0.0


def kl_weight(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Linear KL warm-up from 0 to beta over ``warmup_epochs``."""
    if cfg.warmup_epochs <= 0:
        return cfg.beta
    progress = (epoch + step / max(steps_per_epoch, 1)) / cfg.warmup_epochs
    return cfg.beta * min(1.0, progress)


def loss_per_sample(model: torch.nn.Module, x: torch.Tensor, eps: torch.Tensor,
                    beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta-weighted training loss, negative ELBO), each (B,). ``model`` is a VAE or its DDP wrapper.
    The loss includes the transform head's, which reaches only the head's own weights."""
    nll, kl, transform = model(x, eps)
    return nll + beta * kl + transform, nll + kl


@torch.inference_mode()
def validation_loss(model: VAE, data: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean negative ELBO (beta = 1) with fixed noise, so epochs compare fairly."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    total, count = 0.0, 0
    for x in sequential_batches(data, batch_size, device):
        eps = torch.randn(x.shape[0], model.latent_dim, generator=g).to(device)
        _, neg_elbo = loss_per_sample(model, x, eps, 1.0)
        total += float(neg_elbo.sum())
        count += x.shape[0]
    model.train()
    return total / max(count, 1)


def train_vae(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    train_data: torch.Tensor,
    val_data: torch.Tensor,
    device: torch.device,
    ckpt_dir: Path | None = None,
    resume: bool = False,
    fingerprint: str = "",
    progress: bool = True,
    sample_weights: Callable[[VAE, DistContext], torch.Tensor] | None = None,
    setup: Callable[[VAE], None] | None = None,
) -> tuple[VAE, History]:
    """Fit a VAE; returns the best model by validation loss (restored) and the history.

    ``sample_weights`` (DB-VAE) is called at the start of each epoch and its weights draw
    that epoch's batches. ``setup`` runs once on a fresh model (e.g. to set normalisation).
    """
    import time

    dist = DistContext.from_env(device)
    device = dist.device(device)
    epochs = resolve_epochs(cfg, train_data.shape[0])  # from the global set: every rank runs the same epochs
    train_data = dist.shard(train_data)
    torch.manual_seed(cfg.seed)
    model = VAE(model_cfg).to(device)
    if setup is not None:
        setup(model)
    net = dist.wrap(model)  # forward() through DDP when distributed; parameters are the model's
    # Fused Adam: one kernel per step instead of a loop over parameters; the optimiser's share of a CPU step
    # fell from 3.1% to 1.3%.
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    generator = torch.Generator().manual_seed(cfg.seed)
    history = History(max_epochs=epochs)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_loss, stale, start_epoch = math.inf, 0, 0
    meta = {"model": dataclasses.asdict(model_cfg), "train": {k: v for k, v in dataclasses.asdict(cfg).items()
                                                              if k not in ("epochs", "device", "num_threads")},
            "data": fingerprint}
    if ckpt_dir is not None and resume:  # every rank resumes from rank 0's checkpoint
        state = load_checkpoint(ckpt_dir, meta)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            best_state = state["best"]
            torch.set_rng_state(state["torch_rng"])
            best_loss, stale, start_epoch = float(state["best_loss"]), int(state["stale"]), int(state["epoch"]) + 1
            history.train_loss = state["train_loss"].tolist()
            history.val_loss = state["val_loss"].tolist()
            history.best_epoch = int(state["best_epoch"])
    use_amp = cfg.amp and device.type == "cuda"
    # batch_size is the global batch: each of N ranks takes batch_size / N, so a torchrun job takes the
    # same optimiser steps per epoch as one process with the same settings.
    batch_size = max(1, cfg.batch_size // dist.world)
    steps = max(1, train_data.shape[0] // batch_size)
    model.train()
    for epoch in range(start_epoch, epochs):
        if stale >= cfg.patience:
            break
        t0 = time.perf_counter()
        weights = sample_weights(model, dist) if sample_weights is not None else None
        bar = progress_bar(steps, f"epoch {epoch + 1}/{epochs}", "batch", enabled=progress and dist.is_main)
        running = 0.0
        if weights is not None and dist.enabled:
            weights = dist.shard(weights)
        for step, x in enumerate(shuffled_batches(train_data, batch_size, generator, device, weights)):
            eps = torch.randn(x.shape[0], model.latent_dim, generator=generator).to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                loss, _ = loss_per_sample(net, x, eps, kl_weight(cfg, epoch, step, steps))
                loss = loss.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += float(loss.detach()) if step % 10 == 0 or step == steps - 1 else 0.0
            history.samples_seen += x.shape[0]
            if step % 10 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.1f}")
            bar.update(1)
        bar.close()
        history.seconds += time.perf_counter() - t0
        val = validation_loss(model, val_data, 1024, device)
        history.val_loss.append(val)
        history.train_loss.append(float(loss.detach()))
        # Warm-up epochs optimise a different objective; only full-beta epochs can be "best".
        if epoch + 1 >= cfg.warmup_epochs and val < best_loss:
            best_loss, stale, history.best_epoch = val, 0, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch + 1 >= cfg.warmup_epochs:
            stale += 1
        if progress and dist.is_main:
            tqdm.write(f"epoch {epoch + 1}: train loss {history.train_loss[-1]:.2f}  val neg-ELBO {val:.2f}"
                       f"{'  (best)' if history.best_epoch == epoch else ''}")
        if ckpt_dir is not None and dist.is_main:
            save_checkpoint(ckpt_dir, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "best": best_state, "best_loss": torch.tensor(best_loss),
                "stale": torch.tensor(stale), "epoch": torch.tensor(epoch), "best_epoch": torch.tensor(history.best_epoch),
                "train_loss": torch.tensor(history.train_loss), "val_loss": torch.tensor(history.val_loss),
            }, meta)
    if history.best_epoch < 0 and history.val_loss:
        # Training ended inside the KL warm-up: no epoch qualified as best, so keep the last one.
        history.best_epoch = len(history.val_loss) - 1
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    history.samples_seen *= dist.world  # every rank saw as many samples as this one
    history.rank = dist.rank
    dist.close()
    return model, history
