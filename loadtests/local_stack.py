"""The scaled topology on loopback: redis-server, API replicas, model workers and nginx in front.

`render_nginx` turns the repository's deploy/nginx/nginx.conf (written for containers) into a config
that runs unprivileged-style under a temporary prefix: the upstream include is rendered with loopback
ports, `listen` goes to a free loopback port, pid/log/temp paths go under the prefix. The deploy
test and `python -m loadtests.openloop --spawn-local` both use it, so the config that ships is the one
that is tested.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
NGINX_DIR = REPO / "deploy" / "nginx"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

#: used only when deploy/nginx/nginx.conf is missing: the layout it is expected to have
FALLBACK_CONF = """\
worker_processes 1;
events { worker_connections 1024; }
http {
    upstream rsd_api {
        include upstreams.conf;
        keepalive 32;
    }
    server {
        listen 8080;
        client_max_body_size 25m;
        location / {
            proxy_pass http://rsd_api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 3600s;
        }
    }
}
"""
_TEMP_PATHS = ("client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path", "uwsgi_temp_path", "scgi_temp_path")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_server_command(port: int, directory: Path) -> list[str]:
    """A throwaway redis-server on loopback: no persistence, and noeviction so that a full Redis refuses
    writes instead of silently dropping queued jobs (serving.md)."""
    return [
        REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--maxmemory-policy", "noeviction", "--dir", str(directory), "--daemonize", "no",
    ]  # fmt: skip


_SERVER_LINE = re.compile(r"^[ \t]*server\s+[^\s{;#]+([^;{\n]*);[^\n]*\n?", flags=re.M)
_UPSTREAM_BLOCK = re.compile(r"upstream\s+([\w.-]+)\s*\{([^}]*)\}")


def loopback_servers(text: str, ports: list[int]) -> str:
    """Replace the upstream `server ADDRESS PARAMS;` lines of `text` with one line per loopback port.

    The parameters of the first line (max_fails=..., fail_timeout=...) are kept for every new line;
    text without server lines is returned unchanged.
    """
    found = _SERVER_LINE.search(text)
    if found is None:
        return text
    lines = "".join(f"server 127.0.0.1:{port}{found.group(1)};\n" for port in ports)
    return text[: found.start()] + lines + _SERVER_LINE.sub("", text[found.end() :])


def _render_upstream_blocks(text: str, ports: list[int]) -> str:
    """Upstream blocks written inline in the main file get loopback servers too."""
    return _UPSTREAM_BLOCK.sub(lambda m: f"upstream {m.group(1)} {{{loopback_servers(m.group(2), ports)}}}", text)


def _find_include(name: str, conf_dir: Path) -> str:
    if Path(name).is_absolute() or "*" in name:
        return name
    for base in (conf_dir, Path("/etc/nginx")):
        if (base / name).exists():
            return str(base / name)
    return name


def render_nginx(prefix: Path, listen_port: int, api_ports: list[int], conf: Path | None = None) -> Path:
    """Write `prefix`/conf/nginx.conf (+ the rendered upstream file); returns the main config's path."""
    conf = conf or NGINX_DIR / "nginx.conf"
    conf_dir = conf.parent
    text = conf.read_text() if conf.exists() else FALLBACK_CONF
    (prefix / "conf").mkdir(parents=True, exist_ok=True)
    (prefix / "logs").mkdir(exist_ok=True)
    (prefix / "temp").mkdir(exist_ok=True)

    def include(match: re.Match[str]) -> str:
        indent, name = match.group(1), match.group(2).strip().strip("\"'")
        if "upstream" not in Path(name).name:
            return f"{indent}include {_find_include(name, conf_dir)};"
        source = conf_dir / Path(name).name
        upstream_text = source.read_text() if source.exists() else "server api:8000;\n"
        target = prefix / "conf" / Path(name).name
        target.write_text(loopback_servers(upstream_text, api_ports))
        return f"{indent}include {target};"

    text = re.sub(r"^([ \t]*)include\s+([^;]+);", include, text, flags=re.M)
    text = _render_upstream_blocks(text, api_ports)
    # one loopback listen for the main server; any other port gets a free one; IPv6 listens dropped
    ports: dict[str, int] = {}

    def listen(match: re.Match[str]) -> str:
        address, *flags = match.group(1).split()
        if address.startswith("["):
            return ""
        port = address.rsplit(":", 1)[-1]
        ports.setdefault(port, listen_port if not ports else free_port())
        kept = [flag for flag in flags if flag in ("default_server", "reuseport") or flag.startswith("backlog=")]
        return " ".join([f"listen 127.0.0.1:{ports[port]}", *kept]) + ";"

    text = re.sub(r"\blisten\s+([^;]+);", listen, text)
    text = re.sub(r"^[ \t]*(user|pid|daemon|error_log)\s+[^;]*;", "", text, flags=re.M)
    text = re.sub(r"\baccess_log\s+(?!off\b)[^\s;]+", f"access_log {prefix / 'logs' / 'access.log'}", text)
    if not re.search(r"^\s*http\s*\{", text, flags=re.M):  # a server-level file (conf.d style): wrap it
        text = f"events {{ worker_connections 1024; }}\nhttp {{\n{text}\n}}\n"
    temps = "".join(f"    {d} {prefix / 'temp' / d.split('_')[0]};\n" for d in _TEMP_PATHS if d not in text)
    text = re.sub(r"^([ \t]*http\s*\{)", lambda m: m.group(1) + "\n" + temps, text, count=1, flags=re.M)
    head = [f"pid {prefix / 'nginx.pid'};", f"error_log {prefix / 'logs' / 'error.log'} warn;", "daemon off;"]
    if os.geteuid() == 0:  # workers would run as nobody, who cannot enter a private temp dir
        head.append("user root;")
    main = prefix / "conf" / "nginx.conf"
    main.write_text("\n".join(head) + "\n" + text)
    return main


def nginx_command(prefix: Path, main_conf: Path) -> list[str]:
    return [NGINX, "-p", str(prefix), "-c", str(main_conf), "-e", str(prefix / "logs" / "error.log")]


def wait_http(url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {process.returncode}")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s} s: {last}")


class LocalStack:
    """redis-server + `apis` x `rsd serve` + `workers` x `rsd worker --metrics-port` + nginx, on loopback.

    Every process has its own session and is killed (whole process group) on exit; logs in `workdir`/logs.
    """

    def __init__(
        self, workdir: Path, apis: int = 2, workers: int = 2, model: str | None = None, worker_threads: int = 1,
        nginx: bool = True, env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.workdir = workdir.resolve()
        self.n_apis, self.n_workers, self.use_nginx = apis, workers, nginx
        self.model, self.worker_threads = model, worker_threads
        self.extra_env = env or {}
        self.processes: list[subprocess.Popen[bytes]] = []
        self.nginx: subprocess.Popen[bytes] | None = None
        self.api_ports: list[int] = []
        self.worker_ports: list[int] = []
        self.url = ""
        self.redis_url = ""

    def _spawn(self, args: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        process = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def _env(self, redis_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}  # one registry each
        env.update({"REDIS_URL": redis_url, "RSD_REDIS_PREFIX": "loadtest", "OMP_WAIT_POLICY": "PASSIVE"})
        if self.model:
            env["RSD_MODEL"] = str(Path(self.model).resolve())
        env.update(self.extra_env)
        return env

    def start(self) -> LocalStack:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        redis_port = free_port()
        self._spawn(redis_server_command(redis_port, self.workdir), dict(os.environ), "redis")
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        env = self._env(self.redis_url)
        workers = []
        for i in range(self.n_workers):
            port = free_port()
            self.worker_ports.append(port)
            worker_env = {**env, "RSD_TORCH_THREADS": str(self.worker_threads), "RSD_INSTANCE": f"worker-{i}"}
            command = [sys.executable, "-m", "service", "worker", "--metrics-port", str(port)]
            workers.append(self._spawn(command, worker_env, f"worker-{i}"))
        apis = []
        for i in range(self.n_apis):
            port = free_port()
            self.api_ports.append(port)
            apis.append(self._spawn([sys.executable, "-m", "service", "serve", "--port", str(port)], env, f"api-{i}"))
        for port, api in zip(self.api_ports, apis, strict=True):
            wait_http(f"http://127.0.0.1:{port}/healthz", 120, api)
        deadline = time.monotonic() + 300
        ready_url = f"http://127.0.0.1:{self.api_ports[0]}/readyz"
        while httpx.get(ready_url, timeout=5).json().get("workers") != self.n_workers:  # every model warmed
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise RuntimeError(f"not all {self.n_workers} workers became ready; logs in {self.workdir / 'logs'}")
            time.sleep(0.5)
        if self.use_nginx:
            listen = free_port()
            prefix = self.workdir / "nginx"
            command = nginx_command(prefix, render_nginx(prefix, listen, self.api_ports))
            self.nginx = self._spawn(command, env, "nginx")
            self.url = f"http://127.0.0.1:{listen}"
            wait_http(f"{self.url}/readyz", 30, self.nginx)
        else:
            self.url = f"http://127.0.0.1:{self.api_ports[0]}"
        return self

    @property
    def metrics_urls(self) -> list[str]:
        """Each process's own exposition: the APIs directly (not through nginx) and each worker."""
        return [f"http://127.0.0.1:{p}/metrics" for p in self.api_ports + self.worker_ports]

    def describe(self) -> list[str]:
        model = self.model or os.environ.get("RSD_MODEL") or "bundled models/rsd-tiny"
        settings = ", ".join(f"{k}={v}" for k, v in sorted(self.extra_env.items())) or "defaults"
        front = "nginx (deploy/nginx/nginx.conf)" if self.use_nginx else "no load balancer"
        return [
            f"Local stack on loopback: {front} -> {self.n_apis} API replicas -> Redis Streams -> "
            f"{self.n_workers} workers ({self.worker_threads} torch thread(s) each); model {model}; "
            f"settings {settings}.",
            "The load generator runs on the same host.",
        ]

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.terminate()  # a quick shutdown in which nginx reaps its own worker processes
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.nginx.wait(timeout=5)
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.processes.clear()

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
