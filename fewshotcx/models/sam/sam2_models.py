"""Building SAM 2 / MedSAM2 video predictors with the ``sam2`` package's own builder.

``sam2`` (official SAM 2 code, Apache-2.0) is an optional dependency (``pip install fewshotcx[sam2]``;
it builds from source: set ``SAM2_BUILD_CUDA=0`` where no CUDA toolkit exists). It is imported here,
lazily, and nowhere else at module level.

Config names (:func:`resolve_config`): a path inside the ``sam2`` package (``"configs/sam2.1/sam2.1_hiera_t.yaml"``),
a short name (``"sam2.1_hiera_t"``, ``"sam2_hiera_b+"``...), or ``"medsam2"`` / ``"sam2.1_hiera_t512"``:
MedSAM2's ``sam2.1_hiera_t512.yaml`` (bowang-lab/MedSAM2) is SAM 2.1 Hiera-T at 512² with two
memory-attention layers and RoPE tables for 32×32 features, expressed here as overrides of the
packaged SAM 2.1 Hiera-T config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch

#: One-line hint when the optional dependency is missing.
INSTALL_HINT = "pip install fewshotcx[sam2] (with SAM2_BUILD_CUDA=0 on machines without a CUDA toolkit)"

#: MedSAM2's 512² Hiera-T configuration as overrides of ``configs/sam2.1/sam2.1_hiera_t.yaml``.
MEDSAM2_OVERRIDES = (
    "++model.image_size=512",
    "++model.memory_attention.num_layers=2",
    "++model.memory_attention.layer.self_attention.feat_sizes=[32,32]",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[32,32]",
)
_MEDSAM2_NAMES = ("medsam2", "sam2.1_hiera_t512")


def import_sam2():
    """The ``sam2.build_sam`` module, or a one-line ValueError saying how to install it."""
    try:
        from sam2 import build_sam
    except ImportError as err:
        raise ValueError(f"backend 'sam2' needs the sam2 package ({err}): {INSTALL_HINT}") from None
    return build_sam


def resolve_config(config: str) -> tuple[str, tuple[str, ...]]:
    """``config`` → (config name inside the ``sam2`` package, extra hydra overrides).

    Raises:
        ValueError: the name is not a config shipped with ``sam2`` (the message lists them).
    """
    import sam2

    root = Path(sam2.__file__).parent
    name = str(config).strip()
    overrides: tuple[str, ...] = ()
    if name.lower() in _MEDSAM2_NAMES:
        name, overrides = "sam2.1_hiera_t", MEDSAM2_OVERRIDES
    stem = Path(name).name.removesuffix(".yaml")
    candidates = [name] if name.endswith(".yaml") else []
    family = "sam2.1" if stem.startswith("sam2.1") else "sam2"
    candidates.append(f"configs/{family}/{stem}.yaml")
    for candidate in candidates:
        if (root / candidate).is_file():
            return candidate, overrides
    known = sorted(p.name.removesuffix(".yaml") for p in (root / "configs").glob("sam2*/sam2*.yaml"))
    raise ValueError(f"config={config!r} is not a sam2 config: expected one of {', '.join(known)} or 'medsam2'")


def build_video_predictor(
    config: str,
    weights: Optional[Union[str, Path]] = None,
    device: torch.device = torch.device("cpu"),
    overrides: Sequence[str] = (),
) -> torch.nn.Module:
    """A ``SAM2VideoPredictor`` built by ``sam2.build_sam.build_sam2_video_predictor``.

    Args:
        config: see :func:`resolve_config`.
        weights: checkpoint (``{"model": state_dict}`` as released, or a bare state dict); ``None`` =
            random initialisation (tests, cost benchmarks).
        overrides: extra hydra overrides (``"++model.image_size=256"``...).
    Raises:
        ValueError: missing ``sam2``, unknown config, missing checkpoint, or a checkpoint that does not
            match the config (one line naming the file and the config).
    """
    build_sam = import_sam2()
    name, implied = resolve_config(config)
    path = None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ValueError(f"weights: no such SAM 2 / MedSAM2 checkpoint: {path}")
    predictor = build_sam.build_sam2_video_predictor(name, None, device="cpu", mode="eval",
                                                     hydra_overrides_extra=[*implied, *overrides])
    if path is not None:
        load_checkpoint(predictor, path, config)
    return predictor.to(device).eval()


def load_checkpoint(predictor: torch.nn.Module, path: Path, config: str) -> None:
    """Load ``path`` strictly into ``predictor``; a mismatch is a one-line ValueError naming both."""
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors of many types
        raise ValueError(f"weights: cannot read {path} as a SAM 2 checkpoint ({type(err).__name__})") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"weights: {path} holds no SAM 2 state dict")
    try:
        result = predictor.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err).splitlines()[0]
        raise ValueError(f"weights: {path} does not match config={config!r}: {first.strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        example = (result.missing_keys or result.unexpected_keys)[0]
        raise ValueError(f"weights: {path} does not match config={config!r}: {len(result.missing_keys)} missing and "
                         f"{len(result.unexpected_keys)} unexpected keys (e.g. {example!r})")
