"""Policy over k8s/: what the deployment promises (DESIGN §8), checked on the manifests themselves.

Schema validity is kubernetes-validate's job (`make deploy-lint`); these tests check the choices:
security context, probes, resources, shutdown timing, ports and settings that agree with the app.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.process.durations import parse_duration
from adapters.process.settings import Settings

K8S = Path(__file__).parents[2] / "k8s"
SECRET_SETTINGS = {
    "OPENAI_API_KEYS",
    "GEMINI_API_KEYS",
    "ANTHROPIC_API_KEYS",
    "EMBEDDING_API_KEY",
    "AUTH_TOKENS",
}
PLACEHOLDERS = re.compile(r"<[a-z0-9-]+>(,<[a-z0-9-]+>)*")

Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


ALL = {path: load(path) for path in sorted(K8S.rglob("*.yaml"))}
DOCS = [doc for docs in ALL.values() for doc in docs]


def find(kind: str, name: str) -> Doc:
    (doc,) = (d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name)
    return doc


DEPLOYMENT = find("Deployment", "llm-proxy")
POD = DEPLOYMENT["spec"]["template"]
(PROXY,) = POD["spec"]["containers"]
CONFIG = find("ConfigMap", "llm-proxy-config")["data"]
SECRET = find("Secret", "llm-proxy-secrets")
PORTS = {port["name"]: port["containerPort"] for port in PROXY["ports"]}


def workloads() -> Iterator[Doc]:
    yield from (d for d in DOCS if d["kind"] in {"Deployment", "StatefulSet"})


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_every_manifest_sets_a_namespace_and_the_namespace_is_first_applied() -> None:
    namespaced = [d for d in DOCS if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"llm-proxy"}
    # `kubectl apply -f k8s/` applies files in name order.
    top_level = sorted(path.name for path in ALL if path.parent == K8S)
    assert load(K8S / top_level[0])[0]["kind"] == "Namespace"


@pytest.mark.parametrize("workload", list(workloads()), ids=lambda d: d["metadata"]["name"])
def test_every_workload_is_locked_down(workload: Doc) -> None:
    spec = workload["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    assert spec["automountServiceAccountToken"] is False
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] > 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context.get("privileged", False) is False
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys(), container["name"]
        assert "memory" in resources["limits"], container["name"]
        assert not container["image"].endswith(":latest")
        assert ":" in container["image"]


def test_the_proxy_runs_as_the_images_nonroot_user_with_no_api_token() -> None:
    assert POD["spec"]["securityContext"]["runAsUser"] == 65532
    assert PROXY["securityContext"]["runAsUser"] == 65532
    account = find("ServiceAccount", POD["spec"]["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False


def test_the_proxy_writes_only_to_its_volumes() -> None:
    mounts = {m["mountPath"]: m["name"] for m in PROXY["volumeMounts"]}
    volumes = {v["name"]: v for v in POD["spec"]["volumes"]}
    env = {e["name"]: e.get("value") for e in PROXY["env"]}
    assert "/tmp" in mounts
    assert env["CACHE_DIR"] in mounts  # the embedded cache, should the mode change
    for name in mounts.values():
        assert "emptyDir" in volumes[name]
        assert volumes[name]["emptyDir"]["sizeLimit"]


def test_two_replicas_roll_without_losing_capacity() -> None:
    assert DEPLOYMENT["spec"]["replicas"] == 2
    assert DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    budget = find("PodDisruptionBudget", "llm-proxy")["spec"]
    assert budget["minAvailable"] == 1
    assert matches(budget["selector"]["matchLabels"], POD["metadata"]["labels"])


def test_probes_use_the_servers_health_endpoints() -> None:
    startup, ready, live = (PROXY[k] for k in ("startupProbe", "readinessProbe", "livenessProbe"))
    assert startup["grpc"]["port"] == PORTS["grpc"]
    # Long enough for a model load, before liveness could restart the pod.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    assert ready["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert live["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_the_grace_period_outlasts_prestop_and_the_drain() -> None:
    pre_stop = PROXY["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = parse_duration(CONFIG["SHUTDOWN_GRACE"])
    assert POD["spec"]["terminationGracePeriodSeconds"] > pre_stop + drain


def test_ports_agree_with_the_apps_defaults_and_the_configmap() -> None:
    fields = Settings.model_fields
    assert PORTS["grpc"] == fields["grpc_port"].default == int(CONFIG["GRPC_PORT"])
    assert PORTS["metrics"] == fields["metrics_port"].default == int(CONFIG["METRICS_PORT"])
    assert PORTS["http"] == fields["http_port"].default
    annotations = POD["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == PORTS["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_service_exposes_grpc_metrics_and_http_by_name() -> None:
    service = find("Service", "llm-proxy")["spec"]
    assert service["type"] == "ClusterIP"
    assert matches(service["selector"], POD["metadata"]["labels"])
    assert {p["name"]: p["port"] for p in service["ports"]} == {
        "grpc": 50051,
        "metrics": 9090,
        "http": 8080,
    }
    assert all(p["targetPort"] in PORTS for p in service["ports"])


def test_the_autoscaler_scales_the_deployment_2_to_20_on_cpu_and_memory() -> None:
    hpa = find("HorizontalPodAutoscaler", "llm-proxy")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "llm-proxy",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 20)
    targets = {m["resource"]["name"]: m["resource"]["target"] for m in spec["metrics"]}
    assert targets == {
        "cpu": {"type": "Utilization", "averageUtilization": 70},
        "memory": {"type": "Utilization", "averageUtilization": 80},
    }
    # Utilization is relative to requests: without them the HPA cannot compute it.
    assert {"cpu", "memory"} <= PROXY["resources"]["requests"].keys()


def test_the_configmap_is_valid_configuration_and_holds_no_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    known = {name.upper() for name in Settings.model_fields}
    unknown = {key for key in CONFIG if key not in known and not key.startswith("OTEL_")}
    assert not unknown, f"not settings of the app: {unknown}"
    assert not SECRET_SETTINGS & CONFIG.keys()
    for key, value in {**CONFIG, **SECRET["stringData"]}.items():  # as envFrom gives them
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.cache_mode == "remote"  # replicas share one cache
    assert settings.state_backend == "redis"  # and one set of key cooldowns, limits, budgets
    assert settings.grpc_host == "0.0.0.0"


def test_the_secret_is_a_template_of_placeholders_for_every_key() -> None:
    assert set(SECRET["stringData"]) == SECRET_SETTINGS
    for key, value in SECRET["stringData"].items():
        assert PLACEHOLDERS.fullmatch(value), f"{key} must hold <placeholders>, not values"
    assert "data" not in SECRET
    # No Secret among the manifests `kubectl apply -f k8s/` applies.
    applied = [d for path, docs in ALL.items() if path.parent == K8S for d in docs]
    assert not [d for d in applied if d["kind"] == "Secret"]
    sources = {s.get("secretRef", {}).get("name") for s in PROXY["envFrom"]}
    assert SECRET["metadata"]["name"] in sources


def test_a_public_bind_comes_with_client_tokens() -> None:
    assert CONFIG["GRPC_HOST"] == "0.0.0.0"
    assert "AUTH_TOKENS" in SECRET["stringData"]


def test_traces_go_to_the_collector_service() -> None:
    endpoint = CONFIG["OTEL_EXPORTER_OTLP_ENDPOINT"]
    collector = find("Service", "otel-collector")
    ports = {p["name"]: p["port"] for p in collector["spec"]["ports"]}
    name, namespace = collector["metadata"]["name"], collector["metadata"]["namespace"]
    assert endpoint == f"http://{name}.{namespace}.svc:{ports['otlp-grpc']}"
    assert ports == {"otlp-grpc": 4317, "otlp-http": 4318}
    config = yaml.safe_load(find("ConfigMap", "otel-collector-config")["data"]["config.yaml"])
    assert "otlp" in config["service"]["pipelines"]["traces"]["receivers"]


def test_the_network_policy_admits_clients_and_reaches_the_backends() -> None:
    policy = find("NetworkPolicy", "llm-proxy")["spec"]
    assert matches(policy["podSelector"]["matchLabels"], POD["metadata"]["labels"])
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert ingress_ports == set(PORTS.values())
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    redis_port = int(CONFIG["REDIS_ADDR"].rsplit(":", 1)[1])
    qdrant_port = int(CONFIG["QDRANT_URL"].rsplit(":", 1)[1])
    assert {53, 443, 4317, redis_port, qdrant_port} <= egress_ports
