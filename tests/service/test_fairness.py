"""Fair scheduling (serving.md "Worker loop", issue 13's first bar): a small job sent while a large one
runs finishes within 3x its alone latency + 1 s, and the large one within 1.15x its alone time + 1 s.

Embedded, and Redis with one and with two worker processes, on a fake device that sleeps 40 ms a tile,
4 tiles a batch: a 384x384 upload (144 tiles of 32, no overlap: ~6 s alone), then 3 s later a 32x32 one
(1 tile). Each latency is first measured with the job alone on the same server. The same test with the
first-come first-served policy the fair one replaced (fakes.fcfs_next_batch, swapped in without touching
the service) must fail: its small job waits for the large one's last tile (`-m slow` runs it).

    .venv/bin/pytest -q tests/service/test_fairness.py -s [-m slow]

prints a table of the latencies (s) at the end of the module.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rsd.spec import write_spec
from service import worker
from service.queue.keys import RedisKeys
from tests.service.conftest import (
    Processes,
    RedisServer,
    Stack,
    ThreadedServer,
    embedded_client,
    wait_ready,
)
from tests.service.fakes import FAKE_SPEC, FakeUpscaler, fcfs_next_batch, png_bytes

pytestmark = pytest.mark.timeout(120)

SECONDS_PER_TILE = 0.04
MAX_BATCH_TILES = 4
TILE = 32
LARGE = png_bytes(384, 384, seed=1)  # 12 x 12 tiles
SMALL = png_bytes(32, 32, seed=2)  # 1 tile
SMALL_AFTER_S = 3.0
#: a request that takes this long counts as never answered (a regression fails, it does not hang)
GIVE_UP_S = 40.0
SETUPS = ("embedded", "redis-1-worker", "redis-2-workers")


def small_bound(alone: float) -> float:
    return 3 * alone + 1.0


def large_bound(alone: float) -> float:
    return 1.15 * alone + 1.0


@dataclass(frozen=True)
class Latencies:
    small_alone: float
    large_alone: float
    small_together: float
    large_together: float
    #: the small job ran on the worker computing the large one (always, with one worker)
    same_worker: bool

    @property
    def small_ok(self) -> bool:
        return self.small_together <= small_bound(self.small_alone)

    @property
    def large_ok(self) -> bool:
        return self.large_together <= large_bound(self.large_alone)

    def row(self, setup: str, policy: str) -> str:
        verdict = "pass" if self.small_ok and self.large_ok else "FAIL"
        return (
            f"{setup:<16} {policy:<11} {self.small_alone:>6.2f} -> {self.small_together:>5.2f} "
            f"(<= {small_bound(self.small_alone):5.2f})   {self.large_alone:>6.2f} -> {self.large_together:>5.2f} "
            f"(<= {large_bound(self.large_alone):5.2f})   {'same' if self.same_worker else 'other':<6} {verdict}"
        )


HEADER = (
    f"{'setup':<16} {'policy':<11} small alone -> together (bound)   large alone -> together (bound)   worker verdict"
)


@pytest.fixture(scope="module")
def table() -> Iterator[list[str]]:
    rows: list[str] = []
    yield rows
    print("\n\nlatency (s), fake device 40 ms/tile, 4 tiles a batch\n" + "\n".join([HEADER, *rows]))


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """The fake model's spec without tile overlap: the 384x384 upload is 144 tiles of 32."""
    directory = tmp_path / "fake-model"
    directory.mkdir()
    write_spec(directory, FAKE_SPEC.model_copy(update={"default_overlap": 0}))
    return directory


def post(base: str, image: bytes, seed: int) -> tuple[float, str]:
    """Seconds from sending POST /upscale to its whole answer (inf if none within GIVE_UP_S), the job id."""
    files = {"image": ("x.png", image, "image/png")}
    started = time.perf_counter()
    try:
        response = httpx.post(f"{base}/upscale", files=files, params={"seed": seed, "tile": TILE}, timeout=GIVE_UP_S)
    except httpx.TimeoutException:
        return math.inf, ""
    assert response.status_code == 200, response.text[:300]
    return time.perf_counter() - started, response.headers["x-job-id"]


def measure(base: str, worker_of: Callable[[str], str] = lambda job_id: "") -> Latencies:
    """Each job alone (the small one: median of 3, after a warm-up request), then the two together.

    worker_of: the name of the worker that ran a job (one worker: any constant)."""
    post(base, SMALL, seed=0)
    small_alone = statistics.median(post(base, SMALL, seed)[0] for seed in (1, 2, 3))
    large_alone, _ = post(base, LARGE, seed=4)
    with ThreadPoolExecutor(1) as pool:
        large = pool.submit(post, base, LARGE, 5)
        time.sleep(SMALL_AFTER_S)
        small_together, small_id = post(base, SMALL, seed=6)
        large_together, large_id = large.result()
    same_worker = worker_of(small_id) == worker_of(large_id)
    return Latencies(small_alone, large_alone, small_together, large_together, same_worker)


@contextmanager
def embedded(model_dir: Path) -> Iterator[str]:
    device = FakeUpscaler(delay_s_per_tile=SECONDS_PER_TILE)
    client, _, _ = embedded_client(model_dir, device, max_batch_tiles=MAX_BATCH_TILES)
    with ThreadedServer(client.app) as server:
        yield server.url


def redis_stack(stack: Stack, workers: int, policy: str) -> str:
    """Start `workers` fake worker processes and an API replica: its URL once every worker is ready."""
    for index in range(workers):
        stack.start_worker(f"worker-{index}", "--delay", str(SECONDS_PER_TILE), "--policy", policy)
    base = stack.start_api()
    wait_ready(base)
    deadline = time.monotonic() + 60
    while httpx.get(f"{base}/readyz", timeout=10).json()["workers"] < workers:
        assert time.monotonic() < deadline, f"fewer than {workers} workers ready after 60 s"
        time.sleep(0.1)
    return base


def run_setup(setup: str, policy: str, model_dir: Path, request: pytest.FixtureRequest) -> Latencies:
    if setup == "embedded":
        with embedded(model_dir) as base:
            return measure(base)
    server: RedisServer = request.getfixturevalue("redis_server")
    processes: Processes = request.getfixturevalue("processes")
    stack = Stack(server, processes, model_dir, RSD_MAX_BATCH_TILES=MAX_BATCH_TILES)
    base = redis_stack(stack, 2 if setup == "redis-2-workers" else 1, policy)
    client, keys = server.client(), RedisKeys(stack.env["RSD_REDIS_PREFIX"])
    return measure(base, lambda job_id: str(client.hget(keys.job(job_id), "worker")))


@pytest.mark.parametrize("setup", SETUPS)
def test_small_job_is_not_held_behind_a_large_one(
    setup: str, model_dir: Path, table: list[str], request: pytest.FixtureRequest
) -> None:
    latencies = run_setup(setup, "round-robin", model_dir, request)
    table.append(latencies.row(setup, "round-robin"))
    print("\n" + HEADER + "\n" + table[-1])
    assert latencies.small_ok and latencies.large_ok, f"{HEADER}\n{table[-1]}"


@pytest.mark.slow
@pytest.mark.parametrize("setup", SETUPS)
def test_first_come_first_served_fails_the_same_bound(
    setup: str, model_dir: Path, table: list[str], request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "next_batch", fcfs_next_batch)  # the embedded worker's; processes: --policy
    latencies = run_setup(setup, "fcfs", model_dir, request)
    table.append(latencies.row(setup, "fcfs"))
    print("\n" + HEADER + "\n" + table[-1])
    if latencies.same_worker:  # on the idle one of two workers the small job waits for nobody
        assert not latencies.small_ok, f"{HEADER}\n{table[-1]}"
