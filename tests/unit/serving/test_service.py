"""The scoring service without gRPC: the checks a request must pass, the warm-up, hot reload's refusals."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from detector.config import ServeConfig
from detector.data.synthetic import bars
from detector.errors import BundleError, InvalidInput, ModelNotReady
from detector.scoring.scorer import Scorer
from detector.serving.metrics import ServerMetrics
from detector.serving.service import ScoringService, tuned_batch


@pytest.fixture(scope="module")
def scorer(bundle_path):
    return Scorer.from_path(bundle_path, device="cpu")


def service(scorer, registry: CollectorRegistry | None = None, **cfg) -> ScoringService:
    metrics = ServerMetrics(registry if registry is not None else CollectorRegistry())
    return ScoringService(scorer, metrics, ServeConfig(port=0, metrics_port=-1, **cfg))


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("samples, n_ids, layout, message", [
    (np.zeros((0, 1, 16, 16), np.uint8), 0, "NCHW", "empty request"),
    (np.zeros((9, 1, 16, 16), np.uint8), 0, "NCHW", "9 samples in one request; the limit is 8"),
    (np.zeros((2, 1, 16, 16), np.uint8), 3, "NCHW", "3 sample_ids for 2 samples"),
    (np.zeros((2, 16, 16, 3), np.uint8), 0, "NHWC", "samples must have shape"),
    (np.zeros((2, 16, 16, 1), np.uint8), 0, "NCHW", "send layout NHWC"),
])
def test_a_request_that_cannot_be_scored_is_refused_with_what_is_wrong(scorer, samples, n_ids, layout, message):
    with pytest.raises(InvalidInput, match=message):
        service(scorer, max_request_samples=8).check(samples, n_ids, layout)


def test_check_hands_back_the_samples_channels_first_without_copying(scorer):
    x = np.ascontiguousarray(bars(3, size=16)[:, 0, :, :, None])  # (3, 16, 16, 1): channels-last
    checked = service(scorer).check(x, 3, "NHWC").samples
    assert checked.shape == (3, 1, 16, 16) and np.shares_memory(checked, x)


def test_requests_before_the_warm_up_are_refused_as_not_ready(scorer):
    with pytest.raises(ModelNotReady):
        run(service(scorer).score(bars(2, size=16)))


def test_the_warm_up_teaches_admission_the_scoring_speed(scorer):
    """Without it, a burst arriving at start-up is admitted whole, however late it would finish."""
    async def main():
        svc = service(scorer, max_batch_samples=32, tune_batch=False)
        assert svc.batcher.speed.expected_wait(64) == 0.0  # nothing measured
        await svc.start()
        waits = svc.batcher.speed.expected_wait(32), svc.batcher.speed.expected_wait(320)
        version, result = await svc.score(bars(2, size=16), deadline=None)
        await svc.drain()
        return waits, version, result

    (one_batch, ten_batches), version, result = run(main())
    assert 0 < one_batch < ten_batches
    assert version == scorer.model_version and len(result) == 2


class CurvedScorer:
    """Stands in for a Scorer whose samples/s peak at a batch of 16 (as a CPU's at 3x64x64 peak at 32): per call,
    4 ms + 0.5 ms a sample up to 16, then more per sample the larger the batch."""
    sample_shape, input_dtype, device = (1, 4, 4), "uint8", torch.device("cpu")

    def __init__(self):
        self.calls = []

    def score(self, x):
        n = len(x)
        self.calls.append(n)
        time.sleep(0.004 + 0.0005 * n if n <= 16 else 0.012 * (n / 16) ** 1.3)


def test_the_batch_is_tuned_to_the_smallest_within_a_tenth_of_the_fastest_per_sample():
    fake = CurvedScorer()
    assert tuned_batch(fake, 64) == 16  # 8: 1000 samples/s, 16: 1333, 32: 1083, 64: 880
    assert set(fake.calls) == {1, 2, 4, 8, 16, 32, 64}
    assert tuned_batch(CurvedScorer(), 12) == 12  # the limit itself is measured too: nothing above it
    assert tuned_batch(CurvedScorer(), 64, share=0.7) == 8  # 1000 >= 0.7 x 1333


def test_the_server_batches_up_to_the_tuned_batch_and_says_so(scorer):
    async def main():
        svc = service(scorer, max_batch_samples=64)
        await svc.start()
        tuned = svc.max_batch_samples, svc.batcher.speed.max_batch_samples
        await svc.drain()
        fixed = service(scorer, max_batch_samples=64, tune_batch=False)
        await fixed.start()
        await fixed.drain()
        return tuned, fixed.max_batch_samples

    (tuned, in_speed_model), fixed = run(main())
    assert 1 <= tuned <= 64 and in_speed_model == tuned
    assert fixed == 64


def test_a_reload_that_does_not_fit_is_refused_and_the_old_model_keeps_serving(scorer, tmp_path):
    registry = CollectorRegistry()

    async def main():
        svc = service(scorer, registry)
        await svc.start()
        with pytest.raises(BundleError, match="reload refused, still serving"):
            await svc.reload(tmp_path / "missing")
        version, _ = await svc.score(bars(1, size=16))
        await svc.drain()
        return version

    assert run(main()) == scorer.model_version
    assert registry.get_sample_value("detector_model_reloads_total", {"outcome": "refused"}) == 1
