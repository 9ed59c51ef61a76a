"""Explicit device choice: 'auto' means CUDA when present, else CPU."""

from __future__ import annotations

import torch

from detector.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got '{name}'")
    return torch.device(name)


def numpy_or_tensor(fn):
    """Let a tensor function on float64 tensors also take numpy arrays (and then return numpy): one
    implementation serves the scoring device and offline numpy callers."""
    import functools

    import numpy as np

    @functools.wraps(fn)
    def wrapper(self, values, *args, **kwargs):
        if isinstance(values, torch.Tensor):
            return fn(self, values.to(torch.float64), *args, **kwargs)
        out = fn(self, torch.as_tensor(np.asarray(values), dtype=torch.float64), *args, **kwargs)
        return out.numpy()
    return wrapper


def on_device(cache: dict, name: str, array, device: torch.device) -> torch.Tensor:
    """``array`` (a fitted constant held as numpy) as a float64 tensor on ``device``, copied there once and kept in
    ``cache``: scoring a batch then moves no constants to the device."""
    key = (name, device)
    if key not in cache:
        cache[key] = torch.as_tensor(array, dtype=torch.float64, device=device).contiguous()
    return cache[key]
