"""Run a cohort on Ray: many patients, one support set, any number of workers, resumable.

Engine: the driver loads the support volumes once and puts them (and the segmenter options, which may
hold a network) in Ray's object store; each worker actor builds its :class:`~fewshotcx.Segmenter`
and fits it on that shared support once, then segments patient after patient. The support pool
itself is not shipped: it depends on the loaded model (slice size, context) and lives on the worker's
device, and fitting from the volumes is the same code path as a plain ``Segmenter``, so the cohort
predicts exactly what ``Segmenter.predict`` does. Patients stream through at most two per worker in
flight; results come back as file bytes and the driver writes them atomically and updates the run
record (:mod:`fewshotcx.cohort.record`) after each, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from tqdm.auto import tqdm

from .. import __version__
from ..io.atomic import atomic_output
from ..io.tables import write_csv
from .raysession import RaySession
from ..io.volume import PathLike, Volume, load_volume
from ..pipeline.support import check_support
from .manifest import Patient, read_manifest
from .record import RECORD_NAME, RunRecord, digest, input_state, options_fingerprint, volumes_digest
from .worker import CohortWorker, Outcome

RESULTS_NAME = "results.csv"
#: Patients in flight per worker. One: the next patient is sent as soon as a result arrives (before
#: the driver writes it), and nothing waits queued behind a busy worker while another one idles at
#: the end of the cohort (an actor runs its tasks one after the other anyway).
IN_FLIGHT_PER_WORKER = 1
#: Times a worker process may die before it is given up (each death restarts it).
MAX_WORKER_DEATHS = 3
INSTALL_HINT = "fewshotcx cohort needs Ray: pip install 'fewshotcx[cohort]'"

VolumeLike = Union[Volume, PathLike]


@dataclass
class CohortResults:
    """The results table of a cohort run.

    Attributes:
        rows: one dict per patient in manifest order: ``id``, ``status`` (``ok``, ``failed``, or
            ``skipped`` = finished by an earlier run with the same inputs and options, its row carried
            over), ``seconds`` (worker time), ``error`` and, when the manifest has references,
            ``dice`` and ``hd95`` (mm).
        path: the ``results.csv`` written.
        seconds: wall-clock time of the whole run.
    """

    rows: list[dict[str, Any]]
    path: Path
    seconds: float

    def count(self, status: str) -> int:
        """Number of patients with ``status``."""
        return sum(row["status"] == status for row in self.rows)

    def summary(self) -> str:
        """One line: counts per status, time, throughput, mean Dice when scored, the CSV path."""
        done = self.count("ok")
        rate = f" ({60 * done / self.seconds:.1f} patients/min)" if done and self.seconds > 0 else ""
        dice = [float(r["dice"]) for r in self.rows if r.get("dice") not in (None, "")]
        scored = f"; mean Dice {sum(dice) / len(dice):.3f} over {len(dice)}" if dice else ""
        return (f"{len(self.rows)} patients: {done} ok, {self.count('skipped')} skipped, {self.count('failed')} "
                f"failed in {self.seconds:.1f} s{rate}{scored}; results: {self.path}")


def require_ray():
    """Import Ray, or raise ImportError with the install command."""
    try:
        import ray
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return ray


def run(
    manifest: Union[PathLike, Iterable[Mapping[str, str]]],
    support: Sequence[tuple[VolumeLike, VolumeLike]],
    out_dir: PathLike,
    address: Optional[str] = None,
    workers: Optional[int] = None,
    segmenter_options: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
    gpus_per_worker: Optional[float] = None,
    cpus_per_worker: int = 1,
    max_attempts: int = 3,
    progress: Optional[bool] = None,
    structures: Optional[Sequence[str]] = None,
) -> CohortResults:
    """Segment every patient of ``manifest`` from the labelled ``support``, on Ray.

    Args:
        manifest: CSV path (columns ``id,image[,reference][,series]``, see
            :mod:`fewshotcx.cohort.manifest`) or rows as mappings.
        support: ``[(image, label), ...]`` paths or :class:`Volume` s.
        out_dir: created if missing; receives ``<id>.nii.gz`` (with ``structures``, also
            ``<id>.structures.json`` naming its label values, as ``fewshotcx predict`` writes; and
            ``<id>.rtstruct.dcm`` for DICOM series), ``results.csv`` and the run record
            ``.fewshotcx-run.json``.
        address: ``None`` starts a private local Ray inside this process (stopped at the end);
            ``"auto"`` or ``"HOST:PORT"`` joins a running cluster. If Ray is already initialised in
            this process, that connection is used either way.
        workers: actors to start; default: one per GPU (with ``gpus_per_worker``), else one per
            ``cpus_per_worker`` CPUs of the cluster; never more than there are patients to do.
        segmenter_options: keyword arguments of :class:`~fewshotcx.Segmenter` (``weights``, ``model``,
            ``seed``, ...). ``device="auto"`` means CUDA on GPU workers and CPU otherwise.
        overwrite: redo every patient and replace existing outputs, also files this folder's run
            record does not vouch for (never replaced otherwise).
        gpus_per_worker: GPUs per actor (fractions share a GPU); default 1 when the cluster has
            GPUs, else 0.
        cpus_per_worker: CPUs per actor (and its torch threads).
        max_attempts: times a patient is tried when its worker process dies under it.
        progress: progress bar over patients; default: when stderr is a terminal.
        structures: names of label values 1..N (e.g. from :func:`fewshotcx.rt.support_from` plans):
            the sidecar's names and the ROI names of each patient's RTSTRUCT (default, without a
            sidecar: ``label_<value>``).
    Returns:
        the results table (also written to ``out_dir/results.csv``).
    Raises:
        ImportError: Ray is not installed. ValueError: a bad manifest or option. FileExistsError: an
        output that is not this folder's own, without ``overwrite``. VolumeError: bad support.
    """
    ray = require_ray()
    started = time.perf_counter()
    patients = read_manifest(manifest)
    if not support:
        raise ValueError("give at least one (image, label) support pair")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if cpus_per_worker < 1 or max_attempts < 1 or (gpus_per_worker is not None and gpus_per_worker < 0):
        raise ValueError("cpus_per_worker and max_attempts must be at least 1, gpus_per_worker at least 0")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"the output folder is a file: {out}")
    images = [load_volume(image) for image, _ in support]
    labels = [load_volume(label, label=True) for _, label in support]
    check_support(images, labels)
    options = dict(segmenter_options or {})
    if structures is not None:
        from ..rt.names import check_names

        structures = check_names(structures)
        patients = [replace(p, named=True) for p in patients]  # each gets a .structures.json naming its labels
    config = digest(__version__, options_fingerprint(options), volumes_digest(images + labels),
                    *(() if structures is None else (structures,)))
    keys = {p.id: digest(config, p.series, input_state(p.image), input_state(p.reference)) for p in patients}

    out.mkdir(parents=True, exist_ok=True)
    record = RunRecord(out)
    todo = [p for p in patients if overwrite or not record.is_done(p.id, keys[p.id], out)]
    _check_outputs(todo, record, out, overwrite)
    _remove_stale_parts(out, [name for p in patients for name in p.outputs] + [RESULTS_NAME, RECORD_NAME])
    record.save()  # from now on results.csv here is this folder's own, even if every patient fails

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(patients), initial=len(patients) - len(todo), unit="patient", disable=not show)
    outcomes: dict[str, dict[str, Any]] = {}
    try:
        if todo:
            with RaySession(ray, address, workers, cpus_per_worker):
                pool = _WorkerPool(ray, options, (images, labels), workers, gpus_per_worker, cpus_per_worker, len(todo),
                                   structures)
                try:
                    for patient, outcome in pool.process(todo, max_attempts):
                        outcomes[patient.id] = _finish(patient, outcome, keys[patient.id], record, out, overwrite)
                        bar.update()
                finally:
                    pool.close()
    finally:
        bar.close()
    scored = any(p.reference is not None for p in patients)
    columns = ["id", "status", "seconds", "error"] + (["dice", "hd95"] if scored else [])
    rows = [outcomes.get(p.id) or {**record.row(p.id), "status": "skipped"} for p in patients]
    rows = [{c: row.get(c) for c in columns} for row in rows]
    path = write_csv(rows, out / RESULTS_NAME, columns, overwrite=True)
    return CohortResults(rows, path, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------- outputs
def _check_outputs(todo: Sequence[Patient], record: RunRecord, out: Path, overwrite: bool) -> None:
    """Refuse (before any work) to replace files the run record does not vouch for."""
    if overwrite:
        return
    foreign = [out / name for p in todo for name in p.outputs
               if (out / name).exists() and not record.owns(p.id, name, out)]
    if (out / RESULTS_NAME).exists() and not record.exists:
        foreign.append(out / RESULTS_NAME)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise FileExistsError(f"{foreign[0]}{more} exists and was not written by an earlier cohort run into this "
                              "folder (or was changed since); pass overwrite=True (CLI: --overwrite) to replace it")


def _remove_stale_parts(out: Path, names: Iterable[str]) -> None:
    """Delete temporary files an interrupted driver left (``atomic_output``'s ``.<name>.*.part*``)."""
    import glob

    for name in names:
        for stale in glob.glob(os.path.join(glob.escape(str(out)), f".{glob.escape(name)}.*.part*")):
            Path(stale).unlink(missing_ok=True)


def _finish(patient: Patient, outcome: Outcome, key: str, record: RunRecord, out: Path,
            overwrite: bool) -> dict[str, Any]:
    """Write a patient's files atomically, record it, and return its results row."""
    row: dict[str, Any] = {"id": patient.id, "status": outcome.status, "seconds": round(outcome.seconds, 2),
                           "error": outcome.error, **outcome.scores}
    if outcome.status != "ok":
        return row
    try:
        for name, data in outcome.files.items():
            replace = overwrite or record.owns(patient.id, name, out)
            with atomic_output(out / name, overwrite=replace) as tmp:
                tmp.write_bytes(data)
    except OSError as exc:
        return {**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    record.add(patient.id, key, out, list(outcome.files), row)
    record.save()
    return row




# ---------------------------------------------------------------------------------------- Ray
class _WorkerPool:
    """The worker actors and the patient queue between them.

    Each actor holds at most :data:`IN_FLIGHT_PER_WORKER` patients. When an actor's process dies, Ray
    restarts it (rebuilding the model and the fitted support from the object store) and its patients
    go back to the front of the queue, up to ``max_attempts`` tries each; an actor that dies more
    than :data:`MAX_WORKER_DEATHS` times is dropped.
    """

    def __init__(self, ray, options: dict[str, Any], support: tuple, workers: Optional[int],
                 gpus_per_worker: Optional[float], cpus_per_worker: int, patients: int,
                 structures: Optional[Sequence[str]] = None) -> None:
        self.ray = ray
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        if gpus_per_worker is None:
            gpus_per_worker = 1.0 if gpus >= 1 else 0.0
        cpus = float(resources.get("CPU", 0))
        capacity = int(min(gpus / gpus_per_worker if gpus_per_worker else float("inf"), cpus / cpus_per_worker))
        if capacity < 1 or (workers or 0) > capacity:
            raise ValueError(f"{workers or 1} worker(s) with {cpus_per_worker} CPU(s) and {gpus_per_worker:g} GPU(s) "
                             f"each do not fit the Ray cluster ({cpus:g} CPUs, {gpus:g} GPUs)")
        workers = min(workers or capacity, patients)
        if not gpus_per_worker and options.get("device", "auto") == "auto":
            options = {**options, "device": "cpu"}
        actor = ray.remote(CohortWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                                 max_restarts=-1, max_task_retries=0)
        self.setup_args = (ray.put(options), ray.put(support), structures)
        self.actors = [actor.remote(cpus_per_worker) for _ in range(workers)]
        self.deaths = [0] * workers
        try:
            for error in ray.get([a.setup.remote(*self.setup_args) for a in self.actors]):
                _raise_startup_error(error)
        except BaseException as exc:
            self.close()
            if isinstance(exc, ray.exceptions.RayActorError):
                raise RuntimeError(f"cohort workers failed to start: {_first_line(exc)}") from None
            raise

    def process(self, patients: Sequence[Patient], max_attempts: int):
        """Yield ``(patient, Outcome)`` as workers finish them (not in manifest order)."""
        from ray.exceptions import RayActorError

        ray, queue = self.ray, deque(patients)
        attempts = {p.id: 0 for p in patients}
        busy: dict[Any, tuple[int, Patient]] = {}       # task ref -> (actor, patient)
        recovering: dict[Any, int] = {}                 # setup() ref -> actor being restarted
        load = [0] * len(self.actors)

        def fill() -> None:
            for i in self._idle(load, recovering):
                if not queue:
                    return
                patient = queue.popleft()
                attempts[patient.id] += 1
                busy[self.actors[i].segment.remote(patient)] = (i, patient)
                load[i] += 1

        while queue or busy:
            fill()
            if not busy and not recovering:
                raise RuntimeError("every cohort worker died repeatedly; see the Ray logs (ray logs --help)")
            done = ray.wait([*busy, *recovering], num_returns=1)[0][0]
            if done in recovering:
                i = recovering.pop(done)
                try:
                    _raise_startup_error(ray.get(done))
                except RayActorError:
                    self._died(i, recovering)
                continue
            i, patient = busy.pop(done)
            load[i] -= 1
            try:
                outcome = ray.get(done)
            except RayActorError as exc:
                if not any(j == i for j in recovering.values()):
                    self._died(i, recovering)
                if attempts[patient.id] < max_attempts:
                    queue.appendleft(patient)
                else:
                    yield patient, Outcome(patient.id, "failed", 0.0,
                                           f"worker process died {attempts[patient.id]} times on this patient "
                                           f"(last: {type(exc).__name__})")
                continue
            fill()  # keep the workers busy while the driver writes this patient's files
            yield patient, outcome

    def _idle(self, load: list[int], recovering: dict[Any, int]) -> list[int]:
        """One entry per free slot of the live actors that are not restarting, round robin."""
        blocked = set(recovering.values())
        live = [i for i, actor in enumerate(self.actors) if actor is not None and i not in blocked]
        return [i for level in range(IN_FLIGHT_PER_WORKER) for i in live if load[i] <= level]

    def _died(self, i: int, recovering: dict[Any, int]) -> None:
        """Actor ``i``'s process died: wait for Ray's restart, or give the actor up."""
        self.deaths[i] += 1
        if self.deaths[i] > MAX_WORKER_DEATHS:
            self.ray.kill(self.actors[i])
            self.actors[i] = None
        else:
            recovering[self.actors[i].setup.remote(*self.setup_args)] = i

    def close(self) -> None:
        for actor in self.actors:
            if actor is not None:
                self.ray.kill(actor)


def _raise_startup_error(error: Optional[BaseException]) -> None:
    """Re-raise the exception a worker's :meth:`~fewshotcx.cohort.worker.CohortWorker.setup` returned."""
    if error is not None:
        raise error


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
