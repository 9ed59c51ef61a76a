"""Asyncio dynamic batcher: samples from concurrent requests share one forward pass.

Each request waits on its own future. The loop takes the oldest request, then gathers more
until ``max_batch_samples`` or until ``max_delay`` has passed since that oldest request
arrived, scores the batch in a worker thread (the event loop keeps accepting), and hands
each request its slice of the result. A request whose deadline has passed is answered
before compute; a failed batch fails every request in it, and the loop goes on.

Each request carries the model it was admitted under and a batch never mixes models, so a
model swapped in mid-traffic (hot reload) only scores requests that arrive after the swap.
Admission is bounded three ways: by queued samples, by the wait the queue implies at the
measured scoring speed, and by each call's own deadline (a request the queue cannot finish in
time is refused at arrival, not queued to expire), so overload is answered at once instead of
with growing latency or wasted work.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from detector.errors import DeadlineExpired, Overloaded


# A request is admitted only if the queue ahead of it, and its own samples, are predicted to finish with this much
# to spare before its deadline: the prediction is a mean, and the answer must still travel back. At 1.0, under a
# 20x overload on 2 cores, half of the admitted requests missed their deadline (docs/benchmarks/serving-overload.md).
DEADLINE_MARGIN = 1.5


class BatchObserver(Protocol):
    def batch_scored(self, n_samples: int, inference_seconds: float) -> None: ...
    def queue_waited(self, seconds: float) -> None: ...


@dataclass
class _Pending:
    samples: np.ndarray
    model: object  # passed back to score_batch; batches never mix models (compared with ==)
    deadline: float | None  # time.monotonic() seconds
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    queued: bool = True  # still in the queue (not yet taken into a batch)


class ScoringSpeed:
    """Batch scoring time as fixed + per-sample cost, fitted online (exponentially weighted least squares
    over the batches scored so far), to predict how long queued samples will wait."""

    def __init__(self, max_batch_samples: int, smoothing: float = 0.05):
        self.max_batch_samples = max_batch_samples
        self.smoothing = smoothing
        self._moments: np.ndarray | None = None  # weighted means of n, t, n*n, n*t
        self._last: tuple[int, float] | None = None  # the latest batch: samples, seconds

    def update(self, n_samples: int, seconds: float) -> None:
        m = np.array([n_samples, seconds, n_samples * n_samples, n_samples * seconds], dtype=np.float64)
        self._moments = m if self._moments is None else (1 - self.smoothing) * self._moments + self.smoothing * m
        self._last = (n_samples, seconds)

    def slowdown(self) -> float:
        """How much slower the latest batch ran than the fit predicts for its size (>= 1). The fit averages over
        many batches and lags a sudden slowdown (cores taken by a load spike): the wait is predicted with the
        latest batch's pace until the fit catches up, so admission does not let in requests that cannot finish."""
        if self._last is None:
            return 1.0
        per_batch, per_sample = self.cost()
        n, seconds = self._last
        predicted = per_batch + per_sample * n
        return max(1.0, seconds / predicted) if predicted > 0 else 1.0

    def cost(self) -> tuple[float, float]:
        """(seconds per batch, seconds per sample); (0, 0) before any batch was scored."""
        if self._moments is None:
            return 0.0, 0.0
        n, t, nn, nt = self._moments
        var = nn - n * n
        # No variety in batch sizes yet: charge everything per sample (cautious for larger queues).
        per_sample = (nt - n * t) / var if var > 1e-6 * max(nn, 1.0) else t / n
        per_sample = min(max(per_sample, 0.0), t / n)
        return max(t - per_sample * n, 0.0), per_sample

    def expected_wait(self, queued_samples: int, busy_samples: int = 0, busy_for: float = 0.0) -> float:
        """Seconds until ``queued_samples`` are scored, behind a batch of ``busy_samples`` running ``busy_for``."""
        per_batch, per_sample = self.cost()
        pace = self.slowdown()
        current = 0.0
        if busy_samples:
            fitted = per_batch + per_sample * busy_samples
            if fitted > 0:  # the batch running now, already slower than predicted: the queue will be too
                pace = max(pace, busy_for / fitted)
            current = max(pace * fitted - busy_for, 0.0)
        batches = -(-queued_samples // self.max_batch_samples)
        return current + pace * (batches * per_batch + queued_samples * per_sample)


class DynamicBatcher:
    def __init__(self, score_batch: Callable[[object, np.ndarray], object], split: Callable[[object, list[int]], list],
                 max_batch_samples: int = 256, max_delay_s: float = 0.002, max_queue_samples: int = 8192,
                 observer: BatchObserver | None = None, enabled: bool = True, max_queue_wait_s: float | None = None):
        self._score_batch = score_batch
        self._split = split
        self.max_batch_samples = max_batch_samples
        self.max_delay_s = max_delay_s
        self.max_queue_samples = max_queue_samples
        self.max_queue_wait_s = max_queue_wait_s  # None: bounded by max_queue_samples only
        self.speed = ScoringSpeed(max_batch_samples)
        self._busy: tuple[int, float] = (0, 0.0)  # samples in the forward pass now, and when it started
        self.enabled = enabled  # False: one request per forward pass (for benchmarks)
        self._observer = observer
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_samples = 0
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self._task: asyncio.Task | None = None
        self._closed = False

    @property
    def queue_depth(self) -> int:
        """Samples waiting for a forward pass."""
        return self._queued_samples

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    def _admit(self, n: int, deadline: float | None) -> None:
        """Refuse (Overloaded) what the queue cannot take: past max_queue_samples, past max_queue_wait_s of expected
        scoring, or past the call's own deadline. The last two only when there is a queue to wait behind: a
        request to an idle server is always tried."""
        if self._closed:
            raise Overloaded("server is shutting down")
        if self._queued_samples + n > self.max_queue_samples:
            raise Overloaded(f"scoring queue full ({self._queued_samples} samples waiting); retry later")
        busy_samples, busy_since = self._busy
        if not (self._queued_samples or busy_samples):
            return
        now = time.monotonic()
        # Until this request's own samples are scored: the batch running now, the queue ahead, this request.
        done_in = self.speed.expected_wait(self._queued_samples + n, busy_samples, now - busy_since)
        if self.max_queue_wait_s is not None and self._queued_samples and done_in > self.max_queue_wait_s:
            raise Overloaded(f"server saturated: {self._queued_samples} samples queued, about {done_in * 1000:.0f} ms "
                             f"of scoring (limit {self.max_queue_wait_s * 1000:.0f} ms); retry later")
        if deadline is not None and now + DEADLINE_MARGIN * done_in + self.max_delay_s > deadline:
            raise Overloaded(f"cannot finish before the call's deadline: about {done_in * 1000:.0f} ms of scoring "
                             f"queued up to this request, {max(deadline - now, 0.0) * 1000:.0f} ms left; retry later "
                             "or with a longer deadline")

    async def submit(self, samples: np.ndarray, deadline: float | None = None, model: object = None):
        """Score ``samples`` (N, ...) with ``model`` in some batch; returns this request's part of the result."""
        n = len(samples)
        self._admit(n, deadline)
        item = _Pending(samples, model, deadline, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._queued_samples += n
        self._idle.clear()
        self._wakeup.set()
        try:
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            # The caller went away (its deadline passed, it hung up): a request still queued is not scored, and
            # one in the forward pass already has its answer dropped.
            if not item.future.done():
                item.future.cancel()
                if item.queued:  # its samples no longer count against admission
                    self._queued_samples -= n
            raise

    def _take_batch(self) -> list[_Pending]:
        batch, size = [], 0
        while self._queue:
            if self._queue[0].future.cancelled():  # its caller left while it was queued; already uncounted
                self._queue.popleft()
                continue
            n = len(self._queue[0].samples)
            other_model = bool(batch) and self._queue[0].model != batch[0].model
            if batch and (size + n > self.max_batch_samples or not self.enabled or other_model):
                break
            item = self._queue.popleft()
            item.queued = False
            self._queued_samples -= n
            batch.append(item)
            size += n
        return batch

    def _drop_expired(self, batch: list[_Pending]) -> list[_Pending]:
        now = time.monotonic()
        live = []
        for item in batch:
            if item.future.done():
                continue
            if item.deadline is not None and now >= item.deadline:
                item.future.set_exception(DeadlineExpired("deadline passed while queued; not scored"))
            else:
                live.append(item)
        return live

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._in_flight == 0:
                    self._idle.set()
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.enabled:
                # Wait for more samples until the oldest request has waited max_delay.
                oldest = self._queue[0].enqueued
                while self._queued_samples < self.max_batch_samples:
                    remaining = oldest + self.max_delay_s - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except TimeoutError:
                        break
            batch = self._drop_expired(self._take_batch())
            if not batch:
                continue
            started = time.monotonic()
            if self._observer is not None:
                for item in batch:
                    self._observer.queue_waited(started - item.enqueued)
            sizes = [len(item.samples) for item in batch]
            samples = batch[0].samples if len(batch) == 1 else np.concatenate([item.samples for item in batch])
            self._in_flight += 1
            self._busy = (len(samples), started)
            try:
                result = await loop.run_in_executor(self._executor, self._score_batch, batch[0].model, samples)
                parts = self._split(result, sizes)
            except Exception as exc:  # noqa: BLE001 - every request of the failed batch gets the error
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
            else:
                elapsed = time.monotonic() - started
                self.speed.update(len(samples), elapsed)
                if self._observer is not None:
                    self._observer.batch_scored(len(samples), elapsed)
                for item, part in zip(batch, parts):
                    if not item.future.done():
                        item.future.set_result(part)
            finally:
                self._in_flight -= 1
                self._busy = (0, 0.0)

    async def drain(self) -> None:
        """Stop accepting; return when every accepted request has been answered."""
        self._closed = True
        self._wakeup.set()
        await self._idle.wait()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)
