"""deploy/k8s: the manifests parse, reference each other correctly, and agree with the code.

No cluster is needed: selectors are matched against pod labels, names and keys against the objects that
define them, probe ports against container ports, the KEDA trigger against service.queue.keys, the
environment against ServiceSettings, and the Ingress paths against the app's own routes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.api import router
from service.queue.keys import GROUP, RedisKeys
from service.settings import ServiceSettings
from service.uploads import MULTIPART_SLACK
from tests.deploy.conftest import DEPLOY, DEPLOY_ONLY_ENV, REPO, load_yaml, load_yaml_documents, parse_dockerfile
from tests.deploy.conftest import settings_env_names as known_env
from tests.service.conftest import embedded_client

K8S = DEPLOY / "k8s"
MANIFESTS = sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")
DOCS = [(path.name, doc) for path in MANIFESTS for doc in load_yaml_documents(path)]
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def _objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in DOCS if doc["kind"] == kind}


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return list(workload["spec"]["template"]["spec"]["containers"])


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _workloads() -> Iterator[dict[str, Any]]:
    for _, doc in DOCS:
        if doc["kind"] in WORKLOAD_KINDS:
            yield doc


def _container_env(container: dict[str, Any]) -> dict[str, str | None]:
    """Environment of a container: literal values, None for values from a Secret; ConfigMaps expanded."""
    configmaps = _objects("ConfigMap")
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        else:
            ref = entry["valueFrom"].get("configMapKeyRef")
            env[entry["name"]] = configmaps[ref["name"]]["data"][ref["key"]] if ref else None
    return env


def _port_names(container: dict[str, Any]) -> set[str | int]:
    ports = container.get("ports", [])
    return {port["containerPort"] for port in ports} | {port["name"] for port in ports if "name" in port}


def test_every_document_is_a_named_object_without_a_namespace_and_listed_in_the_kustomization() -> None:
    assert DOCS, "no manifests in deploy/k8s"
    for filename, doc in DOCS:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), filename
        assert doc["metadata"].get("name"), f"{filename}: {doc['kind']} without a name"
        assert "namespace" not in doc["metadata"], f"{filename}: manifests are namespace-free (kubectl -n / kustomize)"
    names = [(doc["kind"], doc["metadata"]["name"]) for _, doc in DOCS]
    assert len(names) == len(set(names)), "duplicate objects"
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == [path.name for path in MANIFESTS]
    assert {"Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "ScaledObject", "ConfigMap"} <= {
        kind for kind, _ in names
    }


def test_selectors_match_pod_labels_and_services_reach_named_ports() -> None:
    workloads = list(_workloads())
    for workload in workloads:
        selector = workload["spec"]["selector"]["matchLabels"]
        assert _selects(selector, _pod_labels(workload)), f"{workload['metadata']['name']}: selector misses its pods"
    for name, service in _objects("Service").items():
        selected = [w for w in workloads if _selects(service["spec"]["selector"], _pod_labels(w))]
        assert len(selected) == 1, f"Service {name} selects {len(selected)} workloads"
        ports = set().union(*(_port_names(container) for container in _containers(selected[0])))
        for port in service["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in ports, f"Service {name}: no container port {port}"
    for name, budget in _objects("PodDisruptionBudget").items():
        assert any(_selects(budget["spec"]["selector"]["matchLabels"], _pod_labels(w)) for w in workloads), name
    api_service = _objects("Service")["rsd-api"]
    assert _selects(api_service["spec"]["selector"], _pod_labels(_objects("Deployment")["rsd-api"]))


def test_probes_use_declared_ports_and_the_health_endpoints() -> None:
    for workload in _workloads():
        for container in _containers(workload):
            for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = container.get(probe_name)
                if probe is None:
                    continue
                action = probe.get("httpGet") or probe.get("tcpSocket")
                if action is not None:
                    assert action["port"] in _port_names(container), f"{workload['metadata']['name']}: {probe_name}"
    (api,) = _containers(_objects("Deployment")["rsd-api"])
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["args"] == ["api"] and {"name": "http", "containerPort": 8000} in api["ports"]
    assert "cpu" in api["resources"]["requests"], "the HPA needs a CPU request"
    (worker,) = _containers(_objects("Deployment")["rsd-worker"])
    assert worker["args"] == ["worker"] and {"name": "metrics", "containerPort": 9101} in worker["ports"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert _objects("Deployment")["rsd-worker"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    for workload, container in (("rsd-api", api), ("rsd-worker", worker)):
        annotations = _objects("Deployment")[workload]["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) in _port_names(container), workload


def test_images_are_dockerfile_targets() -> None:
    targets = {stage.name for stage in parse_dockerfile(REPO / "Dockerfile") if stage.name}
    images = {container["image"] for workload in _objects("Deployment").values() for container in _containers(workload)}
    assert images == {"rsd-serve:cpu", "rsd-serve:gpu"}
    assert {image.split(":")[1] for image in images} <= targets


def test_config_and_secret_references_exist() -> None:
    configmaps, secrets = _objects("ConfigMap"), _objects("Secret")
    secret_keys = {
        name: set(secret.get("stringData", {})) | set(secret.get("data", {})) for name, secret in secrets.items()
    }
    for workload in _workloads():
        for container in _containers(workload):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    key_ref = ref["configMapKeyRef"]
                    assert key_ref["key"] in configmaps[key_ref["name"]]["data"], entry["name"]
                if "secretKeyRef" in ref:
                    key_ref = ref["secretKeyRef"]
                    assert key_ref["key"] in secret_keys[key_ref["name"]], entry["name"]
    for name, auth in _objects("TriggerAuthentication").items():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secret_keys[ref["name"]], f"TriggerAuthentication {name}: {ref}"


def test_service_environment_names_real_settings_and_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    known = known_env() | DEPLOY_ONLY_ENV
    for name in ("rsd-api", "rsd-worker"):
        (container,) = _containers(_objects("Deployment")[name])
        env = _container_env(container)
        assert "REDIS_URL" in env, f"{name}: no REDIS_URL"
        unknown = {key for key in env if key not in known}
        assert not unknown, f"{name}: {unknown} are not settings (typo? ServiceSettings ignores unknown RSD_*)"
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value if value is not None else "redis://:secret@rsd-redis:6379/0")
            settings = ServiceSettings()
        assert str(settings.model_dir) == "/app/models/rsd-tiny"
        if name == "rsd-worker":
            assert (settings.device, settings.fixed_batch) == ("cuda", 8)


def test_keda_scales_the_worker_on_the_stream_and_group_the_code_uses() -> None:
    deployments = _objects("Deployment")
    config = _objects("ConfigMap")["rsd-config"]["data"]
    (scaled,) = _objects("ScaledObject").values()
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and target["name"] == "rsd-worker" in deployments
    assert scaled["spec"]["minReplicaCount"] >= 1, "the API is ready only while a worker is warm"
    (trigger,) = scaled["spec"]["triggers"]
    metadata = trigger["metadata"]
    assert trigger["type"] == "redis-streams"
    assert metadata["stream"] == RedisKeys(prefix=config["RSD_REDIS_PREFIX"]).jobs(Path(config["RSD_MODEL"]).name)
    assert metadata["consumerGroup"] == GROUP
    assert 0 < int(metadata["pendingEntriesCount"]) < int(config["RSD_CLAIM_MAX_JOBS"])
    (worker,) = _containers(deployments["rsd-worker"])
    address = _container_env(worker)[metadata["addressFromEnv"]]
    assert address is not None and address.startswith("rsd-redis.") and address.endswith(":6379")
    assert trigger["authenticationRef"]["name"] in _objects("TriggerAuthentication")
    (hpa,) = _objects("HorizontalPodAutoscaler").values()
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "rsd-api") and "rsd-api" in deployments
    assert hpa["spec"]["minReplicas"] >= 2 and deployments["rsd-api"]["spec"]["replicas"] >= 2


def test_redis_never_evicts_persists_and_stays_below_its_memory_limit() -> None:
    (redis,) = _objects("StatefulSet").values()
    (container,) = _containers(redis)
    args = " ".join(container["args"])
    assert "--maxmemory-policy noeviction" in args and "--appendonly yes" in args
    maxmemory = container["args"][container["args"].index("--maxmemory") + 1]
    limit = container["resources"]["limits"]["memory"]
    assert maxmemory.endswith("mb") and limit.endswith("Gi")
    assert int(maxmemory[:-2]) * 2**20 < int(limit[:-2]) * 2**30
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["data"] == "/data" and redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def _route_paths(fake_model: Path) -> set[str]:
    client, _, _ = embedded_client(fake_model)  # built, not started: only its routes are read
    # the API's routes live on service.api.router (FastAPI keeps an included router as one entry)
    mounted = {route.path for route in client.app.routes if hasattr(route, "path")}  # type: ignore[attr-defined]
    return mounted | {route.path for route in router.routes}  # type: ignore[attr-defined]


def _ingress_matches(paths: list[dict[str, Any]], request_path: str) -> bool:
    for entry in paths:
        path, kind = entry["path"], entry["pathType"]
        if kind == "Exact" and request_path == path:
            return True
        if kind == "Prefix" and (request_path == path or request_path.startswith(path.rstrip("/") + "/")):
            return True
    return False


def test_ingress_routes_every_api_path_but_metrics_with_the_api_limits(fake_model: Path) -> None:
    (ingress,) = _objects("Ingress").values()
    assert ingress["spec"]["ingressClassName"] == "nginx"
    services = _objects("Service")
    (rule,) = ingress["spec"]["rules"]
    paths = rule["http"]["paths"]
    for entry in paths:
        backend = entry["backend"]["service"]
        assert backend["name"] in services, backend
        port_keys = {p["port"] for p in services[backend["name"]]["spec"]["ports"]} | {
            p.get("name") for p in services[backend["name"]]["spec"]["ports"]
        }
        assert backend["port"].get("name", backend["port"].get("number")) in port_keys
    routes = _route_paths(fake_model)
    assert "/metrics" in routes and "/upscale" in routes
    for route in routes - {"/metrics"}:
        assert _ingress_matches(paths, route), f"the Ingress does not route {route}"
    assert not _ingress_matches(paths, "/metrics"), "/metrics must not be public"

    annotations = ingress["metadata"]["annotations"]
    defaults = ServiceSettings(redis_url=None)
    body = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert defaults.max_bytes + MULTIPART_SLACK <= int(body.rstrip("m")) * 2**20 <= 2 * defaults.max_bytes
    nginx_conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert f"client_max_body_size {body};" in nginx_conf, "the Ingress and the compose load balancer differ"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= defaults.default_deadline_s
    assert "non_idempotent" not in annotations.get("nginx.ingress.kubernetes.io/proxy-next-upstream", "")
