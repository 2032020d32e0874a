"""Fixtures for the serving tests: a private redis-server, subprocess helpers, an embedded app.

Redis: a real server on a free port in a temp dir (no persistence, noeviction), never 6379, killed in
the finaliser; `stop()`/`start()` let a test take it down and bring it back on the same port.
Subprocesses use this interpreter (sys.executable) and are killed in finalisers, always.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from loadtests.local_stack import REDIS_SERVER, free_port, redis_server_command, wait_http
from service.api import create_app
from service.embedded import WorkerThread
from service.queue.inprocess import InProcessQueue
from service.queue.keys import RedisKeys
from service.settings import ServiceSettings
from tests.service.fakes import FakeUpscaler, write_fake_model

REPO_ROOT = Path(__file__).resolve().parents[2]


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.port != 6379
        self.process = subprocess.Popen(
            redis_server_command(self.port, self.directory), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        for _ in range(100):
            try:
                if client.ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)


def worker_settings(redis_url: str, **overrides: object) -> ServiceSettings:
    """Settings of a worker-side Redis client in a test: short claim blocks."""
    fields: dict[str, object] = {"redis_url": redis_url, "claim_block_s": 0.1, **overrides}
    return ServiceSettings(**fields)  # type: ignore[arg-type]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not os.path.exists(REDIS_SERVER):
        pytest.skip(f"redis-server not found at {REDIS_SERVER}")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Processes:
    """Subprocesses started by one test; every one is killed when the test ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        # A session of its own, so that kill_all reaches uvicorn's worker processes too.
        process = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def kill_all(self) -> None:
        for process in self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the whole group: uvicorn workers included
        for process in self.running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    group = Processes(tmp_path)
    try:
        yield group
    finally:
        group.kill_all()


def wait_ready(
    base_url: str, timeout_s: float = 60.0, path: str = "/readyz", process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll until `path` answers 200 (bounded); fail at once if `process` exits meanwhile."""
    wait_http(base_url + path, timeout_s, process)


@pytest.fixture
def fake_model(tmp_path: Path) -> Path:
    return write_fake_model(tmp_path / "fake-model")


def embedded_client(
    model_dir: Path, upscaler: FakeUpscaler | None = None, **overrides: object
) -> tuple[TestClient, InProcessQueue, FakeUpscaler]:
    """An embedded app (in-process queue + worker thread running `upscaler`) and its TestClient.

    Use as a context manager (`with client:`) so that the lifespan starts and stops the worker.
    """
    settings = ServiceSettings(model_dir=model_dir, redis_url=None, **overrides)  # type: ignore[arg-type]
    upscaler = upscaler or FakeUpscaler()
    queue = InProcessQueue(
        settings.max_backlog_tiles,
        settings.assumed_tiles_per_s,
        result_ttl_s=settings.result_ttl_s,
        heartbeat_timeout_s=30,
        result_store_bytes=settings.result_store_bytes,
        sweep_interval_s=settings.result_sweep_s,
    )
    worker = WorkerThread(lambda: upscaler, queue, settings)
    return TestClient(create_app(settings, queue, worker), raise_server_exceptions=False), queue, upscaler


def wait_client_ready(client: TestClient, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise TimeoutError("embedded app not ready")


class Stack:
    """API replicas (uvicorn) and fake workers as separate processes around one private Redis."""

    def __init__(self, redis_server: RedisServer, processes: Processes, model_dir: Path, **env: object) -> None:
        self.redis = redis_server
        self.processes = processes
        self.env = {
            "REDIS_URL": redis_server.url,
            "RSD_MODEL": str(model_dir),
            "RSD_REDIS_PREFIX": "test",
            **{key: str(value) for key, value in env.items()},
        }
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        #: the jobs stream of the stack's one model (named after its directory, serving.md "Models")
        self.stream = RedisKeys("test").jobs(model_dir.name)

    def start_api(self, uvicorn_workers: int = 1, **env: object) -> str:
        port = free_port()
        args = ["-m", "uvicorn", "--factory", "service.main:app_from_env", "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(uvicorn_workers), "--log-level", "warning"]  # fmt: skip
        extra = {key: str(value) for key, value in env.items()}
        process = self.processes.spawn(args, {**self.env, "RSD_INSTANCE": f"api-{port}", **extra}, f"api-{port}")
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, path="/healthz", process=process)
        return base

    def start_worker(self, name: str, *args: str, **env: object) -> subprocess.Popen[bytes]:
        extra = {key: str(value) for key, value in env.items()}
        process = self.processes.spawn(
            ["-m", "tests.service.fake_worker", *args], {**self.env, "RSD_INSTANCE": name, **extra}, name
        )
        self.workers[name] = process
        return process

    def pending_of(self, consumer: str) -> int:
        summary = self.redis.client().xpending(self.stream, "workers")
        for entry in summary.get("consumers") or []:
            if entry["name"] in (consumer, consumer.encode()):
                return int(entry["pending"])
        return 0


class ThreadedServer:
    """uvicorn serving an app object on a free port in a background thread (for browser tests)."""

    def __init__(self, app: object) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        wait_ready(self.url, timeout_s=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
