"""Generated planning cases for the radiotherapy workflow tests: a CT series with an RTSTRUCT under
clinical (non-TG-263) ROI names, and a query series of another patient and study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import torch

from fewshotcx import rt
from fewshotcx.io import dicom
from fewshotcx.io.volume import Volume
from fewshotcx.models import UniverSeg
from fewshotcx.models.weights import save_checkpoint

SHAPE = (28, 28, 10)  # square slices: rt-utils indexes masks (row, column) in a (Columns, Rows) array
AFFINE = np.diag([-1.5, -1.5, 3.0, 1.0])  # an axial LPS-stored series, 1.5 x 1.5 x 3 mm
#: Clinical ROI names in the plan, and the TG-263 names a user asks for.
PLAN_ROIS = {"Lung-Left": "Lung_L", "SPINAL CORD": "SpinalCord", "GTV-1": "GTV"}


def phantom(shift: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A CT-like image ``(X, Y, Z)`` in HU and three structure masks, shifted by ``shift`` voxels in x."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij"), axis=-1)
    grid[..., 0] -= shift
    lung = (((grid - [9, 13, 5]) / [6, 8, 6]) ** 2).sum(-1) <= 1
    cord = (((grid[..., :2] - [20, 20]) / [2, 2]) ** 2).sum(-1) <= 1
    gtv = (((grid - [10, 12, 5]) / [2.5, 2.5, 1.5]) ** 2).sum(-1) <= 1
    image = np.full(SHAPE, -200.0) + np.random.default_rng(shift).normal(0, 20, SHAPE)
    image[lung] = -800.0
    image[gtv] = 40.0
    image[cord] = 300.0
    return image.astype(np.float32), {"Lung-Left": lung, "SPINAL CORD": cord, "GTV-1": gtv & lung}


def set_patient(directory: Path, patient_id: str, name: str) -> None:
    """Give a generated series a patient and study identity (as a clinical export has)."""
    for path in sorted(directory.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, name, "19600101", "F"
        ds.StudyID, ds.StudyDate, ds.AccessionNumber = "S1", "20240102", "ACC-1"
        ds.PatientIdentityRemoved = "NO"
        ds.save_as(path)


def make_plan(root: Path, shift: int = 0, patient: str = "PLAN-1") -> tuple[Path, Path]:
    """``(CT folder, RTSTRUCT file)`` of a generated previous plan."""
    image, masks = phantom(shift)
    ct = root / f"{patient}_ct"
    dicom.write_dicom_series(Volume(image, AFFINE), ct)
    set_patient(ct, patient, f"PLAN^{patient}")
    rs = root / f"{patient}_RS.dcm"
    rt.write_rtstruct({name: Volume(m.astype(np.uint8), AFFINE, label=True) for name, m in masks.items()}, ct, rs)
    return ct, rs


def make_query(root: Path, shift: int = 1) -> Path:
    """A query CT series of another patient and study."""
    image, _ = phantom(shift)
    ct = root / "query_ct"
    dicom.write_dicom_series(Volume(image, AFFINE), ct)
    set_patient(ct, "NEW-7", "DOE^JANE")
    return ct


def tiny_weights(path: Path) -> Path:
    """A tiny seeded UniverSeg checkpoint (predictions are not the point of these tests)."""
    torch.manual_seed(0)
    model = UniverSeg((8, 8, 8, 8), (8, 8, 8))
    return save_checkpoint(model, path, model.config, {"slice_size": 32})
