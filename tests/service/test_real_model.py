"""End to end with the real torch backend on a tiny random-weight artifact (tests.factories).

Embedded mode as `rsd serve` runs it (service.main.build_app: in-process queue + worker thread that
loads the model), and the `python -m service serve` command itself.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import Processes, free_port, wait_client_ready, wait_ready
from tests.service.fakes import png_bytes

pytestmark = pytest.mark.timeout(300)
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.factories import make_tiny_artifact

    return make_tiny_artifact(tmp_path_factory.mktemp("tiny"))


def test_embedded_app_serves_the_model_and_matches_the_direct_pipeline(tiny_model: Path) -> None:
    from fastapi.testclient import TestClient

    from rsd.backends import load_upscaler
    from rsd.imagefile import read_image
    from rsd.pipeline import upscale_array
    from service.main import build_app
    from service.settings import ServiceSettings

    data = png_bytes(40, 24, seed=3)
    with TestClient(build_app(ServiceSettings(model_dir=tiny_model, redis_url=None))) as client:
        wait_client_ready(client, timeout_s=120)
        response = client.post(
            "/upscale", files={"image": ("x.png", data, "image/png")}, params={"seed": 9, "tile": 32}
        )
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(response.content)) as out:
        assert out.size == (160, 96)
    decoded = read_image(data)
    with load_upscaler(tiny_model) as upscaler:
        direct = upscale_array(upscaler, decoded.rgb, 9, tile=32, overlap=min(upscaler.spec.default_overlap, 16))
    served = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    # The worker runs every model call at a fixed batch (rsd.pipeline.run_tiles), so the served image
    # equals the direct pipeline bit for bit, however tiles were grouped.
    assert np.array_equal(served, direct)


def test_serve_command_embedded(tiny_model: Path, processes: Processes) -> None:
    port = free_port()
    server = processes.spawn(
        ["-m", "service", "serve", "--port", str(port), "--model", str(tiny_model)], {"REDIS_URL": ""}, "serve"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout_s=180, process=server)
    except (RuntimeError, TimeoutError) as exc:
        raise AssertionError(f"{exc}\n{processes.log('serve')}") from exc
    response = httpx.post(f"{base}/upscale", files={"image": ("x.png", png_bytes(20, 20), "image/png")}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["x-seed"].isdigit()
    # RSD_DTYPE defaults to auto: the start-up log names the choice, /readyz shows it
    from rsd.precision import resolve_dtype

    here = resolve_dtype("auto")
    assert httpx.get(f"{base}/readyz", timeout=10).json()["dtype"] == here.dtype
    assert here.describe() in processes.log("serve")
    with Image.open(io.BytesIO(response.content)) as out:
        assert out.size == (80, 80)
    page = httpx.get(f"{base}/")
    assert page.status_code == 200 and "rsd-serve" in page.text
