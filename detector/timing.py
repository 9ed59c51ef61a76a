"""The fastest-of-N rate of a call: the benchmarks' measure, and how the server's warm-up picks its batch."""

from __future__ import annotations

import time


def timed(fn, device=None) -> float:
    """Seconds one call of ``fn`` takes; on a CUDA ``device`` the device is synchronised around it."""
    import torch

    sync = device is not None and device.type == "cuda"
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def best_rate(fn, n: int, repeat: int = 5, device=None) -> float:
    """Items per second of the fastest of ``repeat`` calls of ``fn`` (``n`` items each), after one warm-up call."""
    fn()
    return n / min(timed(fn, device) for _ in range(repeat))
