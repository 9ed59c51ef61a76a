"""Faults and hot reload on a real server on loopback: a failing forward pass, device out of memory,
cancelled clients, unparsable bytes, saturation, and swapping the model under traffic."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import torch

from detector.client import DetectorClient
from detector.data import load_spec
from detector.data.synthetic import bars
from detector.errors import BundleError
from detector.scoring.scorer import Scorer
from detector.serving.grpc.converters import score_request
from detector.serving.service import score_batch
from detector.training.pipeline import train_bundle
from detector.v1 import detector_pb2 as pb
from detector.v1 import detector_pb2_grpc as pb_grpc
from tests.conftest import NOVELTY_TOLERANCE, tiny_settings
from tests.integration.serving_helpers import ServerThread


@pytest.fixture(scope="module")
def scorer(bundle_path):
    return Scorer.from_path(bundle_path, device="cpu")


@pytest.fixture(scope="module")
def other_shape_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("shape12")
    np.savez(d / "x.npz", x=bars(400, size=12, seed=4)[:, 0])
    train_bundle(load_spec(str(d / "x.npz")), tiny_settings(epochs=1), d / "bundle", progress=False)
    return d / "bundle"


def stub(target):
    return pb_grpc.DetectorStub(grpc.insecure_channel(target))


def request(n, seed=0, request_id="r"):
    return score_request(bars(n, size=16, seed=seed), request_id=request_id)


def own_connection(target):
    """A stub on a TCP connection of its own (channels to one target otherwise share one: one peer address)."""
    return pb_grpc.DetectorStub(grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]))


def slowed(s, seconds: float, gate: threading.Event | None = None, entered: threading.Event | None = None) -> None:
    """Every batch the server ``s`` scores takes ``seconds`` longer (after waiting for ``gate``, when given);
    ``entered`` is set as each batch reaches the device."""
    def slow(model, batch):
        if entered is not None:
            entered.set()
        if gate is not None:
            gate.wait(30)
        time.sleep(seconds)
        return score_batch(model, batch)

    s.running.service.batcher._score_batch = slow


def queued_work(target, n: int = 4) -> list:
    """``n`` requests of 4 samples in flight, each on a connection of its own: one refused does not hold the others
    back (pushback.py), so they stay queued."""
    return [own_connection(target).Score.future(request(4), timeout=20) for _ in range(n)]


def code_of(fn):
    try:
        fn()
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def test_forward_pass_that_raises_fails_only_its_batch(scorer):
    calls = []

    def flaky(model, batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("simulated kernel failure")
        return score_batch(model, batch)

    with ServerThread(scorer, max_delay_ms=0) as s:
        s.running.service.batcher._score_batch = flaky
        with pytest.raises(grpc.RpcError) as err:
            stub(s.target).Score(request(2), timeout=10)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "simulated" not in err.value.details()  # internals stay in the server log
        assert len(stub(s.target).Score(request(3), timeout=10).results) == 3
        assert s.metric("detector_errors_total", method="Score", code="INTERNAL") == 1


def test_out_of_memory_batches_are_scored_in_halves(scorer, monkeypatch):
    limit = 4
    original = Scorer.score

    def small_device(self, batch, diagnostics=(), maps=False):  # Scorer.score on a device that holds few samples
        if len(batch) > limit:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return original(self, batch, diagnostics, maps)

    monkeypatch.setattr(Scorer, "score", small_device)
    x = bars(11, size=16, seed=5)
    split = score_batch((scorer, frozenset(), False), x)
    monkeypatch.setattr(Scorer, "score", original)
    np.testing.assert_allclose(split.scores["novelty"], scorer.score(x).scores["novelty"], **NOVELTY_TOLERANCE)

    with ServerThread(scorer, max_delay_ms=0) as s:
        monkeypatch.setattr(Scorer, "score", small_device)
        limit = 0  # not even one sample fits: the request is refused as retryable, the server goes on
        assert code_of(lambda: stub(s.target).Score(request(3), timeout=10)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        limit = 4
        assert len(stub(s.target).Score(request(9), timeout=10).results) == 9


def test_client_cancelling_mid_batch_leaves_the_server_serving(scorer):
    with ServerThread(scorer, max_delay_ms=0) as s:
        slowed(s, 0.5)
        future = stub(s.target).Score.future(request(2), timeout=10)
        time.sleep(0.2)  # in the forward pass now
        assert future.cancel()
        time.sleep(0.6)
        assert len(stub(s.target).Score(request(2), timeout=10).results) == 2
        assert s.metric("detector_requests_total", method="Score", code="CANCELLED") == 1
        assert s.metric("detector_requests_total", method="Score", code="OK") == 1


@pytest.mark.parametrize("raw", [b"\x0a\x02\xff\xfe", b"\x12\x05\x0a\x03", b"\xff\xff\xff"],
                         ids=["non-utf8-request-id", "truncated", "garbage"])
def test_unparsable_bytes_get_invalid_argument_and_are_counted(server_for_module, raw):
    s = server_for_module
    call = grpc.insecure_channel(s.target).unary_unary("/detector.v1.Detector/Score")
    before = s.metric("detector_errors_total", method="Score", code="INVALID_ARGUMENT")
    with pytest.raises(grpc.RpcError) as err:
        call(raw, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not parse as detector.v1.ScoreRequest" in err.value.details()
    assert s.metric("detector_errors_total", method="Score", code="INVALID_ARGUMENT") == before + 1


@pytest.fixture(scope="module")
def server_for_module(scorer):
    with ServerThread(scorer) as s:
        yield s


def test_saturated_queue_refuses_by_expected_wait(scorer):
    # Room for 1000 samples, but 0.3 s of waiting: a few requests in, the rest refused at once.
    with ServerThread(scorer, max_batch_samples=4, tune_batch=False, max_delay_ms=0, max_queue_samples=1000,
                      max_queue_wait_ms=300) as s:
        slowed(s, 0.2)
        stub(s.target).Score(request(4), timeout=10)  # teaches the batcher its speed
        entered = threading.Event()
        slowed(s, 0.2, entered=entered)
        codes, details, lock = [], [], threading.Lock()

        def one():
            try:
                stub(s.target).Score(request(4), timeout=20)
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
                details.append(e.details())
            with lock:
                codes.append(code)

        threads = [threading.Thread(target=one) for _ in range(12)]
        started = time.monotonic()
        threads[0].start()
        assert entered.wait(10)  # the first on the device: the next waits behind it, the rest find a queue
        for t in threads[1:]:
            t.start()
        for t in threads:
            t.join()
        assert codes.count(grpc.StatusCode.OK) >= 2
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 4
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert any("saturated" in d for d in details)
        # 12 requests x 0.2 s unbounded would take 2.4 s; admitted ones fit the wait budget.
        assert time.monotonic() - started < 2.0


@contextlib.contextmanager
def busy_server(scorer):
    """A server batching 4 samples at a time with a 0.3 s wait budget, that has learned a batch takes 0.2 s, with
    its device stuck on one request and a second one waiting: every further request is refused (0.4 s of scoring
    ahead of it) until the test calls ``release`` (or ends). Yields the server, the futures of the queued work and
    ``release``. The state is built one step at a time, each awaited, never timed: a sleep raced the queue's
    draining on CI, and four requests sent at once could all arrive before the first reached the device (then the
    three others were refused, none waited, and the next request was admitted behind the stuck one)."""
    gate, entered = threading.Event(), threading.Event()
    with ServerThread(scorer, max_batch_samples=4, tune_batch=False, max_delay_ms=0, max_queue_wait_ms=300) as s:
        slowed(s, 0.2)
        own_connection(s.target).Score(request(4), timeout=10)  # teaches the batcher its speed
        slowed(s, 0.2, gate, entered)
        batcher = s.running.service.batcher
        try:
            busy = queued_work(s.target, 1)
            assert entered.wait(10)  # on the device, stuck there
            busy += queued_work(s.target, 1)
            settled = time.monotonic() + 10
            while batcher.queue_depth + batcher._staged_samples < 4 and time.monotonic() < settled:
                time.sleep(0.002)  # waiting behind it (queued, or staged for the next batch)
            assert batcher.queue_depth + batcher._staged_samples == 4
            busy += queued_work(s.target, 2)
            assert code_of(busy[-1].result) == grpc.StatusCode.RESOURCE_EXHAUSTED
            yield s, busy, gate.set
        finally:
            gate.set()


def test_a_refusal_says_when_to_come_back_and_the_client_waits_that_long(scorer):
    with busy_server(scorer) as (s, busy, release):
        with pytest.raises(grpc.RpcError) as err:
            own_connection(s.target).Score(request(4), timeout=20)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        pushback = dict(err.value.trailing_metadata())["grpc-retry-pushback-ms"]
        assert 1 <= int(pushback) <= 3000 and "retry in about" in err.value.details()

        release()
        refused = s.metric("detector_requests_total", method="Score", code="RESOURCE_EXHAUSTED")
        more = own_connection(s.target)
        busy += [more.Score.future(request(4), timeout=20) for _ in range(3)]
        time.sleep(0.05)
        with DetectorClient(s.target, timeout=20) as client:  # refused at first, then retried after the pushback
            assert len(client.score(bars(4, size=16, seed=1))) == 4
        assert s.metric("detector_requests_total", method="Score", code="RESOURCE_EXHAUSTED") > refused
        assert all(len(f.result().results) == 4 for f in busy if f.exception() is None)


def test_a_client_that_resends_before_its_pushback_is_held_until_then_and_others_are_not(scorer):
    with busy_server(scorer) as (s, busy, release):
        eager, polite = own_connection(s.target), own_connection(s.target)
        with pytest.raises(grpc.RpcError) as err:
            eager.Score(request(4), timeout=20)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        told = int(dict(err.value.trailing_metadata())["grpc-retry-pushback-ms"]) / 1000
        assert told >= 0.1

        started = time.monotonic()
        resent = eager.Score.future(request(4), timeout=20)  # at once, ignoring the pushback
        other = polite.Score.future(request(4), timeout=20)  # another client, never refused: not held
        code_of(resent.result)
        assert time.monotonic() - started >= told - 0.06  # its pushback had passed (less what passed before)
        assert code_of(other.result) in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert s.metric("detector_requests_held_total") == 1  # the resent request; the other client's was not held
        release()
        assert all(code_of(f.result) in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED) for f in busy)


def test_a_call_the_queue_cannot_take_is_refused_before_its_samples_are_read(scorer):
    """Admission runs when the call arrives: a client whose request never comes is still answered at once."""
    with busy_server(scorer) as (s, busy, release):
        assert code_of(lambda: own_connection(s.target).Score(request(4), timeout=20)) == \
            grpc.StatusCode.RESOURCE_EXHAUSTED  # the server is refusing calls now: it admits before reading
        never, started = threading.Event(), time.monotonic()

        def withheld():  # the request, on the wire as a unary call's, held back by the client
            never.wait(10)
            yield request(4).SerializeToString()

        call = grpc.insecure_channel(s.target).stream_unary("/detector.v1.Detector/Score")
        try:
            with pytest.raises(grpc.RpcError) as err:
                call(withheld(), timeout=5)
        finally:
            never.set()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry in about" in err.value.details()
        assert time.monotonic() - started < 2.0  # not after waiting for the request
        wrong_shape = score_request(bars(2, size=8), request_id="bad")
        replies = own_connection(s.target).ScoreStream(iter([wrong_shape]), timeout=10)
        assert code_of(lambda: list(replies)) == grpc.StatusCode.INVALID_ARGUMENT  # checked before admission
        release()
        assert all(code_of(f.result) in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED) for f in busy)


@pytest.mark.parametrize("messages,reason", [(0, "no request message"), (2, "more than one request message")])
def test_score_read_after_admission_takes_exactly_one_request(server_for_module, monkeypatch, messages, reason):
    s = server_for_module
    monkeypatch.setattr(s.running.service, "last_overloaded", time.monotonic() + 60)  # as if it were refusing calls
    call = grpc.insecure_channel(s.target).stream_unary("/detector.v1.Detector/Score")
    with pytest.raises(grpc.RpcError) as err:
        call(iter([request(2).SerializeToString()] * messages), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in err.value.details()


def test_reload_swaps_model_and_results_follow(scorer, other_bundle):
    new = Scorer.from_path(other_bundle, device="cpu")
    assert new.model_version != scorer.model_version
    with ServerThread(scorer) as s:
        assert stub(s.target).Score(request(2), timeout=10).model_version == scorer.model_version
        assert s.call(s.running.service.reload(other_bundle)) == new.model_version
        reply = stub(s.target).Score(request(5, seed=9), timeout=10)
        assert reply.model_version == new.model_version
        np.testing.assert_allclose([r.novelty_score for r in reply.results],
                                   new.score(bars(5, size=16, seed=9)).scores["novelty"], **NOVELTY_TOLERANCE)
        info = stub(s.target).GetModelInfo(pb.ModelInfoRequest(), timeout=10)
        assert info.model_version == new.model_version
        assert s.metric("detector_model_reloads_total", outcome="loaded") == 1
        assert s.metric("detector_samples_scored_total", model_version=new.model_version) == 5
        assert s.metric("detector_model_info", model_version=new.model_version, device="cpu",
                        input_shape="1x16x16") == 1


def test_requests_in_flight_finish_on_the_model_they_started_with(scorer, other_bundle):
    entered = threading.Event()

    def slow(model, batch):
        entered.set()
        time.sleep(0.8)
        return score_batch(model, batch)

    with ServerThread(scorer, max_delay_ms=0) as s:
        s.running.service.batcher._score_batch = slow
        in_flight = stub(s.target).Score.future(request(2), timeout=20)
        assert entered.wait(10)
        queued = stub(s.target).Score.future(request(2), timeout=20)  # admitted before the swap
        time.sleep(0.1)
        s.call(s.running.service.reload(other_bundle))
        after = stub(s.target).Score.future(request(2), timeout=20)
        assert in_flight.result().model_version == scorer.model_version
        assert queued.result().model_version == scorer.model_version
        assert after.result().model_version != scorer.model_version


def broken_copies(bundle, tmp_path):
    truncated = tmp_path / "truncated"
    shutil.copytree(bundle, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    missing = tmp_path / "missing"
    shutil.copytree(bundle, missing)
    (missing / "manifest.json").unlink()
    return {"truncated weights": (truncated, "model.safetensors"), "no manifest": (missing, "manifest.json"),
            "not a directory": (tmp_path / "nowhere", "no model bundle")}


def test_bad_bundles_are_refused_and_the_old_model_keeps_serving(scorer, bundle_path, other_shape_bundle, tmp_path):
    cases = broken_copies(bundle_path, tmp_path)
    cases["other input shape"] = (other_shape_bundle, "sample shape")
    with ServerThread(scorer) as s:
        for name, (path, message) in cases.items():
            with pytest.raises(BundleError, match=message):
                s.call(s.running.service.reload(path))
            reply = stub(s.target).Score(request(2), timeout=10)
            assert reply.model_version == scorer.model_version, name
        assert s.metric("detector_model_reloads_total", outcome="refused") == len(cases)
        assert s.metric("detector_model_reloads_total", outcome="loaded") == 0


def test_stream_longer_than_its_limit_is_answered_then_ended(scorer):
    with ServerThread(scorer, max_stream_requests=3) as s:
        answers = []
        with pytest.raises(grpc.RpcError) as err:
            for reply in stub(s.target).ScoreStream(iter([request(1, request_id=str(i)) for i in range(5)]),
                                                     timeout=20):
                answers.append(reply.request_id)
        assert answers == ["0", "1", "2"]
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 3" in err.value.details()
