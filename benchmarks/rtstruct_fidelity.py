"""How faithfully RTSTRUCT contours become voxels: the read volume against the polygons' own area.

A planning system reports a structure's volume as its contours' area × slice spacing. For each ROI
of LUNG1-001's clinical RTSTRUCT (``../shared/data``, development data, never bundled) this compares
the voxels :func:`fewshotcx.rt.read_rtstruct` fills (× voxel volume) with the summed polygon areas
(shoelace formula in the image plane; holes, a contour inside another of its plane, subtracted)
× slice spacing, read as they are and shifted by half a slice (every contour off its plane).

    python benchmarks/rtstruct_fidelity.py            # under a minute

Writes benchmarks/results/rtstruct_fidelity.csv (one row per ROI and shift) and prints it.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
from matplotlib.path import Path as Polygon

from fewshotcx import rt
from fewshotcx.io.dicom import scan_series

from common import machine_info, write_and_show

RESULTS = Path(__file__).parent / "results" / "rtstruct_fidelity.csv"
LUNG1 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mirp" / "ct_images_seg_nsclc" / "LUNG1-001"


def polygon_volume(contours: list[np.ndarray], slice_mm: float) -> float:
    """mm³ of closed planar contours ``(N, 2)`` (in-plane mm, one list per plane): each plane's
    contours summed, those inside an odd number of others on the same plane subtracted."""
    area = 0.0
    for polygon in contours:
        x, y = polygon[:, 0], polygon[:, 1]
        own = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
        depth = sum(Polygon(other).contains_points(polygon).all() for other in contours if other is not polygon)
        area += -own if depth % 2 else own
    return area * slice_mm


def planes(ds: pydicom.Dataset, roi_number: int, rows: np.ndarray) -> dict[float, list[np.ndarray]]:
    """The ROI's closed planar contours by plane height, as in-plane ``(N, 2)`` mm coordinates."""
    out: dict[float, list[np.ndarray]] = {}
    for item in ds.ROIContourSequence:
        if int(item.ReferencedROINumber) != roi_number:
            continue
        for contour in item.get("ContourSequence", []):
            if contour.ContourGeometricType != "CLOSED_PLANAR":
                continue
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            height = round(float(points[0] @ rows[2]), 3)
            out.setdefault(height, []).append(points @ rows[:2].T)
    return out


def shifted_copy(rtstruct: Path, shift_mm: float, folder: Path) -> Path:
    """The RTSTRUCT with every contour moved ``shift_mm`` along the patient's z axis."""
    ds = pydicom.dcmread(rtstruct)
    for item in ds.ROIContourSequence:
        for contour in item.get("ContourSequence", []):
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            points[:, 2] += shift_mm
            contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
    out = folder / f"shifted_{shift_mm:g}.dcm"
    ds.save_as(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not LUNG1.is_dir():
        raise SystemExit(f"needs the development data in {LUNG1} (../shared/data)")
    series_dir, rtstruct = LUNG1 / "image", LUNG1 / "mask_rtstruct" / "1-1.dcm"
    series = scan_series(series_dir)
    directions = series.affine_lps[:3, :3] / np.linalg.norm(series.affine_lps[:3, :3], axis=0)
    rows = directions.T  # row 0, 1: in-plane axes; row 2: the slice normal
    slice_mm = float(np.linalg.norm(series.affine_lps[:3, 2]))
    voxel_mm3 = float(abs(np.linalg.det(series.affine_lps[:3, :3])))
    ds = pydicom.dcmread(rtstruct)
    names = {int(roi.ROINumber): str(roi.ROIName) for roi in ds.StructureSetROISequence}
    machine, result = machine_info(), []
    with tempfile.TemporaryDirectory() as tmp:
        for shift in (0.0, slice_mm / 2):
            source = rtstruct if shift == 0 else shifted_copy(rtstruct, shift, Path(tmp))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                masks = rt.read_rtstruct(source, series_dir)
            for number, name in names.items():
                contours = planes(ds, number, rows)
                expected = sum(polygon_volume(c, slice_mm) for c in contours.values())
                voxels = int(masks[name].array.sum())
                result.append({"roi": name, "shift_mm": round(shift, 2), "contours": sum(map(len, contours.values())),
                               "polygon_ml": round(expected / 1000, 2), "voxels": voxels,
                               "read_ml": round(voxels * voxel_mm3 / 1000, 2),
                               "ratio": round(voxels * voxel_mm3 / expected, 4), "machine": machine})
                print({k: v for k, v in result[-1].items() if k != "machine"}, flush=True)
    write_and_show(result, args.out, "RTSTRUCT read volume vs polygon area x slice spacing (LUNG1-001)")


if __name__ == "__main__":
    main()
