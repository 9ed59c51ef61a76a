"""`detector serve` as a real process: SIGTERM drains without losing a request; `score --server`."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np

from detector.client import DetectorClient
from detector.data.synthetic import bars
from detector.serving.process import ServeProcess
from tests.conftest import NOVELTY_TOLERANCE


def test_sigterm_drains_in_flight_requests_and_exits_0(bundle_path):
    srv = ServeProcess(bundle_path, "--max-delay-ms", "20")
    target, ready_file = srv.target, srv._dir / "ready.json"
    info = json.loads(ready_file.read_text())  # the harness found the server through it
    assert info["pid"] == srv.proc.pid and info["grpc"] == target and info["metrics"].endswith("/metrics")
    assert info["model_version"].startswith("vae-") and info["device"] == "cpu"
    outcomes, lock = [], threading.Lock()
    stop_sending = threading.Event()

    def client_loop(seed):
        x = bars(8, size=16, seed=seed)
        with DetectorClient(target, timeout=10, retries=0) as client:
            while not stop_sending.is_set():
                try:
                    r = client.score(x, sample_ids=[f"{seed}-{i}" for i in range(8)])
                    ok = list(r.sample_id) == [f"{seed}-{i}" for i in range(8)]
                    outcome = "ok" if ok else "wrong"
                except grpc.RpcError as e:
                    outcome = e.code().name
                with lock:
                    outcomes.append(outcome)
                if outcome not in ("ok",):
                    return

    threads = [threading.Thread(target=client_loop, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    code, out, err = srv.stop()
    stop_sending.set()
    for t in threads:
        t.join(30)
    assert code == 0, err
    assert "draining" in out and "stopped" in out
    assert not ready_file.exists()  # removed at exit: a stale file never points at a dead server
    assert outcomes.count("ok") > 8
    # Every request was either answered correctly or refused before being accepted.
    assert set(outcomes) <= {"ok", "UNAVAILABLE"}, set(outcomes)


def test_score_through_server_matches_in_process(bundle_path, data_dir, tmp_path):
    srv = ServeProcess(bundle_path)
    target = srv.target
    try:
        run = lambda *a: subprocess.run([sys.executable, "-m", "detector", "--quiet", "score", *a],  # noqa: E731
                                        capture_output=True, text=True, timeout=120)
        remote = run("--server", target, "--data", str(data_dir / "anomalous.npz"), "--out", str(tmp_path / "r.csv"))
        local = run("--model", str(bundle_path), "--data", str(data_dir / "anomalous.npz"), "--out",
                    str(tmp_path / "l.csv"))
        assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
        r = list(csv.DictReader(open(tmp_path / "r.csv")))
        l_ = list(csv.DictReader(open(tmp_path / "l.csv")))
        np.testing.assert_allclose([float(x["novelty"]) for x in r], [float(x["novelty"]) for x in l_],
                                   **NOVELTY_TOLERANCE)
        bad = run("--server", "127.0.0.1:1", "--data", str(data_dir / "anomalous.npz"), "--out", str(tmp_path / "x.csv"))
        assert bad.returncode == 2 and "UNAVAILABLE" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        srv.stop()


def test_serve_with_bad_bundle_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "detector", "serve", "--model", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "manifest.json" in proc.stderr and "Traceback" not in proc.stderr


def test_sighup_reloads_the_bundle_behind_the_model_path(bundle_path, other_bundle, tmp_path):
    link = tmp_path / "current"
    link.symlink_to(bundle_path)
    srv = ServeProcess(link)
    target = srv.target
    try:
        with DetectorClient(target, timeout=10) as client:
            first = client.model_info().model_version

            def swap_and_hup(to):
                tmp = tmp_path / "next"
                tmp.symlink_to(to)
                os.replace(tmp, link)  # atomic: the server never sees a half-written path
                srv.signal(signal.SIGHUP)

            def version_after(seconds):
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    version = client.model_info().model_version
                    if version != first:
                        return version
                    time.sleep(0.2)
                return first

            swap_and_hup(other_bundle)
            second = version_after(30)
            assert second != first
            assert client.score(bars(3, size=16, seed=1)).model_version == second
            swap_and_hup(tmp_path / "empty")  # not a bundle: refused, the second model keeps serving
            time.sleep(2)
            assert client.model_info().model_version == second
            assert client.score(bars(3, size=16, seed=1)).model_version == second
    finally:
        _, _, err = srv.stop()
    assert "reload refused" in err and "no model bundle here" in err
