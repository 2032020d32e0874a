"""The page at / in headless Chromium (Debian's /usr/bin/chromium driven by Playwright): upload an
image, the result appears at 4x size, the download is the x4 image, errors are shown."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from service.api import create_app
from service.embedded import WorkerThread, WorkerThreads
from service.queue.inprocess import InProcessQueue
from service.settings import ServiceSettings
from tests.service.conftest import ThreadedServer, wait_ready
from tests.service.fakes import FakeUpscaler, png_bytes, write_fake_model

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


def _embedded_app(model_dir: Path):  # type: ignore[no-untyped-def]
    settings = ServiceSettings(model_dir=model_dir, redis_url=None)
    queue = InProcessQueue(settings.max_backlog_tiles, settings.assumed_tiles_per_s)
    upscaler = FakeUpscaler()
    return create_app(settings, queue, WorkerThread(lambda: upscaler, queue, settings))


def wait_for_sizes(page: Any) -> None:
    """The page writes the sizes once the comparison's second copy of the result has loaded too
    (app.js showResult), a moment after #result itself: wait for them, do not race them."""
    page.wait_for_function("document.getElementById('after-size').textContent !== ''", timeout=30_000)


def test_page_upscales_an_upload_and_offers_the_download(fake_model: Path, tmp_path: Path) -> None:
    source = tmp_path / "photo.png"
    source.write_bytes(png_bytes(30, 20, seed=8))
    not_image = tmp_path / "notes.png"
    not_image.write_bytes(b"this is text, not a picture")
    with ThreadedServer(_embedded_app(fake_model)) as server, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(accept_downloads=True)
            page.goto(server.url + "/")
            assert "rsd-serve" in page.title()
            page.set_input_files("#file", str(source))
            page.wait_for_function("document.getElementById('result').naturalWidth > 0", timeout=30_000)
            size = page.evaluate(
                "[document.getElementById('result').naturalWidth, document.getElementById('result').naturalHeight]"
            )
            assert size == [120, 80]
            wait_for_sizes(page)
            assert page.text_content("#after-size") == "120×80"
            assert page.text_content("#before-size") == "30×20"
            assert "seed" in (page.text_content("#details") or "")
            with page.expect_download() as download_info:
                page.click("#download")
            download = download_info.value
            assert download.suggested_filename == "photo_x4.png"
            with Image.open(io.BytesIO(Path(download.path()).read_bytes())) as result:
                assert result.size == (120, 80)
            page.set_input_files("#file", str(not_image))
            page.wait_for_selector("#error:not([hidden])", timeout=30_000)
            assert "400" in (page.text_content("#error") or "")
        finally:
            browser.close()


def test_page_shows_a_progress_bar_that_advances_for_a_large_image(fake_model: Path, tmp_path: Path) -> None:
    source = tmp_path / "large.png"
    source.write_bytes(png_bytes(160, 160, seed=4))  # above the page's /jobs threshold: 49 tiles of 32
    settings = ServiceSettings(model_dir=fake_model, redis_url=None, max_batch_tiles=2)
    queue = InProcessQueue(settings.max_backlog_tiles, settings.assumed_tiles_per_s)
    upscaler = FakeUpscaler(delay_s_per_tile=0.03)
    app = create_app(settings, queue, WorkerThread(lambda: upscaler, queue, settings))
    with ThreadedServer(app) as server, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            # record every value the bar takes, from inside the page (no polling gaps)
            page.evaluate(
                """() => { window.seen = []; const bar = document.getElementById('progress');
                const value = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, 'value');
                Object.defineProperty(bar, 'value', {
                  set(v) { value.set.call(this, v); window.seen.push([Number(v), this.max]); },
                  get() { return value.get.call(this); } }); }"""
            )
            page.set_input_files("#file", str(source))
            page.wait_for_function("document.getElementById('result').naturalWidth > 0", timeout=60_000)
            seen = page.evaluate("window.seen")
            visible = page.is_visible("#progress")
        finally:
            browser.close()
    values = [value for value, _ in seen]
    total = seen[-1][1]
    assert visible and total > 10 and values == sorted(values) and values[-1] == total
    assert len({v for v in values if 0 < v < total}) >= 2  # it advanced in between, not only at the end


def test_page_picks_the_model_and_the_output_scale(tmp_path: Path) -> None:
    one, two = write_fake_model(tmp_path / "one"), write_fake_model(tmp_path / "two")
    settings = ServiceSettings(models=f"one={one},two={two}", redis_url=None)  # type: ignore[call-arg]
    queue = InProcessQueue(settings.max_backlog_tiles, settings.assumed_tiles_per_s, models=("one", "two"))
    upscalers = {"one": FakeUpscaler(), "two": FakeUpscaler()}
    threads = [
        WorkerThread(lambda up=up: up, queue.for_model(name), settings, name)  # type: ignore[misc]
        for name, up in upscalers.items()
    ]
    source = tmp_path / "photo.png"
    source.write_bytes(png_bytes(30, 20, seed=8))
    app = create_app(settings, queue, WorkerThreads(threads))
    with ThreadedServer(app) as server, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            wait_ready(server.url)  # both models warmed up: every later batch is the page's
            page = browser.new_page(accept_downloads=True)
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').options.length === 2", timeout=30_000)
            assert page.eval_on_selector("#model", "s => [...s.options].map(o => o.value)") == ["one", "two"]
            assert page.eval_on_selector("#model", "s => s.value") == "one"  # the server's default
            calls = {name: len(up.batch_sizes) for name, up in upscalers.items()}
            page.select_option("#model", "two")
            page.fill("#outscale", "2.5")
            page.set_input_files("#file", str(source))
            page.wait_for_function("document.getElementById('result').naturalWidth > 0", timeout=30_000)
            wait_for_sizes(page)
            assert page.text_content("#after-size") == "75×50"  # floor(30 x 2.5) x floor(20 x 2.5)
            with page.expect_download() as download_info:
                page.click("#download")
            assert download_info.value.suggested_filename == "photo_x2.5.png"
        finally:
            browser.close()
    assert len(upscalers["two"].batch_sizes) > calls["two"] and len(upscalers["one"].batch_sizes) == calls["one"]
