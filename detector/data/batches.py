"""Training batches straight from an in-memory uint8/float tensor: no per-item collate.

Gathering a batch with one index op beats a DataLoader over a TensorDataset, which
indexes and collates sample by sample (bench_train.py measures both).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from detector.data.sampleset import SampleSet


def load_tensor(samples: SampleSet) -> torch.Tensor:
    """The whole selection as one tensor in storage dtype (uint8 stays uint8: 4x less memory)."""
    return torch.from_numpy(np.ascontiguousarray(samples.read(0, len(samples))))


def to_float(batch: torch.Tensor) -> torch.Tensor:
    if batch.dtype == torch.uint8:
        return batch.float().div_(255.0)
    return batch.float()


def shuffled_batches(
    data: torch.Tensor, batch_size: int, generator: torch.Generator, device: torch.device,
    weights: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """One epoch of model-space batches on ``device``; drawn by ``weights`` when given (DB-VAE)."""
    n = data.shape[0]
    if weights is None:
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.multinomial(weights, n, replacement=True, generator=generator)
    pin = device.type == "cuda"
    for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
        batch = data[order[start : start + batch_size]]
        if pin:
            batch = batch.pin_memory()
        yield to_float(batch.to(device, non_blocking=pin))


def sequential_batches(data: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    for start in range(0, data.shape[0], batch_size):
        yield to_float(data[start : start + batch_size].to(device))
