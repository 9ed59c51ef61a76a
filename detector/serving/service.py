"""Scoring service: validate -> dynamic batch -> Scorer -> metrics, and hot reload of the model.
Knows nothing of gRPC."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from detector.config import ServeConfig
from detector.data.layout import to_channels_first
from detector.errors import BundleError, InvalidInput, ModelNotReady, Overloaded
from detector.scoring.scorer import PRIMARY, CheckedBatch, ScoreResult, Scorer, check_diagnostics
from detector.scoring.scores import DIAGNOSTICS
from detector.scoring.staging import Staged
from detector.serving.batcher import DynamicBatcher
from detector.serving.metrics import ServerMetrics
from detector.serving.pushback import PushbackLedger
from detector.timing import timed

log = logging.getLogger("detector.serve")
TUNED_SHARE = 0.9  # the served batch scores at least this share of the best samples/s measured at start-up


class ScoringService:
    diagnostics = DIAGNOSTICS  # what a request may ask for besides the default scores

    def __init__(self, scorer: Scorer, metrics: ServerMetrics, cfg: ServeConfig):
        self.scorer = scorer
        self.metrics = metrics
        self.cfg = cfg
        self.ready = False
        self.last_refused = 0.0  # time.monotonic() of the last request refused as not ready
        self.last_overloaded = -math.inf  # and of the last one refused as overload (RESOURCE_EXHAUSTED)
        wait = cfg.max_queue_wait_ms / 1000 if cfg.max_queue_wait_ms else None
        self.batcher = DynamicBatcher(score_batch, ScoreResult.split, cfg.max_batch_samples, cfg.max_delay_ms / 1000,
                                      cfg.max_queue_samples, observer=metrics, enabled=cfg.batching,
                                      max_queue_wait_s=wait, join=CheckedBatch.join, stage=stage_batch)
        self.pushback = PushbackLedger(on_hold=self.metrics.held.inc)
        self._reload_lock = asyncio.Lock()
        metrics.bind_live(self.live)

    async def start(self) -> None:
        """Start batching and warm up, so the first request pays no start-up cost and admission by deadline knows
        the scoring speed from the first request on."""
        self.batcher.start()
        await asyncio.get_running_loop().run_in_executor(None, self._warm_up)
        self.ready = True

    def _warm_up(self) -> None:
        """A first pass pays the start-up costs; the batch is tuned (tuned_batch); timed passes at two batch sizes
        seed the batcher's speed model (without them, a burst arriving at start-up is admitted whole, however late
        it would finish)."""
        full = self.cfg.max_batch_samples
        smoke_test(self.scorer, min(full, 64))
        if self.cfg.tune_batch:
            full = tuned_batch(self.scorer, full)
            log.info("batching up to %d samples (the fastest per sample measured, of at most %d)", full,
                     self.cfg.max_batch_samples)
        self.batcher.limit_batch(full)
        for n in (full, max(1, full // 4)):
            started = time.perf_counter()
            smoke_test(self.scorer, n)
            self.batcher.speed.update(n, time.perf_counter() - started)

    async def reload(self, path: str | Path) -> str:
        """Load the bundle at ``path``, check it, and serve it from the next batch on.

        Requests already admitted finish on the model they were admitted under. A bundle that
        fails its manifest, does not fit the served input shape, or fails a smoke forward pass is
        refused with BundleError, counted, and the old model keeps serving.
        """
        async with self._reload_lock:
            old = self.scorer
            try:
                new = await asyncio.get_running_loop().run_in_executor(None, self._load_compatible, Path(path))
            except Exception as exc:  # noqa: BLE001 - any failure refuses the bundle, never the server
                self.metrics.reloads.labels("refused").inc()
                reason = str(exc) if isinstance(exc, (BundleError, InvalidInput, ModelNotReady)) else repr(exc)
                log.error("reload refused, still serving %s: %s", old.model_version, reason)
                raise BundleError(f"reload refused, still serving {old.model_version}: {reason}") from None
            self.scorer = new
            self.metrics.reloads.labels("loaded").inc()
            log.info("reloaded: now serving %s (was %s)", new.model_version, old.model_version)
            return new.model_version

    def _load_compatible(self, path: Path) -> Scorer:
        old = self.scorer
        new = Scorer.from_path(path, device=str(old.device), precision=old.precision)
        for what, a, b in (("data kind", old.kind, new.kind), ("sample shape", old.sample_shape, new.sample_shape),
                           ("input dtype", old.input_dtype, new.input_dtype)):
            if a != b:
                raise BundleError(f"{path}: {what} {b} differs from the served {a}; clients would break "
                                  f"(restart the server to change it)")
        smoke_test(new, min(self.max_batch_samples, 64))
        return new

    @property
    def max_batch_samples(self) -> int:
        """The batch limit in force (tuned at start-up, at most cfg.max_batch_samples)."""
        return self.batcher.max_batch_samples

    def live(self) -> dict:
        return {
            "queue_depth": self.batcher.queue_depth,
            "queue_capacity": self.cfg.max_queue_samples,
            "model_version": self.scorer.model_version,
            "device": str(self.scorer.device),
            "input_shape": "x".join(map(str, self.scorer.sample_shape)),
            "thresholds": {k: c.threshold for k, c in self.scorer.calibration.items()},
            "ready": self.ready,
        }

    def check(self, samples: np.ndarray, n_ids: int, layout: str = "NCHW") -> CheckedBatch:
        """Every check a request must pass before it may join a batch (the request's own, then the Scorer's one
        check of samples); the samples in the model's channels-first order (a view)."""
        if samples.ndim == 0 or samples.shape[0] == 0:
            raise InvalidInput("empty request: samples must hold at least one sample")
        if samples.shape[0] > self.cfg.max_request_samples:
            raise InvalidInput(f"{samples.shape[0]} samples in one request; the limit is {self.cfg.max_request_samples}")
        if n_ids not in (0, samples.shape[0]):
            raise InvalidInput(f"{n_ids} sample_ids for {samples.shape[0]} samples: give none or one per sample")
        if samples.dtype == np.uint8 and self.scorer.kind != "image":
            raise InvalidInput("UINT8 is for image pixels; this model scores feature vectors: send FLOAT32")
        return self.scorer.check(to_channels_first(samples, layout, self.scorer.sample_shape))

    async def arrive(self, deadline: float | None = None, client: str = "") -> None:
        """What a call whose request is not yet read must pass (then ``score`` it with ``arrived``): a ready model,
        the pushback its connection was given held to, and room in the queue before its deadline for at least one
        sample. Refused here, a request's samples are never read."""
        self._refuse_unless_ready()
        try:
            await self.pushback.hold(client, deadline)
            self.batcher.precheck(deadline)
        except Overloaded as exc:
            self._told(client, exc)
            raise

    async def score(self, samples: np.ndarray, n_ids: int = 0, deadline: float | None = None,
                    diagnostics=(), layout: str = "NCHW", maps: bool = False, client: str = "",
                    arrived: bool = False) -> tuple[str, ScoreResult]:
        """Score one request's samples, given in ``layout`` (detector/data/layout.py); ``deadline`` is a
        time.monotonic() value; ``diagnostics`` names costlier scores to add; ``maps``: per-pixel anomaly maps
        too. Requests share a batch only with requests of the same model, diagnostics and maps. ``client`` names
        the connection (serving/pushback.py): one that comes back before the pushback it was given waits for it,
        unless the call already passed ``arrive`` (``arrived``)."""
        self._refuse_unless_ready()
        samples = self.check(samples, n_ids, layout)
        asked = check_diagnostics(diagnostics)
        scorer = self.scorer  # the model this request is admitted under, even if a reload follows
        if maps:
            scorer.check_maps()
        try:
            if not arrived:
                await self.pushback.hold(client, deadline)
            result: ScoreResult = await self.batcher.submit(samples, deadline, model=(scorer, asked, maps))
        except Overloaded as exc:
            self._told(client, exc)
            raise
        self.metrics.record_results(scorer.model_version, result, scorer.calibration.get(PRIMARY))
        return scorer.model_version, result

    def _refuse_unless_ready(self) -> None:
        if not self.ready:
            self.last_refused = time.monotonic()
            raise ModelNotReady("model not ready (loading, or the server is shutting down); retry shortly")

    def _told(self, client: str, refusal: Overloaded) -> None:
        self.last_overloaded = time.monotonic()
        if refusal.retry_after_s is not None:
            self.pushback.told(client, refusal.retry_after_s)

    async def drain(self) -> None:
        self.ready = False
        await self.batcher.drain()


def stage_batch(key: tuple[Scorer, frozenset[str], bool], samples: CheckedBatch) -> Staged:
    """A joined batch on its way to ``key``'s scoring device, while the batch before it computes."""
    return key[0].stage(samples)


def score_batch(key: tuple[Scorer, frozenset[str], bool], samples: Staged | CheckedBatch | np.ndarray) -> ScoreResult:
    """One forward pass of ``key``'s scorer with its diagnostics (and maps); out of device memory, retry in halves
    (scores do not depend on the batch)."""
    scorer, diagnostics, maps = key
    try:
        return scorer.score(samples, diagnostics, maps)
    except torch.OutOfMemoryError:
        if scorer.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(samples) == 1:
            raise Overloaded("device out of memory scoring one sample; retry later") from None
        half = len(samples) // 2
        log.warning("out of device memory on a batch of %d samples; scoring it in halves", len(samples))
        return ScoreResult.concat([score_batch(key, samples[:half]), score_batch(key, samples[half:])])


def tuned_batch(scorer: Scorer, limit: int, share: float = TUNED_SHARE, rounds: int = 3) -> int:
    """The smallest batch, of 1, 2, 4 ... up to ``limit``, that scores within ``share`` of the best samples/s
    measured (on blank samples, the fastest of ``rounds`` passes each, the sizes taken in turn in each round so that
    a moment when the cores are busy elsewhere does not favour one size). Past the device's best, a larger batch
    only makes every request in it wait longer, and admission by deadline promise less: at 3x64x64 on 2 CPU cores,
    batches of 16 to 256 scored 340-520 samples/s, one of 256 took 0.75 s, and under overload a tenth of the
    requests admitted to such batches missed 2 s deadlines. A GPU, whose samples/s grow with the batch, keeps large
    ones."""
    sizes = sorted({*(1 << i for i in range(limit.bit_length())), limit})
    blank = blank_samples(scorer, limit)
    fastest = dict.fromkeys(sizes, math.inf)
    for n in sizes:  # first passes: start-up costs of each size
        scorer.score(blank[:n])
    for _ in range(rounds):
        for n in sizes:
            fastest[n] = min(fastest[n], timed(lambda: scorer.score(blank[:n]), scorer.device))
    rates = {n: n / fastest[n] for n in sizes}
    best = max(rates.values())
    log.info("samples/s by batch at start-up: %s", ", ".join(f"{n}: {rate:.0f}" for n, rate in rates.items()))
    return min(n for n in sizes if rates[n] >= share * best)


def blank_samples(scorer: Scorer, n: int) -> np.ndarray:
    """``n`` all-zero samples of the shape and dtype ``scorer`` takes."""
    return np.zeros((n, *scorer.sample_shape), dtype=np.uint8 if scorer.input_dtype == "uint8" else np.float32)


def smoke_test(scorer: Scorer, n: int) -> None:
    """A forward pass on blank samples (warm-up, and the check a reloaded bundle must pass)."""
    result = scorer.score(blank_samples(scorer, n))
    bad = [name for name, values in result.scores.items() if not np.isfinite(values).all()]
    if bad:
        raise BundleError(f"model gives non-finite {', '.join(sorted(bad))} on blank samples")


def deadline_from_remaining(remaining: float | None) -> float | None:
    return None if remaining is None else time.monotonic() + remaining
