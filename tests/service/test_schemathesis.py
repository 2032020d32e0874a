"""Schemathesis against the OpenAPI schema of a live embedded server (fake model): no server error.

All of schemathesis's checks run except two that do not fit this API: `positive_data_acceptance` (a
schema-valid *binary* body is not necessarily a decodable image: 400 is the right answer) and its own
`not_a_server_error`, replaced by `no_server_fault` below because 504 (deadline passed, e.g. with
`deadline_ms=1`) and 503 (not ready, queue down) are documented answers of this contract, not faults.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error, positive_data_acceptance  # noqa: E402

from service.api import create_app  # noqa: E402
from service.embedded import WorkerThread  # noqa: E402
from service.queue.inprocess import InProcessQueue  # noqa: E402
from service.settings import ServiceSettings  # noqa: E402
from tests.service.conftest import ThreadedServer  # noqa: E402
from tests.service.fakes import FakeUpscaler, write_fake_model  # noqa: E402

pytestmark = pytest.mark.timeout(300)

CHECKED: list[int] = []
DOCUMENTED_5XX = {503: {"not_ready", "queue_unavailable"}, 504: {"deadline_exceeded"}}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    model = write_fake_model(tmp_path_factory.mktemp("model"))
    settings = ServiceSettings(model_dir=model, redis_url=None, max_input_pixels=250_000, max_output_pixels=4_000_000)
    queue = InProcessQueue(settings.max_backlog_tiles, settings.assumed_tiles_per_s)
    upscaler = FakeUpscaler()
    app = create_app(settings, queue, WorkerThread(lambda: upscaler, queue, settings))
    with ThreadedServer(app) as server:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@schemathesis.check
def no_server_fault(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx except the contract's 503/504, and those only with their JSON error codes."""
    CHECKED.append(response.status_code)
    status = response.status_code
    if status < 500:
        return None
    if status in DOCUMENTED_5XX:
        code = response.json()["error"]["code"]
        if code in DOCUMENTED_5XX[status]:
            return None
    raise AssertionError(f"server error {status}: {response.text[:300]}")


def _validate(case: Any) -> None:
    case.call_and_validate(
        additional_checks=[no_server_fault], excluded_checks=[not_a_server_error, positive_data_acceptance]
    )


def test_api_schema_has_no_server_errors(api_schema: Any) -> None:
    # (schemathesis's pytest plugin does not run under pytest 9: drive each operation's strategy here)
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/upscale", "/jobs", "/jobs/{job_id}/result", "/readyz", "/metrics"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            _validate(case)

        check()
        if operation.path == "/upscale":
            # Random `model=`/`tile=` values are mostly refused (422) before the body is read; one case
            # whose only fault is its bytes makes sure the checks also ran on the decoder's answer.
            _validate(operation.Case(body=b"not an image", media_type="image/png"))
    assert len(CHECKED) >= 5 * len(operations)  # the checks did run on real answers
    assert {200, 400, 422} <= set(CHECKED)
