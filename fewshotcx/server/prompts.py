"""The wire format of the contouring loop's interactions (box, point, scribble), shared by
:mod:`fewshotcx.server` (which decodes and checks) and the torch-free client (which encodes).

Every body is a small JSON object; every voxel is ``[i, j, k]``, an index into the image's *own*
array (the file as stored: ``array[i, j, k]`` as nibabel and SimpleITK index it; docs/geometry.md,
"Slice indices"), as for :class:`~fewshotcx.session.ContourSession`:

=====================  ================================================================================
``POST …/box``          ``{"lo": [i, j, k], "hi": [i, j, k], "label": 1}``: inclusive corners,
                        ``lo <= hi`` on every axis; a 2D box on slice ``k`` when ``lo[2] == hi[2]``
``POST …/point``        ``{"ijk": [i, j, k], "positive": true, "label": 1}``
``POST …/scribble``     ``{"voxels": [[i, j, k], …], "positive": true, "label": 1}``: the voxels the
                        brush covered (at most :data:`MAX_SCRIBBLE_VOXELS`, repeats allowed)
=====================  ================================================================================

``label`` (default 1) is a label value in ``[1, 255]``; ``positive`` (default ``true``) a JSON boolean.
A scribble travels as coordinates rather than as a mask: a brush stroke covers a few hundred voxels of
a volume of millions, each coordinate is checked against the image's shape before anything is indexed,
and the decoded size is bounded by the body's, which is bounded before it is read
(:data:`SCRIBBLE_BODY_BYTES`): there is no compressed stream to inflate, hence no decompression bomb.
A body with any other key, a value of another type or a voxel outside the image is refused whole.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from .wire import MAX_WIRE_LABEL

#: Voxels one scribble may carry.
MAX_SCRIBBLE_VOXELS = 1 << 16
#: Body limits (bytes): a box or point, and a scribble (compact JSON, up to 24 bytes per voxel).
PROMPT_BODY_BYTES = 1024
SCRIBBLE_BODY_BYTES = PROMPT_BODY_BYTES + 24 * MAX_SCRIBBLE_VOXELS

Voxel = tuple[int, int, int]


# ------------------------------------------------------------------ encoding (client)
def box_body(lo: Sequence[int], hi: Sequence[int], label: int = 1) -> bytes:
    """The body of ``POST …/box``."""
    return _dump({"lo": _ints(lo), "hi": _ints(hi), "label": int(label)})


def point_body(ijk: Sequence[int], positive: bool = True, label: int = 1) -> bytes:
    """The body of ``POST …/point``."""
    return _dump({"ijk": _ints(ijk), "positive": bool(positive), "label": int(label)})


def scribble_body(mask: np.ndarray, positive: bool = True, label: int = 1) -> bytes:
    """The body of ``POST …/scribble``: the non-zero voxels of ``mask`` (the image's own shape).

    Raises:
        ValueError: an empty mask, or more than :data:`MAX_SCRIBBLE_VOXELS` voxels.
    """
    voxels = np.argwhere(np.asarray(mask))
    _check_count(len(voxels))
    return _dump({"voxels": voxels.tolist(), "positive": bool(positive), "label": int(label)})


def _ints(values: Sequence[int]) -> list[int]:
    return [int(v) for v in values]


def _dump(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


# ------------------------------------------------------------------ decoding (server)
def parse_box(body: Any, shape: Sequence[int]) -> tuple[Voxel, Voxel, int]:
    """``(lo, hi, label)`` of a box body, checked against the image's own ``shape``.

    Raises:
        ValueError: anything but the format above (one line).
    """
    fields = _fields(body, required=("lo", "hi"), optional=("label",))
    lo, hi = _voxel(fields["lo"], shape, "lo"), _voxel(fields["hi"], shape, "hi")
    if any(a > b for a, b in zip(lo, hi)):
        raise ValueError(f"box corners must satisfy lo <= hi on every axis, got lo={list(lo)}, hi={list(hi)}")
    return lo, hi, _label(fields)


def parse_point(body: Any, shape: Sequence[int]) -> tuple[Voxel, bool, int]:
    """``(ijk, positive, label)`` of a point body.

    Raises:
        ValueError: anything but the format above.
    """
    fields = _fields(body, required=("ijk",), optional=("positive", "label"))
    return _voxel(fields["ijk"], shape, "ijk"), _positive(fields), _label(fields)


def parse_scribble(body: Any, shape: Sequence[int]) -> tuple[np.ndarray, bool, int]:
    """``(mask, positive, label)`` of a scribble body: ``mask`` a bool array of ``shape``, built only
    once every voxel is known to lie inside it.

    Raises:
        ValueError: anything but the format above.
    """
    fields = _fields(body, required=("voxels",), optional=("positive", "label"))
    voxels = fields["voxels"]
    if not isinstance(voxels, list):
        raise ValueError("'voxels' must be a list of [i, j, k] voxel indices")
    _check_count(len(voxels))
    index = np.array([_voxel(v, shape, "voxels[]") for v in voxels], dtype=np.int64)
    mask = np.zeros(tuple(int(n) for n in shape), dtype=bool)
    mask[tuple(index.T)] = True
    return mask, _positive(fields), _label(fields)


def _fields(body: Any, required: tuple[str, ...], optional: tuple[str, ...]) -> dict:
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"unexpected field {unknown[0]!r} (expected {', '.join(required + optional)})")
    missing = [name for name in required if name not in body]
    if missing:
        raise ValueError(f"missing field {missing[0]!r}")
    return body


def _voxel(value: Any, shape: Sequence[int], name: str) -> Voxel:
    if (not isinstance(value, list) or len(value) != 3
            or not all(type(v) is int and 0 <= v < int(n) for v, n in zip(value, shape))):
        raise ValueError(f"{name!r} must be [i, j, k]: three integers inside the image's own shape "
                         f"{'x'.join(str(int(n)) for n in shape)}")
    return value[0], value[1], value[2]


def _label(fields: dict) -> int:
    label = fields.get("label", 1)
    if type(label) is not int or not 1 <= label <= MAX_WIRE_LABEL:
        raise ValueError(f"'label' must be an integer label value in [1, {MAX_WIRE_LABEL}]")
    return label


def _positive(fields: dict) -> bool:
    positive = fields.get("positive", True)
    if not isinstance(positive, bool):
        raise ValueError("'positive' must be true or false")
    return positive


def _check_count(count: int) -> None:
    if not 1 <= count <= MAX_SCRIBBLE_VOXELS:
        raise ValueError(f"a scribble covers 1 to {MAX_SCRIBBLE_VOXELS} voxels, got {count}")
