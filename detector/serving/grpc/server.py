"""The grpc.aio server: Detector service, standard health service, reflection, metrics endpoint,
graceful drain on SIGTERM/SIGINT, hot reload of the bundle on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from detector.config import ServeConfig
from detector.errors import BundleError
from detector.scoring.scorer import Scorer
from detector.serving.grpc.security import BearerTokenInterceptor, server_credentials
from detector.serving.grpc.servicer import SERVICE_NAME, DetectorServicer, add_detector_service
from detector.serving.metrics import ServerMetrics
from detector.serving.process import write_ready_file
from detector.serving.service import ScoringService

log = logging.getLogger("detector.serve")
REFUSAL_QUIET_S = 0.25  # on shutdown, close the listener once no request was refused for this long


@dataclass
class RunningServer:
    server: grpc.aio.Server
    service: ScoringService
    health: health.aio.HealthServicer
    port: int
    registry: CollectorRegistry
    metrics_port: int | None = None
    _http: object = None

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first (load balancers stop sending); requests that still arrive are answered
        UNAVAILABLE by the service until none came for REFUSAL_QUIET_S (within the grace), then the
        listener closes and in-flight calls finish. Closing the listener at once can answer CANCELLED, a
        code clients do not retry, to calls gRPC had received but not yet handed to a handler
        (grpc/grpc#41785; seen once in this project's CI under load)."""
        closed = time.monotonic()
        deadline = closed + grace
        await self.set_serving(False)
        self.service.ready = False
        while (now := time.monotonic()) < deadline and now - max(closed, self.service.last_refused) < REFUSAL_QUIET_S:
            await asyncio.sleep(REFUSAL_QUIET_S / 5)
        await self.server.stop(max(0.0, deadline - time.monotonic()))
        await self.service.drain()
        if self._http is not None:
            self._http.shutdown()


async def start_server(scorer: Scorer, cfg: ServeConfig, registry: CollectorRegistry | None = None) -> RunningServer:
    """Build, bind and start; health turns SERVING only after the model is warmed up."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ServerMetrics(registry, cfg.novelty_window_s, cfg.drift_window_samples)
    service = ScoringService(scorer, metrics, cfg)
    interceptors = []
    if cfg.auth_token:
        denied = lambda method: metrics.errors.labels(method, "UNAUTHENTICATED").inc()  # noqa: E731
        interceptors.append(BearerTokenInterceptor(cfg.auth_token, denied))
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ])
    add_detector_service(DetectorServicer(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{cfg.host}:{cfg.port}"
    if cfg.tls_cert:
        port = server.add_secure_port(address, server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {cfg.host}:{cfg.port}")
    running = RunningServer(server, service, health_servicer, port, registry)
    await running.set_serving(False)
    await server.start()
    await service.start()
    if cfg.metrics_port >= 0:
        http, _thread = start_http_server(cfg.metrics_port, addr=cfg.metrics_host, registry=registry)
        running._http, running.metrics_port = http, http.server_port
    await running.set_serving(True)
    return running


async def _reload_quietly(service: ScoringService, path: Path) -> None:
    try:
        await service.reload(path)
    except BundleError:
        pass  # logged and counted by the service; the old model keeps serving


async def serve_forever(scorer: Scorer, cfg: ServeConfig, model_path: Path | None = None,
                        ready_file: Path | None = None) -> None:
    """Serve until SIGTERM/SIGINT; SIGHUP reloads the bundle at ``model_path`` (swap a symlink or the
    directory's contents first). ``ready_file``: JSON written once SERVING (pid, grpc and metrics addresses, model
    version, device) and removed at exit, for whatever started the server."""
    running = await start_server(scorer, cfg)
    metrics_url = f"http://{cfg.metrics_host}:{running.metrics_port}/metrics" if running.metrics_port else None
    metrics = f", metrics on {metrics_url}" if metrics_url else ""
    print(f"serving {scorer.model_version} on {cfg.host}:{running.port} ({scorer.device}){metrics}", flush=True)
    if ready_file is not None:
        write_ready_file(ready_file, {"pid": os.getpid(), "grpc": f"{cfg.host}:{running.port}", "metrics": metrics_url,
                                      "model_version": scorer.model_version, "device": str(scorer.device)})
    try:
        await _until_stopped(running, cfg, model_path)
    finally:
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)


async def _until_stopped(running: RunningServer, cfg: ServeConfig, model_path: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task] = set()  # strong references until each finishes
    if model_path is not None:
        def reload() -> None:
            task = loop.create_task(_reload_quietly(running.service, model_path))
            reloads.add(task)
            task.add_done_callback(reloads.discard)
        loop.add_signal_handler(signal.SIGHUP, reload)
    await stop.wait()
    print(f"draining: in-flight requests get up to {cfg.grace_s:g} s", flush=True)
    await running.stop(cfg.grace_s)
    print("stopped", flush=True)
