"""Several models in one server (serving.md "Models"; issue 15 bars 2, 4 and 5, service half).

Embedded: one server with every family (converted from the small golden weights in a published layout)
lists them at GET /models, and `?model=` gives that model's bytes, equal to `rsd upscale` for the same
seed; `outscale` gives the final size; an unknown model is a 422 naming the known ones. Redis: a worker
started with one model never claims another's jobs (they wait on their own stream).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from rsd.family import FAMILY_NAMES, get_family
from rsd_cli.main import main as rsd_cli
from service.main import build_app
from service.settings import ServiceSettings
from tests.golden import LAYOUTS, convert_golden_family
from tests.rsd.test_cli import _rgba_png
from tests.service.conftest import Processes, RedisServer, Stack, wait_client_ready, wait_ready
from tests.service.fakes import png_bytes, reference_bytes, write_fake_model

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def families(ref_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family converted from a file in one of the published layouts (one layout per family)."""
    base = tmp_path_factory.mktemp("families")
    layouts = dict(zip(FAMILY_NAMES, LAYOUTS, strict=True))
    return {family: convert_golden_family(ref_dir, family, base / family, layouts[family]) for family in FAMILY_NAMES}


@pytest.fixture(scope="module")
def server(families: dict[str, Path]) -> Iterator[TestClient]:
    table = ",".join(f"{name}={path}" for name, path in families.items())
    settings = ServiceSettings(models=table, redis_url=None)  # type: ignore[call-arg]
    with TestClient(build_app(settings), raise_server_exceptions=False) as client:
        wait_client_ready(client, timeout_s=120)
        yield client


def _upscale(client: TestClient, data: bytes, **params: object) -> httpx.Response:
    return client.post("/upscale", files={"image": ("in.png", data, "image/png")}, params=params)


def test_get_models_lists_every_family_default_first(server: TestClient) -> None:
    models = server.get("/models").json()
    assert [m["name"] for m in models] == list(FAMILY_NAMES)
    assert [m["default"] for m in models] == [True] + [False] * (len(FAMILY_NAMES) - 1)
    for model in models:
        row = get_family(model["family"])
        assert model["name"] == model["family"] and model["steps"] == row.steps and model["scale"] == 4
        assert model["default_tile"] in model["tiles"]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_model_gives_the_cli_bytes(
    server: TestClient, families: dict[str, Path], family: str, tmp_path: Path
) -> None:
    source = _rgba_png(tmp_path / "in.png", 70, 45)
    answer = _upscale(server, source.read_bytes(), model=family, seed=7)
    assert answer.status_code == 200, answer.text
    with Image.open(io.BytesIO(answer.content)) as image:
        assert image.size == (280, 180) and image.mode == "RGBA"
    assert server.get(f"/jobs/{answer.headers['x-job-id']}").json()["model"] == family
    # the CLI in this process: the same torch thread count (the bytes depend on it, architecture.md
    # invariant 2) and the same dtype choice (RSD_DTYPE=auto, `--dtype auto`)
    out = tmp_path / "cli.png"
    assert rsd_cli(["upscale", str(source), "-o", str(out), "--model", str(families[family]), "--seed", "7"]) == 0
    assert answer.content == out.read_bytes()


def test_models_differ_and_the_default_is_the_first(server: TestClient, tmp_path: Path) -> None:
    data = _rgba_png(tmp_path / "in.png", 70, 45).read_bytes()
    choices: list[dict[str, object]] = [{}, {"model": "rsd"}, {"model": "sinsr"}]
    default, rsd, sinsr = (_upscale(server, data, seed=3, **extra).content for extra in choices)
    assert default == rsd != sinsr


def test_unknown_model_is_a_422_naming_the_known_ones(server: TestClient) -> None:
    answer = _upscale(server, png_bytes(16, 16), model="nope")
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "invalid_parameters"
    assert "'nope'" in error["message"] and all(name in error["message"] for name in FAMILY_NAMES)
    assert _upscale(server, png_bytes(16, 16), model="bad name!").status_code == 422  # not even a name


@pytest.mark.parametrize(("outscale", "size"), [(2.5, (175, 112)), (2, (140, 90))])
def test_outscale_gives_the_final_size(
    server: TestClient, tmp_path: Path, outscale: float, size: tuple[int, int]
) -> None:
    data = _rgba_png(tmp_path / "in.png", 70, 45).read_bytes()
    answer = _upscale(server, data, model="sinsr", seed=1, outscale=outscale)
    assert answer.status_code == 200, answer.text
    with Image.open(io.BytesIO(answer.content)) as image:
        assert image.size == size and image.mode == "RGBA"
    # as a form field too
    form = server.post("/upscale", files={"image": ("in.png", data, "image/png")},
                       data={"model": "sinsr", "seed": "1", "outscale": str(outscale)})  # fmt: skip
    assert form.content == answer.content


@pytest.mark.parametrize("outscale", [1, 4.5, 0])
def test_outscale_out_of_range_is_a_422(server: TestClient, outscale: float) -> None:
    answer = _upscale(server, png_bytes(16, 16), outscale=outscale)
    assert answer.status_code == 422 and "outscale" in answer.json()["error"]["message"]


def test_the_output_cap_applies_to_the_final_size(families: dict[str, Path]) -> None:
    # 70x45 -> 280x180 = 50,400 pixels at x4, 175x112 = 19,600 at x2.5
    table = f"sinsr={families['sinsr']}"
    settings = ServiceSettings(models=table, redis_url=None, max_output_pixels=30_000, max_input_pixels=4_000)  # type: ignore[call-arg]
    data = png_bytes(70, 45)
    with TestClient(build_app(settings), raise_server_exceptions=False) as client:
        wait_client_ready(client, timeout_s=60)
        assert _upscale(client, data).status_code == 413
        assert _upscale(client, data, outscale=2.5).status_code == 200


def test_a_redis_worker_claims_only_its_models_jobs(
    redis_server: RedisServer, processes: Processes, tmp_path: Path
) -> None:
    one, two = write_fake_model(tmp_path / "one"), write_fake_model(tmp_path / "two")
    stack = Stack(redis_server, processes, one, RSD_MODELS=f"one={one},two={two}")
    stack.start_worker("w-one", RSD_MODELS=f"one={one}")
    base = stack.start_api()
    data = png_bytes(24, 24, seed=4)
    with httpx.Client(base_url=base, timeout=30) as client:
        deadline = time.monotonic() + 30
        while "two" not in (ready := client.get("/readyz")).json()["reason"] and time.monotonic() < deadline:
            time.sleep(0.1)  # until w-one is warm: then only model two lacks a worker
        assert ready.status_code == 503 and "no worker is ready for model two" in ready.json()["reason"]
        waiting = client.post(
            "/jobs", files={"image": ("x.png", data, "image/png")}, params={"model": "two", "seed": 5}
        )
        served = client.post(
            "/upscale", files={"image": ("x.png", data, "image/png")}, params={"model": "one", "seed": 5}
        )
        assert served.status_code == 200 and served.content == reference_bytes(data, 5)
        time.sleep(1.5)  # several claim rounds of w-one
        job = client.get(waiting.headers["location"]).json()
        assert job["status"] == "queued" and job["model"] == "two"
        redis = stack.redis.client()
        assert redis.xlen("test:jobs:two") == 1 and redis.xpending("test:jobs:two", "workers")["pending"] == 0
        stack.start_worker("w-two", RSD_MODELS=f"two={two}")
        wait_ready(base)  # now every model has a worker
        deadline = time.monotonic() + 30
        while client.get(waiting.headers["location"]).json()["status"] != "done" and time.monotonic() < deadline:
            time.sleep(0.1)
        result = client.get(f"{waiting.headers['location']}/result")
    assert result.status_code == 200 and result.content == reference_bytes(data, 5)
