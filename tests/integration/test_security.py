"""TLS, mutual TLS and bearer-token auth on a real server."""

from __future__ import annotations

import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detector.bench.certs import make_cert
from detector.client import DetectorClient
from detector.data.synthetic import bars
from detector.errors import ConfigError
from detector.scoring.scorer import Scorer
from tests.integration.serving_helpers import ServerThread


@pytest.fixture(scope="module")
def scorer(bundle_path):
    return Scorer.from_path(bundle_path, device="cpu")


def test_bearer_token(scorer):
    with ServerThread(scorer, auth_token="s3cret") as s:
        x = bars(3, size=16)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
            with DetectorClient(s.target, metadata=metadata) as client, pytest.raises(grpc.RpcError) as err:
                client.score(x)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Nothing was scored or counted as traffic; the refusals are counted as errors.
        assert s.metric("detector_samples_scored_total", model_version=scorer.model_version) == 0
        assert s.metric("detector_requests_total", method="Score", code="OK") == 0
        assert s.metric("detector_errors_total", method="Score", code="UNAUTHENTICATED") == 3
        # Health stays open for probes.
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(s.target))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        with DetectorClient(s.target, metadata=[("authorization", "Bearer s3cret")]) as client:
            assert len(client.score(x)) == 3
        assert s.metric("detector_samples_scored_total", model_version=scorer.model_version) == 3


def test_tls_and_mutual_tls(scorer, tmp_path):
    server_key, server_crt = make_cert(tmp_path, "server")
    with ServerThread(scorer, tls_cert=str(server_crt), tls_key=str(server_key)) as s:
        trusted = grpc.ssl_channel_credentials(root_certificates=server_crt.read_bytes())
        with DetectorClient(s.target, credentials=trusted) as client:
            assert len(client.score(bars(2, size=16))) == 2
        # A client that does not trust the server's CA cannot connect; neither can a plaintext one.
        with DetectorClient(s.target, credentials=grpc.ssl_channel_credentials(), retries=0, timeout=5) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.score(bars(1, size=16))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with DetectorClient(s.target, retries=0, timeout=5) as client, pytest.raises(grpc.RpcError):
            client.score(bars(1, size=16))

    make_cert(tmp_path, "ca")
    client_key, client_crt = make_cert(tmp_path, "client", ca="ca")
    with ServerThread(scorer, tls_cert=str(server_crt), tls_key=str(server_key),
                      tls_client_ca=str(tmp_path / "ca.crt")) as s:
        with_cert = grpc.ssl_channel_credentials(server_crt.read_bytes(), client_key.read_bytes(),
                                                 client_crt.read_bytes())
        with DetectorClient(s.target, credentials=with_cert) as client:
            assert len(client.score(bars(2, size=16))) == 2
        without = grpc.ssl_channel_credentials(server_crt.read_bytes())
        with DetectorClient(s.target, credentials=without, retries=0, timeout=5) as client:
            with pytest.raises(grpc.RpcError):
                client.score(bars(1, size=16))


def test_tls_settings_must_be_complete(scorer):
    from detector.config import ServeConfig

    with pytest.raises(ConfigError, match="both a certificate and a key"):
        ServeConfig(tls_cert="a.pem")
    with pytest.raises(ConfigError, match="needs TLS"):
        ServeConfig(tls_client_ca="ca.pem")


def test_score_cli_through_a_tls_server_with_a_token(scorer, data_dir, tmp_path):
    import csv
    import sys

    server_key, server_crt = make_cert(tmp_path, "server")
    (tmp_path / "token").write_text("s3cret\n")
    with ServerThread(scorer, tls_cert=str(server_crt), tls_key=str(server_key), auth_token="s3cret") as s:
        def score(*extra):
            return subprocess.run([sys.executable, "-m", "detector", "--quiet", "score", "--server", s.target,
                                   "--data", str(data_dir / "anomalous.npz"), "--out", str(tmp_path / "r.csv"),
                                   "--tls-ca", str(server_crt), *extra], capture_output=True, text=True, timeout=120)

        refused = score()
        assert refused.returncode == 2 and "UNAUTHENTICATED" in refused.stderr and "Traceback" not in refused.stderr
        ok = score("--auth-token-file", str(tmp_path / "token"))
        assert ok.returncode == 0, ok.stderr
        assert len(list(csv.DictReader(open(tmp_path / "r.csv")))) == 200


def test_score_and_health_cli_through_a_mutual_tls_server(scorer, data_dir, tmp_path):
    import sys

    server_key, server_crt = make_cert(tmp_path, "server")
    make_cert(tmp_path, "ca")
    client_key, client_crt = make_cert(tmp_path, "client", ca="ca")
    tls = ["--tls-ca", str(server_crt)]
    with ServerThread(scorer, tls_cert=str(server_crt), tls_key=str(server_key),
                      tls_client_ca=str(tmp_path / "ca.crt")) as s:
        def cli(command, *extra):
            where = ["--server", s.target, "--data", str(data_dir / "anomalous.npz"), "--out", str(tmp_path / "r.csv")]
            return subprocess.run([sys.executable, "-m", "detector", "--quiet", command,
                                   *(where if command == "score" else ["--target", s.target]), *tls, *extra],
                                  capture_output=True, text=True, timeout=120)

        without = cli("score")  # the server asks for a client certificate this client does not have
        assert without.returncode == 2 and "UNAVAILABLE" in without.stderr and "Traceback" not in without.stderr
        half = cli("score", "--tls-cert", str(client_crt))
        assert half.returncode == 2 and "--tls-cert and --tls-key together" in half.stderr
        ok = cli("score", "--tls-cert", str(client_crt), "--tls-key", str(client_key))
        assert ok.returncode == 0, ok.stderr
        assert (tmp_path / "r.csv").read_text().count("\n") == 201
        assert cli("health").returncode == 1
        health = cli("health", "--tls-cert", str(client_crt), "--tls-key", str(client_key))
        assert health.returncode == 0 and "SERVING" in health.stdout, health.stderr
