"""The fastest-of-N rate of a call: the benchmarks' measure, and how the server's warm-up picks its batch."""

from __future__ import annotations

import time


def best_rate(fn, n: int, repeat: int = 5, device=None) -> float:
    """Items per second of the fastest of ``repeat`` calls of ``fn`` (``n`` items each), after one warm-up call;
    on a CUDA ``device`` the device is synchronised around each call."""
    import torch

    sync = device is not None and device.type == "cuda"
    fn()
    times = []
    for _ in range(repeat):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return n / min(times)
