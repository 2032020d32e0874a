"""docker-compose.yml and the configs it mounts agree with each other and with the code.

The API services are the compose services whose command is `api`, the workers those whose command is
`worker`; nginx's upstream include, Prometheus's targets and the published ports must name exactly them.
nginx's config is checked by nginx itself (`nginx -t`, then a short run on loopback).
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from service.settings import ServiceSettings
from service.uploads import MULTIPART_SLACK
from tests.deploy.conftest import (
    DEPLOY,
    DEPLOY_ONLY_ENV,
    NGINX,
    REPO,
    load_yaml,
    parse_dockerfile,
    settings_env_names,
)
from tests.service.conftest import Processes, free_port

pytestmark = pytest.mark.timeout(60)

COMPOSE = load_yaml(REPO / "docker-compose.yml")
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
UPSTREAMS = DEPLOY / "nginx" / "upstreams.conf"
API_PORT, METRICS_PORT = 8000, 9101  # deploy/docker/entrypoint.sh (tests/deploy/test_image.py checks it)


def _role(name: str) -> str | None:
    command = SERVICES[name].get("command")
    return command[0] if isinstance(command, list) and command else None


API_SERVICES = sorted(name for name in SERVICES if _role(name) == "api")
WORKER_SERVICES = sorted(name for name in SERVICES if _role(name) == "worker")


def _mounts(service: str) -> list[tuple[str, str]]:
    """(source, target) of a service's volumes, short or long syntax."""
    out = []
    for volume in SERVICES[service].get("volumes", []):
        if isinstance(volume, dict):
            out.append((str(volume["source"]), str(volume["target"])))
        else:
            source, target = volume.split(":")[:2]
            out.append((source, target))
    return out


def _mount_of(service: str, source: str) -> str:
    found = [target for src, target in _mounts(service) if Path(src) == Path(source)]
    assert len(found) == 1, f"{service} does not mount {source} (mounts: {_mounts(service)})"
    return found[0]


def _container_ports(service: str) -> set[int]:
    ports = {int(str(port).rsplit(":", 1)[-1]) for port in SERVICES[service].get("ports", [])}
    return ports | {int(port) for port in SERVICES[service].get("expose", [])}


def _nginx_directive(name: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;]+);", NGINX_CONF.read_text(), flags=re.M)


def _upstream_servers(text: str) -> list[tuple[str, int]]:
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)\b[^;]*;", text, flags=re.M)
    return [(host, int(port)) for host, port in servers]


def test_services_build_known_targets_and_use_declared_volumes_and_existing_files() -> None:
    targets = {stage.name for stage in parse_dockerfile(REPO / "Dockerfile") if stage.name}
    for name, service in SERVICES.items():
        assert "build" in service or "image" in service, name
        if "build" in service:
            context = REPO / service["build"]["context"]
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name
            assert service["build"]["target"] in targets, f"{name}: target {service['build']['target']} not built"
        for source, _ in _mounts(name):
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in (COMPOSE.get("volumes") or {}), f"{name}: named volume {source} is not declared"
    assert API_SERVICES and WORKER_SERVICES, "no api or worker services found by their command"
    assert len(API_SERVICES) >= 2, "the API should be replicated behind the load balancer"
    assert SERVICES["worker-gpu"]["profiles"] == ["gpu"] and SERVICES["worker-gpu"]["build"]["target"] == "gpu"
    devices = SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_depends_on_names_services_and_waits_only_on_real_healthchecks() -> None:
    dockerfile_health = {
        stage.name for stage in parse_dockerfile(REPO / "Dockerfile") if stage.name and stage.last("HEALTHCHECK")
    }
    for name, service in SERVICES.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {dep: {"condition": "service_started"} for dep in depends}
        for dependency, spec in depends.items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            if spec.get("condition") == "service_healthy":
                target = SERVICES[dependency]
                has_check = "healthcheck" in target or target.get("build", {}).get("target") in dockerfile_health
                assert has_check, f"{name} waits for {dependency} to be healthy, which has no healthcheck"
    nginx_waits_for = set(SERVICES["nginx"]["depends_on"])
    assert nginx_waits_for == set(API_SERVICES)


def test_redis_never_evicts_and_persists_and_every_app_points_at_it() -> None:
    command = " ".join(SERVICES["redis"]["command"])
    assert "--maxmemory-policy noeviction" in command and "--appendonly yes" in command
    assert _mount_of("redis", "redis-data") == "/data"
    for name in API_SERVICES + WORKER_SERVICES:
        url = urlparse(SERVICES[name]["environment"]["REDIS_URL"])
        assert url.hostname == "redis" and url.port == 6379, f"{name}: REDIS_URL {url.geturl()}"


def test_app_environment_names_real_settings_and_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    known = settings_env_names()
    for name in API_SERVICES + WORKER_SERVICES:
        env = {key: str(value) for key, value in SERVICES[name]["environment"].items()}
        unknown = {key for key in env if key not in known | DEPLOY_ONLY_ENV}
        assert not unknown, f"{name}: {unknown} are not settings (typo? ServiceSettings ignores unknown RSD_*)"
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            settings = ServiceSettings()
        assert settings.redis_url is not None, name


def test_nginx_upstreams_and_prometheus_targets_are_exactly_the_compose_services() -> None:
    # nginx: one upstream server per API service, on the port the API listens on
    assert sorted(_upstream_servers(UPSTREAMS.read_text())) == [(name, API_PORT) for name in API_SERVICES]
    for name in API_SERVICES:
        assert API_PORT in _container_ports(name), name
    for name in WORKER_SERVICES:
        assert METRICS_PORT in _container_ports(name), name
        assert SERVICES[name]["environment"]["RSD_HEALTHCHECK_URL"].endswith(f":{METRICS_PORT}/metrics")
    # nginx reads the include beside its main config
    conf_target = _mount_of("nginx", "./deploy/nginx/nginx.conf")
    assert "include upstreams.conf;" in NGINX_CONF.read_text()
    assert _mount_of("nginx", "./deploy/nginx/upstreams.conf") == str(Path(conf_target).parent / "upstreams.conf")
    # published: the load balancer on the port nginx listens on
    listen = [int(value.split(":")[-1].split()[0]) for value in _nginx_directive("listen")]
    assert listen == [8080] and SERVICES["nginx"]["ports"] == ["8080:8080"]

    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    config_target = _mount_of("prometheus", "./deploy/prometheus/prometheus.yml")
    assert f"--config.file={config_target}" in SERVICES["prometheus"]["command"]
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    api_targets = [target for static in jobs["rsd-api"]["static_configs"] for target in static["targets"]]
    assert sorted(api_targets) == [f"{name}:{API_PORT}" for name in API_SERVICES]
    assert jobs["rsd-api"].get("metrics_path", "/metrics") == "/metrics"
    discovery = jobs["rsd-worker"]["dns_sd_configs"]
    assert all(entry["port"] == METRICS_PORT and entry["type"] == "A" for entry in discovery)
    assert sorted(name for entry in discovery for name in entry["names"]) == WORKER_SERVICES
    # every other static target is a compose service (or Prometheus itself)
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host = target.split(":")[0]
                assert host == "localhost" or host in SERVICES, f"{job['job_name']}: unknown target {target}"


def test_grafana_provisioning_points_at_the_mounted_dashboard_and_prometheus() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert _mount_of("grafana", "./deploy/grafana/provisioning/datasources") == "/etc/grafana/provisioning/datasources"
    assert _mount_of("grafana", "./deploy/grafana/provisioning/dashboards") == "/etc/grafana/provisioning/dashboards"
    dashboards_target = _mount_of("grafana", "./deploy/grafana/dashboards")
    providers = load_yaml(provisioning / "dashboards" / "rsd.yml")["providers"]
    assert [provider["options"]["path"] for provider in providers] == [dashboards_target]
    assert (DEPLOY / "grafana" / "dashboards" / "rsd.json").is_file()
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(dashboards_target)
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).is_file()

    datasources = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert len(datasources) == 1 and datasources[0]["type"] == "prometheus"
    url = urlparse(datasources[0]["url"])
    assert url.hostname == "prometheus" and url.hostname in SERVICES
    assert url.port in _container_ports("prometheus")


def test_nginx_limits_and_timeouts_fit_the_api() -> None:
    defaults = ServiceSettings(redis_url=None)
    (size,) = _nginx_directive("client_max_body_size")
    size_bytes = int(size.rstrip("mM")) * 2**20
    # above the API's own cap (so the API answers 413 in its format), not far above it
    assert defaults.max_bytes + MULTIPART_SLACK <= size_bytes <= 2 * defaults.max_bytes
    (read_timeout,) = _nginx_directive("proxy_read_timeout")
    assert int(read_timeout.rstrip("s")) >= defaults.default_deadline_s
    (retry,) = _nginx_directive("proxy_next_upstream")
    assert "non_idempotent" not in retry and "error" in retry.split()
    assert "X-Request-Id $rsd_request_id" in " ".join(_nginx_directive("proxy_set_header"))


def _render(directory: Path, upstream_ports: list[int], listen_port: int | None = None) -> Path:
    """The repository's nginx.conf, verbatim but for temp paths (and `listen`), beside a loopback upstreams.conf."""
    text = NGINX_CONF.read_text()
    directives = ("client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path", "uwsgi_temp_path", "scgi_temp_path")
    temp = "".join(f"    {directive} {directory / 'temp' / directive};\n" for directive in directives)
    text, found = re.subn(r"^http \{\n", "http {\n" + temp, text, flags=re.M)
    assert found == 1
    if listen_port is not None:
        text, found = re.subn(r"\blisten 8080;", f"listen 127.0.0.1:{listen_port};", text)
        assert found == 1
    (directory / "temp").mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    (directory / "nginx.conf").write_text(text)
    servers = _upstream_servers(UPSTREAMS.read_text())
    loopback = UPSTREAMS.read_text()
    for (host, port), new_port in zip(servers, upstream_ports, strict=True):
        loopback = loopback.replace(f"server {host}:{port}", f"server 127.0.0.1:{new_port}")
    assert _upstream_servers(loopback) == [("127.0.0.1", port) for port in upstream_ports]
    (directory / "upstreams.conf").write_text(loopback)
    return directory / "nginx.conf"


needs_nginx = pytest.mark.skipif(
    not Path(NGINX).is_file(), reason=f"nginx not found at {NGINX} (.ci/run installs it: apt-get install nginx)"
)


@needs_nginx
def test_nginx_accepts_the_config_with_a_loopback_upstream(tmp_path: Path) -> None:
    ports = [free_port() for _ in API_SERVICES]
    conf = _render(tmp_path, ports)
    result = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-g", f"pid {tmp_path / 'nginx.pid'};"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        connection.shutdown(socket.SHUT_WR)  # no body follows: nginx need not linger for it
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@needs_nginx
def test_nginx_hides_metrics_and_answers_its_own_errors_in_the_api_format(tmp_path: Path, processes: Processes) -> None:
    """No replica listens on the upstream ports: every proxied request fails over, then gets nginx's 503."""
    listen = free_port()
    conf = _render(tmp_path, [free_port() for _ in API_SERVICES], listen_port=listen)
    log = open(tmp_path / "nginx.log", "ab")  # noqa: SIM115 - owned by the process
    nginx = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(conf),
         "-g", f"pid {tmp_path / 'nginx.pid'}; daemon off; master_process off;"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    processes.running.append(nginx)
    base = f"http://127.0.0.1:{listen}"
    deadline = time.monotonic() + 20
    while True:
        assert nginx.poll() is None, (tmp_path / "nginx.log").read_text()
        try:
            metrics = httpx.get(f"{base}/metrics", timeout=5)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.05)
    assert metrics.status_code == 404 and metrics.json()["error"]["code"] == "not_found"

    for method, path in (("GET", "/healthz"), ("GET", "/readyz"), ("POST", "/upscale"), ("GET", "/jobs/x")):
        response = httpx.request(method, f"{base}{path}", content=b"x", timeout=10)
        assert response.status_code == 503, (method, path, response.status_code)
        assert response.json()["error"]["code"] == "unavailable" and response.headers["retry-after"] == "1"
        assert response.headers["content-type"] == "application/json"

    # a declared body far above the cap is refused before it is read
    too_big = 30 * 2**20
    answer = _raw_request(
        listen,
        f"POST /upscale HTTP/1.1\r\nHost: lb\r\nContent-Type: image/png\r\nContent-Length: {too_big}\r\n\r\n".encode(),
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b'"code": "too_large"' in body
