"""A real gRPC server on a loopback port 0, run on its own event loop in a thread."""

from __future__ import annotations

import asyncio
import threading

from prometheus_client import CollectorRegistry

from detector.config import ServeConfig
from detector.scoring.scorer import Scorer
from detector.serving.grpc.server import RunningServer, start_server


class ServerThread:
    def __init__(self, scorer: Scorer, **cfg):
        self.registry = CollectorRegistry()
        self.cfg = ServeConfig(port=0, metrics_port=0, **cfg)
        self.scorer = scorer
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.running: RunningServer | None = None

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        self.running = self.call(start_server(self.scorer, self.cfg, self.registry))
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def metric(self, name: str, **labels) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def __exit__(self, *exc) -> None:
        self.call(self.running.stop(1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
