"""Episodic in-context training and fine-tuning of UniverSeg (transfer learning).

Every step draws ``episodes_per_step`` episodes. An episode is one task (one structure, one plane
axis, in one dataset: a synthetic family with probability ``synthetic_ratio``, else a real dataset
chosen uniformly, then a task of it uniformly), a group of ``queries`` neighbouring query slabs of
one volume, and a support set of ``S`` slabs (``S`` uniform in the ``support_size`` range) from the
task's other volumes (:func:`fewshotcx.training.tasks.sample_episode`). The episode is augmented
(:mod:`fewshotcx.training.augment`), each slab min-max scaled as at inference, and run through
:meth:`UniverSeg.forward_shared` — the same code path, preprocessing and resolution as
:class:`fewshotcx.Segmenter` — with a soft Dice + binary cross-entropy loss, AdamW, and a constant or
cosine learning rate after a linear warm-up.

Checkpoints (every ``checkpoint_every`` steps and at the end) are ordinary fewshotcx checkpoints
(:func:`fewshotcx.models.weights.save_checkpoint`, loadable by ``Segmenter(weights=path)``) whose ``extra``
also holds the optimiser, the step and the random generators, so ``resume=True`` continues exactly
where the run stopped. Validation Dice on held-out volumes / structures / synthetic families is
written with the training loss to ``<out>.csv``. :func:`export_checkpoint` writes the compact,
inference-only copy (float16 weights, no optimiser) that is bundled as the default model.
"""

from __future__ import annotations

import csv
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .augment import AugmentConfig, augment_episode
from ..pipeline.intensity import minmax_per_slice
from ..models.universeg import UniverSeg, inflate_to_context
from ..segmenter import resolve_device
from .synthetic import synthetic_cases
from .tasks import Episode, LabelledVolume, Task, build_tasks, fixed_episodes, sample_episode, split_tasks, user_volumes
from ..io.atomic import atomic_output
from ..io.tables import write_csv
from ..io.volume import PathLike, Volume, load_volume
from ..progress import show_progress
from ..models.weights import load_checkpoint, load_universeg, save_checkpoint

#: Real data sources ``--data`` accepts (loaders in :mod:`fewshotcx.datasets`), plus ``"synthetic"``.
DATA_SOURCES = ("synthetic", "slicerio", "pyradiomics", "brain", "nilearn")
#: Brains are resampled to this voxel size (mm) before slicing: slices are downsampled to the
#: training size anyway, and it makes loading four times faster.
BRAIN_SPACING_MM = 2.0


@dataclass
class TrainConfig:
    """Everything a training run depends on (stored in its checkpoints; see ``fewshotcx train -h``).

    ``width`` gives every CrossBlock the same feature count (v1: 64); ``size`` is the slice size
    (``None`` = the init checkpoint's, else 64); ``context`` the 2.5D neighbours (``None`` = the init
    checkpoint's, else 0); ``support_size`` the ``(min, max)`` support set size; ``val_max_tasks``
    caps the validation tasks per dataset (evenly spaced), ``val_episodes`` the fixed episodes per task.
    """

    data: list[str] = field(default_factory=lambda: ["synthetic"])
    images: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    init: Optional[str] = None
    steps: int = 1000
    width: int = 32
    size: Optional[int] = None
    context: Optional[int] = None
    support_size: tuple[int, int] = (4, 16)
    queries: int = 4
    episodes_per_step: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup: int = 50
    synthetic_ratio: float = 0.3
    synthetic_families: int = 40
    synthetic_val_families: int = 4
    synthetic_shape: tuple[int, int, int] = (64, 64, 16)
    synthetic_labels: int = 8
    axes: list[str] = field(default_factory=lambda: ["axial", "coronal", "sagittal"])
    margin: float = 0.25
    max_slices: int = 48
    position_prob: float = 0.5
    augment: bool = True
    holdout_volumes: list[str] = field(default_factory=list)
    holdout_structures: list[str] = field(default_factory=list)
    val_every: int = 100
    val_episodes: int = 2
    val_max_tasks: int = 24
    checkpoint_every: int = 500
    out: str = "fewshotcx-runs/universeg.pt"
    export: Optional[str] = None
    export_dtype: str = "float16"
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    seed: int = 0
    progress: bool = True

    #: Fields that may differ between a run and its resumption.
    RESUMABLE_CHANGES = ("steps", "resume", "overwrite", "progress", "device", "export", "export_dtype", "checkpoint_every")

    def __post_init__(self) -> None:
        self.support_size = tuple(int(v) for v in self.support_size)  # type: ignore[assignment]
        self.synthetic_shape = tuple(int(v) for v in self.synthetic_shape)  # type: ignore[assignment]
        self.data, self.axes = list(self.data), list(self.axes)
        unknown = [d for d in self.data if d not in DATA_SOURCES]
        if unknown:
            raise ValueError(f"unknown --data {unknown[0]!r}: expected one of {', '.join(DATA_SOURCES)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"got {len(self.images)} --images but {len(self.labels)} --labels: give them in pairs")
        if self.steps < 0 or self.width < 1 or self.queries < 1 or self.episodes_per_step < 1:
            raise ValueError("steps must be >= 0 and width, queries, episodes_per_step >= 1")
        lo, hi = self.support_size if len(self.support_size) == 2 else (0, 0)
        if not 1 <= lo <= hi:
            raise ValueError(f"support_size must be (min, max) with 1 <= min <= max, got {self.support_size}")
        if self.size is not None and (self.size < 8 or self.size % 8):
            raise ValueError(f"size must be a multiple of 8 (UniverSeg pools three times), got {self.size}")
        if self.context is not None and self.context < 0:
            raise ValueError(f"context must be >= 0, got {self.context}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not 0.0 <= self.synthetic_ratio <= 1.0:
            raise ValueError(f"synthetic_ratio must be in [0, 1], got {self.synthetic_ratio}")
        if self.export_dtype not in ("float16", "float32"):
            raise ValueError(f"export_dtype must be 'float16' or 'float32', got {self.export_dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists for tuples), as stored in checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# -------------------------------------------------------------------------------------------- data
def load_source(name: str, config: TrainConfig) -> list[LabelledVolume]:
    """The labelled volumes of one ``--data`` source (synthetic volumes are generated from ``config.seed``)."""
    from .. import datasets

    if name == "synthetic":
        return synthetic_cases(config.synthetic_families, 3, config.synthetic_shape, config.synthetic_labels,
                               seed=config.seed)
    if name == "slicerio":
        return [LabelledVolume.from_case(datasets.slicerio_chest(), group="chest CT", dataset="slicerio")]
    if name == "pyradiomics":
        # brain1/brain2 are one task, lung1/lung2 another: group by what the case images.
        return [LabelledVolume.from_case(c, group="pyradiomics " + c.name.split("/")[-1].rstrip("0123456789"),
                                         dataset="pyradiomics") for c in datasets.pyradiomics_cases()]
    if name == "brain":
        # Colin27 (AAL) and MNI152 (Harvard-Oxford): structures both atlases name form two-subject tasks.
        return [LabelledVolume.from_case(c, group="brain MR", dataset="brain")
                for c in datasets.brain_atlas_cases(downsample=BRAIN_SPACING_MM)]
    if name == "nilearn":
        return [LabelledVolume.from_case(datasets.nilearn_mni(downsample=BRAIN_SPACING_MM), group="brain MR",
                                         dataset="brain")]
    raise ValueError(f"unknown data source {name!r}: expected one of {', '.join(DATA_SOURCES)}")


def _training_tasks(config: TrainConfig, size: int, context: int, extra_volumes: Sequence[LabelledVolume]
                    ) -> tuple[list[Task], list[Task]]:
    """``(train, validation)`` tasks from the config's sources, user pairs and ``extra_volumes``."""
    volumes = [v for name in config.data for v in load_source(name, config)]
    pairs = [(load_volume(i), load_volume(l, label=True)) for i, l in zip(config.images, config.labels)]
    volumes += user_volumes(pairs) + list(extra_volumes)
    if not volumes:
        raise ValueError("no training data: give --data sources or --images/--labels pairs")
    known = {v.name for v in volumes}
    missing = [n for n in config.holdout_volumes if n not in known]
    if missing:
        raise ValueError(f"held-out volume {missing[0]!r} is not in the training data (names: "
                         f"{', '.join(sorted(known)[:6])}, ...)")
    build = dict(size=size, context=context, axes=config.axes, margin=config.margin, max_slices=config.max_slices)
    train, val = split_tasks(build_tasks(volumes, **build), config.holdout_volumes, config.holdout_structures)
    if "synthetic" in config.data and config.synthetic_val_families:
        val += build_tasks(synthetic_cases(config.synthetic_val_families, 3, config.synthetic_shape,
                                           config.synthetic_labels, seed=config.seed + 10_000), **build)
    if not train:
        raise ValueError("every task is held out: nothing left to train on")
    return train, val


def _cap_per_dataset(tasks: Sequence[Task], cap: int) -> list[Task]:
    """At most ``cap`` tasks of each dataset, evenly spaced in its list (validation cost stays bounded)."""
    by_dataset: dict[str, list[Task]] = {}
    for task in tasks:
        by_dataset.setdefault(task.dataset, []).append(task)
    return [t for group in by_dataset.values() for t in group[:: max(1, math.ceil(len(group) / cap))]]


class TaskSampler:
    """Draws tasks: synthetic with probability ``synthetic_ratio`` (if both kinds exist), else a real
    dataset uniformly, then one of its tasks uniformly."""

    def __init__(self, tasks: Sequence[Task], synthetic_ratio: float) -> None:
        self.by_dataset: dict[str, list[Task]] = {}
        for task in tasks:
            self.by_dataset.setdefault(task.dataset, []).append(task)
        self.real = sorted(d for d in self.by_dataset if d != "synthetic")
        if not self.real:
            synthetic_ratio = 1.0
        elif "synthetic" not in self.by_dataset:
            synthetic_ratio = 0.0
        self.synthetic_ratio = synthetic_ratio

    def __call__(self, generator: torch.Generator) -> Task:
        if float(torch.rand((), generator=generator)) < self.synthetic_ratio:
            pool = self.by_dataset["synthetic"]
        else:
            pool = self.by_dataset[self.real[int(torch.randint(len(self.real), (), generator=generator))]]
        return pool[int(torch.randint(len(pool), (), generator=generator))]


# ------------------------------------------------------------------------------------------- model
def _build_model(config: TrainConfig) -> tuple[UniverSeg, int, int, dict[str, Any]]:
    """``(model, slice size, context, init metadata)`` from ``config.init`` (inflated if asked) or fresh."""
    if config.init is None:
        context = config.context or 0
        model = UniverSeg((config.width,) * 4, (config.width,) * 3, in_channels=2 * context + 1)
        return model, config.size or 64, context, {}
    model, meta = load_universeg(config.init, return_metadata=True)
    model = model.float()
    have = (model.in_channels - 1) // 2
    context = have if config.context is None else config.context
    if context != have:
        if model.in_channels != 1:
            raise ValueError(f"{config.init} is a 2.5D model with context {have}; only 1-channel models can be "
                             f"inflated to context {context}")
        inflated = UniverSeg(model.encoder_blocks, model.decoder_blocks, in_channels=2 * context + 1)
        inflated.load_state_dict(inflate_to_context(model.state_dict(), context))
        model = inflated
    size = config.size or int(meta.get("slice_size", 128))
    return model, size, context, meta


def _learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to 0 at ``steps``."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    if config.schedule == "constant":
        return config.lr
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * config.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def episode_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Soft Dice over the whole query group (robust to empty slices) + mean binary cross-entropy.

    Args:
        logits, labels: ``(Q, 1, s, s)``; labels are soft masks in ``[0, 1]``.
    """
    logits = logits.float()
    prob = torch.sigmoid(logits)
    dice = (2 * (prob * labels).sum() + 1) / (prob.sum() + labels.sum() + 1)
    return (1 - dice) + F.binary_cross_entropy_with_logits(logits, labels)


def _prepare(episode: Episode, device: torch.device, generator: Optional[torch.Generator],
             augment: Optional[AugmentConfig]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Move to ``device``, augment (if asked), min-max scale each slab as inference does."""
    ep = episode.to(device)
    parts = (ep.query_images, ep.query_labels, ep.support_images, ep.support_labels)
    if augment is not None:
        parts = augment_episode(*parts, generator, augment)
    q_img, q_lab, s_img, s_lab = parts
    return minmax_per_slice(q_img), q_lab, minmax_per_slice(s_img), s_lab


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.no_grad()
def evaluate_episodes(model: UniverSeg, episodes: Sequence[Episode], device: torch.device) -> list[float]:
    """Hard Dice (threshold 0.5) over each episode's query group; 1.0 where both are empty."""
    was_training = model.training
    model.eval()
    scores = []
    for episode in episodes:
        q_img, q_lab, s_img, s_lab = _prepare(episode, device, None, None)
        with _autocast(device):
            logits = model.forward_shared(q_img, s_img, s_lab)
        pred, truth = logits.float() > 0, q_lab > 0.5
        total = pred.sum() + truth.sum()
        scores.append(1.0 if total == 0 else float(2 * (pred & truth).sum() / total))
    model.train(was_training)
    return scores


# ----------------------------------------------------------------------------------- checkpointing
def _optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser state with string keys (checkpoints hold plain types only)."""
    state = optimizer.state_dict()
    return {"state": {str(k): v for k, v in state["state"].items()}, "param_groups": state["param_groups"]}


def _restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    optimizer.load_state_dict({"state": {int(k): v for k, v in saved["state"].items()},
                               "param_groups": saved["param_groups"]})


def _save(model: UniverSeg, path: Path, config: TrainConfig, size: int, context: int, step: int,
          optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator], summary: dict[str, Any]) -> None:
    extra = {
        "slice_size": size, "context": context, "dtype": "float32",
        "training": {"config": config.to_dict(), "step": step, **summary},
        "optimizer": _optimizer_state(optimizer),
        "rng": {name: g.get_state() for name, g in generators.items()},
    }
    save_checkpoint(model, path, model.config, extra)


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
             "dtype": dtype, "training": training}
    path = save_checkpoint(model.to(getattr(torch, dtype)), dst, model.config, extra)
    summary = {"architecture": model.config, **{k: v for k, v in extra.items() if k != "training"},
               "parameters": sum(p.numel() for p in model.parameters()), "size_bytes": path.stat().st_size,
               "training": training}
    log = _csv_path(Path(src))
    if log.exists():
        with log.open(newline="") as f:
            summary["validation_curve"] = list(csv.DictReader(f))
    with atomic_output(path.with_suffix(".json"), overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return path


# -------------------------------------------------------------------------------------------- train
def _csv_path(out: Path) -> Path:
    return out.with_suffix(".csv")


def _write_log_row(path: Path, row: dict[str, Any], columns: list[str]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows after ``step`` (a resumed run rewrites them), replacing the file atomically."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows, columns = list(reader), reader.fieldnames or []
    write_csv([row for row in rows if int(row["step"]) <= step], path, columns, overwrite=True)


def _check_outputs(config: TrainConfig, out: Path) -> None:
    """A fresh run never replaces an earlier run's checkpoint or export unless ``overwrite`` is set."""
    if config.resume or config.overwrite:
        return
    for path in (out, config.export and Path(config.export).expanduser()):
        if path and path.exists():
            raise FileExistsError(f"{path} exists; pass resume=True to continue that run or overwrite=True "
                                  "(CLI: --resume / --overwrite) to replace it")


def train(config: TrainConfig, volumes: Sequence[LabelledVolume] = ()) -> Path:
    """Run (or resume) episodic training; return the checkpoint path (``config.export`` if set).

    Args:
        config: the run.
        volumes: extra in-memory labelled volumes (besides ``config.data`` and ``config.images``).
    Raises:
        ValueError: bad config, no data, or ``resume`` with a checkpoint of a different run.
        FileExistsError: a fresh run (no ``resume``) would replace ``out`` or ``export`` without ``overwrite``.
    """
    out = Path(config.out).expanduser()
    _check_outputs(config, out)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model, size, context, init_meta = _build_model(config)
    train_tasks, val_tasks = _training_tasks(config, size, context, volumes)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sampler_gen = torch.Generator().manual_seed(config.seed)
    augment_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    generators = {"sampler": sampler_gen, "augment": augment_gen}
    step, elapsed = 0, 0.0
    if config.resume and out.exists():
        step, elapsed = _resume(out, config, model, optimizer, generators)
    elif config.resume:
        raise ValueError(f"cannot resume: {out} does not exist")
    first_step = step
    val_sample = _cap_per_dataset(val_tasks, config.val_max_tasks)
    val_episodes = fixed_episodes(val_sample, config.val_episodes, config.support_size[1], config.queries,
                                  config.seed + 20_000)
    val_groups = sorted({t.dataset for t in val_sample})
    columns = ["step", "train_loss", "val_dice", *[f"val_dice_{g}" for g in val_groups], "seconds"]
    log = _csv_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if step == 0 and log.exists():
        log.unlink()
    _truncate_log(log, step)
    sample_task = TaskSampler(train_tasks, config.synthetic_ratio)
    augment = AugmentConfig() if config.augment else None
    summary = {"init": config.init, "init_slice_size": init_meta.get("slice_size"), "train_tasks": len(train_tasks),
               "val_tasks": len(val_tasks), "last_val_dice": None, "seconds": elapsed}
    start = time.perf_counter() - elapsed  # a resumed run counts the time already spent
    losses: list[float] = []

    def validate(at: int) -> None:
        row: dict[str, Any] = {"step": at, "seconds": round(time.perf_counter() - start, 1),
                               "train_loss": round(sum(losses) / len(losses), 5) if losses else ""}
        if val_episodes:
            scores = evaluate_episodes(model, val_episodes, device)
            per_episode = [t.dataset for t in val_sample for _ in range(config.val_episodes)]
            row["val_dice"] = round(sum(scores) / len(scores), 4)
            for g in val_groups:
                mine = [s for s, d in zip(scores, per_episode) if d == g]
                row[f"val_dice_{g}"] = round(sum(mine) / len(mine), 4)
            summary["last_val_dice"] = row["val_dice"]
        _write_log_row(log, row, columns)
        if show_progress(config.progress):
            tqdm.write(", ".join(f"{k}={row.get(k, '')}" for k in columns))
        losses.clear()

    if step == 0 and config.val_every:
        validate(0)
    bar = tqdm(range(step, config.steps), initial=step, total=config.steps, desc="training",
               disable=not show_progress(config.progress))
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(config.episodes_per_step):
            task = sample_task(sampler_gen)
            s = int(torch.randint(config.support_size[0], config.support_size[1] + 1, (), generator=sampler_gen))
            episode = sample_episode(task, s, config.queries, sampler_gen, position_prob=config.position_prob)
            q_img, q_lab, s_img, s_lab = _prepare(episode, device, augment_gen, augment)
            with _autocast(device):
                logits = model.forward_shared(q_img, s_img, s_lab)
            loss = episode_loss(logits, q_lab) / config.episodes_per_step
            loss.backward()
            total += float(loss.detach())
        optimizer.step()
        losses.append(total)
        bar.set_postfix(loss=f"{total:.3f}", refresh=False)
        done = step + 1
        if config.val_every and (done % config.val_every == 0 or done == config.steps):
            validate(done)
        if done % config.checkpoint_every == 0 or done == config.steps:
            summary["seconds"] = round(time.perf_counter() - start, 1)
            _save(model, out, config, size, context, done, optimizer, generators, summary)
    if first_step >= config.steps:  # no step ran (e.g. steps=0): still leave a loadable checkpoint
        _save(model, out, config, size, context, first_step, optimizer, generators, summary)
    if config.export:
        return export_checkpoint(out, config.export, config.export_dtype)
    return out


def _resume(out: Path, config: TrainConfig, model: UniverSeg, optimizer: torch.optim.Optimizer,
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
    _restore_optimizer(optimizer, extra["optimizer"])
    for name, generator in generators.items():
        generator.set_state(extra["rng"][name].to(generator.get_state().device))
    return int(training["step"]), float(training.get("seconds") or 0.0)


# ------------------------------------------------------------------------------------- fine-tuning
VolumePair = tuple[Union[Volume, PathLike], Union[Volume, PathLike]]


def finetune(
    init: PathLike,
    volumes: Sequence[VolumePair],
    steps: int = 200,
    context: Optional[int] = None,
    out: PathLike = "fewshotcx-runs/finetuned.pt",
    **options: Any,
) -> Path:
    """Fine-tune an existing UniverSeg checkpoint (ours, ``"default"``, ``"official"`` or a path) on
    the user's labelled volumes.

    Args:
        init: checkpoint spec or path to start from.
        volumes: ``[(image, label map), ...]`` as :class:`Volume` objects or paths; every non-zero
            label value is a structure, and volumes sharing a value form one task (the support for
            one volume's queries comes from the others).
        steps: optimisation steps.
        context: 2.5D neighbours; a 1-channel checkpoint is inflated (:func:`inflate_to_context`).
        out: output checkpoint (loadable by ``fewshotcx.Segmenter(weights=out)``).
        **options: any other :class:`TrainConfig` field (``lr``, ``size``, ``support_size``, ...).
    """
    if not volumes:
        raise ValueError("finetune needs at least one (image, label) pair")
    pairs = [(load_volume(image), load_volume(label, label=True)) for image, label in volumes]
    defaults = dict(data=[], lr=2e-4, warmup=min(20, steps), val_every=0, checkpoint_every=max(steps, 1),
                    synthetic_ratio=0.0)
    config = TrainConfig(init=str(init), steps=steps, context=context, out=str(out), **{**defaults, **options})
    return train(config, user_volumes(pairs))


# --------------------------------------------------------------------------------------------- CLI
