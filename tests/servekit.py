"""Helpers for the server, client, browser and napari tests: a tiny seeded model, a test image and a
real uvicorn server on a free loopback port in a background thread."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import nibabel as nib
import numpy as np
import torch

from conftest import ORIENTATIONS, blob_volume
from fewshotcx import Segmenter, Volume
from fewshotcx.models import UniverSeg

SHAPE = (24, 20, 12)
#: Storage orders for files: conftest's, plus the third axis reversed (inferior first, "LPI") and that
#: with the in-plane axes swapped too ("PLI": array axis 0 runs posterior, axis 1 left).
STORED = {**ORIENTATIONS, "LPI": np.diag([-0.8, -1.1, -2.5, 1.0]),
          "PLI": np.array([[0, -0.8, 0, 0], [-1.1, 0, 0, 0], [0, 0, -2.5, 0], [0, 0, 0, 1.0]])}


def tiny_segmenter(seed: int = 0, **options) -> Segmenter:
    """A seeded 8-wide UniverSeg at 32² (fast on a CPU, deterministic); ``options``: more Segmenter options."""
    torch.manual_seed(seed)
    return Segmenter(model=UniverSeg((8, 8, 8, 8), (8, 8, 8), in_channels=1), slice_size=32, device="cpu",
                     modality="mr", progress=False, seed=seed, **options)


def fitted_segmenter(seed: int = 0) -> Segmenter:
    """:func:`tiny_segmenter` fitted on one labelled blob volume (a prior patient: what ``fewshotcx
    serve --support`` gives the server), so sessions start from its prediction."""
    segmenter = tiny_segmenter(seed, strategy="position")  # no registration: quick and quiet
    image, label = blob_volume(SHAPE, seed=7)
    segmenter.fit(images=[Volume(image, STORED["LPS"])], labels=[Volume(label, STORED["LPS"], label=True)])
    return segmenter


def write_image(folder: Path, name: str = "ct.nii.gz", orientation: str = "LPS") -> Path:
    """A textured blob volume stored in ``orientation`` (:data:`STORED`; not canonical on disk)."""
    image, _ = blob_volume(SHAPE, seed=4)
    path = folder / name
    nib.save(nib.Nifti1Image(image, STORED[orientation]), str(path))
    return path


def disc(centre: tuple[int, int], radius: float, shape: tuple[int, int], value: int = 1) -> np.ndarray:
    """An ``(X, Y)`` int64 mask holding ``value`` inside a disc."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return np.where((x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius ** 2, value, 0).astype(np.int64)


def call(url: str, method: str = "GET", body: Optional[bytes] = None,
         headers: Optional[dict] = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Status, headers and body of one request (errors included)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def error_detail(body: bytes) -> str:
    """An error answer's ``detail``, checked to be one line."""
    text = json.loads(body)["detail"]
    assert isinstance(text, str) and "\n" not in text
    return text


@contextmanager
def serving(store, api_key: Optional[str] = None, data_root: Optional[Path] = None,
            sweep_seconds: float = 30.0, limits=None) -> Iterator[str]:
    """Run the ``fewshotcx serve`` app on a free loopback port (``limits``: a
    :class:`fewshotcx.server.limits.Limits`, default its defaults); yields its URL."""
    from fewshotcx.server.background import background_server
    from fewshotcx.server.limits import Limits

    with background_server(store, api_key=api_key, data_root=data_root, sweep_seconds=sweep_seconds,
                           limits=limits or Limits()) as url:
        yield url
