"""The napari plugin: manifest validity, and the dock widget driven headless (pytest-qt, Qt offscreen)
with a local ContourSession and a RemoteSession, compared with the Python API.

The widget runs on napari's own ``ViewerModel`` (layers, dims: all the widget touches). napari's
``make_napari_viewer`` fixture also builds the vispy canvas, which needs an OpenGL context that Qt's
``offscreen`` platform cannot give on a machine without a display (vispy's ``glGetString`` returns
nothing), so it is not used here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
npe2 = pytest.importorskip("npe2")

from napari.components import ViewerModel  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402
from servekit import SHAPE, disc, serving, tiny_segmenter, write_image  # noqa: E402

from fewshotcx import ContourSession, load_volume  # noqa: E402
from fewshotcx.napari.widget import ContourWidget, add_volume  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "fewshotcx" / "napari" / "napari.yaml"
XY = SHAPE[:2]
DRAWS = {2: disc((12, 10), 4, XY), 6: disc((11, 9), 5, XY), 9: disc((12, 11), 3, XY)}


def test_npe2_validate_fewshotcx_passes_through_the_declared_entry_point(tmp_path):
    """``npe2 validate fewshotcx`` finds the plugin by the entry point pyproject.toml declares (given
    to it as installed metadata here, so the check does not depend on how this checkout is installed)."""
    import tomllib

    manifest = npe2.PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()  # every python_name resolves
    (widget,) = manifest.contributions.widgets
    assert widget.command == "fewshotcx.contour_widget"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entry = project["entry-points"]["napari.manifest"]
    assert entry == {"fewshotcx": "fewshotcx.napari:napari.yaml"}
    info = tmp_path / "fewshotcx-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fewshotcx\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[napari.manifest]\n" + "".join(f"{k} = {v}\n" for k, v in entry.items()))
    done = subprocess.run([sys.executable, "-m", "npe2", "validate", "fewshotcx"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert done.returncode == 0 and "valid" in done.stdout, done.stdout + done.stderr


def _paint_and_send(viewer, widget, qtbot):
    widget.auto_send.setChecked(False)
    for z, mask in DRAWS.items():
        viewer.dims.set_current_step(0, z)
        widget.labels_layer.data[z] = mask.T  # what a brush leaves on the (Y, X) slice
        qtbot.mouseClick(widget.send_button, Qt.LeftButton)
    viewer.dims.set_current_step(0, 4)
    widget.labels_layer.data[4] = disc((3, 3), 2, XY).T
    qtbot.mouseClick(widget.send_button, Qt.LeftButton)
    qtbot.mouseClick(widget.undo_button, Qt.LeftButton)  # the slice-4 mistake is taken back
    widget.auto_send.setChecked(True)


def _expected(path):
    """The same draws through the Python API: canonical slice ``z`` painted in napari is the file's own
    slice ``Z-1-z`` of an inferior-first file, its plane reversed in x and y too (LPI)."""
    local = ContourSession(path, tiny_segmenter())
    for z, mask in DRAWS.items():
        local.draw(SHAPE[2] - 1 - z, np.flip(mask, (0, 1)))
    return local


def _widget_on_lpi_file(qtbot, tmp_path):
    """``(path, viewer, widget)``: a file stored "LPI" (inferior first, x and y reversed: file slice k
    is canonical Z-1-k) shown in a ViewerModel, and the dock widget on it (tiny model)."""
    path = write_image(tmp_path, orientation="LPI")
    viewer = ViewerModel()
    add_volume(viewer, load_volume(path), name="ct")
    widget = ContourWidget(viewer, segmenter=tiny_segmenter())
    qtbot.addWidget(widget)
    return path, viewer, widget


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_dock_widget_completes_suggests_and_undoes_like_the_python_api(qtbot, tmp_path, remote):
    from fewshotcx.server import SessionStore

    path, viewer, widget = _widget_on_lpi_file(qtbot, tmp_path)
    own = sorted(SHAPE[2] - 1 - z for z in DRAWS)  # what the session counts
    with serving(SessionStore(tiny_segmenter())) as url:
        if remote:
            widget.url.setText(url)
        qtbot.mouseClick(widget.start_button, Qt.LeftButton)
        assert widget.session is not None, widget.status.text()
        _paint_and_send(viewer, widget, qtbot)
        assert "error" not in widget.status.text(), widget.status.text()
        assert not widget.labels_layer.data[4].any()  # undo cleared the layer too
        assert widget.session.drawn == own
        viewer.dims.set_current_step(0, 11)  # painting sends the slice by itself (file slice 0) ...
        widget.labels_layer.paint((11, 10, 12), 1)
        qtbot.waitUntil(lambda: widget.session.drawn == [0] + own, timeout=10_000)
        widget.labels_layer.paint((11, 10, 12), 0)  # ... and painting it back to nothing forgets it
        qtbot.waitUntil(lambda: widget.session.drawn == own, timeout=10_000)
        qtbot.mouseClick(widget.complete_button, Qt.LeftButton)
        qtbot.mouseClick(widget.suggest_button, Qt.LeftButton)
        expected = _expected(path)
        got = np.transpose(widget.result_layer.data, (2, 1, 0))
        assert np.array_equal(got, expected.result().canonical().array) and got[..., 3:6].any()
        assert viewer.dims.current_step[0] == SHAPE[2] - 1 - expected.suggest(1)[0]
        if remote:  # the server goes away: one line in the widget, no exception
            widget.session.url = "http://127.0.0.1:9"
            qtbot.mouseClick(widget.suggest_button, Qt.LeftButton)
            assert widget.status.text().startswith("error: cannot reach")


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_clicks_and_boxes_on_the_prompt_layers_reach_the_session_like_the_python_api(qtbot, tmp_path, remote):
    """A rectangle on the boxes layer, a point on each clicks layer: sent as the file's own voxels
    (inferior first, reversed in x and y: LPI), the result layer refreshed; Undo takes the last click
    back, from the session and from its layer."""
    from fewshotcx.server import SessionStore

    path, viewer, widget = _widget_on_lpi_file(qtbot, tmp_path)
    X, Y, Z = SHAPE
    with serving(SessionStore(tiny_segmenter())) as url:
        if remote:
            widget.url.setText(url)
        qtbot.mouseClick(widget.start_button, Qt.LeftButton)
        prompts = widget.prompts
        z = 4  # canonical slice 4 of the (Z, Y, X) layers: the file's slice Z-1-4
        prompts.boxes.add_rectangles(np.array([[z, 6.2, 8.4], [z, 6.2, 16], [z, 14, 16], [z, 14, 8.4]]))
        prompts.positive.add(np.array([z, 10, 12]))
        prompts.negative.add(np.array([z + 1, 10.4, 11.6]))
        prompts.negative.add(np.array([z + 2, 40, 12]))  # outside the image: refused, and removed
        assert "outside the image" in widget.status.text()
        assert len(prompts.negative.data) == 1
        shown = np.transpose(widget.result_layer.data, (2, 1, 0))

        local = ContourSession(path, tiny_segmenter())  # the same prompts in the file's own voxels
        own = lambda x, y, k: (X - 1 - x, Y - 1 - y, Z - 1 - k)  # noqa: E731
        local.add_box(own(16, 14, z), own(8, 6, z))
        local.add_point(own(12, 10, z), positive=True)
        local.add_point(own(12, 10, z + 1), positive=False)
        assert np.array_equal(shown, local.result().canonical().array) and shown.any()
        assert shown[12, 10, z + 1] == 0 and shown[12, 10, z] == 1

        qtbot.mouseClick(widget.undo_button, Qt.LeftButton)
        local.undo()
        assert len(prompts.negative.data) == 0 and len(prompts.positive.data) == 1
        got = np.transpose(widget.result_layer.data, (2, 1, 0))
        assert np.array_equal(got, local.result().canonical().array)
        assert np.array_equal(widget.session.result().array, local.result().array)
        assert "error" not in widget.status.text(), widget.status.text()
        for _ in range(2):  # the click and the box: nothing left to show, and no error
            qtbot.mouseClick(widget.undo_button, Qt.LeftButton)
        assert len(prompts.positive.data) == len(prompts.boxes.data) == 0 and not widget.result_layer.data.any()
        assert "error" not in widget.status.text(), widget.status.text()


def test_rectangle_box_depth_and_scribble_mask_map_canonical_layers_to_own_voxels(tmp_path):
    """The pure conversions: a rectangle with depth d spans canonical slices z-d..z+d cut to the image
    (own k runs the other way in an inferior-first file), a scribble layer's painted voxels become the
    own ``(X, Y, Z)`` mask; refusals are ValueErrors."""
    from fewshotcx.io.grid import AxialSlices
    from fewshotcx.napari.prompts import rectangle_box, scribble_mask

    own = load_volume(write_image(tmp_path, orientation="LPI")).to_source()  # the file's layout
    slices = AxialSlices.of(own.affine, own.shape)
    X, Y, Z = SHAPE
    rectangle = lambda z: np.array([[z, 6, 8], [z, 6, 16], [z, 14, 16], [z, 14, 8]])  # noqa: E731
    assert rectangle_box(rectangle(4), slices) == ((X - 17, Y - 15, Z - 5), (X - 9, Y - 7, Z - 5))
    assert rectangle_box(rectangle(4), slices, 2) == ((X - 17, Y - 15, Z - 7), (X - 9, Y - 7, Z - 3))
    assert rectangle_box(rectangle(1), slices, 3) == ((X - 17, Y - 15, Z - 5), (X - 9, Y - 7, Z - 1))
    with pytest.raises(ValueError, match="depth"):
        rectangle_box(rectangle(4), slices, -1)
    painted = np.zeros((Z, Y, X), np.uint8)
    painted[3, 5, 7] = painted[4, 6, 8] = 2
    mask = scribble_mask(painted, slices)
    assert mask.dtype == bool and mask.shape == SHAPE
    assert sorted(map(tuple, np.argwhere(mask))) == [(X - 9, Y - 7, Z - 5), (X - 8, Y - 6, Z - 4)]
    with pytest.raises(ValueError, match="nothing painted"):
        scribble_mask(np.zeros_like(painted), slices)
    with pytest.raises(ValueError, match="does not cover"):
        scribble_mask(painted[1:], slices)


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_deep_boxes_and_scribbles_on_the_prompt_layers_reach_the_session_like_the_python_api(qtbot, tmp_path, remote):
    """A rectangle drawn with Box depth 2 is a 3D box over 5 slices; paint on the ``scribbles +`` layer
    sent with Send scribble, a brush stroke on ``scribbles -`` sent when it ends: each one scribble in
    the file's own voxels (LPI), the layer cleared; Undo takes them back; an empty scribble is one error
    line, nothing sent."""
    from fewshotcx.server import SessionStore

    path, viewer, widget = _widget_on_lpi_file(qtbot, tmp_path)
    X, Y, Z = SHAPE
    flip = lambda canonical: canonical[::-1, ::-1, ::-1]  # noqa: E731 - canonical (X, Y, Z) -> LPI own
    with serving(SessionStore(tiny_segmenter())) as url:
        if remote:
            widget.url.setText(url)
        qtbot.mouseClick(widget.start_button, Qt.LeftButton)
        prompts = widget.prompts
        assert [layer.name for layer in prompts.scribbles] == ["ct scribbles +", "ct scribbles -"]
        assert all(layer.data.shape == (Z, Y, X) for layer in prompts.scribbles)
        local = ContourSession(path, tiny_segmenter())
        shown = lambda: np.transpose(widget.result_layer.data, (2, 1, 0))  # noqa: E731

        widget.box_depth.setValue(2)
        z = 5
        prompts.boxes.add_rectangles(np.array([[z, 6.2, 8.4], [z, 6.2, 16], [z, 14, 16], [z, 14, 8.4]]))
        local.add_box((X - 17, Y - 15, Z - 1 - (z + 2)), (X - 9, Y - 7, Z - 1 - (z - 2)))
        assert np.array_equal(shown(), local.result().canonical().array), widget.status.text()
        assert shown()[..., z - 2].any() and shown()[..., z + 2].any()  # the box reaches 2 slices either way

        widget.auto_send.setChecked(False)
        canonical = np.zeros(SHAPE, bool)  # (X, Y, Z) canonical: a scribble across 3 slices
        canonical[4:9, 3:6, z - 1:z + 2] = True
        prompts.scribble_positive.data = np.transpose(canonical, (2, 1, 0)).astype(np.uint8)
        qtbot.mouseClick(widget.scribble_button, Qt.LeftButton)
        local.add_scribble(flip(canonical), positive=True)
        assert not prompts.scribble_positive.data.any(), widget.status.text()
        assert np.array_equal(shown(), local.result().canonical().array)
        assert shown()[5, 4, z] == 1  # the scribble's voxels are in, outside the box

        widget.auto_send.setChecked(True)  # a brush stroke is sent when it ends
        reference = viewer.add_labels(np.zeros((Z, Y, X), np.uint8), scale=prompts.scribble_negative.scale)
        reference.brush_size = prompts.scribble_negative.brush_size
        reference.paint((z, 10, 12), 1)  # the same dab on a layer of nobody's
        prompts.scribble_negative.paint((z, 10, 12), 1)
        qtbot.waitUntil(lambda: not prompts.scribble_negative.data.any(), timeout=10_000)
        local.add_scribble(flip(np.transpose(reference.data, (2, 1, 0)) != 0), positive=False)
        assert np.array_equal(shown(), local.result().canonical().array), widget.status.text()
        assert shown()[12, 10, z] == 0

        for _ in range(2):  # the negative scribble, then the positive one: session and layers agree
            qtbot.mouseClick(widget.undo_button, Qt.LeftButton)
            local.undo()
            assert np.array_equal(widget.session.result().array, local.result().array)
            assert np.array_equal(shown(), local.result().canonical().array)
            assert len(prompts.boxes.data) == 1 and not any(layer.data.any() for layer in prompts.scribbles)
        assert "error" not in widget.status.text(), widget.status.text()
        assert shown()[5, 4, z] == 0

        qtbot.mouseClick(widget.scribble_button, Qt.LeftButton)  # nothing painted: one line, nothing sent
        assert widget.status.text() == "error: nothing painted on the scribble layers"
        qtbot.mouseClick(widget.undo_button, Qt.LeftButton)  # so Undo takes back the box
        assert len(prompts.boxes.data) == 0 and not widget.result_layer.data.any()


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_a_session_the_atlas_starts_has_no_suggest_button(qtbot, remote):
    """A local session on a fitted atlas segmenter, or one on ``fewshotcx serve --backend atlas``:
    the widget shows the atlas's contour and disables Suggest (the atlas cannot complete drawn
    slices); the blank session of the test above clicks an enabled one."""
    from conftest import cached_colin27

    from fewshotcx import Segmenter
    from fewshotcx.server import SessionStore

    case = cached_colin27(downsample=4.0)
    hemisphere = case.labels.with_array(((case.labels.array > 0) & (case.labels.array % 2 == 1)).astype(np.uint8))
    atlas = Segmenter(backend="atlas", registration="rigid", device="cpu", progress=False)
    atlas.fit([case.image], [hemisphere])
    viewer = ViewerModel()
    add_volume(viewer, case.image, name="t1")
    widget = ContourWidget(viewer, segmenter=atlas)
    qtbot.addWidget(widget)
    with serving(SessionStore(atlas)) as url:
        if remote:
            widget.url.setText(url)
        qtbot.mouseClick(widget.start_button, Qt.LeftButton)
        assert widget.session is not None, widget.status.text()
        assert widget.session.completes_slices is False
        assert not widget.suggest_button.isEnabled() and widget.undo_button.isEnabled()
        assert np.array_equal(widget.session.result().array, atlas.predict(case.image).array)
