"""The web viewer's prompt tools in a real headless Chromium (as tests/test_viewer.py): a box dragged,
a click, a Shift+click (negative), a brush scribble, a Shift+scribble and a box with a Depth (3D) with
real mouse events, on a file stored transposed and inferior first; the server's session gets them as the file's own voxels (the result
changes at the clicked voxel, Undo takes a prompt back), and replaying what the page sent on a local
``ContourSession`` gives the same result. On a fitted server the page opens showing the model's contour
(with the atlas, its Suggest button disabled)."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")

from servekit import SHAPE, fitted_segmenter, serving, tiny_segmenter, write_image  # noqa: E402
from test_viewer import browser, idle, go_to_slice, stroke, wait_for  # noqa: E402,F401 (browser: a fixture)
from test_viewer import pytestmark  # noqa: E402,F401 (skipped without chromium)

from fewshotcx import ContourSession, load_volume  # noqa: E402
from fewshotcx.client import RemoteSession  # noqa: E402
from fewshotcx.io.grid import AxialSlices  # noqa: E402
from fewshotcx.server import SessionStore  # noqa: E402


def press(driver, dx=0, dy=0, steps=(), shift=False):
    """Press the left button at (dx, dy) pixels from the canvas centre, move along ``steps`` (none: a
    click), release; Shift held throughout if ``shift``."""
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.keys import Keys

    chain = ActionChains(driver)
    if shift:
        chain = chain.key_down(Keys.SHIFT)
    chain = chain.move_to_element_with_offset(driver.find_element("id", "gl"), dx, dy).click_and_hold()
    for sx, sy in steps:
        chain = chain.move_by_offset(sx, sy)
    chain = chain.release()
    if shift:
        chain = chain.key_up(Keys.SHIFT)
    chain.perform()


def prompt_count(url: str, session_id: str) -> int:
    """The session's prompts, as the server reports them."""
    with urllib.request.urlopen(f"{url}/sessions/{session_id}", timeout=30) as answer:
        return json.loads(answer.read())["prompts"]


def results_shown(driver) -> int:
    return int(driver.execute_script("return Number(document.body.dataset.completed || 0)"))


def sent(driver) -> list[dict]:
    return driver.execute_script("return window.fxViewer.sent")


def replay(session, prompts: list[dict]) -> None:
    """What the page sent, through the Python API."""
    for prompt in prompts:
        kind, body = prompt["kind"], prompt["body"]
        if kind == "box":
            session.add_box(body["lo"], body["hi"], label=body["label"])
        elif kind == "point":
            session.add_point(body["ijk"], positive=body["positive"], label=body["label"])
        else:
            mask = np.zeros(SHAPE, dtype=bool)
            mask[tuple(np.asarray(body["voxels"]).T)] = True
            session.add_scribble(mask, positive=body["positive"], label=body["label"])


def test_box_clicks_and_scribble_with_the_mouse_reach_the_session_in_the_files_own_voxels(browser, tmp_path):
    path = write_image(tmp_path, orientation="PLI")
    own = load_volume(path, canonical=False)
    order = AxialSlices.of(own.affine, own.shape)
    with serving(SessionStore(tiny_segmenter())) as url:
        remote = RemoteSession(url, path)
        browser.get(f"{url}/?session={remote.session_id}")
        wait_for(lambda: browser.execute_script("return document.body.dataset.ready === '1'"), what="the session")
        idle(browser)
        go_to_slice(browser, 5)

        browser.find_element("id", "tool-box").click()
        stroke(browser, -90, -90, steps=((60, 60), (60, 60), (60, 60)))  # corner to corner
        idle(browser)
        (box,) = sent(browser)
        assert box["kind"] == "box" and box["body"]["lo"][2] == box["body"]["hi"][2] == 5  # 2D, on the file's slice 5
        assert all(h - lo >= 2 for lo, h in zip(box["body"]["lo"][:2], box["body"]["hi"][:2]))
        assert results_shown(browser) == 1  # the overlay was refreshed
        inside = remote.result().array
        assert inside.any() and remote.drawn == [] and prompt_count(url, remote.session_id) == 1
        assert browser.find_element("id", "prompt-count").text == "1"

        browser.find_element("id", "tool-point").click()
        press(browser, shift=True)  # negative, at the canvas centre: the image's centre
        idle(browser)
        point = sent(browser)[-1]["body"]
        assert point["positive"] is False and point["ijk"][2] == 5
        centre = order.voxels_to_canonical(np.array([point["ijk"]]))[0]
        assert np.abs(centre[:2] - np.array(order.canonical_shape[:2]) / 2).max() <= 2
        ijk = tuple(point["ijk"])
        assert inside[ijk] == 1 and remote.result().array[ijk] == 0  # the clicked voxel left the structure
        browser.find_element("id", "undo").click()  # ... and Undo takes the click back
        idle(browser)
        assert remote.result().array[ijk] == 1 and prompt_count(url, remote.session_id) == 1
        assert results_shown(browser) == 3  # refreshed after the click and after the undo

        press(browser)  # a positive click where the negative one was
        idle(browser)
        go_to_slice(browser, 8)
        browser.find_element("id", "tool-scribble").click()
        stroke(browser, -60, 0, steps=((30, 0), (30, 10), (30, 0)))
        idle(browser)
        scribble = sent(browser)[-1]
        voxels = np.asarray(scribble["body"]["voxels"])
        assert scribble["kind"] == "scribble" and scribble["body"]["positive"] and len(voxels) >= 8
        assert set(voxels[:, 2]) == {8}  # all on the file's slice 8
        press(browser, -30, -150, steps=((30, 0), (30, 0)), shift=True)  # a negative scribble above it
        idle(browser)
        negative = sent(browser)[-1]["body"]
        assert negative["positive"] is False and {v[2] for v in negative["voxels"]} == {8}
        result = remote.result()
        outside = np.asarray(negative["voxels"])
        assert not {tuple(v) for v in voxels} & {tuple(v) for v in outside}
        assert result.array[tuple(voxels.T)].all()  # a positive scribble's voxels are inside,
        assert not result.array[tuple(outside.T)].any()  # a negative one's outside
        for _ in range(4):  # the scribbles, the click, the box: nothing left to show, the overlay goes, no error
            browser.find_element("id", "undo").click()
            idle(browser)
        assert prompt_count(url, remote.session_id) == 0 and browser.find_element("id", "prompt-count").text == "0"
        assert browser.execute_script("return window.fxViewer.overlay === null")

    prompts = [p for p in sent(browser)]
    del prompts[1]  # the negative click the page undid
    local = ContourSession(path, tiny_segmenter())
    replay(local, prompts)
    expected = local.result()
    assert result.same_grid(expected) and np.array_equal(result.array, expected.array)


def test_a_box_dragged_with_a_depth_is_a_3d_box_over_the_slices_around_the_shown_one(browser, tmp_path):
    """Depth d: the dragged rectangle spans the file's slices k-d..k+d, cut to the image (the file is
    stored inferior first: its slice 1 is canonical 10 of 12); the server's session equals a local one
    given those 3D boxes."""
    path = write_image(tmp_path, orientation="PLI")
    with serving(SessionStore(tiny_segmenter())) as url:
        remote = RemoteSession(url, path)
        browser.get(f"{url}/?session={remote.session_id}")
        wait_for(lambda: browser.execute_script("return document.body.dataset.ready === '1'"), what="the session")
        idle(browser)
        browser.find_element("id", "tool-box").click()
        for k, depth in ((5, 2), (1, 3)):
            go_to_slice(browser, k)
            field = browser.find_element("id", "box-depth")
            field.clear()
            field.send_keys(str(depth))
            stroke(browser, -90, -90, steps=((60, 60), (60, 60), (60, 60)))
            idle(browser)
        deep, clipped = (prompt["body"] for prompt in sent(browser))
        assert (deep["lo"][2], deep["hi"][2]) == (3, 7) and (clipped["lo"][2], clipped["hi"][2]) == (0, 4)
        assert all(h - lo >= 2 for body in (deep, clipped) for lo, h in zip(body["lo"][:2], body["hi"][:2]))
        assert prompt_count(url, remote.session_id) == 2
        result = remote.result()

    local = ContourSession(path, tiny_segmenter())
    local.add_box((*deep["lo"][:2], 3), (*deep["hi"][:2], 7))
    local.add_box((*clipped["lo"][:2], 0), (*clipped["hi"][:2], 4))
    expected = local.result()
    assert np.array_equal(result.array, expected.array) and result.array[..., 3].any()  # 2 slices off the drawn one


def test_a_session_on_a_fitted_server_opens_showing_the_models_contour(browser, tmp_path):
    """``fewshotcx serve --support``: the page shows the fitted model's contour as soon as it opens."""
    path = write_image(tmp_path)
    with serving(SessionStore(fitted_segmenter())) as url:
        remote = RemoteSession(url, path)
        browser.get(f"{url}/?session={remote.session_id}")
        wait_for(lambda: browser.execute_script("return document.body.dataset.ready === '1'"), what="the session")
        idle(browser)
        assert results_shown(browser) == 1 and remote.result().array.any()
        shown = browser.execute_script("const v = window.fxViewer.overlay; return v ? Array.from(v.img) : null")
        canonical = remote.result().canonical().array
    assert shown is not None and np.array_equal(np.asarray(shown).reshape(canonical.shape, order="F"), canonical)


def test_a_session_started_by_the_atlas_shows_its_contour_and_cannot_suggest(browser, tmp_path):
    """``fewshotcx serve --backend atlas``: the page opens on the atlas's contour (Colin27 at 4 mm, its
    left hemisphere registered onto itself) and its "Suggest slice" button is disabled, as the
    session's ``completes_slices`` says (tests/test_viewer.py clicks the enabled one of a blank server)."""
    from conftest import cached_colin27

    from fewshotcx import Segmenter, save_volume

    case = cached_colin27(downsample=4.0)
    hemisphere = case.labels.with_array(((case.labels.array > 0) & (case.labels.array % 2 == 1)).astype(np.uint8))
    atlas = Segmenter(backend="atlas", registration="rigid", device="cpu", progress=False)
    atlas.fit([case.image], [hemisphere])
    save_volume(case.image, tmp_path / "t1.nii.gz")
    with serving(SessionStore(atlas)) as url:
        remote = RemoteSession(url, tmp_path / "t1.nii.gz")
        with urllib.request.urlopen(f"{url}/sessions/{remote.session_id}") as answer:
            info = json.load(answer)
        browser.get(f"{url}/?session={remote.session_id}")
        wait_for(lambda: browser.execute_script("return document.body.dataset.ready === '1'"), what="the session")
        idle(browser)
        suggest = browser.find_element("id", "suggest")
        assert info["fitted"] and info["completes_slices"] is False
        assert results_shown(browser) == 1 and not suggest.is_enabled() and "atlas" in suggest.get_attribute("title")
        assert remote.result().array.any()
