"""Shared pieces of the benchmark scripts: tasks on real data, the model under test, metrics, CSV, plots.

A benchmark is a function of explicit arguments (tasks, model, sizes, ...) that returns tidy rows
(one dict per measurement) and writes them as CSV plus a PNG plot; its ``main`` only parses the
command line and loads the real data. Tests call the same functions with tiny synthetic tasks and a
tiny random network, so the scripts cannot rot.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fewshotcx import Segmenter, Volume  # noqa: E402
from fewshotcx import datasets  # noqa: E402
from fewshotcx.evaluation.metrics import evaluate, per_slice_dice  # noqa: E402
from fewshotcx.pipeline.postprocess import postprocess  # noqa: E402
from fewshotcx.models.weights import load_checkpoint, load_universeg, resolve  # noqa: E402
import roles  # noqa: E402
from report import (  # noqa: E402,F401
    paired_difference, plot_lines, print_table, read_csv, summarise, write_and_show, write_csv,
)

#: Surface-Dice tolerance (mm) reported as ``nsd`` in every benchmark.
NSD_TOLERANCE_MM = 2.0
#: Dice at or above which a rule with no support and no model (an HU threshold) "solves" a structure:
#: every table that carries a rule baseline says which structures it solves (ct_cross_patient.py,
#: interactive_protocol.py); such a structure cannot rank methods.
RULE_SOLVED_DICE = 0.8
#: Post-processing variants evaluated on the same probability map: label → Segmenter operations.
POSTPROCESSING = {"none": (), "largest_component": ("largest_component",)}


# ------------------------------------------------------------------------------------------ command line
def add_output_options(parser) -> None:
    """``--out`` (CSV folder, default ``bench-output/<script>``: committing results to
    ``benchmarks/results`` is an explicit ``--out benchmarks/results``), ``--plots`` (PNG folder),
    ``--threads`` and ``--from-csv`` (redraw only)."""
    default = Path("bench-output") / Path(parser.prog).stem
    parser.add_argument("--out", type=Path, default=default, help=f"CSV folder (default: {default})")
    parser.add_argument("--plots", type=Path, default=None, help="PNG folder (default: --out)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--from-csv", type=Path, nargs="+", default=None,
                        help="only redraw plots and tables from these CSVs (concatenated)")


def development_data_parser(description: str):
    """An ``argparse`` parser with ``--shared`` (the development data folder, default ../shared/data)
    and ``--out`` (CSV folder, default ``bench-output/<script>``): the scripts that read ../shared."""
    import argparse

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=None, help="development data folder (default: ../shared/data)")
    default = Path("bench-output") / Path(parser.prog).stem
    parser.add_argument("--out", type=Path, default=default, help=f"CSV folder (default: {default})")
    return parser


def apply_output_options(args, report, tag: str) -> bool:
    """Set ``--threads``; with ``--from-csv`` redraw through ``report(rows, out, plots, tag)`` and return True."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.from_csv:
        return False
    report([row for path in args.from_csv for row in read_csv(path)], args.out, args.plots, tag)
    return True


# ------------------------------------------------------------------------------------------ machine
def machine_info() -> str:
    """CPU model, cores, torch version and threads, GPU (one line, for logs and docs)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} threads); "
            f"{gpu}; Python {platform.python_version()}")


# -------------------------------------------------------------------------------------------- model
@dataclass
class ModelSpec:
    """The UniverSeg network under test: a checkpoint spec, or a ready module (tests pass a tiny one).

    The checkpoint is loaded once; :meth:`segmenter` builds Segmenters around that one network.
    """

    weights: str = "default"
    model: Optional[torch.nn.Module] = None
    slice_size: Optional[int] = None
    device: str = "auto"

    def __post_init__(self) -> None:
        self.in_memory = self.model is not None

    def network(self) -> torch.nn.Module:
        if self.model is None:
            self.model, meta = load_universeg(self.weights, return_metadata=True)
            self.slice_size = self.slice_size or int(meta.get("slice_size", 128))
        return self.model

    def segmenter(self, **options: Any) -> Segmenter:
        """A Segmenter on this network; ``options`` are Segmenter arguments (support_size, seed, ...).

        Support is matched by position unless ``strategy`` is given: these benchmarks measure the model
        on scans of the same coverage, their protocol since 0.1 (the library's default ``"auto"`` adds a
        registration per query; benchmarks/ct_cross_patient.py and cross_patient.py compare strategies)."""
        network = self.network()
        return Segmenter(model=network, slice_size=self.slice_size, device=self.device, progress=False,
                         **{"strategy": "position", **options})

    def describe(self) -> str:
        if self.in_memory:
            return f"in-memory {type(self.model).__name__} (slice size {self.slice_size})"
        return f"checkpoint {self.weights!r} ({resolve(self.weights, 'universeg', download=False)})"

    def roles(self) -> dict[str, tuple[set[str], set[str]]]:
        """``{"selection": (volumes, structures), "report": (volumes, structures)}`` from the
        checkpoint's training config: the *selection* set (``holdout_*``) validated training and may
        choose defaults; the *report* set (``report_*``) was never seen by either and is the only one
        reported as unseen. Empty sets for an in-memory model (nothing is known to be held out)."""
        if self.in_memory:
            return {"selection": (set(), set()), "report": (set(), set())}
        _, metadata = load_checkpoint(resolve(self.weights, "universeg", download=False))
        extra = metadata.get("extra") if isinstance(metadata.get("extra"), dict) else {}
        config = extra.get("training", {}).get("config", {})
        return {role: (set(config.get(f"{key}_volumes", [])),
                       {datasets.canonical_name(s) for s in config.get(f"{key}_structures", [])})
                for role, key in (("selection", "holdout"), ("report", "report"))}


# -------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class CrossTask:
    """Segment ``structure`` on ``query`` given it labelled on ``support`` (a different subject)."""

    support: datasets.Case
    query: datasets.Case
    structure: str

    @property
    def name(self) -> str:
        return f"{short(self.support)}->{short(self.query)}:{datasets.canonical_name(self.structure)}"

    @property
    def modality(self) -> str:
        return self.query.modality.lower() or "auto"

    def support_label(self) -> Volume:
        return binary_mask(self.support, self.structure)

    def reference(self) -> Volume:
        return binary_mask(self.query, self.structure)


@dataclass(frozen=True)
class SliceTask:
    """Segment ``structure`` on ``case`` given a few of its own slices labelled."""

    case: datasets.Case
    structure: str

    @property
    def name(self) -> str:
        return f"{short(self.case)}:{datasets.canonical_name(self.structure)}"

    @property
    def modality(self) -> str:
        return self.case.modality.lower() or "auto"

    def reference(self) -> Volume:
        return binary_mask(self.case, self.structure)


def synthetic_case(shape=(96, 96, 40), seed=0) -> tuple[Volume, Volume, Volume]:
    """Speed only: a smooth random image with an ellipsoid label, and a second image as the query."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    label = ((grid / [0.4, 0.3, 0.6]) ** 2).sum(-1) <= 1
    image = (label + rng.normal(0, 0.2, shape)).astype(np.float32)
    query = (np.roll(label, 3, axis=0) + rng.normal(0, 0.2, shape)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    return Volume(image, affine), Volume(label.astype(np.uint8), affine, label=True), Volume(query, affine)


def synthetic_subject(shape=(96, 96, 40), seed=0) -> datasets.Case:
    """A synthetic labelled subject (:func:`synthetic_case`'s image and ellipsoid "blob") as a Case,
    for dry runs and tests that must not need downloaded data. Never for reported results."""
    image, label, _ = synthetic_case(shape, seed=seed)
    return datasets.Case(f"synthetic/blob{seed}", image, label, {1: "blob"}, "synthetic", "generated", "", "MR")


def short(case: datasets.Case) -> str:
    """``"pyradiomics/brain2"`` → ``"brain2"``."""
    return case.name.split("/")[-1]


def binary_mask(case: datasets.Case, structure: str) -> Volume:
    """The structure's mask (uint8 0/1) on the case's grid, matched by canonical name."""
    return datasets.select_structures(case, [structure]).labels


def sarcoma_selection_ready(structures: dict[str, Sequence[str]], volumes: Sequence[str]) -> bool:
    """Before a selection on the sarcoma scans: refuse report data (:func:`roles.require`), then whether
    the scans (development data in ../shared/data) are here, with a one-line error when not."""
    roles.require(roles.SELECTION, volumes, [s for names in structures.values() for s in names])
    if datasets.shared_data_dir() is None:
        print("error: the sarcoma scans are development data in ../shared/data", file=sys.stderr)
        return False
    return True


def data_role(case: datasets.Case, structure: str, roles: dict[str, tuple[set[str], set[str]]]) -> str:
    """``"report"`` (never seen by training, validation or any choice of default), ``"selection"``
    (validated training / chose defaults: never quote it as unseen) or ``"trained"``, for a volume and
    structure; see :meth:`ModelSpec.roles`."""
    for role in ("report", "selection"):
        volumes, structures = roles[role]
        if case.name in volumes or datasets.canonical_name(structure) in structures:
            return role
    return "trained"


#: World (MNI) z range in mm that :func:`brain_cases` keeps by default: an axial slab around the deep
#: grey matter (every structure both atlases name lies within z = -30..+26 mm), like a scan whose
#: coverage is limited to the region of interest. It halves the cost of whole-volume inference.
BRAIN_SLAB_MM = (-52.0, 44.0)


def crop_axial(case: datasets.Case, z_min_mm: float, z_max_mm: float) -> datasets.Case:
    """The case restricted to the axial slices whose centre's world z lies in ``[z_min_mm, z_max_mm]``.

    ``case`` must be canonical (RAS, axis 2 = z). Image and labels keep their world coordinates.
    """
    z = case.image.affine[2, 2] * np.arange(case.image.shape[2]) + case.image.affine[2, 3]
    keep = np.flatnonzero((z >= z_min_mm) & (z <= z_max_mm))
    if keep.size == 0:
        raise ValueError(f"{case.name} has no axial slice between z = {z_min_mm} and {z_max_mm} mm")
    start, stop = int(keep[0]), int(keep[-1]) + 1
    shift = np.eye(4)
    shift[2, 3] = start
    affine = case.image.affine @ shift
    image = Volume(case.image.array[..., start:stop], affine)
    labels = Volume(case.labels.array[..., start:stop], affine, label=True)
    present = set(np.unique(labels.array).tolist())
    structures = {v: n for v, n in case.structures.items() if v in present}
    return replace(case, image=image, labels=labels, structures=structures)


@lru_cache(maxsize=None)
def brain_cases(spacing: float = 2.0, slab_mm: Optional[tuple[float, float]] = BRAIN_SLAB_MM
                ) -> tuple[datasets.Case, datasets.Case]:
    """Colin27 + AAL and MNI152 + Harvard-Oxford at ``spacing`` mm, with the structures both name,
    cropped to the axial slab ``slab_mm`` (world z, mm; None = whole brains)."""
    colin, mni = datasets.colin27_aal(downsample=spacing), datasets.mni152_harvard_oxford(downsample=spacing)
    pair = datasets.structure_pair(colin, mni)
    return pair if slab_mm is None else tuple(crop_axial(case, *slab_mm) for case in pair)


@lru_cache(maxsize=None)
def pyradiomics_case(name: str) -> datasets.Case:
    return datasets.pyradiomics_cases([name])[0]


def brain_cross_tasks(structures: Sequence[str], directions: str = "both", spacing: float = 2.0) -> list[CrossTask]:
    """Cross-subject brain tasks: ``"both"`` = Colin27 → MNI152 and MNI152 → Colin27 for each
    structure, ``"forward"`` = Colin27 → MNI152 only, ``"alternate"`` = the two directions in turn
    (first structure forward, second reverse, ...), both directions at half the cost."""
    colin, mni = brain_cases(spacing)
    forward, reverse = (colin, mni), (mni, colin)
    if directions == "both":
        pairs = [[forward, reverse]] * len(structures)
    elif directions == "forward":
        pairs = [[forward]] * len(structures)
    elif directions == "alternate":
        pairs = [[forward] if i % 2 == 0 else [reverse] for i in range(len(structures))]
    else:
        raise ValueError(f"directions must be 'both', 'forward' or 'alternate', got {directions!r}")
    return [CrossTask(s, q, name) for name, chosen in zip(structures, pairs) for s, q in chosen]


def lesion_cross_tasks(pairs: Sequence[tuple[str, str]]) -> list[CrossTask]:
    """pyradiomics lesion tasks, e.g. ``[("brain1", "brain2")]``: support case → query case."""
    return [CrossTask(pyradiomics_case(a), pyradiomics_case(b), "lesion") for a, b in pairs]


def print_provenance(cases: Iterable[datasets.Case]) -> list[str]:
    """Print (and return) one licence + citation line per data source used."""
    seen: dict[str, datasets.Case] = {}
    for case in cases:
        seen.setdefault(case.source, case)
    lines = [f"data: {source}: licence: {case.licence}; cite: {case.citation}" for source, case in sorted(seen.items())]
    for line in lines:
        print(line)
    return lines


# ------------------------------------------------------------------------------------------ metrics
def threshold(prob: Volume, operations: Sequence[str] = (), level: float = 0.5,
              extent: Optional[tuple[float, float]] = None) -> np.ndarray:
    """Binary uint8 mask ``prob > level``, then the Segmenter's post-processing ``operations``
    (``extent``: the relative axial range ``"support_extent"`` keeps, see :mod:`fewshotcx.pipeline.postprocess`)."""
    mask = (prob.array > level).astype(np.uint8)
    return postprocess(mask, operations, extent) if operations else mask


def score(pred: np.ndarray, reference: Volume, exclude_slices: Sequence[int] = ()) -> dict[str, float]:
    """3D ``dice``, ``hd95`` (mm), ``nsd`` (surface Dice at :data:`NSD_TOLERANCE_MM`), and
    ``slice_dice``: mean 2D Dice over the axial slices where the reference has foreground (slices in
    ``exclude_slices`` left out, e.g. the ones the user labelled)."""
    result = evaluate(pred, reference.array, spacing=reference.spacing, tolerance=NSD_TOLERANCE_MM)
    per_slice = per_slice_dice(pred, reference.array, axis=2)
    keep = reference.array.any(axis=(0, 1))
    keep[list(exclude_slices)] = False
    return {"dice": round(float(result["dice"]), 4), "hd95": round(float(result["hd95"]), 2),
            "nsd": round(float(result["surface_dice"]), 4),
            "slice_dice": round(float(per_slice[keep].mean()), 4) if keep.any() else float("nan")}
