"""What a training run writes: resumable training checkpoints, the inference-only export and the
validation log (``<out>.csv``), every file replaced atomically and none replaced by a fresh run
unless asked (``resume`` / ``overwrite``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from ..io.atomic import atomic_output
from ..io.tables import write_csv
from ..io.volume import PathLike
from ..models.universeg import UniverSeg
from ..pipeline.slicing import Framing
from ..models.weights import load_checkpoint, load_universeg, save_checkpoint
from .config import TrainConfig


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser state with string keys (checkpoints hold plain types only)."""
    state = optimizer.state_dict()
    return {"state": {str(k): v for k, v in state["state"].items()}, "param_groups": state["param_groups"]}


def restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    optimizer.load_state_dict({"state": {int(k): v for k, v in saved["state"].items()},
                               "param_groups": saved["param_groups"]})


def save_training_state(model: UniverSeg, path: Path, config: TrainConfig, framing: Framing, step: int,
          optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator], summary: dict[str, Any]) -> None:
    extra = {
        **framing_metadata(framing), "dtype": "float32",
        "training": {"config": config.to_dict(), "step": step, **summary},
        "optimizer": optimizer_state(optimizer),
        "rng": {name: g.get_state() for name, g in generators.items()},
    }
    save_checkpoint(model, path, model.config, extra)


def framing_metadata(framing: Framing) -> dict[str, Any]:
    """What a checkpoint records of how its slabs were cut: ``slice_size``, ``context`` and, under
    physical framing, ``pixel_mm`` / ``context_mm`` (inference reads them back)."""
    meta: dict[str, Any] = {"slice_size": framing.size, "context": framing.context}
    meta.update({k: float(v) for k, v in (("pixel_mm", framing.pixel_mm), ("context_mm", framing.context_mm))
                 if v is not None})
    return meta


def export_checkpoint(src: PathLike, dst: PathLike, dtype: str = "float16") -> Path:
    """Inference-only copy of a training checkpoint: weights (cast to ``dtype``), architecture,
    ``slice_size``/``context`` and the training summary; no optimiser or generator state.

    Loading (:func:`fewshotcx.models.weights.load_universeg`) casts the weights back to float32. Also writes
    ``<dst>.json`` with the metadata and, if ``<src>.csv`` exists, the run's validation curve, for
    people and docs.
    """
    model, meta = load_universeg(src, return_metadata=True)
    training = dict(meta.get("training", {}))
    extra = {"slice_size": int(meta.get("slice_size", 128)), "context": int(meta.get("context", 0)),
             **{k: meta[k] for k in ("pixel_mm", "context_mm") if meta.get(k) is not None},
             "dtype": dtype, "training": training}
    path = save_checkpoint(model.to(getattr(torch, dtype)), dst, model.config, extra)
    summary = {"architecture": model.config, **{k: v for k, v in extra.items() if k != "training"},
               "parameters": sum(p.numel() for p in model.parameters()), "size_bytes": path.stat().st_size,
               "training": training}
    log = log_path(Path(src))
    if log.exists():
        with log.open(newline="") as f:
            summary["validation_curve"] = list(csv.DictReader(f))
    with atomic_output(path.with_suffix(".json"), overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def log_path(out: Path) -> Path:
    return out.with_suffix(".csv")


def write_log_row(path: Path, row: dict[str, Any], columns: list[str]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def truncate_log(path: Path, step: int) -> None:
    """Drop log rows after ``step`` (a resumed run rewrites them), replacing the file atomically."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows, columns = list(reader), reader.fieldnames or []
    write_csv([row for row in rows if int(row["step"]) <= step], path, columns, overwrite=True)


def check_outputs(config: TrainConfig, out: Path) -> None:
    """A fresh run never replaces an earlier run's checkpoint, its ``.csv`` log or the export unless
    ``overwrite`` is set."""
    if config.resume or config.overwrite:
        return
    for path in (out, log_path(out), config.export and Path(config.export).expanduser()):
        if path and path.exists():
            raise FileExistsError(f"{path} exists; pass resume=True to continue that run or overwrite=True "
                                  "(CLI: --resume / --overwrite) to replace it")


def resume_training_state(out: Path, config: TrainConfig, model: UniverSeg, optimizer: torch.optim.Optimizer,
            generators: dict[str, torch.Generator]) -> tuple[int, float]:
    """Load model, optimiser and generators from ``out``; return the step it had reached and its seconds."""
    state_dict, metadata = load_checkpoint(out)
    extra = metadata.get("extra", {})
    training = extra.get("training")
    if not isinstance(training, dict) or "optimizer" not in extra:
        raise ValueError(f"cannot resume from {out}: it is not a fewshotcx training checkpoint")
    saved = training["config"]
    mine = config.to_dict()
    changed = [k for k in mine if k not in TrainConfig.RESUMABLE_CHANGES and saved.get(k) != mine[k]]
    if changed:
        raise ValueError(f"cannot resume from {out}: setting '{changed[0]}' differs "
                         f"({saved.get(changed[0])!r} there, {mine[changed[0]]!r} now)")
    model.load_state_dict(state_dict)
    restore_optimizer(optimizer, extra["optimizer"])
    for name, generator in generators.items():
        generator.set_state(extra["rng"][name].to(generator.get_state().device))
    return int(training["step"]), float(training.get("seconds") or 0.0)
