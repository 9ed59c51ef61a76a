"""The server's Prometheus metrics against a registry of their own: counters per result, the sliding novelty rate,
the drift window per model version, and what the scrape-time collector exports."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from detector.scoring.calibration import calibrate_score
from detector.scoring.scorer import ScoreResult
from detector.serving.metrics import ServerMetrics, SlidingRate


def result(novel: list[bool], p: list[float], resample: list[bool] | None = None) -> ScoreResult:
    n = len(novel)
    return ScoreResult(scores={"novelty": np.linspace(0, 5, n)}, p_values={"novelty": np.array(p)},
                       novel={"novelty": np.array(novel)}, thresholds={"novelty": 3.0},
                       resample=None if resample is None else np.array(resample))


def test_the_sliding_rate_forgets_what_left_its_window():
    now = [100.0]
    rate = SlidingRate(window_s=10, clock=lambda: now[0])
    assert rate.rate() is None  # nothing scored: no rate, rather than a made-up 0
    rate.add(1, 4)
    now[0] = 105
    rate.add(3, 4)
    assert rate.rate() == pytest.approx(4 / 8)
    now[0] = 111  # the first second left the window
    assert rate.rate() == pytest.approx(3 / 4)


def test_results_count_samples_flags_and_scores_per_model_version():
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    metrics.record_results("v1", result([True, False, False, True], [0.001, 0.5, 0.7, 0.002], [True, False] * 2), None)
    metrics.record_results("v2", result([False], [0.4]), None)
    value = registry.get_sample_value
    assert value("detector_samples_scored_total", {"model_version": "v1"}) == 4
    assert value("detector_samples_scored_total", {"model_version": "v2"}) == 1
    assert value("detector_samples_novel_total", {"model_version": "v1", "score": "novelty"}) == 2
    assert value("detector_resample_flags_total", {"model_version": "v1"}) == 2
    assert value("detector_score_count", {"model_version": "v1", "score": "novelty"}) == 4
    assert value("detector_model_reloads_total", {"outcome": "refused"}) == 0  # exported before any reload


def test_the_collector_exports_live_state_and_drift_at_scrape_time():
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, drift_window_samples=100)
    metrics.bind_live(lambda: {"queue_depth": 7, "queue_capacity": 4096, "model_version": "v1", "device": "cpu",
                               "input_shape": "1x16x16", "thresholds": {"novelty": 3.0}, "ready": True})
    primary = calibrate_score("novelty", np.random.default_rng(0).normal(size=2000), 0.01)
    rng = np.random.default_rng(1)
    for _ in range(4):  # 200 uniform p-values: no drift
        metrics.record_results("v1", result([False] * 50, rng.uniform(size=50).tolist()), primary)
    value = registry.get_sample_value
    assert value("detector_queue_depth_samples") == 7 and value("detector_ready") == 1
    assert value("detector_model_info", {"model_version": "v1", "device": "cpu", "input_shape": "1x16x16"}) == 1
    assert value("detector_threshold", {"model_version": "v1", "score": "novelty"}) == 3.0
    assert value("detector_novelty_rate", {"model_version": "v1", "score": "novelty"}) == 0.0
    assert value("detector_drift_window_samples", {"model_version": "v1"}) == 100
    assert value("detector_drift_p_value", {"model_version": "v1", "test": "ks"}) > 0.01
    # A new model version starts its drift window afresh.
    metrics.record_results("v2", result([True] * 10, [0.0] * 10), primary)
    assert value("detector_drift_window_samples", {"model_version": "v2"}) == 10
    assert b"detector_drift_p_value" in generate_latest(registry)
