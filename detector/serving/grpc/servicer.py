"""Thin gRPC servicer: convert, call the service, convert back. Domain errors become status codes
in one decorator, so the methods hold no try/except."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

import grpc

from detector.errors import (BundleError, DeadlineExpired, DetectorError, InvalidInput, ModelNotReady, Overloaded,
                             Unauthenticated)
from detector.serving.grpc.converters import (lenient_parser, model_info_message, parsed, result_to_response,
                                              tensor_layout, tensor_to_array)
from detector.serving.pushback import identity
from detector.serving.service import ScoringService, deadline_from_remaining
from detector.v1 import detector_pb2 as pb
from detector.v1 import detector_pb2_grpc as pb_grpc

log = logging.getLogger("detector.serve")
PUSHBACK_KEY = "grpc-retry-pushback-ms"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Detector"].full_name

STATUS_OF = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    BundleError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_of(exc: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS_OF.items():
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


@contextlib.asynccontextmanager
async def _outcome(metrics, method: str, context):
    """Record one RPC's latency and status code; turn an exception into context.abort with its code."""
    started, exc = time.perf_counter(), None
    try:
        yield
    except asyncio.CancelledError:  # the client went away: count it, nothing to answer
        metrics.requests.labels(method, "CANCELLED").inc()
        metrics.errors.labels(method, "CANCELLED").inc()
        raise
    except Exception as e:  # noqa: BLE001 - every failure becomes a status code
        exc = e
    code = grpc.StatusCode.OK if exc is None else status_of(exc)
    metrics.requests.labels(method, code.name).inc()
    metrics.request_latency.labels(method).observe(time.perf_counter() - started)
    if exc is not None:
        metrics.errors.labels(method, code.name).inc()
        if not isinstance(exc, DetectorError):
            log.error("%s failed", method, exc_info=exc)
        message = str(exc) if isinstance(exc, DetectorError) else "internal error; see server log"
        await context.abort(code, message, trailing_metadata=pushback(exc))


def pushback(exc: BaseException) -> tuple:
    """gRPC's standard retry pushback (trailing metadata ``grpc-retry-pushback-ms``, gRFC A6) for a refusal that
    says when to come back: clients whose retry policy lists the code wait that long before the next attempt."""
    retry_after = getattr(exc, "retry_after_s", None)
    return () if retry_after is None else ((PUSHBACK_KEY, str(max(1, round(retry_after * 1000)))),)


def _observed(method: str, streaming: bool = False):
    """Wrap a servicer method in _outcome, for unary and streaming responses alike."""

    def wrap(fn):
        if streaming:
            @functools.wraps(fn)
            async def stream(self, request_iterator, context):
                async with _outcome(self.service.metrics, method, context):
                    async for item in fn(self, request_iterator, context):
                        yield item
            return stream

        @functools.wraps(fn)
        async def unary(self, request, context):
            async with _outcome(self.service.metrics, method, context):
                return await fn(self, request, context)
        return unary

    return wrap


async def _raise(exc: Exception):
    raise exc


def _caller(context) -> tuple[float | None, str]:
    """The call's deadline (a time.monotonic() value) and the connection it came on (serving/pushback.py)."""
    return deadline_from_remaining(context.time_remaining()), identity(context.peer())


async def _only_message(request_iterator):
    """The one request of a unary call served as request-streaming (ScoreBeforeReading); a second message, or
    none, is a client error."""
    messages = aiter(request_iterator)
    request = await anext(messages, None)
    if request is None:
        raise InvalidInput("no request message: Score takes exactly one ScoreRequest")
    if await anext(messages, None) is not None:
        raise InvalidInput("more than one request message: Score takes exactly one ScoreRequest (stream requests "
                           "with ScoreStream)")
    return request


class DetectorServicer(pb_grpc.DetectorServicer):
    def __init__(self, service: ScoringService):
        self.service = service

    async def _score_one(self, request: pb.ScoreRequest, deadline: float | None, client: str,
                         arrived: bool = False) -> pb.ScoreResponse:
        request = parsed(request)
        samples = tensor_to_array(request.samples)
        version, result = await self.service.score(samples, len(request.sample_ids), deadline, request.diagnostics,
                                                   tensor_layout(request.samples), maps=request.return_anomaly_maps,
                                                   client=client, arrived=arrived)
        return result_to_response(request.request_id, version, result, request.sample_ids)

    @_observed("Score")
    async def Score(self, request, context):
        return await self._score_one(request, *_caller(context))

    @_observed("Score")
    async def ScoreBeforeReading(self, request_iterator, context):
        """Score, with admission before the request (up to 64 MiB of samples) is read: a refused call costs no
        transfer of its samples. Served while the server is refusing calls (add_detector_service)."""
        deadline, client = _caller(context)
        await self.service.arrive(deadline, client)
        return await self._score_one(await _only_message(request_iterator), deadline, client, arrived=True)

    @_observed("ScoreStream", streaming=True)
    async def ScoreStream(self, request_iterator, context):
        # Score up to stream_max_in_flight requests ahead; answer strictly in request order.
        pending: asyncio.Queue = asyncio.Queue(maxsize=self.service.cfg.stream_max_in_flight)
        done = object()

        limit = self.service.cfg.max_stream_requests

        async def read():
            try:
                count = 0
                async for request in request_iterator:
                    count += 1
                    if limit and count > limit:  # answered after the ones before it, then the stream ends
                        await pending.put(asyncio.ensure_future(_raise(Overloaded(
                            f"stream reached its limit of {limit} requests; open a new stream"))))
                        break
                    await pending.put(asyncio.ensure_future(self._score_one(request, *_caller(context))))
            finally:
                await pending.put(done)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await pending.get()) is not done:
                yield await task
            await reader
        finally:
            reader.cancel()
            while not pending.empty():
                item = pending.get_nowait()
                if item is not done:
                    item.cancel()

    @_observed("GetModelInfo")
    async def GetModelInfo(self, request, context):
        parsed(request)
        return model_info_message(self.service.scorer, self.service.cfg, self.service.diagnostics,
                                  self.service.max_batch_samples)


# While the server has refused a call within this many seconds, Score reads each request only after admission.
BEFORE_READING_S = 1.0


class _DetectorHandlers(grpc.GenericRpcHandler):
    """Each call's handler. Score has two: plain unary, and request-streaming (ScoreBeforeReading: the same on the
    wire, so every client sees the unary method of the proto) while the server is refusing calls. Reading after
    admission spares a refused call the transfer of its samples (3x64x64 frames, 64 to a request: 0.84 ms of server
    CPU per refusal instead of 1.43 ms), but costs ~10-25% more per call than unary (~300 us) where nothing is
    refused."""

    def __init__(self, servicer: DetectorServicer, handlers: dict, before_reading):
        self._servicer = servicer
        self._handlers = handlers
        self._before_reading = before_reading

    def service(self, details):
        service, _, method = details.method[1:].partition("/")
        if service != SERVICE_NAME:
            return None
        if method == "Score" and time.monotonic() - self._servicer.service.last_overloaded < BEFORE_READING_S:
            return self._before_reading
        return self._handlers.get(method)


def add_detector_service(servicer: DetectorServicer, server) -> None:
    """Register like the generated ``add_DetectorServicer_to_server``, but with request parsers that let
    unparsable bytes reach the servicer (INVALID_ARGUMENT, counted) instead of failing inside gRPC, and Score's
    handler chosen per call (_DetectorHandlers)."""
    parse = lenient_parser(pb.ScoreRequest)
    handlers = {
        "Score": grpc.unary_unary_rpc_method_handler(
            servicer.Score, request_deserializer=parse, response_serializer=pb.ScoreResponse.SerializeToString),
        "ScoreStream": grpc.stream_stream_rpc_method_handler(
            servicer.ScoreStream, request_deserializer=parse, response_serializer=pb.ScoreResponse.SerializeToString),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetModelInfo, request_deserializer=lenient_parser(pb.ModelInfoRequest),
            response_serializer=pb.ModelInfo.SerializeToString),
    }
    before_reading = grpc.stream_unary_rpc_method_handler(
        servicer.ScoreBeforeReading, request_deserializer=parse, response_serializer=pb.ScoreResponse.SerializeToString)
    server.add_generic_rpc_handlers((_DetectorHandlers(servicer, handlers, before_reading),))
    # Registered methods skip the generic handlers: Score is not one, so that its handler is chosen per call.
    server.add_registered_method_handlers(SERVICE_NAME, {k: v for k, v in handlers.items() if k != "Score"})
