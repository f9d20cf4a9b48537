"""A file holding the labelled volumes a training run loaded, so the run can move to another machine.

Loading the sources (package data, atlases, HU anatomy) takes minutes and needs their caches; a GPU
machine without network access gets this one file instead. Written with NumPy's compressed ``.npz``
(no pickle: read back with ``allow_pickle=False``): per volume its image (int16 when every voxel is
a whole number in range, as CT in HU is, else float16), its label map, its affine, and a JSON table
of names, groups, datasets, modalities, licences and structures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io.atomic import atomic_output
from ..io.volume import PathLike, Volume
from .tasks import LabelledVolume


def save_volume_cache(volumes: Sequence[LabelledVolume], path: PathLike, omitted: Sequence[str] = (),
                      overwrite: bool = False) -> Path:
    """Write ``volumes`` to ``path`` (``.npz``); returns the path.

    Args:
        omitted: names of volumes the sources had but the cache leaves out (a run's report set, never
            trained on): recorded, so a run from the cache still knows they exist.
    """
    arrays: dict[str, np.ndarray] = {}
    table = []
    for i, vol in enumerate(volumes):
        image = vol.image.array
        whole = np.all(np.mod(image, 1) == 0) and image.min() >= -32768 and image.max() <= 32767
        arrays[f"image_{i}"] = image.astype(np.int16 if whole else np.float16)
        arrays[f"labels_{i}"] = vol.labels.array.astype(np.uint16)
        arrays[f"affine_{i}"] = vol.image.affine.astype(np.float64)
        table.append({"name": vol.name, "group": vol.group, "dataset": vol.dataset, "modality": vol.modality,
                      "licence": vol.licence, "structures": {str(k): v for k, v in vol.structures.items()}})
    arrays["table"] = np.frombuffer(json.dumps({"volumes": table, "omitted": list(omitted)}).encode(), dtype=np.uint8)
    with atomic_output(Path(path), overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return Path(path)


def load_volume_cache(path: PathLike) -> tuple[list[LabelledVolume], list[str]]:
    """``(volumes, omitted names)`` as :func:`save_volume_cache` wrote them, in the same order."""
    with np.load(Path(path), allow_pickle=False) as data:
        table = json.loads(data["table"].tobytes().decode())
        out = []
        for i, row in enumerate(table["volumes"]):
            affine = data[f"affine_{i}"]
            image = Volume(data[f"image_{i}"].astype(np.float32), affine)
            labels = Volume(data[f"labels_{i}"], affine, label=True)
            out.append(LabelledVolume(row["name"], image, labels, {int(k): v for k, v in row["structures"].items()},
                                      row["group"], row["dataset"], row["modality"], row["licence"]))
    return out, list(table["omitted"])


__all__ = ["load_volume_cache", "save_volume_cache"]
