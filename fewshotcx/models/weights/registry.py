"""Known checkpoints, where they live, and fetching them: ``"default"``, ``"official"``, registry names.

Weights are named by a *spec*: a file path, ``"default"`` (the checkpoint bundled with fewshotcx),
``"official"`` (the backend's published checkpoint) or a registry name (e.g. ``"sam-vit_l"``).
Official files live in :func:`cache_dir` (``$FEWSHOTCX_HOME``, default ``~/.cache/fewshotcx``);
they are downloaded on request and verified against the SHA-256 (or published hash prefix) and
size recorded here when known.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch

from ...io.atomic import atomic_output
from ...paths import home
from ...progress import show_progress

PathLike = Union[str, os.PathLike]

#: Where the bundled default checkpoint lives inside the installed package.
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "bundled"

_BLOCK = 1 << 20


class WeightsError(ValueError):
    """A checkpoint that cannot be found, fetched or used; the message says why in one line."""


@dataclass(frozen=True)
class Checkpoint:
    """One known checkpoint. ``url``/``size_bytes``/``sha256`` are ``None`` where unknown;
    ``hash_prefix`` is the leading hex digits of the SHA-256 that the publisher puts in the file name
    (Segment Anything does), checked on download when no full ``sha256`` is pinned."""

    name: str
    backend: str
    filename: str
    url: str | None
    size_bytes: int | None
    sha256: str | None
    licence: str
    description: str
    bundled: bool = False
    hash_prefix: str | None = None


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM_LICENCE = "Apache-2.0 (facebookresearch/segment-anything)"

# SHA-256 digests and sizes are None where the upstream publishes none. To pin one: compare with a
# hash the upstream publishes if it ever does, or else compute it (`sha256_file`) on a first download
# made over a trusted connection, check the model reproduces upstream results, and record it here;
# `resolve` then verifies every later download against it.
REGISTRY: dict[str, Checkpoint] = {
    entry.name: entry
    for entry in (
        Checkpoint(
            name="default",
            backend="universeg",
            filename="default_universeg.pt",
            url=None,
            size_bytes=None,
            sha256=None,
            licence="see docs/model_card.md",
            description="fewshotcx's bundled UniverSeg checkpoint: physical scale (128² slices of 2.5 mm around "
                        "the body), trained by this project on one GPU on a CT-heavy mix (not the official UniverSeg "
                        "weights; see docs/model_card.md)",
            bundled=True,
        ),
        Checkpoint(
            name="fov64",
            backend="universeg",
            filename="fov64_universeg.pt",
            url=None,
            size_bytes=None,
            sha256=None,
            licence="see docs/model_card.md",
            description="fewshotcx 0.2's bundled default (64² slices fitted to the field of view, trained on CPU, "
                        "mostly brains): kept so that the numbers measured with it stay reproducible",
            bundled=True,
        ),
        Checkpoint(
            name="universeg-official",
            backend="universeg",
            filename="universeg_v1_nf64_ss64_STA.pt",
            url="https://github.com/JJGO/UniverSeg/releases/download/weights/universeg_v1_nf64_ss64_STA.pt",
            size_bytes=None,
            sha256=None,
            licence="OpenRAIL++-M, research use only (never bundled)",
            description="official UniverSeg v1 weights (JJGO/UniverSeg GitHub release)",
        ),
        Checkpoint(
            name="sam-vit_b",
            backend="sam",
            filename="sam_vit_b_01ec64.pth",
            url=_SAM_URL + "sam_vit_b_01ec64.pth",
            size_bytes=None,
            sha256=None,
            licence=_SAM_LICENCE,
            description="Segment Anything ViT-B",
            hash_prefix="01ec64",
        ),
        Checkpoint(
            name="sam-vit_l",
            backend="sam",
            filename="sam_vit_l_0b3195.pth",
            url=_SAM_URL + "sam_vit_l_0b3195.pth",
            size_bytes=None,
            sha256=None,
            licence=_SAM_LICENCE,
            description="Segment Anything ViT-L",
            hash_prefix="0b3195",
        ),
        Checkpoint(
            name="sam-vit_h",
            backend="sam",
            filename="sam_vit_h_4b8939.pth",
            url=_SAM_URL + "sam_vit_h_4b8939.pth",
            size_bytes=None,
            sha256=None,
            licence=_SAM_LICENCE,
            description="Segment Anything ViT-H",
            hash_prefix="4b8939",
        ),
        Checkpoint(
            name="medsam-vit_b",
            backend="sam",
            filename="medsam_vit_b.pth",
            url=None,
            size_bytes=None,
            sha256=None,
            licence="Apache-2.0 (bowang-lab/MedSAM)",
            description="MedSAM ViT-B (no direct download: get it from the MedSAM project page)",
        ),
    )
}

#: What ``"official"`` and ``"default"`` mean for each backend.
OFFICIAL = {"universeg": "universeg-official", "sam": "sam-vit_b"}
DEFAULT = {"universeg": "default"}


def cache_dir() -> Path:
    """Directory for downloaded checkpoints: ``$FEWSHOTCX_HOME`` or ``~/.cache/fewshotcx`` (not created here)."""
    return home()


def expected_path(checkpoint: Checkpoint) -> Path:
    """Where ``checkpoint`` is looked for: the package's weights folder if bundled, else :func:`cache_dir`."""
    return (BUNDLED_DIR if checkpoint.bundled else cache_dir()) / checkpoint.filename


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def registry_entry(spec: str, backend: str) -> Checkpoint | None:
    """The registry entry a spec names for ``backend`` (``None`` if the spec is not a name)."""
    table = {"official": OFFICIAL, "default": DEFAULT}.get(spec)
    if table is not None:
        if backend not in table:
            raise WeightsError(f"the {backend} backend has no {spec!r} checkpoint; pass a checkpoint path")
        spec = table[backend]
    entry = REGISTRY.get(spec)
    if entry is not None and entry.backend != backend:
        raise WeightsError(f"checkpoint {spec!r} is for the {entry.backend} backend, not {backend}")
    return entry


def resolve(spec: PathLike, backend: str, *, download: bool = True) -> Path:
    """The checkpoint file a spec names for ``backend``.

    Args:
        spec: a path (must exist), ``"default"``, ``"official"`` or a :data:`REGISTRY` name.
        backend: ``"universeg"`` or ``"sam"``.
        download: fetch a missing official file into :func:`cache_dir` (verified where the size
            or SHA-256 is known); ``False`` never touches the network.

    Raises:
        WeightsError: missing file, failed download or verification; the message names the file,
            its URL and the directory to put it in.
    """
    entry = registry_entry(spec, backend) if isinstance(spec, str) else None
    if entry is None:
        path = Path(spec).expanduser()
        if not path.is_file():
            names = ", ".join(["default", "official", *sorted(REGISTRY)])
            raise WeightsError(f"checkpoint file not found: {path} (or use one of: {names})")
        return path
    path = expected_path(entry)
    if path.is_file():
        return path
    if entry.bundled:
        raise WeightsError(f"the bundled checkpoint {path} is missing from this installation (it is produced by "
                           f"`fewshotcx train`); pass weights='official' or a checkpoint path")
    source = f"download it from {entry.url}" if entry.url else "get it from its publisher (no direct download URL)"
    hint = f"{entry.filename} not found: {source} and put it in {path.parent} (or set FEWSHOTCX_HOME)"
    if not (download and entry.url):
        raise WeightsError(hint)
    try:
        _download(entry, path)
    except (OSError, ValueError, http.client.HTTPException) as err:  # URLError, timeouts: OSError
        raise WeightsError(f"{hint}; automatic download failed: {err}") from err
    return path


def _download(entry: Checkpoint, path: Path) -> None:
    """Download ``entry.url`` with :func:`torch.hub.download_url_to_file` (SHA-256 or its published
    prefix checked; a bar only on a terminal), check the size, then move it onto ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"fewshotcx: downloading {entry.filename} ({entry.licence}) from {entry.url}", file=sys.stderr)
    with atomic_output(path) as tmp:
        try:
            torch.hub.download_url_to_file(entry.url, str(tmp), hash_prefix=entry.sha256 or entry.hash_prefix,
                                           progress=show_progress())
        except RuntimeError as err:  # torch.hub's hash mismatch
            raise WeightsError(str(err)) from None
        size = tmp.stat().st_size
        if entry.size_bytes is not None and size != entry.size_bytes:
            raise WeightsError(f"got {size} bytes, expected {entry.size_bytes}")
