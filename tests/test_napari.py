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


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_dock_widget_completes_suggests_and_undoes_like_the_python_api(qtbot, tmp_path, remote):
    from fewshotcx.server import SessionStore

    path = write_image(tmp_path, orientation="LPI")  # stored inferior first: file slice k is canonical Z-1-k
    own = sorted(SHAPE[2] - 1 - z for z in DRAWS)  # what the session counts
    viewer = ViewerModel()
    add_volume(viewer, load_volume(path), name="ct")
    widget = ContourWidget(viewer, segmenter=tiny_segmenter())
    qtbot.addWidget(widget)
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

    path = write_image(tmp_path, orientation="LPI")
    viewer = ViewerModel()
    add_volume(viewer, load_volume(path), name="ct")
    widget = ContourWidget(viewer, segmenter=tiny_segmenter())
    qtbot.addWidget(widget)
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
