"""Known checkpoints, the cache directory, and safe checkpoint loading.

Weights are named by a *spec*: a file path, ``"default"`` (the checkpoint bundled with fewshotcx),
``"official"`` (the backend's published checkpoint) or a registry name (e.g. ``"sam-vit_l"``).
Official files live in :func:`cache_dir` (``$FEWSHOTCX_HOME``, default ``~/.cache/fewshotcx``);
they are downloaded on request and verified against the size and SHA-256 recorded here when known.
Checkpoints are always read with ``torch.load(..., weights_only=True)``.

Our own checkpoints (:func:`save_checkpoint`) are ``{"state_dict": ..., "config": ..., "extra": ...}``
with plain tensors and Python types only; third-party checkpoints may be a bare state dict or wrap it
under ``"model"`` or ``"state_dict"``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

from ..io.atomic import atomic_output
from ..paths import home
from ..progress import show_progress
from .universeg import V1_DECODER_BLOCKS, V1_ENCODER_BLOCKS, UniverSeg

PathLike = Union[str, os.PathLike]

#: Where the bundled default checkpoint lives inside the installed package.
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"

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
            description="fewshotcx's bundled UniverSeg checkpoint, a small model trained on CPU by this project "
                        "(not the official UniverSeg weights; see docs/model_card.md)",
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


def _registry_entry(spec: str, backend: str) -> Checkpoint | None:
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
    entry = _registry_entry(spec, backend) if isinstance(spec, str) else None
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


def load_checkpoint(path: PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint safely (``weights_only=True``) as ``(state_dict, metadata)``.

    Accepts a bare state dict or a dict holding it under ``"state_dict"`` or ``"model"``; metadata is
    every other top-level entry (for our own checkpoints ``"config"`` and ``"extra"``), ``{}`` for a
    bare state dict.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise WeightsError(f"checkpoint file not found: {path}") from err
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({reason})") from err
    metadata: dict[str, Any] = {}
    if isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict):
                metadata = {k: v for k, v in payload.items() if k != key}
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in payload.items()
    ):
        raise WeightsError(f"{path} holds no state dict (expected a non-empty dict of name -> tensor, "
                           f"possibly under 'state_dict' or 'model'), got {type(payload).__name__}")
    return payload, metadata


def load_state_dict(path: PathLike) -> dict[str, Tensor]:
    """The state dict of a checkpoint file (see :func:`load_checkpoint`)."""
    return load_checkpoint(path)[0]


# Key prefixes that identify a checkpoint family, for error messages.
_FAMILIES = {
    "SAM": ("image_encoder.", "prompt_encoder.", "mask_decoder."),
    "UniverSeg": ("enc_blocks.", "dec_blocks.", "out_conv."),
}


def _family(keys: list[str]) -> tuple[str, str] | None:
    """(family name, its first key prefix) that most keys start with, if any."""
    for name, prefixes in _FAMILIES.items():
        if sum(k.startswith(prefixes) for k in keys) * 2 > len(keys):
            return name, prefixes[0]
    return None


def _examples(keys: list[str], count: int = 3) -> str:
    return ", ".join(keys[:count]) + (", ..." if len(keys) > count else "")


def check_keys(state_dict: dict[str, Tensor], model: nn.Module, what: str) -> None:
    """Raise a readable WeightsError unless ``state_dict`` fits ``model`` exactly (keys and shapes).

    Args:
        what: how to name the checkpoint in the message, e.g. its path.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    given, needed = _family(list(state_dict)), _family(list(expected))
    if given and needed and given[0] != needed[0]:
        parts.append(f"this looks like a {given[0]} checkpoint (keys {given[1]}*) but the "
                     f"{type(model).__name__} model needs a {needed[0]} checkpoint (keys {needed[1]}*)")
    elif missing and all(("module." + k) in state_dict for k in missing[:3]):
        parts.append("its keys carry a 'module.' prefix (saved from a DataParallel wrapper): strip it first")
    if missing:
        parts.append(f"{len(missing)} missing keys ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
    if mismatched:
        shapes = "; ".join(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                           for k in mismatched[:3])
        parts.append(f"{len(mismatched)} shape mismatches ({shapes}{'; ...' if len(mismatched) > 3 else ''})")
    raise WeightsError(f"{what} does not fit the {type(model).__name__} model: " + "; ".join(parts))


def _universeg_config(state_dict: dict[str, Tensor]) -> dict[str, Any]:
    """Architecture of a UniverSeg state dict without a recorded config (e.g. the official v1 file).

    Widths are the output channels of each block's cross conv; ``in_channels`` follows from the
    first cross conv's ``2C+1`` input channels. Falls back to v1 where keys are absent (the strict
    key check then reports what is wrong).
    """
    def widths(prefix: str, default: tuple[int, ...]) -> list[int]:
        found, i = [], 0
        while f"{prefix}.{i}.cross.cross_conv.weight" in state_dict:
            found.append(int(state_dict[f"{prefix}.{i}.cross.cross_conv.weight"].shape[0]))
            i += 1
        return found or list(default)

    first = state_dict.get("enc_blocks.0.cross.cross_conv.weight")
    in_channels = (int(first.shape[1]) - 1) // 2 if first is not None and first.ndim == 4 else 1
    return {"encoder_blocks": widths("enc_blocks", V1_ENCODER_BLOCKS),
            "decoder_blocks": widths("dec_blocks", V1_DECODER_BLOCKS),
            "in_channels": max(in_channels, 1)}


def load_universeg(
    spec: PathLike = "default", *, download: bool = True, return_metadata: bool = False, **overrides: Any
) -> UniverSeg | tuple[UniverSeg, dict[str, Any]]:
    """Build a :class:`UniverSeg` from a checkpoint spec and load its weights strictly (eval mode).

    The architecture is the checkpoint's recorded ``"config"`` if any (our own checkpoints), else it
    is read off the weight shapes (the official v1 file is a bare state dict); ``overrides`` replace
    config entries (``encoder_blocks``, ``decoder_blocks``, ``in_channels``).

    Args:
        spec: see :func:`resolve`.
        download: passed to :func:`resolve`.
        return_metadata: also return the checkpoint's ``"extra"`` metadata dict (``{}`` if none).
    """
    path = resolve(spec, "universeg", download=download)
    state_dict, metadata = load_checkpoint(path)
    config = metadata.get("config")
    if not isinstance(config, dict):
        config = _universeg_config(state_dict)
    config = {**config, **overrides}
    try:
        model = UniverSeg(**config)
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{path}: cannot build UniverSeg from config {config}: {err}") from err
    check_keys(state_dict, model, str(path))
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    if return_metadata:
        extra = metadata.get("extra")
        return model, dict(extra) if isinstance(extra, dict) else {}
    return model


_PLAIN_SCALARS = (type(None), bool, int, float, str)


def _check_plain(value: Any, where: str) -> None:
    """ValueError unless ``value`` is built from tensors and plain Python types only."""
    if isinstance(value, (*_PLAIN_SCALARS, Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has a non-string key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise ValueError(f"{where} is a {type(value).__name__}; checkpoints hold only tensors and plain Python types")


def save_checkpoint(model: nn.Module, path: PathLike, config: dict, extra: dict | None = None) -> Path:
    """Save ``{"state_dict", "config", "extra"}`` atomically, readable with ``weights_only=True``.

    Args:
        config: the model's constructor arguments (for :class:`UniverSeg`: ``model.config``).
        extra: further metadata (e.g. ``slice_size``, training data description), plain types only.

    Returns:
        the path written.
    """
    extra = {} if extra is None else extra
    _check_plain(config, "config")
    _check_plain(extra, "extra")
    payload = {
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": config,
        "extra": extra,
    }
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, overwrite=True) as tmp:
        torch.save(payload, tmp)
    return path


def describe(spec: PathLike, backend: str) -> str:
    """One line saying which checkpoint ``spec`` is (for logs and the demo); never downloads."""
    entry = _registry_entry(spec, backend) if isinstance(spec, str) else None
    path = resolve(spec, backend, download=False)
    state_dict, metadata = load_checkpoint(path)
    extra = metadata.get("extra") if isinstance(metadata.get("extra"), dict) else {}
    what = entry.description if entry is not None else "checkpoint"
    params = sum(t.numel() for t in state_dict.values())
    shape = f", {extra['slice_size']}² slices" if "slice_size" in extra else ""
    shape += f", context {extra['context']}" if "context" in extra else ""
    return f"{what} [{path}; {params:,} parameters{shape}]"
