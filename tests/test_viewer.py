"""The web viewer in a real headless Chromium: open a session, draw on two slices with the mouse,
complete, download, and compare with the same draws through the Python API; a screenshot shows the
image is rendered. Needs Debian's ``chromium`` + ``chromium-driver`` and selenium (``.ci/run``
installs them); skipped with the reason otherwise.

``FEWSHOTCX_SCREENSHOTS=DIR`` also copies the screenshots there (docs/img for the docs page).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")

from conftest import missing  # noqa: E402
from servekit import SHAPE, serving, tiny_segmenter, write_image  # noqa: E402

from fewshotcx import ContourSession, load_volume  # noqa: E402
from fewshotcx.client import RemoteSession  # noqa: E402
from fewshotcx.io.grid import AxialSlices  # noqa: E402
from fewshotcx.server import SessionStore  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                                                     "(apt-get install chromium chromium-driver)")


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader", "--window-size=1100,800", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def wait_for(condition, timeout=60.0, what="the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def idle(driver):
    wait_for(lambda: driver.execute_script("return document.body.dataset.pending === '0'"), what="idle")
    error = driver.find_element("id", "status").get_attribute("class")
    assert "error" not in error, driver.find_element("id", "status").text


def go_to_slice(driver, z):
    box = driver.find_element("id", "slice")
    box.clear()
    box.send_keys(str(z), "\n")
    wait_for(lambda: box.get_attribute("value") == str(z), what=f"slice {z}")


def stroke(driver, dx, dy, steps=((4, 0), (0, 4), (-4, 0), (0, -4))):
    """Press the mouse at (dx, dy) pixels from the canvas centre, drag along ``steps``, release."""
    from selenium.webdriver import ActionChains

    canvas = driver.find_element("id", "gl")
    chain = ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).click_and_hold()
    for sx, sy in steps:
        chain = chain.move_by_offset(sx, sy)
    chain.release().perform()


def screenshot(driver, tmp_path, name):
    path = tmp_path / name
    driver.save_screenshot(str(path))
    target = os.environ.get("FEWSHOTCX_SCREENSHOTS")
    if target:
        shutil.copy(path, Path(target) / name)
    return path


def canvas_pixels(driver, path):
    """The canvas' part of a page screenshot as an ``(H, W, 3)`` uint8 array."""
    import matplotlib.image as mpimg

    rect = driver.find_element("id", "gl").rect
    image = (mpimg.imread(str(path))[..., :3] * 255).astype(np.uint8)
    y0, x0 = int(rect["y"]), int(rect["x"])
    return image[y0:y0 + int(rect["height"]), x0:x0 + int(rect["width"])]


def saturated(pixels: np.ndarray) -> float:
    """Fraction of black or white pixels in the middle of a canvas grab (inside the image)."""
    grey = pixels.astype(float).mean(axis=-1)
    h, w = grey.shape
    inside = grey[h // 4: -h // 4, w // 4: -w // 4]
    return float(((inside < 5) | (inside > 250)).mean())


def test_draw_two_slices_in_the_browser_complete_and_download_equals_the_python_api(browser, tmp_path):
    path = write_image(tmp_path)
    with serving(SessionStore(tiny_segmenter())) as url:
        browser.get(url + "/")
        browser.find_element("id", "file").send_keys(str(path))  # upload through the page
        wait_for(lambda: browser.execute_script("return document.body.dataset.ready === '1'"), what="the session")
        idle(browser)
        session_id = browser.execute_script("return window.fxViewer.sid")
        page = screenshot(browser, tmp_path, "contouring_browser_open.png")
        pixels = canvas_pixels(browser, page).astype(float)
        # The scan is rendered: a textured grey image, not a blank canvas.
        assert pixels.std() > 20 and len(np.unique(pixels.mean(axis=-1).round())) > 50

        # Window/level: a narrow window saturates most of the slice to black or white.
        level = browser.find_element("id", "level").get_attribute("value")
        width = browser.find_element("id", "window")
        width.clear()
        width.send_keys("0.05", "\n")
        narrow = saturated(canvas_pixels(browser, screenshot(browser, tmp_path, "narrow.png")))
        assert narrow > 0.6 and narrow > saturated(pixels) + 0.3, f"window 0.05 at level {level} did not saturate"
        # The mouse wheel scrolls through slices.
        from selenium.webdriver import ActionChains
        from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

        before = browser.find_element("id", "slice").get_attribute("value")
        ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(browser.find_element("id", "gl")), 0, 200).perform()
        wait_for(lambda: browser.find_element("id", "slice").get_attribute("value") != before, what="a scroll")

        browser.find_element("id", "tool-brush").click()
        pen = browser.find_element("id", "pen")
        pen.clear()
        pen.send_keys("4", "\n")
        browser.find_element("id", "tool-brush").click()
        for z in (3, 8):
            go_to_slice(browser, z)
            stroke(browser, 0, 0)
            idle(browser)
        assert browser.find_element("id", "drawn").text == "3, 8"
        # A stroke on slice 10, wiped with the eraser (the session forgets the slice), then two undos.
        go_to_slice(browser, 10)
        stroke(browser, 0, 0)
        idle(browser)
        assert browser.find_element("id", "drawn").text == "3, 8, 10"
        browser.find_element("id", "tool-eraser").click()
        pen.clear()
        pen.send_keys("15", "\n")
        stroke(browser, 0, 0)
        idle(browser)
        assert browser.find_element("id", "drawn").text == "3, 8"
        browser.find_element("id", "undo").click()
        idle(browser)
        assert browser.find_element("id", "drawn").text == "3, 8, 10"
        browser.find_element("id", "undo").click()
        idle(browser)
        assert browser.find_element("id", "drawn").text == "3, 8"
        assert browser.execute_script(
            "const s = window.fxViewer, n = s.dims[0] * s.dims[1];"
            "return s.nv.drawBitmap.subarray(10 * n, 11 * n).some(v => v !== 0)") is False
        browser.find_element("id", "complete").click()
        wait_for(lambda: browser.execute_script("return document.body.dataset.completed === '1'"), what="complete")
        browser.find_element("id", "suggest").click()
        idle(browser)
        suggested = browser.find_element("id", "suggestion")
        assert "highlight" in suggested.get_attribute("class") and suggested.text.isdigit()
        go_to_slice(browser, 5)
        screenshot(browser, tmp_path, "contouring_browser_completed.png")
        browser.find_element("id", "download-nifti").click()
        idle(browser)
        downloaded = wait_for(lambda: [p for p in browser.downloads.glob("*.nii.gz")], what="the download")[0]
        time.sleep(0.5)  # let Chromium finish the rename

        remote = RemoteSession.attach(url, session_id)
        assert remote.drawn == [3, 8]
        drawn = {z: remote.drawn_mask(z) for z in (3, 8)}
        assert int(suggested.text) == remote.suggest(1)[0]

    centre = np.array(drawn[3].shape) / 2
    for z, mask in drawn.items():  # a stroke at the canvas centre drew near the image centre
        assert set(np.unique(mask)) == {0, 1} and mask.sum() >= 8
        assert np.abs(np.argwhere(mask).mean(axis=0) - centre).max() < 4
    local = ContourSession(path, tiny_segmenter())
    for z, mask in drawn.items():
        local.draw(z, mask)
    expected = local.result()
    got = load_volume(downloaded, label=True, canonical=False)  # the file's layout, as result() is
    assert got.same_grid(expected) and np.array_equal(got.array, expected.array)
    assert got.array[..., 4:8].any()


def test_the_page_needs_the_key_for_data_and_works_with_it_on_the_files_own_slices(browser, tmp_path):
    """Also the slice convention: on a file stored transposed in-plane and inferior first, a slice
    drawn through RemoteSession shows on the page under the same number, and a slice drawn on the
    page is the same file slice, the same plane, as RemoteSession reads back."""
    path = write_image(tmp_path, orientation="PLI")
    own = load_volume(path, canonical=False)
    order = AxialSlices.of(own.affine, own.shape)
    with serving(SessionStore(tiny_segmenter()), api_key="s3cret") as url:
        session = RemoteSession(url, path, api_key="s3cret")
        mask = np.zeros(SHAPE[:2], dtype=np.int64)
        mask[9:15, 3:7] = 1  # not symmetric: a transposed or flipped slice would not match
        session.draw(4, mask)
        browser.get(f"{url}/?session={session.session_id}")  # the page itself is open ...
        idle_or_error = lambda: browser.execute_script("return document.body.dataset.pending === '0'")  # noqa: E731
        wait_for(idle_or_error, what="the page")
        status = browser.find_element("id", "status")
        assert "API key" in status.text and "error" in status.get_attribute("class")  # ... its data is not
        assert browser.execute_script("return document.body.dataset.ready") is None
        key = browser.find_element("id", "key")
        key.send_keys("s3cret", "\t")
        browser.refresh()
        wait_for(lambda: browser.execute_script("return document.body.dataset.ready === '1'"), what="the session")
        assert browser.find_element("id", "drawn").text == "4"
        z = order.to_canonical(4)  # 7: NiiVue shows the canonical image
        shown = browser.execute_script(
            f"const s = window.fxViewer, n = s.dims[0] * s.dims[1], out = [];"
            f"s.nv.drawBitmap.subarray({z} * n, {z + 1} * n).forEach((v, i) => {{ if (v) out.push(i); }}); return out")
        assert shown == np.flatnonzero(order.plane_to_canonical(mask).ravel(order="F")).tolist()  # x fastest
        browser.find_element("id", "tool-brush").click()
        go_to_slice(browser, 9)  # the file's slice 9: canonical 2
        stroke(browser, 0, 0)
        idle(browser)
        assert browser.find_element("id", "drawn").text == "4, 9" and session.drawn == [4, 9]
        bitmap = browser.execute_script(
            "const s = window.fxViewer, n = s.dims[0] * s.dims[1];"
            f"return Array.from(s.nv.drawBitmap.subarray({order.to_canonical(9)} * n, {order.to_canonical(9) + 1} * n))")
        plane = np.asarray(bitmap).reshape(order.plane_to_canonical(mask).shape, order="F")
        assert plane.any() and np.array_equal(session.drawn_mask(9), order.plane_to_own(plane))


@pytest.mark.slow
def test_screenshot_of_a_real_scan_drawn_in_python_and_completed_in_the_browser(browser, tmp_path):
    """The bundled model on MNI152 (2 mm): three thalamus slices drawn through RemoteSession, the
    session opened in the page with ?session=ID, completed there; the result overlay is rendered."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from common import binary_mask, brain_cases

    from fewshotcx import Segmenter

    try:
        _, mni = brain_cases(2.0)
    except Exception as exc:  # noqa: BLE001 - no cached data and no network
        missing(f"MNI152 data unavailable: {exc}")
    image, reference = mni.image.canonical(), binary_mask(mni, "left thalamus").canonical().array
    zs = np.flatnonzero(reference.any(axis=(0, 1)))
    drawn = [int(zs[0]), int(zs[len(zs) // 2]), int(zs[-1])]
    with serving(SessionStore(Segmenter(modality="mr", progress=False))) as url:
        remote = RemoteSession(url, image)
        for z in drawn:
            remote.draw(z, reference[..., z])
        browser.get(f"{url}/?session={remote.session_id}")
        wait_for(lambda: browser.execute_script("return document.body.dataset.ready === '1'"), what="the session")
        assert browser.find_element("id", "drawn").text == ", ".join(map(str, drawn))
        browser.find_element("id", "complete").click()
        wait_for(lambda: browser.execute_script("return document.body.dataset.completed === '1'"), 300, "complete")
        browser.find_element("id", "suggest").click()
        idle(browser)
        go_to_slice(browser, (drawn[0] + drawn[1]) // 2)
        idle(browser)
        page = screenshot(browser, tmp_path, "contouring_browser_mni.png")
        result = remote.result().array
    pixels = canvas_pixels(browser, page).astype(int)
    green = (pixels[..., 1] > pixels[..., 0] + 40) & (pixels[..., 1] > pixels[..., 2] + 40)
    assert green.sum() > 50  # the completed structure is drawn over the slice
    undrawn = [z for z in range(drawn[0], drawn[-1] + 1) if z not in drawn]
    overlap = (result[..., undrawn] > 0) & (reference[..., undrawn] > 0)
    assert 2 * overlap.sum() / ((result[..., undrawn] > 0).sum() + (reference[..., undrawn] > 0).sum()) > 0.5
