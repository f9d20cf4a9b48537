"""Reading and writing checkpoints safely: ``torch.load(..., weights_only=True)`` always, strict key
checks with readable errors, and our own ``{"state_dict", "config", "extra"}`` format.

Third-party checkpoints may be a bare state dict or wrap it under ``"model"`` or ``"state_dict"``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...io.atomic import atomic_output
from ..universeg import V1_DECODER_BLOCKS, V1_ENCODER_BLOCKS, UniverSeg
from .registry import PathLike, WeightsError, registry_entry, resolve


#: Every checkpoint file this process has read, in order (benchmarks record their hashes: provenance).
LOADED: list[Path] = []


def load_checkpoint(path: PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint safely (``weights_only=True``) as ``(state_dict, metadata)``; its path is
    added to :data:`LOADED`.

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
    if Path(path).resolve() not in LOADED:
        LOADED.append(Path(path).resolve())
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


#: Checkpoint metadata that says how slices are cut for the network (see :class:`~fewshotcx.pipeline.slicing.Framing`).
FRAMING_KEYS = ("slice_size", "pixel_mm", "context_mm")


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
    extra = dict(metadata["extra"]) if isinstance(metadata.get("extra"), dict) else {}
    # How the checkpoint frames its slices travels with the network: fx.Segmenter(model=net) frames
    # them the same way as fx.Segmenter(weights=...) (slice size, physical pixel size, context).
    model.framing = {k: extra[k] for k in FRAMING_KEYS if extra.get(k) is not None}
    if return_metadata:
        return model, extra
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
    entry = registry_entry(spec, backend) if isinstance(spec, str) else None
    path = resolve(spec, backend, download=False)
    state_dict, metadata = load_checkpoint(path)
    extra = metadata.get("extra") if isinstance(metadata.get("extra"), dict) else {}
    what = entry.description if entry is not None else "checkpoint"
    params = sum(t.numel() for t in state_dict.values())
    shape = f", {extra['slice_size']}² slices" if "slice_size" in extra else ""
    shape += f", context {extra['context']}" if "context" in extra else ""
    return f"{what} [{path}; {params:,} parameters{shape}]"
