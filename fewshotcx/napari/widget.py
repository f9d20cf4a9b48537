"""The napari dock widget: draw on a Labels layer, send slices, complete, suggest, undo.

napari shows the canonical volume as ``(Z, Y, X)``: the first axis is scrolled, so slice ``z`` of the
Labels layer (``(Y, X)``) is canonical axial slice ``z`` (``(X, Y)``, transposed). The session holds the
image in its source layout (the file's, when the volume was read from one), so the slices it is sent,
and the numbers the widget shows, are the file's own (docs/geometry.md, "Slice indices"):
:class:`~fewshotcx.io.grid.AxialSlices` maps between the two. An Image layer added by
:func:`add_volume` carries its :class:`~fewshotcx.io.volume.Volume` in ``metadata["fewshotcx_volume"]``;
any other 3D Image layer is read as ``(Z, Y, X)`` with its ``scale`` and ``translate`` as the grid.

Prompts (:mod:`fewshotcx.napari.prompts`): a point added to the ``clicks +`` (``clicks -``) layer is
sent as a positive (negative) click, a rectangle drawn on the ``boxes`` layer as a 2D box on its
slice (with a ``Box depth`` d > 0: a 3D box over the d slices above and below it too), and what is
painted on the ``scribbles +`` (``scribbles -``) layer as one positive (negative) scribble, at the end
of each stroke (with "Send as I paint") or on "Send scribble", the layer then cleared; each with the
contour Labels layer's selected label, and the result layer is refreshed. Undo takes back the
session's last step, a click's or box's item with it. Deleting an item from a layer by hand does not
change the session: use Undo.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                            QSpinBox, QVBoxLayout, QWidget)

from ..io.grid import AxialSlices
from ..io.volume import Volume, VolumeError
from .prompts import PromptLayers, click_voxel, rectangle_box, scribble_mask

VOLUME_KEY = "fewshotcx_volume"


def add_volume(viewer: Any, volume: Volume, name: str = "image") -> Any:
    """Add a (canonical) volume as a ``(Z, Y, X)`` Image layer that remembers its grid."""
    canonical = volume.canonical()
    return viewer.add_image(np.transpose(canonical.array, (2, 1, 0)), name=name,
                            scale=tuple(reversed(canonical.spacing)), metadata={VOLUME_KEY: canonical})


def layer_volume(layer: Any) -> Volume:
    """The canonical :class:`Volume` behind an Image layer (see the module docstring).

    Raises:
        ValueError: the layer is not 3D.
    """
    stored = layer.metadata.get(VOLUME_KEY)
    if isinstance(stored, Volume):
        return stored
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise ValueError(f"layer {layer.name!r} is {data.ndim}D; contouring needs a 3D image")
    affine = np.diag(list(np.asarray(layer.scale, dtype=float)[::-1]) + [1.0])
    affine[:3, 3] = np.asarray(layer.translate, dtype=float)[::-1]
    return Volume(np.transpose(data, (2, 1, 0)), affine).canonical()


class ContourWidget(QWidget):
    """Dock widget running a local ``ContourSession`` (empty server URL) or a ``RemoteSession``.

    Args:
        napari_viewer: the viewer (napari passes it).
        segmenter: the local session's segmenter (default: the bundled model).
    """

    def __init__(self, napari_viewer: Any, segmenter: Optional[Any] = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.segmenter = segmenter
        self.session: Optional[Any] = None
        self.labels_layer = None
        self.result_layer = None
        self.volume: Optional[Volume] = None
        self.slices: Optional[AxialSlices] = None  # the session's own slices <-> the canonical layer's
        self.prompts: Optional[PromptLayers] = None
        self._sent: dict[int, int] = {}  # id(prompt layer) -> its items already sent
        self._steps: list[Optional[Any]] = []  # per session step taken here: the prompt layer it came from, or None

        self.image_box = QComboBox()
        self.url = QLineEdit()
        self.url.setPlaceholderText("empty: run the model here")
        self.key = QLineEdit()
        self.key.setEchoMode(QLineEdit.Password)
        form = QFormLayout()
        form.addRow("Image", self.image_box)
        form.addRow("Server", self.url)
        form.addRow("API key", self.key)
        self.box_depth = QSpinBox()
        self.box_depth.setRange(0, 999)
        self.box_depth.setToolTip("slices above and below the one a box is drawn on (0: a 2D box)")
        form.addRow("Box depth", self.box_depth)
        self.auto_send = QCheckBox("Send slices and scribbles as I paint")
        self.auto_send.setChecked(True)
        self.start_button = QPushButton("Start session")
        self.send_button = QPushButton("Send slice")
        self.erase_button = QPushButton("Erase slice")
        self.undo_button = QPushButton("Undo")
        self.complete_button = QPushButton("Complete")
        self.suggest_button = QPushButton("Suggest slice")
        self.scribble_button = QPushButton("Send scribble")
        self.status = QLabel("Pick an image and start a session.")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.auto_send)
        layout.addWidget(self.start_button)
        for pair in ((self.send_button, self.erase_button), (self.undo_button, self.complete_button),
                     (self.scribble_button, self.suggest_button)):
            row = QHBoxLayout()
            for button in pair:
                row.addWidget(button)
            layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addStretch()

        self.start_button.clicked.connect(lambda: self._guard(self.start))
        self.send_button.clicked.connect(lambda: self._guard(self.send_slice))
        self.erase_button.clicked.connect(lambda: self._guard(self.erase_slice))
        self.undo_button.clicked.connect(lambda: self._guard(self.undo))
        self.complete_button.clicked.connect(lambda: self._guard(self.complete))
        self.suggest_button.clicked.connect(lambda: self._guard(self.suggest))
        self.scribble_button.clicked.connect(lambda: self._guard(self.send_scribbles))
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self._refresh_images()
        self._enable(False)

    # ------------------------------------------------------------------ plumbing
    def _refresh_images(self, *_: Any) -> None:
        current = self.image_box.currentText()
        self.image_box.clear()
        names = [layer.name for layer in self.viewer.layers if type(layer).__name__ == "Image"]
        self.image_box.addItems(names)
        if current in names:
            self.image_box.setCurrentText(current)

    def _enable(self, on: bool) -> None:
        for button in (self.send_button, self.erase_button, self.undo_button, self.complete_button,
                       self.suggest_button, self.scribble_button):
            button.setEnabled(on)

    def _guard(self, action) -> None:
        """Run a button's action; any error is shown as one line in the widget."""
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - shown to the user, the viewer keeps running
            self.status.setText(f"error: {' '.join(str(exc).split()) or type(exc).__name__}")

    def current_slice(self) -> int:
        return int(self.viewer.dims.current_step[0])

    # ------------------------------------------------------------------ actions
    def start(self) -> None:
        """Open a session on the chosen Image layer and add a ``contour`` Labels layer to draw on."""
        name = self.image_box.currentText()
        if not name:
            raise ValueError("no Image layer to contour")
        image_layer = self.viewer.layers[name]
        self.volume = layer_volume(image_layer)
        own = self.volume.to_source()  # the file's layout: the session counts its slices
        self.slices = AxialSlices.of(own.affine, own.shape, name)
        url = self.url.text().strip()
        if url:
            from ..client import RemoteSession

            self.session = RemoteSession(url, own, api_key=self.key.text().strip() or None)
            where = f"server {url}, session {self.session.session_id}"
        else:
            from ..session import ContourSession

            self.session = ContourSession(own, self.segmenter)
            where = "local model"
        shape = tuple(reversed(self.volume.shape))
        self.labels_layer = self.viewer.add_labels(np.zeros(shape, dtype=np.uint8), name=f"{name} contour",
                                                   scale=image_layer.scale, translate=image_layer.translate)
        self.labels_layer.mode = "paint"
        self.labels_layer.events.paint.connect(self._painted)
        self.prompts = PromptLayers.add_to(self.viewer, name, image_layer)
        self._sent = {id(layer): 0 for layer in self.prompts.layers}
        self._steps = []
        for layer in self.prompts.layers:
            layer.events.data.connect(partial(self._prompted, layer))
        for layer in self.prompts.scribbles:
            layer.events.paint.connect(partial(self._scribbled, layer))
        self.viewer.layers.selection.active = self.labels_layer
        self._enable(True)
        self.suggest_button.setEnabled(self.session.completes_slices)  # not for a session the atlas started
        self.status.setText(f"Session on {name} ({where}). Paint a slice, then Send slice.")

    def send_slice(self) -> None:
        """Send the current slice of the Labels layer as drawn (a slice painted back to nothing that
        the session holds is erased, i.e. forgotten, as in the web viewer)."""
        z = self.current_slice()
        k = self.slices.to_own(z)
        mask = self.slices.plane_to_own(np.asarray(self.labels_layer.data[z]).T.astype(np.int64))
        if not mask.any() and k in self.session.drawn:
            self.session.erase(k)
            self._steps.append(None)
            self.status.setText(f"slice {k} erased; drawn: {self.session.drawn}")
            return
        self.session.draw(k, mask)
        self._steps.append(None)
        self.status.setText(f"slice {k} sent; drawn: {self.session.drawn}")

    def _painted(self, *_: Any) -> None:
        # napari may still be writing the stroke when it reports it: send once the event loop is free.
        if self.auto_send.isChecked() and self.session is not None:
            QTimer.singleShot(0, lambda: self._guard(self.send_slice))

    def erase_slice(self) -> None:
        """Forget the current slice's drawing (here and in the session)."""
        k = self.slices.to_own(self.current_slice())
        self.session.erase(k)
        self._steps.append(None)
        self._show_drawing()
        self.status.setText(f"slice {k} erased; drawn: {self.session.drawn}")

    def undo(self) -> None:
        """Undo the session's last step (a draw, an erase or a prompt) and show the drawn slices, the
        prompts and, once shown, the result again."""
        self.session.undo()
        layer = self._steps.pop() if self._steps else None
        if id(layer) in self._sent:  # a click's or box's item goes too (a scribble's left its layer when sent)
            self._sent[id(layer)] -= 1
            layer.remove([self._sent[id(layer)]])
        self._show_drawing()
        if self.result_layer is not None and self.result_layer in self.viewer.layers:
            self._refresh_result()
        self.status.setText(f"undone; drawn: {self.session.drawn}")

    def _refresh_result(self) -> None:
        """Show the result again; an empty result layer when nothing is left to show (no fitted model,
        drawn slice or prompt: the session answers a ``VolumeError``, a server a 400)."""
        from ..client import RemoteError

        try:
            self.complete()
        except (VolumeError, RemoteError) as exc:
            if isinstance(exc, RemoteError) and exc.status != 400:
                raise
            self.result_layer.data = np.zeros_like(self.result_layer.data)

    def _prompted(self, layer: Any, event: Any) -> None:
        """A prompt layer changed: once napari reports items added (a rectangle: when drawn), send them
        (layers of an earlier session are left alone)."""
        if self.session is None or id(layer) not in self._sent:
            return
        if str(getattr(event, "action", "")) != "added":
            self._sent[id(layer)] = min(self._sent[id(layer)], len(layer.data))
            return
        self._guard(partial(self._send_prompts, layer))

    def _send_prompts(self, layer: Any) -> None:
        """Send ``layer``'s unsent items as prompts (one that fails is removed with those after it), then
        show the result."""
        label = int(self.labels_layer.selected_label)
        positive = layer is self.prompts.positive
        while self._sent[id(layer)] < len(layer.data):
            item = layer.data[self._sent[id(layer)]]
            try:
                if layer is self.prompts.boxes:
                    self.session.add_box(*rectangle_box(item, self.slices, self.box_depth.value()), label=label)
                else:
                    self.session.add_point(click_voxel(item, self.slices), positive=positive, label=label)
            except Exception:
                layer.remove(list(range(self._sent[id(layer)], len(layer.data))))
                raise
            self._sent[id(layer)] += 1
            self._steps.append(layer)
        self.complete()

    def send_scribbles(self) -> None:
        """Send what is painted on each scribble layer as one scribble (positive, then negative).

        Raises:
            ValueError: nothing is painted on either layer.
        """
        painted = [layer for layer in self.prompts.scribbles if np.any(layer.data)]
        if not painted:
            raise ValueError("nothing painted on the scribble layers")
        for layer in painted:
            self._send_scribble(layer)

    def _scribbled(self, layer: Any, *_: Any) -> None:
        # a stroke ended on a scribble layer: send it once napari is done with the stroke (as _painted)
        if self.auto_send.isChecked() and self.prompts is not None and any(layer is s for s in self.prompts.scribbles):
            QTimer.singleShot(0, lambda: self._guard(partial(self._send_scribble, layer)))

    def _send_scribble(self, layer: Any) -> None:
        """Send ``layer``'s painted voxels as one scribble with the selected label, clear the layer
        (also when the session refuses it), then show the result."""
        try:
            mask = scribble_mask(layer.data, self.slices)
            self.session.add_scribble(mask, positive=layer is self.prompts.scribble_positive,
                                      label=int(self.labels_layer.selected_label))
        finally:
            layer.data = np.zeros_like(layer.data)
        self._steps.append(layer)
        self.complete()

    def complete(self) -> None:
        """Show the completed structure as a ``result`` Labels layer."""
        result = self.session.result().canonical()
        data = np.transpose(np.asarray(result.array), (2, 1, 0))
        if self.result_layer is None or self.result_layer not in self.viewer.layers:
            self.result_layer = self.viewer.add_labels(data, name="result", opacity=0.4, scale=self.labels_layer.scale,
                                                       translate=self.labels_layer.translate)
        else:
            self.result_layer.data = data
        self.status.setText(f"completed from slices {self.session.drawn}")

    def suggest(self) -> None:
        """Jump to the slice the session suggests drawing next."""
        slices = self.session.suggest(1)
        if not slices:
            self.status.setText("no suggestion")
            return
        self.viewer.dims.set_current_step(0, self.slices.to_canonical(slices[0]))
        self.status.setText(f"suggested slice {slices[0]}")

    def _show_drawing(self) -> None:
        data = np.zeros_like(self.labels_layer.data)
        for k in self.session.drawn:
            data[self.slices.to_canonical(k)] = self.slices.plane_to_canonical(self.session.drawn_mask(k)).T
        self.labels_layer.data = data
