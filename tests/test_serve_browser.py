"""The page in a real browser: Chromium (Debian's /usr/bin/chromium) driven by Playwright against a live server.

Upload a CamVid image, wait for the overlay and the legend, download the label PNG and compare it with the
one ``fcnseg predict`` writes for the same image and checkpoint; read the class under the pointer; show a
server error as text; segment a second image without reloading. A screenshot goes to the test's tmp_path.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image

from fcnseg.checkpoint import load_checkpoint
from fcnseg.config import PredictConfig
from fcnseg.predict import run_predict
from fcnseg.serve.app import create_app
from fcnseg.serve.config import ServeConfig
from fcnseg.serve.probe import wait_ready
from test_serve import CAMVID_CKPT, free_port

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def server_url():
    """uvicorn in a thread on a free local port, serving the committed CamVid checkpoint."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ServeConfig(checkpoint=str(CAMVID_CKPT), test_delay_ms=0)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout=60)
    yield url
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        why = f"{CHROMIUM} not found: install Debian's chromium (`make browser`, or `apt-get install chromium` as root)"
        if os.environ.get("FCNSEG_REQUIRE_BROWSER"):  # .ci/run installs it: there a missing browser is a failure
            pytest.fail(why)
        pytest.skip(why)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
    sync_playwright = sync_api.sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        yield b
        b.close()


def test_page_segments_images(server_url, browser, data_root, tmp_path):
    images = sorted((data_root / "camvid" / "val").glob("*.png"))[:2]
    run_predict(PredictConfig(str(CAMVID_CKPT), [str(p) for p in images], str(tmp_path / "predict"), overlay=False,
                              workers=0), progress=False)
    page = browser.new_page(viewport={"width": 1200, "height": 760}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server_url)
    page.wait_for_function("document.getElementById('model').textContent.includes('fcn8s_efficientnet_lite0')")

    for n, image in enumerate(images, start=1):  # several images in a row, no reload
        page.set_input_files("#file", str(image))
        page.wait_for_function(f"document.querySelectorAll('#history li').length === {n}")
        page.wait_for_selector("#legend li[data-cls]")
        assert page.get_attribute("#canvas", "width") == "480" and page.get_attribute("#canvas", "height") == "360"
        legend = page.locator("#legend li[data-cls]").all_inner_texts()
        names = [row.split("\n")[0].strip() for row in legend]
        assert "Road" in names and "Sky" in names and len(names) >= 4, legend
        shares = [float(row.rsplit("\n", 1)[-1].strip().rstrip("%")) for row in legend]
        assert sum(shares) == pytest.approx(100, abs=0.5) and shares == sorted(shares, reverse=True)

        with page.expect_download() as info:
            page.click("#download-labels")
        saved = tmp_path / f"download_{n}.png"
        info.value.save_as(saved)
        assert info.value.suggested_filename == f"{image.stem}_labels.png"
        got, want = Image.open(saved), Image.open(tmp_path / "predict" / image.name)
        assert got.mode == want.mode == "P" and got.getpalette() == want.getpalette()
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    with page.expect_download() as info:
        page.click("#download-overlay")
    info.value.save_as(tmp_path / "overlay.png")
    assert Image.open(tmp_path / "overlay.png").size == (480, 360)

    # The class under the pointer is the one in the label map at that pixel (the canvas shows 480x360 at 1:1
    # or scaled; the page maps the pointer back to image pixels).
    want = np.asarray(Image.open(tmp_path / "predict" / images[-1].name))
    classes = load_checkpoint(CAMVID_CKPT).classes
    box = page.locator("#canvas").bounding_box()
    for x, y in [(240, 300), (100, 40), (400, 200)]:
        page.mouse.move(box["x"] + (x + 0.5) * box["width"] / 480, box["y"] + (y + 0.5) * box["height"] / 360)
        assert page.inner_text("#hover") == f"Under the pointer: {classes[want[y, x]]} at ({x}, {y})."
        assert page.inner_text("#tip") == classes[want[y, x]]
    page.fill("#opacity", "35")
    page.dispatch_event("#opacity", "input")
    assert page.inner_text("#opacity-value") == "35%"
    page.screenshot(path=str(tmp_path / "page.png"))

    # A server error is shown as text: a file that is not an image.
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image at all")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    assert "422" in page.inner_text("#error") and "not an image file" in page.inner_text("#error")
    page.screenshot(path=str(tmp_path / "page_error.png"))
    assert not errors, errors
