"""Deployment files checked without a Docker engine or cluster: promtool, YAML, consistency with the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from detector.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="Debian package prometheus not installed")


@promtool
def test_promtool_accepts_config_and_rules():
    for args in (["check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
                 ["check", "rules", str(DEPLOY / "prometheus/detector-rules.yml")]):
        proc = subprocess.run(["promtool", *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def k8s_docs() -> dict[str, dict]:
    docs = {}
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc, path
            docs[f"{path.relative_to(DEPLOY / 'k8s')}:{doc.get('kind')}"] = doc
    return docs


def serve_flags() -> dict[str, object]:
    parser = build_parser()
    serve = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "serve")[1]
    return {a.dest: a.default for a in serve._actions}


def test_k8s_manifests_parse_and_agree_with_server_flags():
    docs = k8s_docs()
    assert {"base/deployment.yaml:Deployment", "base/service.yaml:Service",
            "base/hpa.yaml:HorizontalPodAutoscaler", "base/configmap.yaml:ConfigMap",
            "base/pdb.yaml:PodDisruptionBudget", "base/servicemonitor.yaml:ServiceMonitor"} <= set(docs)
    config = docs["base/configmap.yaml:ConfigMap"]["data"]
    dep = docs["base/deployment.yaml:Deployment"]["spec"]["template"]["spec"]
    (container,) = dep["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(config["GRPC_PORT"]), "metrics": int(config["METRICS_PORT"])}
    # Every argument is a real `detector serve` flag, and the ports are passed through.
    flags = serve_flags()
    for arg in container["args"]:
        flag = arg.split("=")[0].lstrip("-").replace("-", "_")
        assert flag in flags, arg
    assert "--port=$(GRPC_PORT)" in container["args"] and "--metrics-port=$(METRICS_PORT)" in container["args"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    assert container["readinessProbe"]["grpc"]["service"] == "detector.v1.Detector"
    assert dep["terminationGracePeriodSeconds"] > float(config["GRACE_S"])
    svc = {p["name"]: p["targetPort"] for p in docs["base/service.yaml:Service"]["spec"]["ports"]}
    assert svc == {"grpc": "grpc", "metrics": "metrics"}
    monitor = docs["base/servicemonitor.yaml:ServiceMonitor"]["spec"]["endpoints"][0]
    assert monitor["port"] == "metrics" and monitor["path"] == "/metrics"
    gpu = docs["overlays/gpu/gpu-patch.yaml:Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1 and "--device=cuda" in gpu["args"]
    prom = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == [f"detector:{config['METRICS_PORT']}"]


def test_dockerfile_builds_with_setup_script_and_probes_health():
    text = (DEPLOY / "Dockerfile").read_text()
    runs = re.findall(r"^RUN (.+?)(?<!\\)$", text, flags=re.M | re.S)
    assert any("scripts/setup.sh --runtime" in r for r in runs), "the image must be built by scripts/setup.sh"
    assert re.search(r"^USER (?!root)\w+", text, flags=re.M)
    assert '"detector", "health"' in text and "HEALTHCHECK" in text
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, flags=re.M).group(1))
    config = yaml.safe_load((DEPLOY / "k8s/base/configmap.yaml").read_text())["data"]
    assert cmd[cmd.index("--port") + 1] == config["GRPC_PORT"]
    assert cmd[cmd.index("--metrics-port") + 1] == config["METRICS_PORT"]
    # setup.sh --runtime really is a mode of the same script.
    assert '"--runtime"' in (ROOT / "scripts/setup.sh").read_text()


def test_compose_wires_server_prometheus_grafana():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"detector", "prometheus", "grafana"}
    for mount in compose["services"]["prometheus"]["volumes"] + compose["services"]["grafana"]["volumes"]:
        assert (DEPLOY / mount.split(":")[0]).exists(), mount
    dash = json.loads((DEPLOY / "grafana/detector-dashboard.json").read_text())
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for needed in ("novelty rate", "distribution", "latency", "batch size", "queue depth", "errors", "resample",
                   "model version"):
        assert needed in titles, needed
