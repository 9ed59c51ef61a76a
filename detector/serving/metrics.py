"""Prometheus metrics of the scoring server, built against a registry passed in.

Names follow the Prometheus guide and the contract in ARCHITECTURE.md: prefix detector_,
base units, counters end in _total, histograms (not summaries), low-cardinality labels.
Values known only at scrape time (queue depth, windowed novelty rates, model info) come
from a custom collector.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from detector.scoring.calibration import ScoreCalibration
from detector.scoring.drift import DriftTest, DriftWindow
from detector.scoring.scorer import ScoreResult

# Latency buckets around the targets: a few ms per request, batches up to ~100 ms on CPU.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
                   0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# Novelty scores are standardised deviations: 0 is typical, thresholds sit near 2-4.
NOVELTY_BUCKETS = (-2, -1, 0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 8, 10, 15, 20, 50, 100)
SCORE_HISTOGRAMS = ("novelty",)


class SlidingRate:
    """Share of flagged samples among those scored in the last ``window_s`` seconds, in 1 s buckets."""

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._buckets: collections.deque[list] = collections.deque()  # [second, flagged, total]
        self._lock = threading.Lock()

    def add(self, flagged: int, total: int) -> None:
        now = int(self._clock())
        with self._lock:
            if self._buckets and self._buckets[-1][0] == now:
                self._buckets[-1][1] += flagged
                self._buckets[-1][2] += total
            else:
                self._buckets.append([now, flagged, total])
            self._expire(now)

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            self._buckets.popleft()

    def rate(self) -> float | None:
        with self._lock:
            self._expire(self._clock())
            total = sum(b[2] for b in self._buckets)
            return sum(b[1] for b in self._buckets) / total if total else None


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry, window_s: float = 60.0, drift_window_samples: int = 1000):
        self.registry = registry
        self.samples_scored = Counter("detector_samples_scored_total", "Samples scored.", ["model_version"],
                                      registry=registry)
        self.samples_novel = Counter("detector_samples_novel_total", "Samples flagged novel, per score.",
                                     ["model_version", "score"], registry=registry)
        self.resample_flags = Counter("detector_resample_flags_total",
                                      "Samples flagged for resampling (rare latent region).", ["model_version"],
                                      registry=registry)
        self.requests = Counter("detector_requests_total", "Finished RPCs by method and gRPC status code.",
                                ["method", "code"], registry=registry)
        self.errors = Counter("detector_errors_total", "Failed RPCs by method and gRPC status code.",
                              ["method", "code"], registry=registry)
        self.request_latency = Histogram("detector_request_duration_seconds", "Time from request to response.",
                                         ["method"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_wait = Histogram("detector_queue_wait_seconds", "Time a request waited for its batch.",
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.inference = Histogram("detector_inference_duration_seconds", "Forward pass and scoring time per batch.",
                                   buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("detector_batch_size_samples", "Samples per forward pass.",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.score = Histogram("detector_score", "Distribution of scores.", ["model_version", "score"],
                               buckets=NOVELTY_BUCKETS, registry=registry)
        self.held = Counter("detector_requests_held_total",
                            "Requests held for the retry pushback their connection was given (clients that resend "
                            "before it): then admitted, or refused just before their deadline.", registry=registry)
        self.reloads = Counter("detector_model_reloads_total", "Model reload attempts (SIGHUP) by outcome.", ["outcome"],
                               registry=registry)
        for outcome in ("loaded", "refused"):
            self.reloads.labels(outcome)  # exported as 0 from the start, so alerts see the series
        self.window_s = window_s
        self._rates: dict[str, SlidingRate] = {}
        self.drift_window_samples = drift_window_samples
        self._drift: tuple[str, DriftWindow] | None = None  # (model_version, window): a new model starts afresh
        self._live: Callable[[], dict] = lambda: {}
        registry.register(_LiveCollector(self))

    def bind_live(self, live: Callable[[], dict]) -> None:
        """``live()`` returns queue depth, model info and readiness at scrape time."""
        self._live = live

    # BatchObserver
    def batch_scored(self, n_samples: int, inference_seconds: float) -> None:
        self.batch_size.observe(n_samples)
        self.inference.observe(inference_seconds)

    def queue_waited(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def record_results(self, model_version: str, result: ScoreResult, primary: ScoreCalibration | None) -> None:
        novel, scores, resample = result.novel, result.scores, result.resample
        n = len(next(iter(novel.values())))
        self.samples_scored.labels(model_version).inc(n)
        for name, flags in novel.items():
            flagged = int(np.count_nonzero(flags))
            self.samples_novel.labels(model_version, name).inc(flagged)
            self._rates.setdefault(name, SlidingRate(self.window_s)).add(flagged, n)
        for name in SCORE_HISTOGRAMS:
            hist = self.score.labels(model_version, name)
            for value in scores[name]:
                hist.observe(float(value))
        if resample is not None:
            self.resample_flags.labels(model_version).inc(int(np.count_nonzero(resample)))
        if primary is not None:
            self.drift_window(model_version, primary).add(result.p_values[primary.name])

    def drift_window(self, model_version: str, primary: ScoreCalibration) -> DriftWindow:
        if self._drift is None or self._drift[0] != model_version:
            self._drift = (model_version, DriftWindow(self.drift_window_samples, primary.target_fpr, primary.n))
        return self._drift[1]

    def drift(self) -> tuple[str, dict[str, DriftTest], int]:
        """The served model's version, its drift tests (empty until the window holds enough) and window fill."""
        current = self._drift
        if current is None:
            return "", {}, 0
        return current[0], current[1].tests(), current[1].filled

    def rates(self) -> dict[str, float | None]:
        return {name: r.rate() for name, r in self._rates.items()}


class _LiveCollector:
    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics

    def collect(self):
        live = self.metrics._live()
        depth = GaugeMetricFamily("detector_queue_depth_samples", "Samples waiting for a forward pass.")
        depth.add_metric([], float(live.get("queue_depth", 0)))
        yield depth
        capacity = GaugeMetricFamily("detector_queue_capacity_samples", "Queue limit: beyond it, RESOURCE_EXHAUSTED.")
        capacity.add_metric([], float(live.get("queue_capacity", 0)))
        yield capacity
        rate = GaugeMetricFamily("detector_novelty_rate",
                                 f"Share of samples flagged novel over the last {self.metrics.window_s:g} s.",
                                 labels=["model_version", "score"])
        version = live.get("model_version", "")
        for name, value in self.metrics.rates().items():
            if value is not None:
                rate.add_metric([version, name], value)
        yield rate
        info = GaugeMetricFamily("detector_model_info", "The model being served (value 1).",
                                 labels=["model_version", "device", "input_shape"])
        if version:
            info.add_metric([version, live.get("device", ""), live.get("input_shape", "")], 1.0)
        yield info
        threshold = GaugeMetricFamily("detector_threshold", "Calibrated threshold per score.",
                                      labels=["model_version", "score"])
        for name, value in live.get("thresholds", {}).items():
            threshold.add_metric([version, name], value)
        yield threshold
        drift_version, tests, filled = self.metrics.drift()
        p_value = GaugeMetricFamily("detector_drift_p_value",
                                    "Drift tests of the primary score's p-values over the last "
                                    f"{self.metrics.drift_window_samples} samples against Uniform(0,1): ks "
                                    "(Kolmogorov-Smirnov), binomial (share at or below the target FPR). Small: drift.",
                                    labels=["model_version", "test"])
        statistic = GaugeMetricFamily("detector_drift_statistic",
                                      "The drift tests' statistics: ks D; binomial the share flagged.",
                                      labels=["model_version", "test"])
        for name, test in tests.items():
            p_value.add_metric([drift_version, name], test.p_value)
            statistic.add_metric([drift_version, name], test.statistic)
        yield p_value
        yield statistic
        window = GaugeMetricFamily("detector_drift_window_samples", "Samples in the drift window (tests from 100).",
                                   labels=["model_version"])
        if drift_version:
            window.add_metric([drift_version], float(filled))
        yield window
        ready = GaugeMetricFamily("detector_ready", "1 when the model is loaded and warmed up and not draining.")
        ready.add_metric([], 1.0 if live.get("ready") else 0.0)
        yield ready
