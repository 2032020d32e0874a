"""The Dockerfile, its build context and the container entry point (no Docker engine needed).

The image is not built here; what can be checked without building it is: both targets exist and are
finished the same way (non-root user, HEALTHCHECK, entry point, the bundled model and RSD_MODEL), torch is
pinned like the Makefile pins it, every copied path exists and survives .dockerignore, and the entry
point's two roles start the real `rsd serve` / `rsd worker` and pass the image's own HEALTHCHECK.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.conftest import REPO, Stage, dockerignore_rules, ignored, load_yaml, parse_dockerfile, stage_closure
from tests.service.conftest import Processes, RedisServer, free_port, wait_ready

pytestmark = pytest.mark.timeout(120)

DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"
FINAL_TARGETS = ("cpu", "gpu")


def _stages() -> dict[str, Stage]:
    return {stage.name: stage for stage in parse_dockerfile(DOCKERFILE) if stage.name}


def _copy_sources(copy: str) -> tuple[list[str], str]:
    """(sources, destination) of a COPY instruction's shell or JSON form, flags dropped."""
    if copy.lstrip().startswith("["):
        words = json.loads(copy)
    else:
        words = [word for word in copy.split() if not word.startswith("--")]
    return words[:-1], words[-1]


def _healthcheck_command(stage: Stage) -> list[str]:
    healthcheck = stage.last("HEALTHCHECK")
    assert healthcheck is not None, f"stage {stage.name} has no HEALTHCHECK"
    command = healthcheck.split(" CMD ", 1)[1].strip()
    assert command.startswith("["), "HEALTHCHECK CMD should be the exec (JSON) form: no shell in the image needed"
    return list(json.loads(command))


def test_both_targets_finish_as_a_non_root_service_with_healthcheck_and_bundled_model() -> None:
    stages = _stages()
    assert set(FINAL_TARGETS) <= set(stages), f"Dockerfile targets: {sorted(stages)}"
    assert stages["cpu"].base.startswith("python:3.11-slim"), stages["cpu"].base
    assert re.match(r"(nvidia/cuda|nvcr\.io/nvidia/(tensorrt|cuda))", stages["gpu"].base), stages["gpu"].base
    assert parse_dockerfile(DOCKERFILE)[-1].name == "cpu", "`docker build .` (no --target) should give the CPU image"
    for target in FINAL_TARGETS:
        stage = stages[target]
        user = stage.last("USER")
        assert user is not None and user.split(":")[0] not in ("root", "0"), f"{target}: runs as {user!r}"
        assert "/healthz" in " ".join(_healthcheck_command(stage)), f"{target}: HEALTHCHECK does not hit /healthz"
        assert stage.last("ENTRYPOINT") is not None and stage.last("CMD") == '["api"]', target
        env = " ".join(stage.all("ENV"))
        model_dest = next(
            (_copy_sources(copy)[1] for copy in stage.all("COPY") if _copy_sources(copy)[0] == ["models/rsd-tiny"]),
            None,
        )
        assert model_dest is not None, f"{target}: models/rsd-tiny is not copied into the image"
        assert f"RSD_MODEL={model_dest}" in env, f"{target}: RSD_MODEL does not point at the bundled {model_dest}"
        assert {"8000", "9101"} <= set(" ".join(stage.all("EXPOSE")).split()), f"{target}: EXPOSE 8000 9101"


def test_torch_is_pinned_like_the_makefile_and_the_cpu_image_uses_the_cpu_wheel() -> None:
    pin = re.search(r"^TORCH_PIN\s*:?=\s*(\S+)", (REPO / "Makefile").read_text(), flags=re.M)
    assert pin is not None and pin.group(1) == "torch==2.13.0"
    stages = parse_dockerfile(DOCKERFILE)
    for target in FINAL_TARGETS:
        runs = [run for stage in stage_closure(stages, target) for run in stage.all("RUN")]
        installs = [run for run in runs if re.search(r"\bpip install\b", run)]
        torch_requirements = [req for run in installs for req in re.findall(r"(?<![\w/.-])torch\b\S*", run)]
        assert torch_requirements, f"{target}: torch is never installed"
        assert set(torch_requirements) == {pin.group(1)}, f"{target}: unpinned or other torch: {torch_requirements}"
        project = [run for run in installs if re.search(r"""["']?\.\[""", run)]
        assert project, f"{target}: the project itself is not installed"
        if target == "cpu":
            index = re.search(r"^ARG TORCH_INDEX=(\S+)", DOCKERFILE.read_text(), flags=re.M)
            assert index is not None and index.group(1) == "https://download.pytorch.org/whl/cpu"
            assert any("--index-url $TORCH_INDEX" in run and "torch==" in run for run in installs)
            assert any(".[serve]" in run for run in project)
        else:
            assert any(".[serve,tensorrt]" in run and "onnxruntime-gpu" in run for run in project), project


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    rules = dockerignore_rules(REPO / ".dockerignore")
    stages = parse_dockerfile(DOCKERFILE)
    copied = [
        source
        for stage in stages
        for copy in stage.all("COPY")
        if "--from=" not in copy
        for source in _copy_sources(copy)[0]
    ]
    assert "models/rsd-tiny" in copied and "deploy/docker/entrypoint.sh" in copied
    for source in copied:
        path = REPO / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = (
            [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        )
        assert files, f"COPY {source}: empty"
        left_out = [str(p.relative_to(REPO)) for p in files if ignored(str(p.relative_to(REPO)), rules)]
        assert not left_out, f"COPY {source}: .dockerignore leaves out {left_out[:5]}"
    assert os.access(ENTRYPOINT, os.X_OK), "deploy/docker/entrypoint.sh is not executable"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    rules = dockerignore_rules(REPO / ".dockerignore")
    for path in (".venv/bin/python", ".git/HEAD", "runs/tiny/checkpoints/step_1.pt", "bench/results/a.json",
                 "tests/service/test_worker.py", "rsd/__pycache__/x.cpython-311.pyc", "rsd_serve.egg-info/PKG-INFO",
                 ".mypy_cache/x", "models/rsd-official/weights.safetensors"):  # fmt: skip
        assert ignored(path, rules), f"{path} would be sent to the Docker build"
    for path in ("models/rsd-tiny/spec.json", "models/rsd-tiny/weights.safetensors", "pyproject.toml", "README.md",
                 "service/web/index.html", "rsd/__init__.py"):  # fmt: skip
        assert not ignored(path, rules), f"{path} is left out of the Docker build"


def _entrypoint(processes: Processes, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """deploy/docker/entrypoint.sh as the container runs it, with this venv's `rsd` on PATH."""
    log = open(processes.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    process = subprocess.Popen(
        ["sh", str(ENTRYPOINT), *args],
        cwd=REPO,
        env={**os.environ, "PATH": path, "OMP_WAIT_POLICY": "PASSIVE", "RSD_TORCH_THREADS": "1", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    processes.running.append(process)  # killed (with its group) when the test ends
    return process


def _healthcheck(stage: Stage, url: str) -> int:
    command = _healthcheck_command(stage)
    assert command[0] == "python"
    env = {**os.environ, "RSD_HEALTHCHECK_URL": url}
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode


def _wait_metrics(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the worker exited with {process.returncode}"
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return response.text
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s")


def test_entrypoint_roles_start_the_real_commands_and_pass_the_image_healthcheck(
    redis_server: RedisServer, processes: Processes, fake_model: Path
) -> None:
    stage = _stages()["cpu"]
    compose = load_yaml(REPO / "docker-compose.yml")
    env = {"REDIS_URL": redis_server.url, "RSD_REDIS_PREFIX": "deploytest"}

    # api: `rsd serve` as an API replica (REDIS_URL set: no model loaded); the later --host/--port win
    port = free_port()
    api = _entrypoint(
        processes, "api", ["api", "--host", "127.0.0.1", "--port", str(port)], {**env, "RSD_MODEL": str(fake_model)}
    )
    wait_ready(f"http://127.0.0.1:{port}", path="/healthz", process=api)
    assert _healthcheck(stage, f"http://127.0.0.1:{port}/healthz") == 0
    assert _healthcheck(stage, f"http://127.0.0.1:{free_port()}/healthz") != 0, "the HEALTHCHECK cannot fail"

    # worker: `rsd worker --metrics-port` with the bundled model; its metrics server is up before the model
    metrics_port = free_port()
    worker = _entrypoint(processes, "worker", ["worker", "--metrics-port", str(metrics_port)], env)
    text = _wait_metrics(f"http://127.0.0.1:{metrics_port}/metrics", worker)
    families = {family.name for family in text_string_to_metric_families(text)}
    worker_side = {"rsd_queue_wait_seconds", "rsd_batch_compute_seconds", "rsd_batch_size_tiles", "rsd_tiles",
                   "rsd_job_redeliveries", "rsd_dead_jobs"}  # fmt: skip
    assert worker_side <= families, f"missing on the worker's /metrics: {worker_side - families}"
    # the worker's healthcheck URL as compose sets it, on this test's port
    compose_url = compose["services"]["worker"]["environment"]["RSD_HEALTHCHECK_URL"]
    assert compose_url == "http://127.0.0.1:9101/metrics"
    assert _healthcheck(stage, compose_url.replace("9101", str(metrics_port))) == 0
    assert api.poll() is None and worker.poll() is None


def test_entrypoint_defaults_match_the_ports_deploy_uses() -> None:
    script = ENTRYPOINT.read_text()
    assert re.search(r"rsd serve --host 0\.0\.0\.0 --port 8000\b", script)
    assert re.search(r"rsd worker --metrics-port 9101\b", script)
    # an unknown role runs as a command: `docker run IMAGE rsd upscale ...`
    result = subprocess.run(["sh", str(ENTRYPOINT), "echo", "passed", "through"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "passed through"
