"""nnU-Net v2 as a baseline (``fx.baselines.nnunet``): export, train and predict through nnU-Net itself.

The supervised standard in medical segmentation, run as its authors ship it: :func:`export_dataset`
writes a raw dataset in nnU-Net v2's layout, :func:`train` runs nnU-Net's own fingerprinting,
planning, preprocessing and training (its console entry points, in a subprocess), and :func:`predict`
runs its sliding-window inference and puts the labels back on each query's grid with the user's values.

Where nnU-Net keeps things: ``nnUNet_raw`` is the folder :func:`export_dataset` wrote into;
``nnUNet_preprocessed`` and ``nnUNet_results`` are ``<work_dir>/preprocessed`` and
``<work_dir>/results`` (default ``work_dir``: ``<raw folder>/nnUNet_work``). They are set for the
subprocess only; your own ``nnUNet_*`` environment is neither read nor changed.

Budget: nnU-Net's default is 1000 epochs × 250 iterations (about a day on a GPU). :func:`train` takes
``epochs`` and ``iterations`` and trains with ``nnUNetTrainerFx_<E>ep_<I>it``, the stock trainer with
only that budget changed (see :mod:`fewshotcx.baselines.nnunet_trainers.budget`); pass ``trainer=``
to use one of nnU-Net's own trainers instead (e.g. ``"nnUNetTrainer"`` for the full schedule). A few
minutes of CPU training is not nnU-Net trained for a day: report the budget beside every number.

nnU-Net training is not seeded (nnU-Net's design); repeated runs differ slightly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import entry_points
from importlib.util import find_spec
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from ..io.volume import PathLike, Volume, VolumeError, load_volume, reorient_array, save_volume

INSTALL_HINT = "nnU-Net v2 is not installed: pip install 'fewshotcx[nnunet]'"
#: Sidecar written next to ``dataset.json`` and into the model folder: nnU-Net label → user label value.
LABELS_FILE = "fewshotcx_labels.json"
CONFIGURATIONS = ("2d", "3d_fullres")
_TRAINERS_DIR = Path(__file__).with_name("nnunet_trainers")
_FILE_ENDING = ".nii.gz"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class NnUNetError(RuntimeError):
    """An nnU-Net run (planning, training or prediction) failed; the message names its log file."""


def require_nnunet() -> None:
    """Raise a one-line :class:`ImportError` with the install command if ``nnunetv2`` is missing."""
    if find_spec("nnunetv2") is None:
        raise ImportError(INSTALL_HINT)


# ---------------------------------------------------------------------- export
def _case_pair(image: Union[Volume, PathLike], label: Union[Volume, PathLike], index: int) -> tuple[Volume, Volume]:
    """Canonical image and integer label map of case ``index``, refused unless on the same grid."""
    img, lab = load_volume(image), load_volume(label, label=True)
    if not img.same_grid(lab, atol=1e-3 * max(1.0, max(img.spacing))):
        raise VolumeError(f"case {index}: image and label grids differ (shape {img.shape} vs {lab.shape} or "
                          "affines); nnU-Net needs each label on its image's grid")
    return img, lab


def _plain(volume: Volume, array: Optional[np.ndarray] = None) -> Volume:
    """``volume`` (or ``array`` on its grid) without a source, so it is written in canonical layout."""
    return Volume(volume.array if array is None else array, volume.affine, volume.label)


def export_dataset(
    images: Sequence[Union[Volume, PathLike]],
    labels: Sequence[Union[Volume, PathLike]],
    out_dir: PathLike,
    dataset_id: int,
    name: str,
    channel_names: Optional[Mapping[str, str]] = None,
    label_names: Optional[Mapping[int, str]] = None,
    overwrite: bool = False,
    modality: str = "auto",
) -> Path:
    """Write labelled volumes as an nnU-Net v2 raw dataset ``<out_dir>/Dataset<ID>_<name>``.

    Layout: ``imagesTr/case_000_0000.nii.gz`` …, ``labelsTr/case_000.nii.gz`` …, ``dataset.json``, and
    ``fewshotcx_labels.json``. Volumes are written in canonical (RAS) layout. Label values are remapped
    to consecutive integers ``0, 1, …, K`` (sorted by value, 0 stays background) as nnU-Net requires;
    the mapping (nnU-Net label → your value) is recorded in ``dataset.json`` (``"fewshotcx_label_values"``)
    and in the sidecar, and :func:`predict` maps back.

    Args:
        images: one image per case (Volume or path), single channel.
        labels: label maps on the images' grids (integer values; 0 = background).
        out_dir: the ``nnUNet_raw`` folder (created if missing).
        dataset_id: nnU-Net dataset ID, 1–999.
        name: dataset name (letters, digits, ``_``, ``-``).
        channel_names: nnU-Net channel names; default from ``modality``: ``{"0": "CT"}`` (nnU-Net's
            CT normalisation: clip to the foreground's percentiles, then its mean/sd) or
            ``{"0": "MRI"}`` (any other name: each image z-scored on its own).
        modality: ``"ct"``, ``"mr"`` or ``"auto"`` (the majority of
            :func:`~fewshotcx.pipeline.intensity.looks_like_ct` over the images, as the Segmenter
            decides); used only when ``channel_names`` is not given.
        label_names: optional names for your label values (default ``label_<value>``).
        overwrite: replace an existing dataset folder of the same name.
    Returns:
        the dataset folder.
    Raises:
        VolumeError: mismatched grids, non-integer or empty label maps.
        ValueError: bad ID, name, channel names or case counts; FileExistsError: the folder exists.
    """
    if channel_names is not None and list(channel_names) != ["0"]:
        raise ValueError(f"channel_names must have exactly one channel '0' (one image per case), got {channel_names}")
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset_id must be in 1..999, got {dataset_id}")
    if not _NAME.match(name):
        raise ValueError(f"dataset name must be letters, digits, '_' or '-', got {name!r}")
    if isinstance(images, (str, os.PathLike, Volume)) or isinstance(labels, (str, os.PathLike, Volume)):
        raise ValueError("images and labels must be lists (one entry per case)")
    if len(images) != len(labels) or not images:
        raise ValueError(f"got {len(images)} images and {len(labels)} labels; need the same non-zero number")
    cases = [_case_pair(img, lab, i) for i, (img, lab) in enumerate(zip(images, labels))]
    if channel_names is None:  # MR must not get CT normalisation
        from ..pipeline.intensity import decide_modality  # noqa: PLC0415

        channel_names = {"0": "CT" if decide_modality([img.array for img, _ in cases], modality) == "ct" else "MRI"}
    channel_names = dict(channel_names)
    values = sorted(set().union(*(np.unique(lab.array).tolist() for _, lab in cases)) - {0})
    if not values:
        raise VolumeError("every label map is empty: nnU-Net needs at least one foreground label")
    names = {v: (label_names or {}).get(v, f"label_{v}") for v in values}
    folder = Path(out_dir) / f"Dataset{int(dataset_id):03d}_{name}"
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists; pass overwrite=True to replace it")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    lookup = np.zeros(max(values) + 1, dtype=np.uint16)
    lookup[values] = np.arange(1, len(values) + 1)
    to_user = {str(k + 1): int(v) for k, v in enumerate(values)}
    dataset = {
        "channel_names": channel_names,
        "labels": {"background": 0, **{names[v]: k + 1 for k, v in enumerate(values)}},
        "numTraining": len(cases),
        "file_ending": _FILE_ENDING,
        "fewshotcx_label_values": to_user,
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=out_dir))
    try:  # written aside, then moved into place: never a half-written dataset
        (staging / "imagesTr").mkdir()
        (staging / "labelsTr").mkdir()
        for i, (img, lab) in enumerate(cases):
            save_volume(_plain(img), staging / "imagesTr" / f"case_{i:03d}_0000{_FILE_ENDING}")
            save_volume(_plain(lab, lookup[lab.array]), staging / "labelsTr" / f"case_{i:03d}{_FILE_ENDING}")
        (staging / "dataset.json").write_text(json.dumps(dataset, indent=2))
        (staging / LABELS_FILE).write_text(json.dumps(
            {"nnunet_to_user": to_user, "names": {str(v): names[v] for v in values}}, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def verify(dataset_dir: PathLike) -> None:
    """Run nnU-Net's own ``verify_dataset_integrity`` on an exported dataset (raises if it objects)."""
    require_nnunet()
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(dataset_dir), num_processes=1)


# ---------------------------------------------------------------------- running nnU-Net
def _dataset_id(dataset_dir: Path) -> int:
    match = re.match(r"^Dataset(\d{3})_", dataset_dir.name)
    if match is None or not (dataset_dir / "dataset.json").is_file():
        raise ValueError(f"{dataset_dir} is not an nnU-Net raw dataset (Dataset<ID>_<name> with a dataset.json); "
                         "make one with export_dataset")
    return int(match.group(1))


def _environment(raw: Path, work_dir: Path) -> dict[str, str]:
    """The subprocess environment: nnU-Net's folders under ``work_dir``, our trainers, augmentation in
    the training process itself (no worker processes)."""
    env = dict(os.environ)
    env.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(work_dir / "preprocessed"),
               nnUNet_results=str(work_dir / "results"), nnUNet_extTrainer=str(_TRAINERS_DIR),
               nnUNet_n_proc_DA="0", nnUNet_compile="false", nnUNet_def_n_proc="1")
    return env


def _run(command: str, args: Sequence[str], env: dict[str, str], log: Path, what: str) -> None:
    """Run nnU-Net console command ``command`` (resolved from nnunetv2's entry points) with ``args``,
    appending its output to ``log``; raise :class:`NnUNetError` naming the log if it fails."""
    (point,) = [p for p in entry_points(group="console_scripts") if p.name == command] or [None]
    if point is None:
        raise ImportError(f"nnunetv2 has no '{command}' command; {INSTALL_HINT.split(': ')[1]} (nnunetv2>=2.5)")
    module, func = point.value.split(":")
    code = f"import sys; from {module} import {func} as f; sys.argv[0] = {command!r}; sys.exit(f())"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        out.write(f"\n$ {command} {' '.join(args)}\n")
        out.flush()
        done = subprocess.run([sys.executable, "-c", code, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise NnUNetError(f"nnU-Net {what} failed (exit {done.returncode}); see its log: {log}")


def _check_trainable(dataset_dir: Path, fold: Union[int, str]) -> int:
    """Refuse datasets and folds nnU-Net would reject, before any work; returns the case count."""
    dataset = json.loads((dataset_dir / "dataset.json").read_text())
    cases = len(list((dataset_dir / "labelsTr").glob(f"*{dataset.get('file_ending', _FILE_ENDING)}")))
    if cases < 1:
        raise ValueError(f"{dataset_dir}: no training cases in labelsTr")
    if fold != "all":
        if not isinstance(fold, int) or not 0 <= fold <= 4:
            raise ValueError(f"fold must be 'all' or 0..4, got {fold!r}")
        if cases < 5:
            raise ValueError(f"fold={fold} needs at least 5 cases for nnU-Net's 5-fold split, the dataset has "
                             f"{cases}; use fold='all'")
    return cases


def train(
    dataset_dir: PathLike,
    configuration: str = "3d_fullres",
    trainer: Optional[str] = None,
    epochs: int = 5,
    iterations: int = 25,
    fold: Union[int, str] = "all",
    device: str = "cpu",
    work_dir: Optional[PathLike] = None,
) -> Path:
    """Plan, preprocess and train nnU-Net v2 on an exported dataset.

    Args:
        dataset_dir: a folder written by :func:`export_dataset` (its parent is ``nnUNet_raw``).
        configuration: ``"2d"`` or ``"3d_fullres"``.
        trainer: an nnU-Net trainer class name (e.g. ``"nnUNetTrainer"``, ``"nnUNetTrainer_5epochs"``);
            ``None`` = the budget trainer ``nnUNetTrainerFx_<epochs>ep_<iterations>it``.
        epochs, iterations: the budget trainer's epochs and training iterations per epoch.
        fold: ``"all"`` (train on every case) or 0–4 (nnU-Net's 5-fold split; needs ≥ 5 cases).
        device: ``"cpu"``, ``"cuda"`` or ``"mps"``.
        work_dir: where nnU-Net's preprocessed data, results and ``logs/`` go (default
            ``<raw folder>/nnUNet_work``).
    Returns:
        the model folder (``…/results/Dataset<ID>_<name>/<trainer>__nnUNetPlans__<configuration>``),
        for :func:`predict`.
    Raises:
        ImportError: nnunetv2 missing; ValueError: a dataset or option nnU-Net would reject;
        NnUNetError: nnU-Net failed (the message names the log). The dataset folder is never modified.
    """
    require_nnunet()
    dataset_dir = Path(dataset_dir).resolve()
    dataset_id = _dataset_id(dataset_dir)
    if configuration not in CONFIGURATIONS:
        raise ValueError(f"configuration must be one of {', '.join(CONFIGURATIONS)}, got {configuration!r}")
    if device not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'mps' for nnU-Net, got {device!r}")
    if trainer is None:
        if epochs < 1 or iterations < 1:
            raise ValueError(f"epochs and iterations must be >= 1, got {epochs} and {iterations}")
        from .nnunet_trainers.budget import trainer_name  # noqa: PLC0415 - imports nnunetv2

        trainer = trainer_name(epochs, iterations)
    _check_trainable(dataset_dir, fold)
    work = Path(work_dir).resolve() if work_dir is not None else dataset_dir.parent / "nnUNet_work"
    env = _environment(dataset_dir.parent, work)
    log = work / "logs" / f"{dataset_dir.name}__{trainer}__{configuration}.log"
    plan = ["-d", str(dataset_id), "-c", configuration, "-np", "1", "-npfp", "1", "--verify_dataset_integrity",
            "--no_pbar"]
    # planning sets torch's thread count from nnUNet_n_proc_DA, which must then be positive
    _run("nnUNetv2_plan_and_preprocess", plan, {**env, "nnUNet_n_proc_DA": "1"}, log, "planning/preprocessing")
    _run("nnUNetv2_train", [str(dataset_id), configuration, str(fold), "-tr", trainer, "-device", device],
         env, log, "training")
    model_dir = work / "results" / dataset_dir.name / f"{trainer}__nnUNetPlans__{configuration}"
    fold_dir = model_dir / (f"fold_{fold}")
    if not (fold_dir / "checkpoint_final.pth").is_file():
        raise NnUNetError(f"nnU-Net training wrote no checkpoint in {fold_dir}; see its log: {log}")
    shutil.copyfile(dataset_dir / LABELS_FILE, model_dir / LABELS_FILE)
    (model_dir / "fewshotcx_log.txt").write_text(f"{log}\n")
    return model_dir


def _folds(model_dir: Path) -> list[str]:
    folds = sorted(p.name[len("fold_"):] for p in model_dir.glob("fold_*") if (p / "checkpoint_final.pth").is_file())
    if not folds:
        raise ValueError(f"{model_dir} holds no trained fold (fold_*/checkpoint_final.pth); train it with train()")
    return folds


def predict(
    model_dir: PathLike,
    images: Sequence[Union[Volume, PathLike]],
    device: str = "cpu",
    tta: bool = False,
    work_dir: Optional[PathLike] = None,
) -> list[Volume]:
    """Segment query volumes with a trained nnU-Net model (every trained fold, ensembled by nnU-Net).

    Args:
        model_dir: from :func:`train`.
        images: query volumes (Volume or path), any orientation.
        device: ``"cpu"``, ``"cuda"`` or ``"mps"``.
        tta: nnU-Net's mirroring test-time augmentation (its default; 8× the cost in 3D).
        work_dir: scratch folder for the exported queries and nnU-Net's output (default: a temporary one).
    Returns:
        one uint8/uint16 label Volume per query, on that query's exact grid and orientation, holding the
        label values of the training labels.
    """
    require_nnunet()
    model_dir = Path(model_dir).resolve()
    folds = _folds(model_dir)
    to_user = json.loads((model_dir / LABELS_FILE).read_text())["nnunet_to_user"]
    lookup = np.zeros(len(to_user) + 1, dtype=np.int64)
    for key, value in to_user.items():
        lookup[int(key)] = value
    originals = [image if isinstance(image, Volume) else load_volume(image) for image in images]
    with tempfile.TemporaryDirectory(prefix="fewshotcx-nnunet-", dir=work_dir) as tmp:
        inputs, outputs = Path(tmp) / "in", Path(tmp) / "out"
        inputs.mkdir()
        for i, original in enumerate(originals):
            save_volume(_plain(original.canonical()), inputs / f"query_{i:03d}_0000{_FILE_ENDING}")
        args = ["-i", str(inputs), "-o", str(outputs), "-m", str(model_dir), "-f", *folds, "-device", device,
                "-npp", "1", "-nps", "1", "--disable_progress_bar", *([] if tta else ["--disable_tta"])]
        env = _environment(Path(tmp), Path(tmp))
        log = Path(tmp) / "predict.log"
        try:
            _run("nnUNetv2_predict_from_modelfolder", args, env, log, "prediction")
        except NnUNetError:
            kept = model_dir / "predict_failed.log"
            shutil.copyfile(log, kept)
            raise NnUNetError(f"nnU-Net prediction failed; see its log: {kept}") from None
        results = []
        for i, original in enumerate(originals):
            canonical = original.canonical()
            out = load_volume(outputs / f"query_{i:03d}{_FILE_ENDING}", label=True)
            if not out.same_grid(canonical, atol=1e-3 * max(1.0, max(canonical.spacing))):
                raise NnUNetError(f"nnU-Net returned query {i} on another grid ({out.shape} vs {canonical.shape})")
            values = lookup[out.array.astype(np.int64)]
            values = values.astype(np.uint8 if values.max(initial=0) < 256 else np.uint16)
            results.append(original.with_array(reorient_array(values, canonical.affine, original.affine), label=True))
    return results


__all__ = ["CONFIGURATIONS", "INSTALL_HINT", "LABELS_FILE", "NnUNetError", "export_dataset", "predict",
           "require_nnunet", "train", "verify"]
