"""The contour-session file (``.npz``, no pickle) behind :meth:`ContourSession.save
<fewshotcx.session.ContourSession.save>` and ``load``.

It holds the image in its own layout, its drawn slices and a JSON ``meta`` record (format name,
version, declared ``classes``, ``neighbours``, ``modality``, ``slices``). Version 2 (0.4.0) stores
slices as the image's own indices and ``(X, Y)`` planes ``array[:, :, k]`` (docs/geometry.md, "Slice
indices"); version 1 stored canonical ones and is converted on reading.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_output
from .grid import AxialSlices, PathLike, Volume

FORMAT = "fewshotcx-contour-session"
VERSION = 2


def write_session_file(path: PathLike, meta: dict, slices: list[int], masks: list[np.ndarray], image: Volume,
                       overwrite: bool = False) -> Path:
    """Write ``image`` (own layout), its drawn ``slices`` (own indices) with their own ``(X, Y)``
    ``masks`` and ``meta`` atomically.

    Raises:
        ValueError: ``path`` does not end in ``.npz``. FileExistsError: it exists and not ``overwrite``.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"session files end in .npz: {path}")
    record = {"format": FORMAT, "version": VERSION, **meta, "slices": list(slices)}
    stack = np.stack(masks) if masks else np.zeros((0,) + image.shape[:2], np.int64)
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, meta=np.array(json.dumps(record)), masks=stack, image=image.array,
                                affine=image.affine)
    return path


def read_session_file(path: PathLike) -> tuple[dict, Volume, list[tuple[int, np.ndarray]]]:
    """``(meta, image in its stored layout, [(canonical z, canonical (X, Y) mask), ...])``; a version-1
    file's ``meta["labels"]`` is returned as ``meta["classes"]``.

    Raises:
        ValueError: not a session file of version 1 or 2 (one line).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            masks, array, affine = data["masks"], data["image"], data["affine"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} is not a fewshotcx contour session file ({exc})") from None
    version = meta.get("version") if isinstance(meta, dict) and meta.get("format") == FORMAT else None
    if version not in (1, VERSION):
        raise ValueError(f"{path} is not a version-1 or -{VERSION} fewshotcx contour session file")
    stored = Volume(array, affine)
    own = AxialSlices.of(affine, array.shape, str(path))
    if version == 1:  # canonical indices and planes
        meta["classes"] = meta.pop("labels", None)
        drawn = [(own.check(int(k)), np.asarray(mask)) for k, mask in zip(meta["slices"], masks)]
    else:
        drawn = [(own.to_canonical(int(k)), own.plane_to_canonical(mask)) for k, mask in zip(meta["slices"], masks)]
    return meta, stored, drawn
