"""Scoring service: validate -> dynamic batch -> Scorer -> metrics. Knows nothing of gRPC."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from detector.config import ServeConfig
from detector.errors import InvalidInput, ModelNotReady
from detector.scoring.scorer import ScoreResult, Scorer
from detector.serving.batcher import DynamicBatcher
from detector.serving.metrics import ServerMetrics


class ScoringService:
    def __init__(self, scorer: Scorer, metrics: ServerMetrics, cfg: ServeConfig):
        cfg.validate()
        self.scorer = scorer
        self.metrics = metrics
        self.cfg = cfg
        self.ready = False
        self.batcher = DynamicBatcher(scorer.score_checked, ScoreResult.split, cfg.max_batch_samples, cfg.max_delay_ms / 1000,
                                      cfg.max_queue_samples, observer=metrics, enabled=cfg.batching)
        metrics.bind_live(self.live)

    async def start(self) -> None:
        """Start batching and warm up with one full batch, so the first request pays no start-up cost."""
        self.batcher.start()
        warm = np.zeros((min(self.cfg.max_batch_samples, 64), *self.scorer.sample_shape),
                        dtype=np.uint8 if self.scorer.input_dtype == "uint8" else np.float32)
        await asyncio.get_running_loop().run_in_executor(None, self.scorer.score, warm)
        self.ready = True

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

    def check(self, samples: np.ndarray, n_ids: int) -> None:
        """Every check a request must pass before it may join a batch."""
        if samples.ndim == 0 or samples.shape[0] == 0:
            raise InvalidInput("empty request: samples must hold at least one sample")
        if samples.shape[0] > self.cfg.max_request_samples:
            raise InvalidInput(f"{samples.shape[0]} samples in one request; the limit is {self.cfg.max_request_samples}")
        if n_ids not in (0, samples.shape[0]):
            raise InvalidInput(f"{n_ids} sample_ids for {samples.shape[0]} samples: give none or one per sample")
        if samples.dtype == np.uint8 and self.scorer.kind != "image":
            raise InvalidInput("UINT8 is for image pixels; this model scores feature vectors: send FLOAT32")
        self.scorer.check_batch(samples)

    async def score(self, samples: np.ndarray, n_ids: int = 0, deadline: float | None = None) -> tuple[str, ScoreResult]:
        """Score one request's samples; ``deadline`` is a time.monotonic() value."""
        if not self.ready:
            raise ModelNotReady("model is loading; retry shortly")
        self.check(samples, n_ids)
        version = self.scorer.model_version
        result: ScoreResult = await self.batcher.submit(samples, deadline)
        self.metrics.record_results(version, result.novel, result.scores, result.resample)
        return version, result

    async def drain(self) -> None:
        self.ready = False
        await self.batcher.drain()


def deadline_from_remaining(remaining: float | None) -> float | None:
    return None if remaining is None else time.monotonic() + remaining
