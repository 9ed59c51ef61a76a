"""A `detector serve` process for tests, benchmarks and the reliability scripts: started on free loopback ports,
found through its ready file (JSON written once it is SERVING), stopped with SIGTERM. The one harness for a running
server; nothing parses the human-readable "serving ..." line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Sequence


def write_ready_file(path: Path, info: dict) -> None:
    """``info`` as JSON at ``path``, atomically: a reader sees the whole file or none."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def read_ready_file(path: Path, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> dict:
    """Wait for the ready file; RuntimeError if ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not ready within {timeout:g} s")
        time.sleep(0.05)
    return json.loads(path.read_text())


class ServeProcess:
    """`detector serve --model MODEL` on free loopback ports (``extra``: more flags); stdout kept, stderr in a file."""

    def __init__(self, model: Path | str, *extra: str, device: str = "cpu", command: Sequence[str] = ()):
        """``command``: what to run instead of `python -m detector serve`, taking the same flags (benchmarks)."""
        self._dir = Path(tempfile.mkdtemp(prefix="detector-serve-"))
        self.log = open(self._dir / "stderr.log", "w+")
        command = list(command) or [sys.executable, "-m", "detector", "serve"]
        self.proc = subprocess.Popen([*command, "--model", str(model), "--port", "0",
                                      "--metrics-port", "0", "--device", device, "--ready-file",
                                      str(self._dir / "ready.json"), *extra],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        try:
            self.info = read_ready_file(self._dir / "ready.json", self.proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}: {self.stderr()[-2000:]}") from None
        self.target = self.info["grpc"]
        self.metrics_url = self.info["metrics"]
        self.model_version = self.info["model_version"]

    def stderr(self) -> str:
        self.log.flush()
        return (self._dir / "stderr.log").read_text()

    def metrics(self) -> dict[tuple, float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def metric_sum(self, name: str, **labels) -> float:
        return sum(v for (n, lab), v in self.metrics().items()
                   if n == name and all(dict(lab).get(k) == w for k, w in labels.items()))

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def serving(self) -> bool:
        import grpc

        from detector.client import health_status

        with grpc.insecure_channel(self.target) as channel:
            try:
                return health_status(channel) == "SERVING"
            except grpc.RpcError:
                return False

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> tuple[int, str, str]:
        """SIGTERM (if still running), wait; the exit code, stdout and stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, self.stderr()

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self.log.close()
        shutil.rmtree(self._dir, ignore_errors=True)  # its ready file and stderr log: read them before leaving
