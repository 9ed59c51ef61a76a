"""The fastest-of-N rate of a call: the benchmarks' measure, and how the server's warm-up picks its batch; and the
ratio of two calls' times measured in alternation."""

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


PAIRED_ROUNDS = 9  # rounds of paired_ratios: the benchmarks report their median


def paired_ratios(fn, reference, rounds: int = PAIRED_ROUNDS, device=None) -> list[float]:
    """Per round, the time of one call of ``reference`` over that of one call of ``fn`` (``fn``'s rate relative to
    ``reference``'s on the same items), the two called alternately after one warm-up call each. A machine whose speed
    drifts between measurements (a shared VM) moves both times of a round alike, which two fastest-of-N rates taken
    one after the other do not."""
    fn(), reference()
    return [timed(reference, device) / timed(fn, device) for _ in range(rounds)]
