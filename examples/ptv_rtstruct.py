"""From a CTV to a PTV in a DICOM RTSTRUCT, end to end on generated data (runs in a few seconds).

1. Generate a small synthetic pelvis-like CT as a DICOM series (head-first supine axial, LPS) in a
   temporary folder. (Synthetic: no number printed here is a result on medical images.)
2. Take a CTV and a bladder on that series' grid (here drawn analytically; in practice
   ``fx.Segmenter(...).fit(images, labels).predict(ct)`` from a few labelled patients).
3. PTV = CTV + 7 mm (10 mm superior/inferior) − bladder, with exact Euclidean margins.
4. Write the CTV, PTV and bladder as an RTSTRUCT that references the series, read it back and
   print the Dice of each ROI against the masks that were written.

Usage: python examples/ptv_rtstruct.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import fewshotcx as fx
from fewshotcx import rt
from fewshotcx.io import dicom


def synthetic_ct(shape=(64, 56, 24), spacing=(1.0, 1.0, 3.0)) -> tuple[fx.Volume, dict[str, np.ndarray]]:
    """A CT-like volume in LPS layout (HU) and the ``(X, Y, Z)`` world mm grid of its voxels."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [32.0, 28.0, -36.0]  # array centre near the world origin
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    body = (x / 30.0) ** 2 + (y / 24.0) ** 2 <= 1.0
    bladder = (x / 14.0) ** 2 + ((y - 8.0) / 10.0) ** 2 + ((z - 6.0) / 16.0) ** 2 <= 1.0
    ctv = (x / 9.0) ** 2 + ((y + 6.0) / 8.0) ** 2 + (z / 14.0) ** 2 <= 1.0
    rng = np.random.default_rng(0)
    hu = np.where(body, 40.0, -1000.0) + np.where(bladder, -30.0, 0.0) + rng.normal(0.0, 10.0, shape)
    return fx.Volume(np.round(hu), affine), {"CTV": ctv, "Bladder": bladder}


def main(keep: str | None = None) -> dict[str, float]:
    """Run the workflow in ``keep`` (kept) or a temporary folder (removed); returns Dice per ROI."""
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return run(Path(keep))
    with tempfile.TemporaryDirectory(prefix="fewshotcx-rt-") as tmp:
        return run(Path(tmp))


def run(workdir: Path) -> dict[str, float]:
    image, structures = synthetic_ct()
    series_dir = workdir / "ct"
    dicom.write_dicom_series(image, series_dir, overwrite=True)

    ct = fx.load_volume(series_dir)  # canonical RAS, as a Segmenter would predict on it
    masks = {name: fx.Volume(m.astype(np.uint8), image.affine, label=True).canonical()
             for name, m in structures.items()}
    assert all(m.same_grid(ct) for m in masks.values())

    margins = {"right": 7, "left": 7, "anterior": 7, "posterior": 7, "superior": 10, "inferior": 10}
    ptv = rt.subtract(rt.expand_margin(masks["CTV"], margins), masks["Bladder"])
    rois = {"CTV": masks["CTV"], "PTV": ptv, "Bladder": masks["Bladder"]}
    out = rt.write_rtstruct(rois, series_dir, workdir / "RS.dcm", overwrite=True)

    back = rt.read_rtstruct(out, series_dir)
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    scores = {}
    for name, mask in rois.items():
        scores[name] = fx.metrics.dice(back[name], mask)
        print(f"{name:8s} {mask.array.sum() * voxel_ml:7.1f} ml   Dice after RTSTRUCT round trip: {scores[name]:.4f}")
    print(f"RTSTRUCT with {len(back)} ROIs referencing {len(list(series_dir.iterdir()))} CT slices: {out.name}")
    return scores


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="write into this folder instead of a temporary one")
    main(parser.parse_args().keep)
