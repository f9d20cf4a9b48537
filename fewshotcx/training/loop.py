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

The run's settings are :class:`~fewshotcx.training.config.TrainConfig`; what it writes (checkpoints,
export, log) is :mod:`fewshotcx.training.checkpoints`.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .augment import AugmentConfig, augment_episode
from ..pipeline.intensity import minmax_per_slice
from ..pipeline.slicing import Framing
from ..models.universeg import UniverSeg, inflate_to_context
from ..pipeline.inference import resolve_device
from .synthetic import synthetic_cases
from .selfsupervised import unlabelled_ct_volumes
from ..datasets.cases import canonical_name
from .tasks import Episode, LabelledVolume, Task, build_tasks, fixed_episodes, sample_episode, split_tasks, user_volumes
from ..io.volume import PathLike, Volume, load_volume
from ..progress import show_progress
from ..models.weights import load_universeg
from .checkpoints import (check_outputs, export_checkpoint, log_path, resume_training_state, save_training_state,
                          truncate_log, write_log_row)
from .config import DATA_SOURCES, TrainConfig
from .volume_cache import load_volume_cache, save_volume_cache

#: Brains are resampled to this voxel size (mm) before slicing: slices are downsampled to the
#: training size anyway, and it makes loading four times faster.
BRAIN_SPACING_MM = 2.0


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
        # brain1/brain2 are one task, lung1/lung2 another: group by what the case images. The lung CTs
        # also carry their HU-defined anatomy (datasets.ct_anatomy), shared with the other CTs' group.
        return [LabelledVolume.from_case(datasets.with_hu_anatomy(c), group="CT", dataset="pyradiomics")
                if c.modality == "CT" else
                LabelledVolume.from_case(c, group="pyradiomics " + c.name.split("/")[-1].rstrip("0123456789"),
                                         dataset="pyradiomics") for c in datasets.pyradiomics_cases()]
    if name == "sts":
        # Sarcoma CTs (GTV + HU anatomy, with the other CTs) and T1 MRs (GTV), development data only.
        return [LabelledVolume.from_case(datasets.with_hu_anatomy(c) if c.modality == "CT" else c,
                                         group="CT" if c.modality == "CT" else "sarcoma MR", dataset="sts")
                for c in datasets.sts_cases()]
    if name == "brain":
        # Colin27 (AAL) and MNI152 (Harvard-Oxford): structures both atlases name form two-subject tasks.
        return [LabelledVolume.from_case(c, group="brain MR", dataset="brain")
                for c in datasets.brain_atlas_cases(downsample=BRAIN_SPACING_MM)]
    if name == "nilearn":
        return [LabelledVolume.from_case(datasets.nilearn_mni(downsample=BRAIN_SPACING_MM), group="brain MR",
                                         dataset="brain")]
    if name == "ssl-ct":  # unlabelled CTs as supervoxel and HU tasks ("<id> supervoxels" takes <id>'s role: _among)
        return unlabelled_ct_volumes(seed=config.seed)
    raise ValueError(f"unknown data source {name!r}: expected one of {', '.join(DATA_SOURCES)}")


def _training_tasks(config: TrainConfig, framing: Framing, extra_volumes: Sequence[LabelledVolume]
                    ) -> tuple[list[Task], list[Task]]:
    """``(train, validation)`` tasks from the config's sources, user pairs and ``extra_volumes``."""
    volumes, omitted = _real_volumes(config)
    volumes += load_source("synthetic", config) if "synthetic" in config.data else []
    pairs = [(load_volume(i), load_volume(l, label=True)) for i, l in zip(config.images, config.labels)]
    volumes += user_volumes(pairs) + list(extra_volumes)
    if not volumes:
        raise ValueError("no training data: give --data sources or --images/--labels pairs")
    known = {v.name for v in volumes} | set(omitted)
    missing = [n for n in (*config.holdout_volumes, *config.report_volumes) if n not in known]
    if missing:
        raise ValueError(f"held-out volume {missing[0]!r} is not in the training data (names: "
                         f"{', '.join(sorted(known)[:6])}, ...)")
    volumes = [v for v in volumes if not _among(v.name, config.report_volumes)]  # never trained or validated on
    build = dict(size=framing.size, context=framing.context, axes=config.axes, margin=config.margin,
                 max_slices=config.max_slices, pixel_mm=framing.pixel_mm, context_mm=framing.context_mm)
    reported = {canonical_name(s) for s in config.report_structures}
    tasks = [t for t in build_tasks(volumes, **build) if t.structure not in reported]
    held = [v.name for v in volumes if _among(v.name, config.holdout_volumes)]
    train, val = split_tasks(tasks, held, config.holdout_structures)
    if "synthetic" in config.data and config.synthetic_val_families:
        val += build_tasks(synthetic_cases(config.synthetic_val_families, 3, config.synthetic_shape,
                                           config.synthetic_labels, seed=config.seed + 10_000), **build)
    if not train:
        raise ValueError("every task is held out: nothing left to train on")
    return train, val


def _real_volumes(config: TrainConfig) -> tuple[list[LabelledVolume], list[str]]:
    """The real sources' volumes less the report set, and the report volumes' names; from
    ``config.volume_cache`` when that file exists (written by the first run that names it:
    :mod:`fewshotcx.training.volume_cache`), else loaded."""
    cache = Path(config.volume_cache).expanduser() if config.volume_cache else None
    if cache is not None and cache.exists():
        return load_volume_cache(cache)
    volumes = [v for name in config.data if name != "synthetic" for v in load_source(name, config)]
    # The report set is kept out of training *and* validation: only reported results ever see it.
    omitted = [v.name for v in volumes if _among(v.name, config.report_volumes)]
    volumes = [v for v in volumes if v.name not in set(omitted)]
    if cache is not None:
        save_volume_cache(volumes, cache, omitted)
    return volumes, omitted


def _among(name: str, ids: Sequence[str]) -> bool:
    """``name`` is one of ``ids`` or derived from one (``"mirp/CRLM-CT-1004 supervoxels"`` from its id)."""
    return name in ids or name.split(" ", 1)[0] in ids


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
def _build_model(config: TrainConfig) -> tuple[UniverSeg, Framing, dict[str, Any]]:
    """``(model, framing, init metadata)`` from ``config.init`` (inflated if asked) or fresh."""
    if config.init is None:
        context = config.context or 0
        model = UniverSeg((config.width,) * 4, (config.width,) * 3, in_channels=2 * context + 1)
        return model, _framing(config.size or 64, context, config.pixel_mm, config.context_mm), {}
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
    pixel_mm = config.pixel_mm if config.pixel_mm is not None else meta.get("pixel_mm")
    context_mm = config.context_mm if config.context_mm is not None else meta.get("context_mm")
    return model, _framing(size, context, pixel_mm, context_mm), meta


def _framing(size: int, context: int, pixel_mm: Optional[float], context_mm: Optional[float]) -> Framing:
    return Framing(int(size), int(context), "physical" if pixel_mm else "pad", pixel_mm, context_mm)


def _learning_rate(config: TrainConfig, step: int, seconds: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to 0 at ``steps`` or, with
    ``max_seconds``, at whichever of the two comes first (``seconds`` of training so far)."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    if config.schedule == "constant":
        return config.lr
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    if config.max_seconds:
        progress = max(progress, seconds / config.max_seconds)
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
    check_outputs(config, out)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model, framing, init_meta = _build_model(config)
    train_tasks, val_tasks = _training_tasks(config, framing, volumes)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sampler_gen = torch.Generator().manual_seed(config.seed)
    augment_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    generators = {"sampler": sampler_gen, "augment": augment_gen}
    step, elapsed = 0, 0.0
    if config.resume and out.exists():
        step, elapsed = resume_training_state(out, config, model, optimizer, generators)
    elif config.resume:
        raise ValueError(f"cannot resume: {out} does not exist")
    first_step = step
    val_sample = _cap_per_dataset(val_tasks, config.val_max_tasks)
    val_episodes = fixed_episodes(val_sample, config.val_episodes, config.support_size[1], config.queries,
                                  config.seed + 20_000)
    val_groups = sorted({t.dataset for t in val_sample})
    columns = ["step", "train_loss", "val_dice", *[f"val_dice_{g}" for g in val_groups], "seconds"]
    log = log_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if step == 0 and log.exists():
        log.unlink()
    truncate_log(log, step)
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
        write_log_row(log, row, columns)
        if show_progress(config.progress):
            tqdm.write(", ".join(f"{k}={row.get(k, '')}" for k in columns))
        losses.clear()

    if step == 0 and config.val_every:
        validate(0)
    bar = tqdm(range(step, config.steps), initial=step, total=config.steps, desc="training",
               disable=not show_progress(config.progress))
    done = step
    budget_start = time.perf_counter() - elapsed  # the budget counts training steps only, not the first validation
    for step in bar:
        seconds = time.perf_counter() - budget_start
        if config.max_seconds and seconds >= config.max_seconds:  # the time budget ends the run here
            break
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step, seconds)
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
            save_training_state(model, out, config, framing, done, optimizer, generators, summary)
    if first_step < done < config.steps:  # stopped by max_seconds: validate and keep the last step
        if config.val_every and done % config.val_every:
            validate(done)
        summary["seconds"] = round(time.perf_counter() - start, 1)
        save_training_state(model, out, config, framing, done, optimizer, generators, summary)
    if done == first_step:  # no step ran (e.g. steps=0): still leave a loadable checkpoint
        save_training_state(model, out, config, framing, first_step, optimizer, generators, summary)
    if config.export:
        return export_checkpoint(out, config.export, config.export_dtype)
    return out


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
