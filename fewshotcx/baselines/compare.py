"""Every method on the same few labelled patients, scored the same way (``fewshotcx compare`` and
``benchmarks/seed_comparison.py`` both run :func:`compare`).

A :class:`Run` is one support set (``n`` labelled patients) and the queries to segment with it. Each
method in :data:`METHODS` (name → function) turns a run into one label map per query, on the query's
grid, with the support's label values, and reports its training and inference seconds. A method that
cannot run here (no SAM checkpoint, nnunetv2 or TotalSegmentator missing, no atlas backend) raises
:class:`MethodUnavailable` and gets a ``skipped`` row with the reason, not a number.

Add a method with one entry::

    METHODS["mine"] = lambda run, options: Outcome(predictions=[...], train_seconds=..., infer_seconds=...)
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..evaluation import metrics
from ..io.tables import write_csv
from ..io.volume import Volume, VolumeError, load_volume, reorient_array, save_volume
from ..rt.names import default_name
from .interpolation import interpolate_slices, label_fusion

#: Columns of the results table, in order.
COLUMNS = ("method", "n_support", "query", "structure", "label", "dice", "hd95_mm", "nsd_2mm", "train_s",
           "infer_s", "status", "setting", "budget", "note")


class MethodUnavailable(RuntimeError):
    """A method that cannot run here (missing package, weights or checkpoint); the message says why."""


@dataclass
class Run:
    """One support set and the queries it segments (all :class:`Volume`; labels integer maps).

    Attributes:
        support_images, support_labels: the ``n`` labelled patients.
        queries: images to segment; ``references``: their label maps (``None`` where unknown).
        query_ids: names for outputs and rows.
        structures: label value → structure name (for reporting and TotalSegmentator).
    """

    support_images: list[Volume]
    support_labels: list[Volume]
    queries: list[Volume]
    references: list[Optional[Volume]]
    query_ids: list[str]
    structures: dict[int, str]

    @property
    def n_support(self) -> int:
        return len(self.support_images)


@dataclass
class Options:
    """Method settings shared by the CLI and the benchmark.

    Attributes:
        weights: UniverSeg weights (``"default"``, ``"official"`` or a path).
        sam_weights: SAM checkpoint path (SAM is skipped without one).
        device: torch device for the in-context models and the U-Net; nnU-Net gets ``"cuda"`` when this is
            a CUDA device, else ``"cpu"``.
        modality: intensity normalisation for the Segmenter-based methods and nnU-Net's channel
            (CT or MRI normalisation).
        unet_steps, unet_slice_size: the 2D U-Net's training steps and slab size.
        nnunet_configuration, nnunet_epochs, nnunet_iterations: nnU-Net's configuration and budget.
        interpolation_step: interpolation reads every ``step``-th slice of the query's reference (in the
            structure's extent) as drawn by hand; it is a same-patient setting, reported as such.
        totalseg_masks: folder of TotalSegmentator outputs (``<dir>/<query id>/`` or, for one query,
            ``<dir>/`` itself) to score instead of running it.
        work_dir: scratch folder for nnU-Net (default: a temporary one, removed after the run).
        seed: seeds the Segmenter and the U-Net.
    """

    weights: str = "default"
    sam_weights: Optional[str] = None
    device: str = "cpu"
    modality: str = "auto"
    unet_steps: int = 200
    unet_slice_size: int = 128
    nnunet_configuration: str = "3d_fullres"
    nnunet_epochs: int = 5
    nnunet_iterations: int = 25
    interpolation_step: int = 5
    totalseg_masks: Optional[str] = None
    work_dir: Optional[str] = None
    seed: int = 0


@dataclass
class Outcome:
    """A method's label maps (one per query, on its grid) and what they cost."""

    predictions: list[Volume]
    train_seconds: float = 0.0
    infer_seconds: float = 0.0
    setting: str = "cross-patient"
    budget: str = ""


# ---------------------------------------------------------------------- methods
def _segmenter_method(run: Run, options: Options, budget: str = "", **segmenter_args) -> Outcome:
    """Fit a :class:`~fewshotcx.Segmenter` on the support and predict every query."""
    from ..segmenter import Segmenter  # noqa: PLC0415

    start = time.perf_counter()
    seg = Segmenter(device=options.device, seed=options.seed, modality=options.modality, progress=False,
                    **segmenter_args).fit(run.support_images, run.support_labels)
    fitted = time.perf_counter()
    predictions = [seg.predict(query) for query in run.queries]
    return Outcome(predictions, fitted - start, time.perf_counter() - fitted, budget=budget)


def universeg(run: Run, options: Options) -> Outcome:
    """UniverSeg with ``options.weights``."""
    return _segmenter_method(run, options, budget=f"weights={options.weights}", backend="universeg",
                             weights=options.weights)


def sam(run: Run, options: Options) -> Outcome:
    """SAM (prompt-tuned on the support) from ``options.sam_weights``."""
    if not options.sam_weights:
        raise MethodUnavailable("no SAM checkpoint given (--sam-weights PATH)")
    return _segmenter_method(run, options, budget=Path(options.sam_weights).name, backend="sam",
                             weights=options.sam_weights)


def atlas(run: Run, options: Options) -> Outcome:
    """Multi-atlas registration (``Segmenter(backend="atlas")``)."""
    return _segmenter_method(run, options, backend="atlas")


def unet(run: Run, options: Options) -> Outcome:
    """The 2D U-Net trained from scratch on the support slabs, predicting through the Segmenter."""
    from .unet import UNetBackend  # noqa: PLC0415

    backend = UNetBackend(slice_size=options.unet_slice_size, context=1, device=options.device,
                          steps=options.unet_steps, seed=options.seed)
    return _segmenter_method(run, options, budget=f"{options.unet_steps} steps at {options.unet_slice_size}px",
                             backend=backend)


def nnunet(run: Run, options: Options) -> Outcome:
    """nnU-Net v2 trained on the support patients (its own planning and preprocessing), with the
    ``options`` epoch budget."""
    from importlib.util import find_spec  # noqa: PLC0415

    if find_spec("nnunetv2") is None:
        from .nnunet import INSTALL_HINT  # noqa: PLC0415

        raise MethodUnavailable(INSTALL_HINT)
    from . import nnunet as nn  # noqa: PLC0415

    device = "cuda" if str(options.device).startswith("cuda") else "cpu"
    budget = (f"{options.nnunet_configuration}, {options.nnunet_epochs} epochs x {options.nnunet_iterations} "
              f"iterations on {device} (nnU-Net default: 1000 x 250)")
    with tempfile.TemporaryDirectory(prefix="fewshotcx-nnunet-", dir=options.work_dir) as tmp:
        start = time.perf_counter()
        dataset = nn.export_dataset(run.support_images, run.support_labels, Path(tmp) / "raw", 1, "support",
                                    modality=options.modality)
        model = nn.train(dataset, options.nnunet_configuration, epochs=options.nnunet_epochs,
                         iterations=options.nnunet_iterations, device=device, work_dir=Path(tmp) / "work")
        trained = time.perf_counter()
        predictions = nn.predict(model, run.queries, device=device)
        return Outcome(predictions, trained - start, time.perf_counter() - trained, budget=budget)


def label_fusion_method(run: Run, options: Options) -> Outcome:
    """Majority vote of the support label maps matched by relative position (no registration)."""
    start = time.perf_counter()
    supports = [lab.canonical().array for lab in run.support_labels]
    predictions = []
    for query in run.queries:
        canonical = query.canonical()
        fused = canonical.with_array(label_fusion(canonical.shape, supports), label=True)
        predictions.append(_on_query_grid(fused, query))
    return Outcome(predictions, 0.0, time.perf_counter() - start)


def interpolation(run: Run, options: Options) -> Outcome:
    """Shape-based interpolation from every ``interpolation_step``-th axial slice of each query's own
    reference (a same-patient method: it is given part of the answer)."""
    if any(ref is None for ref in run.references):
        raise MethodUnavailable("interpolation needs each query's reference (IMG:REF) to read its drawn slices")
    start = time.perf_counter()
    predictions = []
    for ref, query in zip(run.references, run.queries):
        canonical = ref.canonical()
        z = np.flatnonzero(canonical.array.any(axis=(0, 1)))
        if z.size == 0:  # nothing to draw: the structure is absent
            predictions.append(query.with_array(np.zeros(query.shape, np.uint8), label=True))
            continue
        drawn = sorted(set(range(int(z.min()), int(z.max()) + 1, options.interpolation_step)) | {int(z.max())})
        filled = interpolate_slices(canonical.array, drawn, axis=2, spacing=canonical.spacing)
        predictions.append(_on_query_grid(canonical.with_array(filled, label=True), query))
    return Outcome(predictions, 0.0, time.perf_counter() - start,
                   setting=f"same-patient, every {options.interpolation_step}th slice drawn")


def totalsegmentator(run: Run, options: Options) -> Outcome:
    """TotalSegmentator (no training): run here, or its outputs read from ``options.totalseg_masks``."""
    from . import totalsegmentator as ts  # noqa: PLC0415

    names = [run.structures[value] for value in sorted(run.structures)]
    start = time.perf_counter()
    if options.totalseg_masks:
        root = Path(options.totalseg_masks)
        folders = [root / qid if (root / qid).is_dir() else root for qid in run.query_ids]
        if len(run.queries) > 1 and any(folder == root for folder in folders):
            raise MethodUnavailable(f"--totalseg-masks {root}: with several queries it needs one sub-folder per "
                                    f"query id ({', '.join(run.query_ids)})")
        masks = [ts.load_masks(folder, names, query) for folder, query in zip(folders, run.queries)]
        budget = f"masks from {root}"
    else:
        reason = ts.unavailable()
        if reason is not None:
            raise MethodUnavailable(reason)
        masks = [ts.predict(query, names, device=options.device) for query in run.queries]
        budget = "pretrained (full resolution, 1.5 mm)"
    values = np.array([0, *sorted(run.structures)])
    predictions = [mask.with_array(values[mask.array].astype(np.uint8), label=True) for mask in masks]
    return Outcome(predictions, 0.0, time.perf_counter() - start, setting="pretrained, no support", budget=budget)


def _on_query_grid(canonical: Volume, query: Volume) -> Volume:
    """A canonical-layout label map put back into ``query``'s own layout."""
    return query.with_array(reorient_array(canonical.array, canonical.affine, query.affine), label=True)


#: Method name → function ``(Run, Options) -> Outcome``, in table order.
METHODS: dict[str, Callable[[Run, Options], Outcome]] = {
    "universeg": universeg,
    "sam": sam,
    "atlas": atlas,
    "nnunet": nnunet,
    "unet": unet,
    "label-fusion": label_fusion_method,
    "interpolation": interpolation,
    "totalsegmentator": totalsegmentator,
}


# ---------------------------------------------------------------------- running and scoring
def score(prediction: Volume, reference: Volume, value: int) -> dict[str, float]:
    """Dice, HD95 (mm) and surface Dice at 2 mm of structure ``value``, on the canonical grid."""
    pred, ref = prediction.canonical(), reference.canonical()
    a, b = pred.array == value, ref.array == value
    return {"dice": metrics.dice(a, b), "hd95_mm": metrics.hd95(a, b, spacing=ref.spacing),
            "nsd_2mm": metrics.surface_dice(a, b, spacing=ref.spacing, tolerance=2.0)}


def check_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` as a list, refused (ValueError) unless every name is in :data:`METHODS`."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(METHODS)}")
    return list(methods)


def compare(run: Run, methods: Sequence[str], options: Options,
            predictions_dir: Optional[Union[str, Path]] = None, log: Callable[[str], None] = print,
            overwrite: bool = False) -> list[dict]:
    """Run ``methods`` on ``run`` and score them; returns one row per method × query × structure
    (see :data:`COLUMNS`). A method that is unavailable (``status="skipped"``) or fails with a
    RuntimeError/ValueError (``status="failed"``, e.g. nnU-Net's error naming its log) gets one row per
    query with the reason in ``note``; the other methods still run.

    Args:
        predictions_dir: where to write ``<query id>/<method>.nii.gz`` (must exist; existing files are
            replaced only with ``overwrite``).
        log: progress lines (``print`` by default).
    """
    rows = []
    for name in check_methods(methods):
        base = {"method": name, "n_support": run.n_support}
        try:
            outcome = METHODS[name](run, options)
        except MethodUnavailable as exc:
            log(f"  {name}: skipped ({exc})")
            rows += [{**base, "query": qid, "status": "skipped", "note": str(exc)} for qid in run.query_ids]
            continue
        except (RuntimeError, ValueError) as exc:  # e.g. nnU-Net failed (its log is named): the others still run
            note = " ".join(f"{type(exc).__name__}: {exc}".split())
            log(f"  {name}: failed ({note})")
            rows += [{**base, "query": qid, "status": "failed", "note": note} for qid in run.query_ids]
            continue
        log(f"  {name}: trained {outcome.train_seconds:.1f} s, inferred {outcome.infer_seconds:.1f} s")
        for qid, prediction, reference in zip(run.query_ids, outcome.predictions, run.references):
            if predictions_dir is not None:
                (Path(predictions_dir) / qid).mkdir(exist_ok=True)
                save_volume(prediction, Path(predictions_dir) / qid / f"{name}.nii.gz", overwrite=overwrite)
            common = {**base, "query": qid, "train_s": round(outcome.train_seconds, 2),
                      "infer_s": round(outcome.infer_seconds / max(1, len(run.queries)), 2), "status": "ok",
                      "setting": outcome.setting, "budget": outcome.budget}
            if reference is None:
                rows.append(common)
                continue
            for value, structure in sorted(run.structures.items()):
                scores = score(prediction, reference, value)
                rows.append({**common, "structure": structure, "label": value,
                             **{k: round(v, 4) for k, v in scores.items()}})
    return rows


def write_results(rows: Sequence[dict], path: Union[str, Path], overwrite: bool = False) -> Path:
    """Write result rows as CSV with :data:`COLUMNS` (atomically; refuses to overwrite by default)."""
    return write_csv(rows, path, COLUMNS, overwrite=overwrite)


def load_run(support: Sequence[tuple[str, str]], queries: Sequence[tuple[str, Optional[str]]],
             structures: Optional[dict[int, str]] = None) -> Run:
    """A :class:`Run` from file paths: ``(image, label)`` pairs and ``(image, reference or None)``."""
    images = [load_volume(image) for image, _ in support]
    labels = [load_volume(label, label=True) for _, label in support]
    values = sorted(set().union(*(np.unique(lab.array).tolist() for lab in labels)) - {0})
    names = {v: (structures or {}).get(v, default_name(v)) for v in values}
    query_images = [load_volume(image, canonical=False) for image, _ in queries]
    references = [None if ref is None else load_volume(ref, label=True, canonical=False) for _, ref in queries]
    for (image, ref), query, reference in zip(queries, query_images, references):
        if reference is not None and not reference.same_grid(query, atol=1e-3 * max(1.0, max(query.spacing))):
            raise VolumeError(f"reference {ref} is not on the grid of query {image}")
    ids = [_query_id(image, i) for i, (image, _) in enumerate(queries)]
    if len(set(ids)) != len(ids):
        ids = [f"{i:03d}_{qid}" for i, qid in enumerate(ids)]
    return Run(images, labels, query_images, references, ids, names)


def _query_id(path: str, index: int) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".seg.nrrd"):
        if name.endswith(suffix):
            return name[: -len(suffix)] or f"query{index}"
    return name or f"query{index}"


__all__ = ["COLUMNS", "METHODS", "MethodUnavailable", "Options", "Outcome", "Run", "check_methods", "compare",
           "load_run", "score", "write_results"]
