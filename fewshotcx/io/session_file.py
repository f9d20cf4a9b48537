"""The contour-session file (``.npz``, no pickle) behind :meth:`ContourSession.save
<fewshotcx.session.ContourSession.save>` and ``load``.

It holds the image in its own layout, its drawn slices, its interactions and a JSON ``meta`` record
(format name, version, declared ``classes``, ``neighbours``, ``modality``, ``slices``, ``prompts``).
Version 3 adds the interactions (boxes, clicks, scribbles, oldest first): per prompt a ``meta``
record ``{"kind", "label", "positive", "voxels": count}`` and its voxels, the image's own ``(i, j, k)``,
in one ``(N, 3)`` array ``prompt_voxels`` (a box: its corners ``lo``, ``hi``). Version 2 (0.4.0)
stores slices as the image's own indices and ``(X, Y)`` planes ``array[:, :, k]`` (docs/geometry.md,
"Slice indices"), with no interactions; version 1 stored canonical ones and is converted on reading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_output
from .grid import AxialSlices, PathLike, Volume

FORMAT = "fewshotcx-contour-session"
VERSION = 3


def write_session_file(path: PathLike, meta: dict, slices: list[int], masks: list[np.ndarray], image: Volume,
                       overwrite: bool = False, prompts: Sequence[tuple[dict, np.ndarray]] = ()) -> Path:
    """Write ``image`` (own layout), its drawn ``slices`` (own indices) with their own ``(X, Y)``
    ``masks``, the ``prompts`` (``(record, (N, 3) own voxels)`` each, oldest first) and ``meta`` atomically.

    Raises:
        ValueError: ``path`` does not end in ``.npz``. FileExistsError: it exists and not ``overwrite``.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"session files end in .npz: {path}")
    record = {"format": FORMAT, "version": VERSION, **meta, "slices": list(slices),
              "prompts": [{**r, "voxels": len(v)} for r, v in prompts]}
    stack = np.stack(masks) if masks else np.zeros((0,) + image.shape[:2], np.int64)
    voxels = np.concatenate([v for _, v in prompts]) if prompts else np.zeros((0, 3))
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, meta=np.array(json.dumps(record)), masks=stack, image=image.array,
                                affine=image.affine, prompt_voxels=voxels.astype(np.int32))
    return path


def read_session_file(path: PathLike) -> tuple[dict, Volume, list[tuple[int, np.ndarray]], list[tuple[dict, np.ndarray]]]:
    """``(meta, image in its stored layout, [(canonical z, canonical (X, Y) mask), ...], [(prompt
    record, (N, 3) canonical voxels), ...])``; a version-1 file's ``meta["labels"]`` is returned as
    ``meta["classes"]``; files before version 3 hold no prompts.

    Raises:
        ValueError: not a session file of version 1, 2 or 3 (one line).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            masks, array, affine = data["masks"], data["image"], data["affine"]
            voxels = data["prompt_voxels"] if "prompt_voxels" in data else np.zeros((0, 3), np.int32)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} is not a fewshotcx contour session file ({exc})") from None
    version = meta.get("version") if isinstance(meta, dict) and meta.get("format") == FORMAT else None
    if version not in (1, 2, VERSION):
        raise ValueError(f"{path} is not a version-1, -2 or -{VERSION} fewshotcx contour session file")
    records = meta.get("prompts", [])
    ends = np.cumsum([0] + [int(r["voxels"]) for r in records])
    stored = Volume(array, affine)
    own = AxialSlices.of(affine, array.shape, str(path))
    if version == 1:  # canonical indices and planes
        meta["classes"] = meta.pop("labels", None)
        drawn = [(own.check(int(k)), np.asarray(mask)) for k, mask in zip(meta["slices"], masks)]
    else:
        drawn = [(own.to_canonical(int(k)), own.plane_to_canonical(mask)) for k, mask in zip(meta["slices"], masks)]
    prompts = [(r, own.voxels_to_canonical(voxels[a:b])) for r, a, b in zip(records, ends[:-1], ends[1:])]
    return meta, stored, drawn, prompts
