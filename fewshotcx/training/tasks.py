"""In-context training tasks from labelled volumes, and episodes sampled from them.

A :class:`Task` is one structure seen along one plane axis in every volume that labels it: for each
volume, the slabs around the structure (its slices plus a margin of empty ones) and the structure's
binary mask on them. Slabs are cut exactly as inference cuts them (:func:`~fewshotcx.pipeline.intensity.normalize`
on the whole volume, then :class:`~fewshotcx.pipeline.slicing.Framing` / :func:`~fewshotcx.pipeline.slicing.extract_slabs`
with the run's framing; labels as soft masks like :func:`~fewshotcx.pipeline.support.build_pool`), once,
at the training resolution, and stored compactly (images float16, shared by all structures of a
volume; labels uint8 in 1/255 steps).

An :class:`Episode` is a group of neighbouring query slabs from one volume and a support set drawn
from the task's *other* volumes where it has any (else from other slices of the same volume):
either position-matched like inference's default ``"position"`` strategy, or weighted-random.

Validation is split by whole volumes (:func:`split_tasks`): a held-out volume only ever appears in
validation tasks, and a held-out structure only in validation tasks, in every volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from ..datasets.cases import canonical_name
from ..pipeline.intensity import normalize
from ..pipeline.slicing import Framing, axis_index, extract_slabs
from ..io.volume import Volume, check_pair

#: Soft labels are stored as uint8 in steps of 1/LABEL_SCALE.
LABEL_SCALE = 255


@dataclass
class LabelledVolume:
    """A volume with an integer label map, and how it joins tasks.

    Attributes:
        name: unique id (e.g. ``"pyradiomics/brain1"``); validation holds out volumes by this name.
        image: ``(X, Y, Z)`` image.
        labels: label map on ``image``'s grid (0 = background).
        structures: label value → structure name; values not listed are ignored.
        group: volumes of one group that name the same structure (by :func:`canonical_name`) form one
            task, e.g. all brains, or all lung CTs.
        dataset: the dataset the volume belongs to (training balances datasets, not tasks).
        modality: ``"auto"``, ``"ct"`` or ``"mr"`` for :func:`~fewshotcx.pipeline.intensity.normalize`.
        licence: provenance note.
    """

    name: str
    image: Volume
    labels: Volume
    structures: dict[int, str]
    group: str
    dataset: str
    modality: str = "auto"
    licence: str = ""

    def __post_init__(self) -> None:
        check_pair(self.image, self.labels, what=self.name)

    @classmethod
    def from_case(cls, case, group: Optional[str] = None, dataset: Optional[str] = None) -> "LabelledVolume":
        """From a :class:`fewshotcx.datasets.Case` (group and dataset default to its source)."""
        return cls(case.name, case.image, case.labels, dict(case.structures), group or case.source,
                   dataset or case.source, "auto", case.licence)


def user_volumes(pairs: Sequence[tuple[Volume, Volume]], group: str = "user") -> list[LabelledVolume]:
    """The user's own ``(image, label map)`` pairs; every non-zero label value is a structure ``"label <v>"``."""
    out = []
    for i, (image, labels) in enumerate(pairs):
        values = [int(v) for v in np.unique(labels.array) if v != 0]
        out.append(LabelledVolume(f"{group}/{i}", image, labels, {v: f"label {v}" for v in values}, group, group))
    return out


@dataclass
class SlabStack:
    """Every slab of one volume along one axis.

    Attributes:
        images: ``(D, C, s, s)`` float16 normalised slabs (``C = 2k+1``).
        positions: ``(D,)`` relative position of each slab along the axis, in ``[0, 1]``.
    """

    images: Tensor
    positions: Tensor


@dataclass
class TaskVolume:
    """One volume's part of a task: some slabs of its stack and the structure's mask on them.

    Attributes:
        name: the volume's name.
        stack: the volume's slabs along the task's axis (shared by all its tasks).
        rows: ``(n,)`` int64 indices into ``stack``.
        labels: ``(n, 1, s, s)`` uint8 soft masks (``LABEL_SCALE`` = 1).
    """

    name: str
    stack: SlabStack
    rows: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.rows.numel())

    @property
    def positions(self) -> Tensor:
        """``(n,)`` relative positions of the task's slabs."""
        return self.stack.positions[self.rows]

    @property
    def foreground(self) -> Tensor:
        """``(n,)`` bool: the structure is present (soft mask > 0.5 somewhere) on the slab."""
        return self.labels.flatten(1).amax(dim=1) > LABEL_SCALE // 2

    def take(self, items: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``(r, C, s, s)`` and labels ``(r, 1, s, s)`` as float32 for ``items`` (indices into rows)."""
        return self.stack.images[self.rows[items]].float(), self.labels[items].float() / LABEL_SCALE


@dataclass
class Task:
    """One structure along one axis in one or more volumes.

    Attributes:
        structure: canonical structure name.
        group: the volumes' group.
        dataset: the volumes' dataset.
        axis: array axis of the slabs.
        volumes: per volume, its slabs and masks.
        query_volumes: indices into ``volumes`` that queries come from.
        support_volumes: indices into ``volumes`` that support sets come from.
    """

    structure: str
    group: str
    dataset: str
    axis: int
    volumes: list[TaskVolume]
    query_volumes: tuple[int, ...] = ()
    support_volumes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        everything = tuple(range(len(self.volumes)))
        self.query_volumes = tuple(self.query_volumes) or everything
        self.support_volumes = tuple(self.support_volumes) or everything

    @property
    def key(self) -> str:
        return f"{self.group}:{self.structure}:{self.axis}"

    @property
    def volume_names(self) -> list[str]:
        return [v.name for v in self.volumes]


# ------------------------------------------------------------------------------------------- build
def build_tasks(
    volumes: Sequence[LabelledVolume],
    size: int,
    context: int = 0,
    axes: Sequence[str | int] = ("axial",),
    margin: float = 0.25,
    max_slices: int = 48,
    pixel_mm: Optional[float] = None,
    context_mm: Optional[float] = None,
) -> list[Task]:
    """Cut every structure of every volume into tasks at the training resolution.

    Args:
        size: model slice size ``s`` (as at inference).
        context: ``k`` neighbour slices each side (slab depth ``2k+1``).
        axes: plane axes to cut along; each (structure, axis) is its own task.
        margin: empty slices kept on each side of a structure, as a fraction of its extent (queries
            and supports then include "nothing here" examples near its ends, as at inference).
        max_slices: at most this many slabs per volume and task (evenly spaced over the range).
        pixel_mm, context_mm: physical framing, as at inference (``None`` = the field-of-view fit
            of older checkpoints); see :class:`~fewshotcx.pipeline.slicing.Framing`.
    Returns:
        tasks, grouped by ``(group, canonical structure name, axis)``; structures too small to show
        at ``size`` are skipped.
    """
    if not volumes:
        raise ValueError("no labelled volumes to build training tasks from")
    names = [v.name for v in volumes]
    if len(set(names)) != len(names):
        raise ValueError("labelled volumes need unique names")
    grouped: dict[tuple[str, str, int], list[TaskVolume]] = {}
    datasets: dict[str, str] = {}
    framing = Framing(int(size), int(context), "physical" if pixel_mm else "pad", pixel_mm, context_mm)
    for vol in volumes:
        for (structure, axis), part in _volume_tasks(vol, framing, axes, margin, max_slices).items():
            grouped.setdefault((vol.group, structure, axis), []).append(part)
            datasets[vol.group] = vol.dataset
    return [Task(structure, group, datasets[group], axis, parts) for (group, structure, axis), parts in grouped.items()]


def _volume_tasks(vol: LabelledVolume, framing: Framing, axes: Sequence[str | int], margin: float,
                  max_slices: int) -> dict[tuple[str, int], TaskVolume]:
    """One volume's :class:`TaskVolume` per (canonical structure name, axis)."""
    image = torch.as_tensor(normalize(vol.image.array, vol.modality))  # (X, Y, Z) in [0, 1]
    labels = np.asarray(vol.labels.array)
    boxes = ndimage.find_objects(labels.astype(np.int64, copy=False))
    label_t = torch.as_tensor(labels.astype(np.int64))
    out = {}
    for axis in sorted({axis_index(a) for a in axes}):
        centre = framing.centre(image, axis)
        geometry = framing.geometry(vol.image.shape, vol.image.spacing, axis, centre=centre)
        stack = SlabStack(extract_slabs(image, geometry).half(), geometry.positions)
        depth = geometry.depth
        for value, name in vol.structures.items():
            box = boxes[value - 1] if 0 < value <= len(boxes) else None
            if box is None:
                continue
            rows = _rows(box[axis].start, box[axis].stop, depth, margin, max_slices)
            mask = (label_t == value).float()
            label_geometry = framing.geometry(vol.image.shape, vol.image.spacing, axis, rows, centre=centre, context=0)
            soft = extract_slabs(mask, label_geometry).clamp_(0.0, 1.0)  # (n, 1, s, s)
            part = TaskVolume(vol.name, stack, rows, (soft * LABEL_SCALE).round_().to(torch.uint8))
            if part.foreground.any():
                out[(canonical_name(name), axis)] = part
    return out


def _rows(start: int, stop: int, depth: int, margin: float, max_slices: int) -> Tensor:
    """Slab indices covering ``[start, stop)`` plus ``margin`` of its extent each side, at most ``max_slices``."""
    pad = math.ceil(margin * (stop - start))
    lo, hi = max(0, start - pad), min(depth, stop + pad)
    rows = torch.arange(lo, hi)
    if rows.numel() > max_slices:
        rows = rows[torch.linspace(0, rows.numel() - 1, max_slices).round().long()]
    return rows


def split_tasks(
    tasks: Sequence[Task],
    holdout_volumes: Sequence[str] = (),
    holdout_structures: Sequence[str] = (),
) -> tuple[list[Task], list[Task]]:
    """Split tasks into training and validation by whole volumes and whole structures.

    * A held-out structure (matched by :func:`canonical_name`) becomes a validation task as a whole:
      queries from any of its volumes, support from the others.
    * Otherwise the training task keeps only volumes not held out; if the task has held-out volumes,
      a validation task queries them with support from the training volumes (which the model has
      seen, as a user's labelled atlases would be), or from each other if it has none.

    Returns:
        ``(train, validation)``; no training task contains a held-out volume or structure.
    """
    held_volumes = set(holdout_volumes)
    held_structures = {canonical_name(s) for s in holdout_structures}
    train, val = [], []
    for task in tasks:
        if task.structure in held_structures:
            val.append(task)
            continue
        kept = [v for v in task.volumes if v.name not in held_volumes]
        held = [v for v in task.volumes if v.name in held_volumes]
        if kept:
            train.append(replace(task, volumes=kept, query_volumes=(), support_volumes=()))
        if held:
            support = range(len(kept)) if kept else range(len(kept), len(kept) + len(held))
            val.append(replace(task, volumes=kept + held, query_volumes=tuple(range(len(kept), len(kept) + len(held))),
                               support_volumes=tuple(support)))
    return train, val


# ---------------------------------------------------------------------------------------- episodes
@dataclass
class Episode:
    """Neighbouring query slabs of one volume and one support set for them.

    Attributes:
        query_images: ``(Q, C, s, s)``; query_labels: ``(Q, 1, s, s)`` soft masks.
        support_images: ``(S, C, s, s)``; support_labels: ``(S, 1, s, s)``.
        query_positions: ``(Q,)``, support_positions: ``(S,)`` relative positions along the axis.
        task: the task's key; query_volume: its name; support_volume_names: the volumes supports came from.
    """

    query_images: Tensor
    query_labels: Tensor
    support_images: Tensor
    support_labels: Tensor
    query_positions: Tensor
    support_positions: Tensor
    task: str
    query_volume: str
    support_volume_names: tuple[str, ...] = field(default=())

    def to(self, device: torch.device) -> "Episode":
        return replace(self, query_images=self.query_images.to(device), query_labels=self.query_labels.to(device),
                       support_images=self.support_images.to(device), support_labels=self.support_labels.to(device))


def _gumbel(n: int, generator: torch.Generator) -> Tensor:
    u = torch.rand(n, generator=generator).clamp_(1e-10, 1 - 1e-10)
    return -torch.log(-torch.log(u))


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (), generator=generator))


def sample_episode(
    task: Task,
    support_size: int,
    num_queries: int,
    generator: torch.Generator,
    position_prob: float = 0.5,
    tau: float = 0.05,
    positive_weight: float = 3.0,
) -> Episode:
    """Draw one episode (CPU tensors, float32).

    Queries: a random slab showing the structure in a random query volume, and its nearest
    neighbours along the axis (like inference's groups of neighbouring slices). Support: from the
    task's support volumes other than the query's (if none, other slabs of the query volume), without
    replacement; with probability ``position_prob`` ranked by ``exp(-|Δposition| / tau)`` around the
    queries' mean position (inference's ``"position"`` strategy), else at random with slabs showing
    the structure ``positive_weight`` times as likely.
    """
    qv = task.query_volumes[_randint(len(task.query_volumes), generator)]
    query = task.volumes[qv]
    fg = torch.nonzero(query.foreground).flatten()
    centre = query.positions[fg[_randint(fg.numel(), generator)]]
    nearness = -(query.positions - centre).abs() / tau + 0.1 * _gumbel(len(query), generator)
    q_items = nearness.topk(min(num_queries, len(query))).indices

    others = [i for i in task.support_volumes if i != qv]
    sources = [(i, torch.arange(len(task.volumes[i]))) for i in others]
    if not sources:
        keep = torch.ones(len(query), dtype=torch.bool)
        keep[q_items] = False
        sources = [(qv, torch.nonzero(keep).flatten())]
    vol_ids = torch.cat([torch.full((items.numel(),), i) for i, items in sources])
    items = torch.cat([items for _, items in sources])
    if items.numel() == 0:
        raise ValueError(f"task {task.key} has too few slabs for a support set")
    positions = torch.cat([task.volumes[i].positions[it] for i, it in sources])
    foreground = torch.cat([task.volumes[i].foreground[it] for i, it in sources])
    noise = _gumbel(items.numel(), generator)
    if float(torch.rand((), generator=generator)) < position_prob:
        mean_position = query.positions[q_items].mean()
        scores = -(positions - mean_position).abs() / tau + noise
    else:
        scores = noise + foreground.float() * math.log(positive_weight)
    chosen = scores.topk(min(support_size, items.numel())).indices

    q_images, q_labels = query.take(q_items)
    used = vol_ids[chosen].unique()
    parts = [task.volumes[int(i)].take(items[chosen[vol_ids[chosen] == i]]) for i in used]
    s_images, s_labels = (torch.cat(list(t)) for t in zip(*parts))
    s_positions = torch.cat([positions[chosen[vol_ids[chosen] == i]] for i in used])
    names = tuple(task.volumes[int(i)].name for i in used)
    return Episode(q_images, q_labels, s_images, s_labels, query.positions[q_items], s_positions, task.key,
                   query.name, names)


def fixed_episodes(tasks: Sequence[Task], per_task: int, support_size: int, num_queries: int, seed: int) -> list[Episode]:
    """Deterministic validation episodes: ``per_task`` per task, position-matched support (inference's default)."""
    generator = torch.Generator().manual_seed(int(seed))
    return [sample_episode(task, support_size, num_queries, generator, position_prob=1.0)
            for task in tasks for _ in range(per_task)]
