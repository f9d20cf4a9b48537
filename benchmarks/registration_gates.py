"""Calibrating the registration quality gate on real pairs and deliberately broken registrations.

Every pair is registered with :func:`fewshotcx.registration.register` (gate off); then the same
transform is broken four ways in the query's space (composed with: a move along the scan axis by the
wrong slab, a left-right mirror about the query's body centre, a 100-mm shift to the patient's left,
a 90° rotation about the scan axis). For each, the gate's measures
(:func:`fewshotcx.registration.measure`), its verdict under the thresholds now in the code, and what
it means: the Dice of the support's labels carried onto the query (mean over the structures both
label, left and right separately) and the gate's body Dice.

Pairs (development data in ``../shared/data`` plus package data; everything at 3 mm):

* CT lungs: LUNG1-001 (clinical RTSTRUCT, read with fewshotcx's DICOM/RTSTRUCT readers) ↔ slicerio
  CTChest4, both ways, and CTChest4 → a 90-mm slab of LUNG1-001 (different coverage);
* CT sarcoma: STS_001 → 002 → 003 → 001 (GTV: tumours in different places, so label Dice says
  little; body Dice is the check);
* MR: the same with T1 MR; Colin27 (AAL) ↔ MNI152 (Harvard-Oxford), structures both name.

    nice python benchmarks/registration_gates.py     # ~10 min on a loaded 2-core CPU

Writes ``benchmarks/results/registration_gates.csv``; ``tests/test_registration_gates.py`` re-checks
it against the thresholds in :mod:`fewshotcx.registration.gates`.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import fewshotcx as fx
from fewshotcx import datasets
from fewshotcx import registration as reg
from fewshotcx.datasets import resample_to_spacing
from fewshotcx.io.dicom import read_dicom_series
from fewshotcx.rt.rtstruct import read_rtstruct

from common import brain_cases, crop_axial, machine_info, print_table, write_csv

RESULTS = Path(__file__).parent / "results" / "registration_gates.csv"
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mirp"
SPACING = 3.0
COMMIT = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                        cwd=Path(__file__).parent).stdout.strip() or "unknown"
#: Label transfer at least this good must pass the gate; below it a registration is "unrated".
GOOD_DICE = 0.6
#: How far (mm) a "wrong slab" registration is moved along the scan axis, at least.
WRONG_SLAB_MM = 60.0


def _case(name: str, image: fx.Volume, labels: fx.Volume, structures: dict[int, str], modality: str) -> datasets.Case:
    image, labels = resample_to_spacing(image.canonical(), SPACING), resample_to_spacing(labels.canonical(), SPACING)
    return datasets.Case(name, image, labels, structures, "development data", "see ../shared/data/README.md", "",
                         modality)


def lung1() -> datasets.Case:
    """LUNG1-001's planning CT with its clinical left and right lungs."""
    folder = DATA / "ct_images_seg_nsclc" / "LUNG1-001"
    image = read_dicom_series(folder / "image", deidentify=False).canonical()  # the series' own layout → RAS
    rois = read_rtstruct(folder / "mask_rtstruct" / "1-1.dcm", folder / "image")  # canonical already
    labels = np.zeros(image.shape, np.uint8)
    for value, roi in ((1, "Lung-Left"), (2, "Lung-Right")):
        if not rois[roi].same_grid(image):
            raise RuntimeError(f"LUNG1-001: {roi} is not on the CT's canonical grid")
        labels[rois[roi].array > 0] = value
    return _case("LUNG1-001", image, image.with_array(labels, label=True), {1: "left lung", 2: "right lung"}, "CT")


def chest() -> datasets.Case:
    case = datasets.slicerio_chest()
    return datasets.select_structures(replace(case, image=case.image.canonical(), labels=case.labels.canonical()),
                                      ["left lung", "right lung"])


def sarcoma(index: int, modality: str) -> datasets.Case:
    folder = DATA / "sts_images_flat" / "nifti"
    name = f"STS_00{index}_{modality}"
    image = fx.load_volume(folder / f"{name}_image.nii.gz")
    labels = fx.load_volume(folder / f"{name}_mask.nii.gz", label=True)
    labels = labels.with_array((labels.array > 0).astype(np.uint8))
    return _case(name, image, labels, {1: "GTV"}, "CT" if modality == "CT" else "MR")


def pairs() -> list[tuple[datasets.Case, datasets.Case, tuple[str, ...]]]:
    """(support, query, modes) for every pair: the same anatomy (good registrations to break), and
    last a brain onto a chest (``"wrong body part"``: the registration itself is the broken one)."""
    lung, ct4 = lung1(), chest()
    z = lung.image.affine[2, 3] + lung.image.affine[2, 2] * np.flatnonzero(lung.labels.array.any(axis=(0, 1)))
    middle = float(z.mean())
    slab = replace(crop_axial(lung, middle - 45.0, middle + 45.0), name="LUNG1-001 90-mm slab")
    out = [(lung, ct4, ("affine", "deformable")), (ct4, lung, ("affine",)), (ct4, slab, ("affine",))]
    for modality in ("CT", "MR_T1"):
        sts = [sarcoma(i, modality) for i in (1, 2, 3)]
        out += [(sts[i], sts[(i + 1) % 3], ("affine",)) for i in range(3)]
    colin, mni = brain_cases(spacing=SPACING, slab_mm=None)
    out += [(colin, mni, ("affine", "deformable")), (mni, colin, ("affine",)), (colin, ct4, ("affine",))]
    return out


def breakages(query: fx.Volume) -> dict[str, "object"]:
    """Fixed-space maps (LPS) that break a registration when applied before it."""
    import SimpleITK as sitk

    mask = query.array > np.percentile(query.array, 60)
    centre = reg.FLIP @ (query.affine @ np.append(np.argwhere(mask).mean(axis=0), 1.0))[:3]
    extent = query.shape[2] * abs(query.affine[2, 2])
    mirror, turn = sitk.AffineTransform(3), sitk.Euler3DTransform()
    mirror.SetMatrix((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    for t in (mirror, turn):
        t.SetCenter(tuple(float(c) for c in centre))
    turn.SetRotation(0.0, 0.0, math.pi / 2)
    return {"wrong slab": sitk.TranslationTransform(3, (0.0, 0.0, max(WRONG_SLAB_MM, extent / 2))),
            "left-right flipped": mirror,
            "translated 100 mm": sitk.TranslationTransform(3, (100.0, 0.0, 0.0)),
            "rotated 90 deg": turn}


def label_dice(support: datasets.Case, query: datasets.Case, result: reg.Registration) -> float:
    """Mean Dice over the query's structures of the support's labels warped onto the query."""
    warped = reg.warp(support.labels, result, query.labels, label=True).array
    scores = [fx.metrics.dice(warped == value, query.labels.array == value) for value in sorted(query.structures)
              if datasets.canonical_name(support.structures.get(value, "")) == datasets.canonical_name(query.structures[value])]
    return float(np.mean(scores)) if scores else math.nan


def thresholds_text() -> str:
    """The gate's thresholds as one CSV cell, e.g. ``"body_dice>=0.75;overlap>=0.6;..."``."""
    return ";".join(f"{name}>={low:g}" for name, low in reg.THRESHOLDS.items())


def _row(support: datasets.Case, query: datasets.Case, mode: str, broken: str, result: reg.Registration,
         quality: reg.Quality, seconds: float, args, machine: str) -> dict:
    dice = label_dice(support, query, result)
    role = "broken" if broken != "none" else "good" if dice >= GOOD_DICE else "unrated"
    row = {"pair": f"{support.name} -> {query.name}", "modality": query.modality, "mode": mode, "broken": broken,
           "role": role, **{k: round(v, 4) for k, v in quality.as_dict().items()}, "label_dice": round(dice, 4),
           "structures": "+".join(query.structures[v] for v in sorted(query.structures)),
           "accepted": int(reg.accepts(quality.as_dict())), "thresholds": thresholds_text(),
           "register_seconds": round(seconds, 1),
           "threads": args.threads, "load_avg": round(os.getloadavg()[0], 1), "commit": COMMIT, "machine": machine}
    print({k: v for k, v in row.items() if k != "machine"}, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"registration_gates.py needs the development data in {DATA.resolve()} (see ../shared/data)")
    import SimpleITK as sitk

    machine, rows = machine_info(), []
    for support, query, modes in pairs():
        modality = "ct" if support.modality == "CT" else "mr"
        for mode in modes:
            start = time.perf_counter()
            good = reg.register(support.image, query.image, mode=mode, modality=modality, threads=args.threads,
                                check=False)
            seconds = time.perf_counter() - start
            if support.modality != query.modality:
                rows.append(_row(support, query, mode, "wrong body part", good, good.quality, seconds, args, machine))
                continue
            broken = {what: sitk.CompositeTransform([good.transform, b]) for what, b in breakages(query.image).items()}
            measured = reg.measure(list(broken.values()), support.image, query.image, modality)
            variants = {"none": (good, good.quality)}
            variants.update({what: (reg.Registration(t, mode), q) for (what, t), q in zip(broken.items(), measured)})
            for what, (result, quality) in variants.items():
                rows.append(_row(support, query, mode, what, result, quality, seconds, args, machine))
    write_csv(rows, RESULTS)
    print(f"# registration gates — {machine}")
    print_table([{k: v for k, v in r.items() if k not in ("machine", "structures", "threads")} for r in rows])
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
