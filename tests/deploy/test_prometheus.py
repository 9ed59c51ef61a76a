"""A real Prometheus scrapes a real server on loopback: every dashboard and alert expression returns
data, and switching the traffic to anomalous samples makes the drift alert go pending or firing."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from detector.calibrate import calibrate_bundle
from detector.client import DetectorClient
from detector.data.sampleset import SampleSet
from detector.data.synthetic import bars
from detector.model.bundle import load_bundle
from detector.scoring.scorer import Scorer
from tests.integration.serving_helpers import ServerThread

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian package prometheus not installed")

# Short windows for the test: same expressions, seconds instead of minutes.
WINDOWS = {"[1h] offset 5m": "[40s] offset 8s", "[5m]": "[8s]", "for: 5m": "for: 1s", "for: 2m": "for: 1s"}
RATE_INTERVAL = "8s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shortened(text: str) -> str:
    for long, short in WINDOWS.items():
        text = text.replace(long, short)
    return text


def query(base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    reply = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def alert_states(base: str) -> dict[str, str]:
    reply = json.loads(urllib.request.urlopen(f"{base}/api/v1/alerts", timeout=5).read())
    return {a["labels"]["alertname"]: a["state"] for a in reply["data"]["alerts"]}


def rule_expressions(rules: dict) -> list[str]:
    """Recording rules whole; alerts by the signal they compare (an alert that is not firing returns nothing)."""
    exprs = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                exprs.append(rule["expr"])
            else:
                exprs.append(re.split(r"\s(?:>|<|==|>=|<=)\s", rule["expr"], maxsplit=1)[0])
    return exprs


def well_calibrated(bundle_path) -> Scorer:
    """The session's bundle with its novelty score fitted on 2,000 fresh normal samples and its thresholds on 3,000:
    its own calibration split has 200, so its 1% threshold rests on 2 of them and normal traffic was flagged at
    about 2%, near the 3% at which the drift alert fires over the test's 8 s windows; here about 1%."""
    bundle = load_bundle(bundle_path)
    fresh = lambda n, seed: SampleSet(x=bars(n, seed=seed), y=None, kind="image", name="bars")  # noqa: E731
    calibrate_bundle(bundle, fresh(2000, 40), fresh(3000, 41), 0.01, "cpu", 512, progress=False)
    return Scorer(bundle, device="cpu")


def test_dashboard_and_alerts_against_real_prometheus(bundle_path, tmp_path):
    scorer = well_calibrated(bundle_path)
    with ServerThread(scorer, novelty_window_s=5.0) as server:
        rules_text = shortened((DEPLOY / "prometheus/detector-rules.yml").read_text())
        (tmp_path / "detector-rules.yml").write_text(rules_text)
        config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{server.running.metrics_port}"]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{port}"
        traffic = {"vertical": False}
        stop = threading.Event()

        def send():
            with DetectorClient(server.target) as client:
                i = 0
                while not stop.is_set():
                    client.score(bars(8, size=16, seed=1000 + i, vertical=traffic["vertical"]))
                    i += 1
                    time.sleep(0.05)

        sender = threading.Thread(target=send, daemon=True)
        try:
            sender.start()
            with DetectorClient(server.target) as client, pytest.raises(grpc.RpcError):
                client.score(bars(2, size=8))  # one INVALID_ARGUMENT, so the errors panel has a series
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    if query(base, 'up{job="detector"}') and query(base, "detector:novelty_share:baseline1h"):
                        break
                except OSError:
                    pass
                time.sleep(1)
            time.sleep(10)  # a few evaluation rounds of every rule
            dashboard = json.loads((DEPLOY / "grafana/detector-dashboard.json").read_text())
            exprs = [t["expr"].replace("$__rate_interval", RATE_INTERVAL)
                     for p in dashboard["panels"] for t in p["targets"]]
            exprs += rule_expressions(yaml.safe_load(rules_text))
            empty = [e for e in exprs if not query(base, e)]
            assert not empty, f"expressions returning no data: {empty}"
            assert "DetectorNoveltyDrift" not in alert_states(base)
            assert "DetectorScoreDrift" not in alert_states(base)

            traffic["vertical"] = True  # every sample now novel: drift
            deadline = time.time() + 60
            states = {}
            while time.time() < deadline:
                states = alert_states(base)
                if {states.get("DetectorNoveltyDrift"), states.get("DetectorScoreDrift")} <= {"pending", "firing"}:
                    break
                time.sleep(1)
            assert states.get("DetectorNoveltyDrift") in ("pending", "firing"), states
            assert states.get("DetectorScoreDrift") == "firing", states
        finally:
            stop.set()
            sender.join(10)
            prom.terminate()
            prom.wait(20)
