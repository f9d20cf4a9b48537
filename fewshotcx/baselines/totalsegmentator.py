"""TotalSegmentator as a baseline (``fx.baselines.totalsegmentator``): a pretrained whole-body CT model.

Two ways in:

* :func:`predict` runs the ``totalsegmentator`` package on a query (``roi_subset`` = only the classes
  the asked structures need), where the package *and its weights* are installed. This module never
  downloads weights; :func:`unavailable` says in one line why it cannot run.
* :func:`load_masks` scores outputs produced elsewhere: a folder in TotalSegmentator's own layout,
  one ``<class>.nii.gz`` per class (its default ``-o DIR`` output).

Structure names are matched through :data:`NAME_MAP` (your name, spelling-normalised by
:func:`fewshotcx.datasets.canonical_name` → the TotalSegmentator classes whose union it is, e.g.
``"left lung"`` → its two lobes). A name not in the map is looked up as a class name itself
(``"kidney_left"`` works as is).
"""

from __future__ import annotations

import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..datasets.cases import canonical_name
from ..io.volume import PathLike, Volume, VolumeError, load_volume, reorient_array, save_volume

INSTALL_HINT = ("TotalSegmentator is not installed (pip install TotalSegmentator; it downloads its weights on "
                "first use); or score its outputs made elsewhere with --totalseg-masks DIR")

#: canonical structure name → TotalSegmentator (v2, task "total") classes whose union it is.
NAME_MAP: dict[str, tuple[str, ...]] = {
    "liver": ("liver",),
    "spleen": ("spleen",),
    "pancreas": ("pancreas",),
    "stomach": ("stomach",),
    "gallbladder": ("gallbladder",),
    "left kidney": ("kidney_left",),
    "right kidney": ("kidney_right",),
    "kidneys": ("kidney_left", "kidney_right"),
    "left adrenal gland": ("adrenal_gland_left",),
    "right adrenal gland": ("adrenal_gland_right",),
    "bladder": ("urinary_bladder",),
    "urinary bladder": ("urinary_bladder",),
    "prostate": ("prostate",),
    "colon": ("colon",),
    "small bowel": ("small_bowel",),
    "duodenum": ("duodenum",),
    "esophagus": ("esophagus",),
    "oesophagus": ("esophagus",),
    "trachea": ("trachea",),
    "heart": ("heart",),
    "aorta": ("aorta",),
    "spinal cord": ("spinal_cord",),
    "brain": ("brain",),
    "thyroid": ("thyroid_gland",),
    "thyroid gland": ("thyroid_gland",),
    "left lung": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
    "right lung": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "lungs": ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
              "lung_lower_lobe_right"),
    "left femur": ("femur_left",),
    "right femur": ("femur_right",),
    "left femoral head": ("femur_left",),
    "right femoral head": ("femur_right",),
}


#: Structures TotalSegmentator's "total" task does not segment as such (scoring a stand-in against
#: them would misstate the baseline): structure → why.
NOT_SEGMENTED: dict[str, str] = {
    "rectum": "its 'total' task has no rectum class (its colon class is the whole large bowel, rectum included; "
              "scoring the colon against a rectum contour would understate the baseline)",
}


def classes_for(structure: str) -> tuple[str, ...]:
    """The TotalSegmentator classes for ``structure`` (see :data:`NAME_MAP`; else the name itself,
    as TotalSegmentator spells classes: lower case with underscores).

    Raises:
        ValueError: a structure in :data:`NOT_SEGMENTED`.
    """
    key = canonical_name(structure)
    if key in NOT_SEGMENTED:
        raise ValueError(f"TotalSegmentator baseline for {structure!r}: {NOT_SEGMENTED[key]}")
    return NAME_MAP.get(key, (structure.strip().lower().replace(" ", "_").replace("-", "_"),))


def unavailable() -> Optional[str]:
    """``None`` when TotalSegmentator can run here; otherwise the one-line reason."""
    if find_spec("totalsegmentator") is None:
        return INSTALL_HINT
    try:
        from totalsegmentator.config import get_weights_dir  # noqa: PLC0415
    except ImportError:
        return "TotalSegmentator is installed but too old (no totalsegmentator.config): pip install -U TotalSegmentator"
    weights = Path(get_weights_dir())
    if not weights.is_dir() or not any(weights.glob("Dataset*")):
        return (f"TotalSegmentator's weights are not in {weights} (this module never downloads them): run "
                "TotalSegmentator once where it may download, or score its outputs with --totalseg-masks DIR")
    return None


def _union(folder: Path, structure: str, grid: Volume) -> np.ndarray:
    """Boolean union of ``structure``'s class masks in ``folder`` (canonical layout, ``grid``'s shape)."""
    own = folder / f"{structure}.nii.gz"
    files = [own] if own.is_file() else [folder / f"{c}.nii.gz" for c in classes_for(structure)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise VolumeError(f"{folder}: no mask for '{structure}' (looked for {', '.join(missing)})")
    union = np.zeros(grid.shape, dtype=bool)
    for path in files:
        mask = load_volume(path, label=True)
        if not mask.same_grid(grid, atol=1e-3 * max(1.0, max(grid.spacing))):
            raise VolumeError(f"{path} is not on the query's grid (shape {mask.shape} vs {grid.shape})")
        union |= mask.array != 0
    return union


def load_masks(folder: PathLike, structures: Sequence[str], query: Union[Volume, PathLike]) -> Volume:
    """Read TotalSegmentator outputs for ``structures`` as one label map on ``query``'s grid.

    Args:
        folder: TotalSegmentator's output folder for this query (``<class>.nii.gz`` files; a file named
            after your structure, ``<structure>.nii.gz``, is used in preference to the class union).
        structures: your structure names; structure ``i`` gets label value ``i + 1``.
        query: the query image the masks were made from (Volume or path).
    Returns:
        uint8 label Volume on ``query``'s exact grid and orientation (later structures win overlaps).
    Raises:
        VolumeError: a missing mask file, or a mask on another grid.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(f"TotalSegmentator mask folder not found: {folder}")
    original = query if isinstance(query, Volume) else load_volume(query)
    canonical = original.canonical()
    labels = np.zeros(canonical.shape, dtype=np.uint8)
    for value, structure in enumerate(structures, start=1):
        labels[_union(folder, structure, canonical)] = value
    return original.with_array(reorient_array(labels, canonical.affine, original.affine), label=True)


def predict(query: Union[Volume, PathLike], structures: Sequence[str], device: str = "cpu",
            fast: bool = False) -> Volume:
    """Run TotalSegmentator on ``query`` for ``structures`` (label ``i + 1`` = ``structures[i]``).

    ``fast=False`` (default) runs its full-resolution 1.5 mm model, the one its published accuracy
    is for; ``fast=True`` is the 3 mm model (much quicker on CPU, coarser: not a fair baseline).

    Raises:
        ImportError: the package or its weights are absent (the message is :func:`unavailable`'s).
    """
    reason = unavailable()
    if reason is not None:
        raise ImportError(reason)
    from totalsegmentator.python_api import totalsegmentator  # noqa: PLC0415

    original = query if isinstance(query, Volume) else load_volume(query)
    canonical = original.canonical()
    rois = sorted({c for s in structures for c in classes_for(s)})
    with tempfile.TemporaryDirectory(prefix="fewshotcx-totalseg-") as tmp:
        image = save_volume(Volume(canonical.array, canonical.affine), Path(tmp) / "query.nii.gz")
        totalsegmentator(str(image), str(Path(tmp) / "masks"), roi_subset=rois, fast=fast, device=device, quiet=True)
        return load_masks(Path(tmp) / "masks", structures, original)


__all__ = ["INSTALL_HINT", "NAME_MAP", "NOT_SEGMENTED", "classes_for", "load_masks", "predict", "unavailable"]
