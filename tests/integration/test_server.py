"""A real server on loopback: results, error codes, queue, deadlines, health, streams, metrics."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detector.client import DetectorClient
from detector.data.synthetic import bars
from detector.scoring.scorer import Scorer
from detector.serving.grpc.converters import score_request
from detector.serving.grpc.server import start_server
from detector.serving.service import score_batch
from detector.v1 import detector_pb2 as pb
from detector.v1 import detector_pb2_grpc as pb_grpc
from tests.conftest import NOVELTY_TOLERANCE
from tests.integration.serving_helpers import ServerThread


@pytest.fixture(scope="module")
def scorer(bundle_path):
    return Scorer.from_path(bundle_path, device="cpu")


@pytest.fixture(scope="module")
def server(scorer):
    with ServerThread(scorer, max_batch_samples=64, tune_batch=False, max_delay_ms=5) as s:
        yield s


def samples(n, seed, vertical=False):
    return bars(n, size=16, seed=seed, vertical=vertical)


def stub(target):
    return pb_grpc.DetectorStub(grpc.insecure_channel(target))


def test_concurrent_clients_get_exactly_their_in_process_results(server, scorer):
    def client_run(seed):
        rng = np.random.default_rng(seed)
        out = []
        with DetectorClient(server.target) as client:
            for r in range(6):
                x = samples(int(rng.integers(1, 9)), seed * 100 + r, vertical=bool(r % 2))
                ids = [f"c{seed}-r{r}-s{i}" for i in range(len(x))]
                out.append((x, ids, client.score(x, sample_ids=ids, request_id=f"c{seed}-r{r}")))
        return out

    with ThreadPoolExecutor(16) as pool:
        runs = [f.result() for f in [pool.submit(client_run, s) for s in range(16)]]
    for run in runs:
        for x, ids, remote in run:
            local = scorer.score(x)
            assert list(remote.sample_id) == ids
            np.testing.assert_allclose(remote.novelty_score, local.scores["novelty"], **NOVELTY_TOLERANCE)
            np.testing.assert_allclose(remote.neg_elbo, local.scores["neg_elbo"], rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(remote.recon_error, local.scores["recon_error"], rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(remote.p_value, local.p_values["novelty"], atol=1e-6)
            np.testing.assert_array_equal(remote.is_novel, local.novel["novelty"])
            assert remote.threshold[0] == pytest.approx(local.thresholds["novelty"])
    # Batching really happened: fewer forward passes than requests.
    batches = server.metric("detector_batch_size_samples_count")
    assert 0 < batches < 16 * 6


def raw_request(shape, dtype=pb.UINT8, data=None, ids=(), layout=pb.NCHW):
    if data is None:
        itemsize = {pb.UINT8: 1, pb.FLOAT32: 4, pb.FLOAT16: 2}.get(dtype, 1)
        data = bytes(max(0, int(np.prod(shape))) * itemsize)
    return pb.ScoreRequest(request_id="bad", samples=pb.Tensor(shape=shape, dtype=dtype, data=data, layout=layout),
                           sample_ids=list(ids))


@pytest.mark.parametrize("request_,message", [
    (raw_request([2, 1, 16, 16], dtype=pb.DATA_TYPE_UNSPECIFIED), "not supported"),
    (raw_request([2, 1, 16, 16], dtype=99), "not supported"),
    (raw_request([2, 3, 16, 16]), "must have shape [N, 1, 16, 16] (NCHW), [N, 16, 16, 1] (NHWC), [N, 16, 16]"),
    (raw_request([2, 16, 16, 1]), "look channels-last, send layout NHWC"),
    (raw_request([2, 1, 16, 16], layout=pb.NHWC), "look channels-first, send layout NCHW"),
    (raw_request([2, 16, 16, 3], layout=pb.NHWC), "got [2, 16, 16, 3] as NHWC"),
    (raw_request([2, 1, 16, 16], layout=7), "samples.layout 7 is not a layout"),
    (raw_request([2, 256]), "must have shape"),
    (raw_request([2, 1, 16, 16], data=b"\x00" * 100), "needs 512"),
    (raw_request([2, -1, 16, 16], data=b""), "negative dimension"),
    (raw_request([2**40, 2**40, 16, 16], data=b""), "needs"),
    (raw_request([0, 1, 16, 16]), "empty request"),
    (raw_request([]), "shape is empty"),
    (raw_request([5000, 1, 16, 16]), "the limit is 4096"),
    (raw_request([2, 1, 16, 16], ids=["only-one"]), "1 sample_ids for 2 samples"),
    (raw_request([1, 1, 16, 16], dtype=pb.FLOAT32, data=np.full((1, 1, 16, 16), np.nan, np.float32).tobytes()),
     "NaN or Inf"),
    (raw_request([1, 1, 16, 16], dtype=pb.FLOAT32, data=np.full((1, 1, 16, 16), 3.0, np.float32).tobytes()),
     "within 0..1"),
    (raw_request([1, 1, 16, 16], dtype=pb.FLOAT16, data=np.full((1, 1, 16, 16), np.inf, np.float16).tobytes()),
     "NaN or Inf"),
])
def test_bad_input_gets_invalid_argument_saying_what_is_wrong(server, request_, message):
    with pytest.raises(grpc.RpcError) as err:
        stub(server.target).Score(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_one_bad_request_does_not_fail_others_and_server_keeps_serving(server):
    good = samples(4, 7)
    with DetectorClient(server.target) as client:
        with pytest.raises(grpc.RpcError):
            stub(server.target).Score(raw_request([1, 1, 16, 16], data=b"x"), timeout=5)
        assert len(client.score(good)) == 4
    assert server.metric("detector_errors_total", method="Score", code="INVALID_ARGUMENT") >= 1


def test_float_and_float16_inputs_match_uint8(server, scorer):
    x = samples(3, 11)
    with DetectorClient(server.target) as client:
        a = client.score(x)
        b = client.score(x.astype(np.float32) / 255)
        c = client.score((x.astype(np.float32) / 255).astype(np.float16))
    np.testing.assert_allclose(a.novelty_score, b.novelty_score, **NOVELTY_TOLERANCE)
    np.testing.assert_allclose(a.novelty_score, c.novelty_score, rtol=0.05, atol=0.05)


def test_every_layout_gives_the_scores_of_channels_first(server, scorer):
    x = samples(5, 12)  # (5, 1, 16, 16)
    local = scorer.score(x)
    with DetectorClient(server.target) as client:
        info = client.model_info()
        sent = {"NCHW [N,C,H,W]": client.score(x),
                "NCHW [N,H,W]": client.score(x[:, 0]),
                "NHWC [N,H,W,C]": client.score(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), layout="NHWC"),
                "NHWC [N,H,W]": client.score(x[:, 0], layout="NHWC")}
    for name, remote in sent.items():
        np.testing.assert_allclose(remote.novelty_score, local.scores["novelty"], **NOVELTY_TOLERANCE, err_msg=name)
        np.testing.assert_allclose(remote.recon_error, local.scores["recon_error"], rtol=1e-4, atol=1e-6, err_msg=name)
    accepted = {(pb.Layout.Name(a.layout), tuple(a.shape)) for a in info.accepted_shapes}
    assert accepted == {("NCHW", (1, 16, 16)), ("NHWC", (16, 16, 1)), ("NCHW", (16, 16)), ("NHWC", (16, 16))}


def test_stream_answers_in_order(server):
    xs = [samples(i % 4 + 1, 50 + i) for i in range(12)]
    requests = [score_request(x, request_id=f"s{i}") for i, x in enumerate(xs)]
    responses = list(stub(server.target).ScoreStream(iter(requests), timeout=30))
    assert [r.request_id for r in responses] == [f"s{i}" for i in range(12)]
    assert [len(r.results) for r in responses] == [len(x) for x in xs]


def test_model_info_health_and_reflection(server, scorer):
    channel = grpc.insecure_channel(server.target)
    info = pb_grpc.DetectorStub(channel).GetModelInfo(pb.ModelInfoRequest(), timeout=5)
    assert info.model_version == scorer.model_version and list(info.input_shape) == [1, 16, 16]
    assert info.preferred_dtype == pb.UINT8 and info.thresholds["novelty"] == pytest.approx(
        scorer.calibration["novelty"].threshold)
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "detector.v1.Detector"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"detector.v1.Detector", "grpc.health.v1.Health"} <= names


def test_metrics_after_known_traffic_equal_the_traffic(scorer):
    normal, odd = samples(20, 200), samples(10, 201, vertical=True)
    expected_novel = int(scorer.score(normal).novel["novelty"].sum() + scorer.score(odd).novel["novelty"].sum())
    with ServerThread(scorer) as s, DetectorClient(s.target) as client:
        client.score(normal)
        client.score(odd)
        with pytest.raises(grpc.RpcError):
            stub(s.target).Score(raw_request([1, 2, 2, 2]), timeout=5)
        v = scorer.model_version
        assert s.metric("detector_samples_scored_total", model_version=v) == 30
        assert s.metric("detector_samples_novel_total", model_version=v, score="novelty") == expected_novel
        assert s.metric("detector_novelty_rate", model_version=v, score="novelty") == pytest.approx(expected_novel / 30)
        assert s.metric("detector_requests_total", method="Score", code="OK") == 2
        assert s.metric("detector_errors_total", method="Score", code="INVALID_ARGUMENT") == 1
        assert s.metric("detector_score_count", model_version=v, score="novelty") == 30
        assert s.metric("detector_batch_size_samples_sum") == 30  # traffic only: the warm-up is not counted
        assert s.metric("detector_request_duration_seconds_count", method="Score") == 3
        assert s.metric("detector_model_info", model_version=v, device="cpu", input_shape="1x16x16") == 1
        assert s.metric("detector_queue_depth_samples") == 0
        # Drift: 30 samples in the window are too few to test; 150 are, and 10 clear anomalies among them (7%,
        # against the 1% target FPR) are a drift the binomial test sees, even against this bundle's calibration of
        # only 200 (whose own uncertainty the test counts).
        assert s.metric("detector_drift_window_samples", model_version=v) == 30
        assert s.registry.get_sample_value("detector_drift_p_value", {"model_version": v, "test": "ks"}) is None
        more = samples(120, 202)
        client.score(more)
        assert s.metric("detector_drift_window_samples", model_version=v) == 150
        flagged = expected_novel + int(scorer.score(more).novel["novelty"].sum())
        assert s.metric("detector_drift_statistic", model_version=v, test="binomial") == pytest.approx(flagged / 150)
        assert s.metric("detector_drift_p_value", model_version=v, test="binomial") < 0.01
        assert 0 < s.metric("detector_drift_p_value", model_version=v, test="ks") <= 1
        odd = samples(150, 203, vertical=True)  # half the window (of 1000) now novel
        client.score(odd)
        flagged += int(scorer.score(odd).novel["novelty"].sum())
        assert s.metric("detector_drift_statistic", model_version=v, test="binomial") == pytest.approx(flagged / 300)
        assert s.metric("detector_drift_p_value", model_version=v, test="binomial") < 1e-9
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{s.running.metrics_port}/metrics", timeout=5).read().decode()
        assert "detector_samples_scored_total" in text and "detector_queue_wait_seconds_bucket" in text
        assert 'detector_drift_p_value{model_version="' in text
        if shutil.which("promtool"):  # the exposition, drift gauges included, follows Prometheus' conventions
            proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout + proc.stderr


def slow(scorer, seconds):
    def score(model, batch):
        time.sleep(seconds)
        return score_batch(model, batch)
    return score


def test_full_queue_gets_resource_exhausted_at_once(scorer):
    with ServerThread(scorer, max_queue_samples=4, max_batch_samples=2, tune_batch=False, max_delay_ms=0) as s:
        s.running.service.batcher._score_batch = slow(scorer, 0.3)
        codes, lock = [], threading.Lock()

        def one():
            try:
                stub(s.target).Score(raw_request([2, 1, 16, 16]), timeout=20)
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
            with lock:
                codes.append(code)

        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1
        assert codes.count(grpc.StatusCode.OK) >= 2
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_expired_request_is_dropped_before_compute(scorer):
    with ServerThread(scorer, max_batch_samples=1, tune_batch=False, max_delay_ms=0) as s:
        s.running.service.batcher._score_batch = slow(scorer, 0.6)
        before = s.metric("detector_batch_size_samples_count")
        blocker = threading.Thread(target=lambda: stub(s.target).Score(raw_request([1, 1, 16, 16]), timeout=20))
        blocker.start()
        time.sleep(0.1)
        with pytest.raises(grpc.RpcError) as err:
            stub(s.target).Score(raw_request([1, 1, 16, 16]), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        blocker.join()
        time.sleep(0.2)
        # Only the blocker was computed: the expired request never reached the model.
        assert s.metric("detector_batch_size_samples_count") - before == 1
        assert s.metric("detector_samples_scored_total", model_version=scorer.model_version) == 1


def test_health_is_not_serving_until_warm_and_while_draining(scorer):
    s = ServerThread(scorer)
    release = threading.Event()
    original = scorer.score

    def blocked_warmup(batch):
        release.wait(20)
        return original(batch)

    scorer.score = blocked_warmup
    try:
        s.thread.start()
        fut = asyncio.run_coroutine_threadsafe(start_server(scorer, s.cfg, s.registry), s.loop)
        time.sleep(1.0)  # server bound, warm-up blocked
        assert not fut.done()  # start_server returns only once the warm-up is over
        release.set()
        s.running = fut.result(30)
        port = s.running.port
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert health.Check(health_pb2.HealthCheckRequest(service="detector.v1.Detector"),
                            timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        s.call(s.running.set_serving(False))
        assert health.Check(health_pb2.HealthCheckRequest(service=""),
                            timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        scorer.score = original
        release.set()
        if s.running is not None:
            s.__exit__(None, None, None)


def test_reduced_precision_is_refused_on_cpu(bundle_path):
    from detector.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a CUDA device"):
        Scorer.from_path(bundle_path, device="cpu", precision="bf16")


def test_diagnostics_only_when_asked_and_unknown_ones_refused(server, scorer):
    x = samples(5, seed=40)
    with DetectorClient(server.target) as client:
        plain = client.score(x)
        asked = client.score(x, diagnostics=["iw_nll", "complexity"])
        info = client.model_info()
    assert np.isnan(plain.iw_nll).all() and np.isnan(plain.complexity_corrected).all()
    assert np.isfinite(asked.iw_nll).all() and np.isfinite(asked.complexity_corrected).all()
    local = scorer.score(x, ["iw_nll", "complexity"])
    np.testing.assert_allclose(asked.iw_nll, local.scores["iw_nll"], rtol=1e-4)
    np.testing.assert_allclose(asked.novelty_score, plain.novelty_score, **NOVELTY_TOLERANCE)  # never changes novelty
    assert list(info.diagnostics) == ["iw_nll", "complexity"]
    request = pb.ScoreRequest(samples=pb.Tensor(shape=[1, 1, 16, 16], dtype=pb.UINT8, data=bytes(256)),
                              diagnostics=["iw_nll", "likelihood_regret"])
    with pytest.raises(grpc.RpcError) as err:
        stub(server.target).Score(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "likelihood_regret" in err.value.details() and "iw_nll, complexity" in err.value.details()


def test_anomaly_maps_only_when_asked_and_equal_to_in_process(server, scorer):
    x = samples(6, seed=41)
    with DetectorClient(server.target) as client:
        plain_raw = stub(server.target).Score(score_request(x), timeout=10)
        asked = client.score(x, maps=True)
        nhwc = client.score(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), layout="NHWC", maps=True)
    # Plain scoring carries no map at all: no bytes, no extra pass.
    assert not any(r.HasField("anomaly_map") for r in plain_raw.results)
    assert asked.anomaly_map.shape == (6, 16, 16) and asked.anomaly_map.dtype == np.float32
    tensor = stub(server.target).Score(score_request(x[:1], maps=True),
                                       timeout=10).results[0].anomaly_map
    assert list(tensor.shape) == [16, 16] and tensor.dtype == pb.FLOAT32
    local = scorer.score(x, maps=True).anomaly_maps
    np.testing.assert_allclose(asked.anomaly_map, local, atol=1e-3)
    np.testing.assert_allclose(nhwc.anomaly_map, local, atol=1e-3)
    np.testing.assert_allclose(asked.novelty_score, [r.novelty_score for r in plain_raw.results], **NOVELTY_TOLERANCE)


def test_score_command_through_the_server_writes_maps(server, scorer, tmp_path):
    from detector.client import score_samples_remote
    from detector.data import load_spec

    np.save(tmp_path / "x.npy", samples(5, seed=42)[:, 0])
    data = load_spec(str(tmp_path / "x.npy"))
    seen = {}
    result = score_samples_remote(server.target, data, batch_size=2, progress=False,
                                  on_maps=lambda start, maps: seen.update({start: maps}))
    assert sorted(seen) == [0, 2, 4] and result.anomaly_maps is None and len(result) == 5
    np.testing.assert_allclose(np.concatenate([seen[k] for k in sorted(seen)]),
                               scorer.score(data.read(0, 5), maps=True).anomaly_maps, atol=1e-3)
