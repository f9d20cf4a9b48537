"""napari plugin (npe2 manifest ``napari.yaml``, entry point ``napari.manifest``; extra ``[napari]``).

:class:`~fewshotcx.napari.widget.ContourWidget` is a dock widget that contours an Image layer with a
local :class:`~fewshotcx.session.ContourSession` or a :class:`~fewshotcx.client.RemoteSession` on a
``fewshotcx serve`` server (then the viewing machine needs no model; the widget module imports torch
only for a local session). Nothing here is imported by ``import fewshotcx``.
"""
