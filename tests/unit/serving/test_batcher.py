"""The dynamic batcher on its own: batches per model, admission by expected wait, the speed model."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from detector.errors import Overloaded
from detector.serving.batcher import DynamicBatcher, ScoringSpeed


def test_speed_model_separates_fixed_and_per_sample_cost():
    speed = ScoringSpeed(max_batch_samples=256, smoothing=0.1)
    assert speed.expected_wait(100) == 0.0  # nothing measured yet: admit
    for n in [8, 64, 16, 128, 32, 256, 4] * 20:
        speed.update(n, 0.010 + 0.002 * n)
    per_batch, per_sample = speed.cost()
    assert per_batch == pytest.approx(0.010, abs=1e-4) and per_sample == pytest.approx(0.002, abs=1e-6)
    # 300 queued samples: two batches; behind a 100-sample batch that has run for 0.1 of its 0.21 s.
    assert speed.expected_wait(300, busy_samples=100, busy_for=0.1) == pytest.approx(0.11 + 2 * 0.010 + 0.6, abs=1e-3)


def test_speed_model_with_one_batch_size_charges_everything_per_sample():
    speed = ScoringSpeed(max_batch_samples=64)
    for _ in range(5):
        speed.update(8, 0.04)
    assert speed.cost() == pytest.approx((0.0, 0.005))


def run(coro):
    return asyncio.run(coro)


def split_rows(result, sizes):
    """The batcher's ``split`` for array results: each request's rows, in order."""
    return np.split(result, np.cumsum(sizes)[:-1])


def sleeping_model(seconds: float, seen: list | None = None):
    """A ``score_batch`` that takes ``seconds`` per batch, returns its input, and records each batch's size."""
    def score(model, x):
        if seen is not None:
            seen.append(len(x))
        time.sleep(seconds)
        return x
    return score


def test_batches_never_mix_models_and_each_request_gets_its_own_rows():
    seen = []

    def score(model, x):
        seen.append((model, len(x)))
        return x * (1 if model == "a" else -1)

    async def main():
        b = DynamicBatcher(score, split_rows, max_batch_samples=64, max_delay_s=0.05)
        b.start()
        xs = [np.full((2, 3), i, np.float32) for i in range(6)]
        out = await asyncio.gather(*(b.submit(x, model="a" if i < 3 else "b") for i, x in enumerate(xs)))
        await b.drain()
        return xs, out

    xs, out = run(main())
    assert seen == [("a", 6), ("b", 6)]
    for i, (x, o) in enumerate(zip(xs, out)):
        np.testing.assert_array_equal(o, x if i < 3 else -x)


def test_admission_refuses_when_the_expected_wait_exceeds_the_budget():
    async def main():
        b = DynamicBatcher(sleeping_model(0.05), split_rows, max_batch_samples=4,
                           max_delay_s=0.0, max_queue_samples=10_000, max_queue_wait_s=0.2)
        b.start()
        await b.submit(np.zeros((4, 1)))  # measures the speed: ~0.05 s per batch of 4
        results = await asyncio.gather(*(b.submit(np.zeros((4, 1))) for _ in range(20)), return_exceptions=True)
        await b.drain()
        return results

    results = run(main())
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert 8 <= len(refused) <= 18, len(refused)  # ~0.2 s of work admitted, the rest refused at once
    assert all("saturated" in str(r) for r in refused)
    assert all(isinstance(r, np.ndarray) for r in results if not isinstance(r, Overloaded))


def test_a_request_the_queue_cannot_finish_before_its_deadline_is_refused_at_arrival():
    async def main():
        b = DynamicBatcher(sleeping_model(0.05), split_rows, max_batch_samples=4,
                           max_delay_s=0.0, max_queue_samples=10_000)  # no wait budget: deadlines alone
        b.start()
        await b.submit(np.zeros((4, 1)))  # measures the speed: ~0.05 s per batch of 4
        deadline = time.monotonic() + 0.3
        results = await asyncio.gather(*(b.submit(np.zeros((4, 1)), deadline=deadline) for _ in range(20)),
                                       return_exceptions=True)
        idle = await b.submit(np.zeros((4, 1)), deadline=time.monotonic() + 0.02)  # nothing queued: tried
        await b.drain()
        return results, idle

    results, idle = run(main())
    refused = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if isinstance(r, np.ndarray)]
    assert len(served) + len(refused) == 20  # none admitted only to expire (DeadlineExpired)
    assert 3 <= len(served) <= 7, len(served)  # ~0.3 s of 0.05 s batches admitted, the rest refused at once
    assert all("cannot finish before the call's deadline" in str(r) and "ms left" in str(r) for r in refused)
    assert isinstance(idle, np.ndarray)


def test_the_wait_is_predicted_at_the_latest_batch_pace_when_scoring_slows_down():
    speed = ScoringSpeed(max_batch_samples=64)
    for _ in range(50):
        speed.update(64, 0.064)  # 1 ms a sample, for a long while
    assert speed.expected_wait(128) == pytest.approx(0.128, rel=1e-6)
    speed.update(64, 0.256)  # the cores are taken: this batch ran 4x slower
    assert speed.slowdown() == pytest.approx(0.256 / (0.064 * 0.95 + 0.256 * 0.05), rel=1e-6)
    assert speed.expected_wait(128) > 3 * 0.128  # not the long average's 0.128 s


def test_a_request_whose_caller_left_is_not_scored():
    scored = []

    async def main():
        b = DynamicBatcher(sleeping_model(0.1, scored), split_rows, max_batch_samples=4,
                           max_delay_s=0.0)
        b.start()
        first = asyncio.ensure_future(b.submit(np.zeros((4, 1))))
        await asyncio.sleep(0.02)  # the first batch is running
        gone = asyncio.ensure_future(b.submit(np.zeros((3, 1))))
        await asyncio.sleep(0.01)
        assert b.queue_depth == 3
        gone.cancel()  # its caller hangs up while it waits
        await asyncio.sleep(0)
        assert b.queue_depth == 0
        await first
        kept = await b.submit(np.zeros((2, 1)))
        await b.drain()
        return kept

    assert len(run(main())) == 2
    assert scored == [4, 2]  # the 3 samples of the caller that left never reached the model
