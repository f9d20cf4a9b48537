"""The cohort worker (a Ray actor): one model and one fitted support per process, many patients.

The worker never writes into the output folder. It returns each patient's files as bytes and the
driver writes them atomically, so a worker killed at any moment leaves nothing behind, and a
patient retried on another worker is written exactly once.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..io.volume import Volume, load_volume, save_volume
from ..rt.names import default_names
from ..segmenter import Segmenter
from .manifest import Patient


@dataclass
class Outcome:
    """What a worker sends back for one patient.

    Attributes:
        status: ``"ok"`` or ``"failed"``.
        seconds: time spent on the worker (load, predict, encode, score).
        error: one line; for an ``ok`` patient, a problem with its reference (then no scores).
        files: output file name → bytes (``ok`` only).
        scores: ``dice`` and ``hd95`` (mm) against the reference, when one was given and readable.
    """

    id: str
    status: str
    seconds: float
    error: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


class CohortWorker:
    """Holds one :class:`~fewshotcx.Segmenter`, built and fitted once by :meth:`setup`.

    Args:
        threads: torch CPU threads for this process.

    The model and support arrive through :meth:`setup` rather than the constructor, so that when Ray
    restarts a dead worker the driver sets it up again from the object store like a new one.
    """

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(max(1, int(threads)))
        self.segmenter: Optional[Segmenter] = None
        self.structures: Optional[list[str]] = None

    def setup(self, options: dict[str, Any], support: tuple[Sequence[Volume], Sequence[Volume]],
              structures: Optional[Sequence[str]] = None) -> Optional[BaseException]:
        """Build the segmenter from ``options`` (Segmenter keyword arguments) and fit it on ``support``
        (``(images, labels)``, lists of :class:`Volume`); ``structures`` name label values 1..N in the
        RTSTRUCTs. Returns None, or the exception that prevented it (bad weights, a CUDA error) for
        the driver to raise as the one-line error it is."""
        self.structures = None if structures is None else list(structures)
        try:
            segmenter = Segmenter(**{**options, "progress": False})
            self.segmenter = segmenter.fit(images=list(support[0]), labels=list(support[1]))
        except Exception as exc:  # noqa: BLE001 - handed to the driver
            return exc
        return None

    def segment(self, patient: Patient) -> Outcome:
        """Predict one patient; any error becomes a ``failed`` outcome with a one-line message."""
        start = time.perf_counter()
        try:
            query = load_volume(patient.image)
            prediction = self.segmenter.predict(query)
            files = {patient.output("labels"): _nifti_bytes(prediction)}
            names = self.structures or default_names(max(self.segmenter.classes))
            if patient.named:
                from ..rt.structures import sidecar_text

                files[patient.output("names")] = sidecar_text(names).encode("utf-8")
            if patient.series:
                files[patient.output("rtstruct")] = _rtstruct_bytes(prediction, patient.image, names)
        except Exception as exc:  # noqa: BLE001 - one patient's failure must not stop the cohort
            return Outcome(patient.id, "failed", time.perf_counter() - start, one_line(exc))
        scores, error = {}, ""
        if patient.reference is not None:
            try:
                scores = score(prediction, load_volume(patient.reference, label=True))
            except Exception as exc:  # noqa: BLE001 - the prediction stands; the row says why it is unscored
                error = f"reference: {one_line(exc)}"
        return Outcome(patient.id, "ok", time.perf_counter() - start, error, files, scores)


def score(prediction: Volume, reference: Volume) -> dict[str, float]:
    """``dice`` and ``hd95`` (mm) of the foreground (any non-zero label) against ``reference``."""
    from ..evaluation import metrics

    return {"dice": round(metrics.dice(prediction, reference), 4),
            "hd95": round(metrics.hd95(prediction, reference), 2)}


def _nifti_bytes(volume: Volume) -> bytes:
    with tempfile.TemporaryDirectory(prefix="fewshotcx-cohort-") as tmp:
        path = save_volume(volume, Path(tmp) / "out.nii.gz")
        return path.read_bytes()


def _rtstruct_bytes(prediction: Volume, series_dir: Path, names: Sequence[str]) -> bytes:
    """The prediction as an RT Structure Set in its DICOM series' patient and study: label value ``i``
    is ROI ``names[i - 1]``."""
    from ..rt.structures import write_structures

    with tempfile.TemporaryDirectory(prefix="fewshotcx-cohort-") as tmp:
        return write_structures(prediction, names, series_dir, Path(tmp) / "rtstruct.dcm").read_bytes()


def one_line(exc: BaseException) -> str:
    """``Type: message`` squeezed onto one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
