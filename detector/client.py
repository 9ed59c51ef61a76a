"""Python client for the scoring server: numpy in, named result columns out; sync and asyncio.

    from detector.client import DetectorClient
    with DetectorClient("127.0.0.1:50051") as client:
        result = client.score(images)          # (N, 1, 28, 28) uint8
        result.is_novel, result.novelty_score  # numpy arrays, request order

Retries come from gRPC's own retry policy: UNAVAILABLE (a server starting or draining) with exponential backoff, and
RESOURCE_EXHAUSTED (an overloaded server) after the wait the server asks for (its ``grpc-retry-pushback-ms``), all
within the call's timeout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import grpc
import numpy as np

from detector.serving.grpc.converters import response_to_columns, score_request
from detector.v1 import detector_pb2 as pb
from detector.v1 import detector_pb2_grpc as pb_grpc


def channel_options(retries: int = 4, initial_backoff_s: float = 0.05, max_message_bytes: int = 64 << 20) -> list:
    policy = {"methodConfig": [{
        "name": [{"service": "detector.v1.Detector"}],
        "retryPolicy": {"maxAttempts": max(2, retries + 1), "initialBackoff": f"{initial_backoff_s}s",
                        "maxBackoff": "2s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]},
    }]}
    return [("grpc.service_config", json.dumps(policy)), ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]


@dataclass
class RemoteResult:
    request_id: str
    model_version: str
    columns: dict[str, np.ndarray]

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["columns"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __len__(self) -> int:
        return len(self.columns["novelty_score"])


def open_channel(target: str, credentials: grpc.ChannelCredentials | None = None, options=None) -> grpc.Channel:
    """A blocking channel: TLS with ``credentials``, plaintext without."""
    return (grpc.secure_channel(target, credentials, options) if credentials
            else grpc.insecure_channel(target, options))


def health_status(channel: grpc.Channel, service: str = "", timeout: float = 5.0, metadata=()) -> str:
    """The server's grpc.health.v1 status of ``service`` ("" for the whole server) by name, e.g. "SERVING";
    grpc.RpcError when it cannot be asked."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout,
                                                      metadata=metadata)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _result(response: pb.ScoreResponse) -> RemoteResult:
    return RemoteResult(response.request_id, response.model_version, response_to_columns(response))


class DetectorClient:
    def __init__(self, target: str, timeout: float = 10.0, retries: int = 4,
                 credentials: grpc.ChannelCredentials | None = None, metadata: Sequence[tuple[str, str]] = ()):
        self._channel = open_channel(target, credentials, channel_options(retries))
        self._stub = pb_grpc.DetectorStub(self._channel)
        self.timeout = timeout
        self.metadata = tuple(metadata)

    def score(self, samples: np.ndarray, sample_ids: Sequence[str] | None = None, request_id: str | None = None,
              timeout: float | None = None, diagnostics: Sequence[str] = (), layout: str = "NCHW",
              maps: bool = False) -> RemoteResult:
        """Score a batch; ``diagnostics`` adds costlier scores by name ("iw_nll", "complexity"): NaN otherwise.
        ``layout``: "NCHW" ([N, C, H, W], or [N, H, W] for one channel) or "NHWC" ([N, H, W, C], as numpy and
        OpenCV hold images). ``maps``: per-pixel anomaly maps as ``.anomaly_map`` (N, H, W)."""
        response = self._stub.Score(score_request(samples, sample_ids, request_id, diagnostics, layout, maps),
                                    timeout=timeout or self.timeout, metadata=self.metadata)
        return _result(response)

    def model_info(self, timeout: float | None = None) -> pb.ModelInfo:
        return self._stub.GetModelInfo(pb.ModelInfoRequest(), timeout=timeout or self.timeout, metadata=self.metadata)

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "DetectorClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncDetectorClient:
    def __init__(self, target: str, timeout: float = 10.0, retries: int = 4,
                 credentials: grpc.ChannelCredentials | None = None, metadata: Sequence[tuple[str, str]] = ()):
        opts = channel_options(retries)
        self._channel = (grpc.aio.secure_channel(target, credentials, opts) if credentials
                         else grpc.aio.insecure_channel(target, opts))
        self._stub = pb_grpc.DetectorStub(self._channel)
        self.timeout = timeout
        self.metadata = tuple(metadata)

    async def score(self, samples: np.ndarray, sample_ids: Sequence[str] | None = None, request_id: str | None = None,
                    timeout: float | None = None, diagnostics: Sequence[str] = (), layout: str = "NCHW",
                    maps: bool = False) -> RemoteResult:
        """DetectorClient.score, awaited."""
        response = await self._stub.Score(score_request(samples, sample_ids, request_id, diagnostics, layout, maps),
                                          timeout=timeout or self.timeout, metadata=self.metadata)
        return _result(response)

    async def model_info(self, timeout: float | None = None) -> pb.ModelInfo:
        return await self._stub.GetModelInfo(pb.ModelInfoRequest(), timeout=timeout or self.timeout,
                                             metadata=self.metadata)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncDetectorClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def score_samples_remote(target: str, samples, batch_size: int = 256, progress: bool = True,
                         credentials: grpc.ChannelCredentials | None = None, metadata: Sequence[tuple[str, str]] = (),
                         diagnostics: Sequence[str] = (), on_maps=None):
    """`detector score --server`: a whole SampleSet through the server, as a ScoreResult; with ``on_maps``, each
    batch's anomaly maps are handed to it (start index, maps), as Scorer.score_samples does."""
    from detector.errors import DetectorError
    from detector.progress import progress as progress_bar
    from detector.scoring.scorer import ScoreResult

    parts = []
    try:
        with DetectorClient(target, timeout=60.0, credentials=credentials, metadata=metadata) as client, \
                progress_bar(len(samples), "scoring (remote)", enabled=progress, leave=True) as bar:
            for start, raw in samples.chunks(batch_size, bar=bar):
                r = client.score(raw, sample_ids=[str(start + i) for i in range(len(raw))], diagnostics=diagnostics,
                                 maps=on_maps is not None)
                if on_maps is not None:
                    on_maps(start, r.anomaly_map)
                scores = {"novelty": r.novelty_score, "neg_elbo": r.neg_elbo, "recon_error": r.recon_error,
                          "latent_distance": r.latent_distance}
                if "iw_nll" in diagnostics:
                    scores["iw_nll"] = r.iw_nll
                if "complexity" in diagnostics and samples.kind == "image":
                    scores["complexity_corrected"] = r.complexity_corrected
                parts.append(ScoreResult(scores=scores, p_values={"novelty": r.p_value}, novel={"novelty": r.is_novel},
                                         thresholds={"novelty": float(r.threshold[0])},
                                         resample_weight=r.resample_weight, resample=r.resample))
    except grpc.RpcError as exc:
        raise DetectorError(f"server {target}: {exc.code().name}: {exc.details()}") from None
    return ScoreResult.concat(parts)
