"""Asyncio dynamic batcher: samples from concurrent requests share one forward pass.

Each request waits on its own future. The loop takes the oldest request, then gathers more
until ``max_batch_samples`` or until ``max_delay`` has passed since that oldest request
arrived, scores the batch in a worker thread (the event loop keeps accepting), and hands
each request its slice of the result. With a ``stage`` step (the server's: the copy to the
device, scoring/staging.py), a full next batch is staged in a thread of its own while the
current one computes, so on a GPU the copy of batch n+1 overlaps the compute of batch n; a
part-filled batch keeps gathering until the device is free, as without staging. A request
whose deadline has passed is answered before compute; a failed batch fails every request in
it, and the loop goes on.

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
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from detector.errors import DeadlineExpired, Overloaded


# A request is admitted only if the queue ahead of it, and its own samples, are predicted to finish with a margin
# to spare before its deadline: the prediction is a mean of compute time, and the answer must still travel back
# through a busy event loop. The margin is learned (AdmissionMargin), never below this floor. With a fixed 1.5, under
# a 20x overload on 2 cores, a quarter of the admitted requests missed their deadline.
MIN_DEADLINE_MARGIN = 1.2
# The scoring speed is fitted over about this many seconds of batches (and at least 20 batches): at camera-frame sizes a
# batch takes a second, and a fit over the last 20 batches would still predict the speed from before a load spike.
SPEED_MEMORY_S = 2.0
RECENT_BATCHES = 4  # admission expects the batch a request joins to fill up as far as the largest of these did


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
    predicted: float = 0.0  # seconds from admission to answer, as admission predicted it
    tried: bool = False  # admitted to an idle server without a prediction: scored unless its deadline has passed


class ScoringSpeed:
    """Batch scoring time as fixed + per-sample cost, fitted online (exponentially weighted least squares
    over the batches scored so far), to predict how long queued samples will wait."""

    def __init__(self, max_batch_samples: int, smoothing: float = 0.05, memory_s: float = SPEED_MEMORY_S):
        self.max_batch_samples = max_batch_samples
        self.smoothing = smoothing  # the weight of each batch, at least
        self.memory_s = memory_s  # and of batches as long as this more: the fit follows the last seconds of scoring
        self._moments: np.ndarray | None = None  # weighted means of n, t, n*n, n*t
        self._last: tuple[int, float] | None = None  # the latest batch: samples, seconds

    def update(self, n_samples: int, seconds: float) -> None:
        m = np.array([n_samples, seconds, n_samples * n_samples, n_samples * seconds], dtype=np.float64)
        if self._moments is None:
            self._moments = m
        else:  # weighed by the time the fit gave it (not the time it took: a small batch held up is no long batch)
            per_batch, per_sample = self.cost()
            weight = max(self.smoothing, -math.expm1(-(per_batch + per_sample * n_samples) / self.memory_s))
            self._moments = (1 - weight) * self._moments + weight * m
        self._last = (n_samples, seconds)

    def slowdown(self) -> float:
        """How much slower the latest batch ran than the fit predicts for its size (>= 1). The fit averages over
        many batches and lags a sudden slowdown (cores taken by a load spike): the wait is predicted with the
        latest batch's pace until the fit catches up, so admission does not let in requests that cannot finish."""
        if self._last is None:
            return 1.0
        n, seconds = self._last
        predicted = self._judged(n)
        return max(1.0, seconds / predicted) if predicted > 0 else 1.0

    def _judged(self, n_samples: int) -> float:
        """The fitted time of a batch of ``n_samples``, but no less than a full batch's: a small batch held up by a
        hiccup (a core taken for 50 ms) says little about how fast the queue will go, and its ratio would."""
        per_batch, per_sample = self.cost()
        return per_batch + per_sample * max(n_samples, self.max_batch_samples)

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
                pace = max(pace, busy_for / self._judged(busy_samples))
            current = max(pace * fitted - busy_for, 0.0)
        batches = -(-queued_samples // self.max_batch_samples)
        return current + pace * (batches * per_batch + queued_samples * per_sample)


class AdmissionMargin:
    """How far real answer times run past their prediction: a high quantile of (time from admission to answer) /
    (predicted time), over the latest ``window`` requests, never below ``floor``. Contention for the cores, a busy
    event loop and batch-to-batch variance all show up here, whatever their cause, so admission by deadline keeps
    its promise under conditions the compute model alone does not see."""

    def __init__(self, quantile: float = 0.99, window: int = 64, floor: float = MIN_DEADLINE_MARGIN):
        self.quantile = quantile
        self.floor = floor
        self._ratios: collections.deque[float] = collections.deque(maxlen=window)
        self._value = floor
        self._seen = 0

    def observe(self, actual: float, predicted: float) -> None:
        """One request answered (or given up) ``actual`` seconds after admission; ``predicted`` at admission, no
        shorter than one full batch (a request predicted to take 5 ms that answered in 50 ms, the event loop's lag,
        says nothing about how a 2 s queue will run)."""
        self._ratios.append(actual / max(predicted, 1e-3))
        self._seen += 1
        if self._seen % 8 == 0 or self._seen < 8:  # the quantile every 8 answers: cheap, and soon enough
            self._value = max(self.floor, float(np.quantile(self._ratios, self.quantile)))

    @property
    def value(self) -> float:
        return self._value


def _fail(batch: list[_Pending], exc: Exception) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(exc)


def _concatenate(parts: list[np.ndarray]) -> np.ndarray:
    """One batch of several requests' arrays (no copy for a single request)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class DynamicBatcher:
    def __init__(self, score_batch: Callable[[object, object], object], split: Callable[[object, list[int]], list],
                 max_batch_samples: int = 256, max_delay_s: float = 0.002, max_queue_samples: int = 8192,
                 observer: BatchObserver | None = None, enabled: bool = True, max_queue_wait_s: float | None = None,
                 join: Callable[[list], object] | None = None, stage: Callable[[object, object], object] | None = None):
        self._score_batch = score_batch
        self._stage = stage  # (model, joined samples) -> what score_batch takes, run ahead of the compute
        self._split = split
        self._join = join or _concatenate  # the requests' samples -> one batch
        self.max_batch_samples = max_batch_samples
        self.max_delay_s = max_delay_s
        self.max_queue_samples = max_queue_samples
        self.max_queue_wait_s = max_queue_wait_s  # None: bounded by max_queue_samples only
        self.speed = ScoringSpeed(max_batch_samples)
        self.margin = AdmissionMargin()
        self._busy: tuple[int, float] = (0, 0.0)  # samples in the forward pass now, and when it started
        self.enabled = enabled  # False: one request per forward pass (for benchmarks)
        self._observer = observer
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_samples = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self._stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stager")
        self._computing: asyncio.Task | None = None  # the batch on the device now
        self._staged_samples = 0  # taken from the queue for the next batch, not yet computing
        self._recent_batches: collections.deque[int] = collections.deque(maxlen=RECENT_BATCHES)  # their sizes
        self._task: asyncio.Task | None = None
        self._closed = False

    def limit_batch(self, max_batch_samples: int) -> None:
        """Batch at most this many samples from now on (the server's warm-up sets the batch it measured best)."""
        self.max_batch_samples = self.speed.max_batch_samples = max_batch_samples

    @property
    def queue_depth(self) -> int:
        """Samples waiting for a forward pass."""
        return self._queued_samples

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    def _admit(self, n: int, deadline: float | None) -> tuple[float, bool]:
        """Refuse (Overloaded) what the queue cannot take: past max_queue_samples, past max_queue_wait_s of expected
        scoring, or past the call's own deadline. The last two only when there is a queue to wait behind: a
        request to an idle server is always tried. Returns the predicted seconds until the request is answered, and
        whether it was admitted to an idle server (tried, unchecked against its deadline)."""
        if self._closed:
            raise Overloaded("server is shutting down")
        busy_samples, busy_since = self._busy
        now = time.monotonic()
        # Until this request's batch is scored: the batch running now, the one staged after it, the queue ahead, and
        # the batch this request joins, as full as batches have lately been: the request is answered only when its
        # whole batch is, and under load that batch fills up behind it (predicted by its own samples alone, requests
        # admitted after it pushed it past its deadline: a fifth of the admitted 3x64x64 requests under overload).
        ahead = self._queued_samples + self._staged_samples
        done_in = self.speed.expected_wait(self._staged_samples + self._batch_end(self._queued_samples + n),
                                           busy_samples, now - busy_since)
        if self._queued_samples + n > self.max_queue_samples:
            raise self._refusal(f"scoring queue full ({self._queued_samples} samples waiting)", done_in)
        if not (ahead or busy_samples):
            return done_in, True
        if self.max_queue_wait_s is not None and ahead and done_in > self.max_queue_wait_s:
            raise self._refusal(f"server saturated: {self._queued_samples} samples queued, about "
                                f"{done_in * 1000:.0f} ms of scoring (limit {self.max_queue_wait_s * 1000:.0f} ms)",
                                done_in)
        expected = self.margin.value * done_in + self.max_delay_s
        if deadline is not None and now + expected > deadline:
            raise self._refusal(f"cannot finish before the call's deadline: about {expected * 1000:.0f} ms until an "
                                f"answer, {max(deadline - now, 0.0) * 1000:.0f} ms left", done_in,
                                " or with a longer deadline")
        return done_in, False

    def _batch_end(self, samples: int) -> int:
        """Samples queued up to the end of the batch that will hold the ``samples``-th queued one: the batches
        before it full, and its own as full as the latest batches were (it keeps gathering while the device is busy:
        under load it fills, at a trickle it stays small)."""
        if not self.enabled:
            return samples
        full, tail = divmod(samples, self.max_batch_samples)
        return full * self.max_batch_samples + (max(tail, max(self._recent_batches, default=0)) if tail else 0)

    def precheck(self, deadline: float | None) -> None:
        """Refuse (Overloaded) a call that admission would refuse even with one sample, before its request is read:
        a refusal then costs no transfer of the samples, and under overload the cores stay with the queue instead of
        receiving requests that would be turned away. ``submit`` checks again with the request's own samples."""
        self._admit(1, deadline)

    def _refusal(self, reason: str, done_in: float, alternative: str = "") -> Overloaded:
        """Overloaded, with when to come back: a random point in the second half of the time the queue now needs at
        the measured speed (the pushback a gRPC client's retry policy honours). Refused callers spread their retries
        over it instead of returning together, and the queue stays fed as it drains; a client that resends at once
        instead only keeps the server busy refusing it."""
        retry_after = done_in * random.uniform(0.5, 1.0)
        return Overloaded(f"{reason}; retry in about {retry_after * 1000:.0f} ms{alternative}", retry_after)

    async def submit(self, samples: np.ndarray, deadline: float | None = None, model: object = None):
        """Score ``samples`` (N, ...) with ``model`` in some batch; returns this request's part of the result."""
        n = len(samples)
        predicted, tried = self._admit(n, deadline)
        item = _Pending(samples, model, deadline, asyncio.get_running_loop().create_future(), predicted=predicted,
                        tried=tried)
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
        finally:
            self._observe(item)

    def _observe(self, item: _Pending) -> None:
        """Learn from each answered (or abandoned) request how far reality ran past admission's prediction."""
        if item.predicted > 0:
            actual = time.monotonic() - item.enqueued
            if item.deadline is not None and item.future.done() and not item.future.cancelled() \
                    and isinstance(item.future.exception(), DeadlineExpired):
                actual = max(actual, item.deadline - item.enqueued)  # not scored: it would have taken at least this
            self.margin.observe(actual, max(item.predicted, self.speed.expected_wait(self.max_batch_samples)))

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
        """The batch without requests whose deadline passes before it would finish (answered DEADLINE_EXCEEDED at
        once, so the cores go to requests that can still make it)."""
        now = time.monotonic()
        busy_samples, busy_since = self._busy  # a batch still computing goes first
        finish = now + self.speed.expected_wait(sum(len(item.samples) for item in batch), busy_samples,
                                                now - busy_since)
        live = []
        for item in batch:
            if item.future.done():
                continue
            if item.deadline is not None and (now if item.tried else finish) >= item.deadline:
                item.future.set_exception(DeadlineExpired("deadline passes before this request's batch would finish; "
                                                          "not scored"))
            else:
                live.append(item)
        return live

    def _next_batch_waits(self) -> bool:
        """While a batch computes, the next is taken (and staged) only once it is full: a part-filled batch keeps
        gathering until the device is free, so staging ahead never makes batches smaller."""
        return self._computing is not None and self.enabled and self._queued_samples < self.max_batch_samples

    async def _run(self) -> None:
        """Gather a batch, stage it (its copy to the device runs while the batch before it computes), hand it to
        the compute once the device is free, gather the next."""
        loop = asyncio.get_running_loop()
        while True:
            if self._computing is not None and self._computing.done():
                self._computing = None
            if not self._queue or self._next_batch_waits():
                if not self._queue and self._computing is None:
                    self._idle.set()
                    if self._closed:
                        return
                self._wakeup.clear()
                await self._wakeup.wait()  # an arrival, or the compute finishing
                continue
            if self.enabled and self._computing is None:
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
            sizes = [len(item.samples) for item in batch]
            self._staged_samples = sum(sizes)
            self._recent_batches.append(self._staged_samples)
            try:
                samples = self._join([item.samples for item in batch])
                if self._stage is not None:
                    samples = await loop.run_in_executor(self._stager, self._stage, batch[0].model, samples)
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
                self._staged_samples = 0
                _fail(batch, exc)
                continue
            if self._computing is not None:
                await asyncio.wait([self._computing])
            self._staged_samples = 0
            self._computing = loop.create_task(self._compute(batch, sizes, samples))
            self._computing.add_done_callback(lambda _: self._wakeup.set())

    async def _compute(self, batch: list[_Pending], sizes: list[int], samples) -> None:
        """Score one staged batch in the scoring thread and answer its requests."""
        started = time.monotonic()
        if self._observer is not None:
            for item in batch:
                self._observer.queue_waited(started - item.enqueued)
        self._busy = (len(samples), started)
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self._score_batch,
                                                                      batch[0].model, samples)
            parts = self._split(result, sizes)
        except Exception as exc:  # noqa: BLE001 - every request of the failed batch gets the error
            _fail(batch, exc)
        else:
            elapsed = time.monotonic() - started
            self.speed.update(len(samples), elapsed)
            if self._observer is not None:
                self._observer.batch_scored(len(samples), elapsed)
            for item, part in zip(batch, parts):
                if not item.future.done():
                    item.future.set_result(part)
        finally:
            self._busy = (0, 0.0)

    async def drain(self) -> None:
        """Stop accepting; return when every accepted request has been answered."""
        self._closed = True
        self._wakeup.set()
        await self._idle.wait()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)
        self._stager.shutdown(wait=True)
