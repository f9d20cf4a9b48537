"""Cohort throughput: ``fx.cohort.run`` on local Ray with 1 and 2 workers against a plain loop over
``Segmenter.predict``, side by side in one process.

Cohort: 8 real T1 brain MR "patients" (48-slice axial slabs, 1 mm, of FSL's MNI152 and nilearn's
ICBM152 2009a, shifted by 8 mm; the MNI152 slabs scored against Harvard-Oxford), support: Colin27 with the AAL left
thalamus, the bundled default model, CPU. Every configuration does the same work end to end: load the
model, fit the support, load each scan, predict, write ``<id>.nii.gz``, score where a reference
exists. The cohort's wall time includes starting Ray and its workers; ``worker_s_per_patient`` is
the time a worker spends per patient (the steady state). One torch thread per worker, and the plain
loop at 1 and 2 threads.

    nice -n 10 python benchmarks/cohort_scaling.py              # writes benchmarks/results/cohort_scaling.csv
    nice -n 10 python benchmarks/cohort_scaling.py --patients 2 --out /tmp/x   # smoke run
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import crop_axial, machine_info, print_provenance, print_table, write_csv  # noqa: E402
from fewshotcx import Segmenter, datasets, load_volume, save_volume  # noqa: E402
from fewshotcx import cohort  # noqa: E402
from fewshotcx.cohort.worker import score  # noqa: E402

STRUCTURE = "left thalamus"
SLAB_SLICES = 48
#: World z (mm) where the query slabs start, per source scan: four overlapping 48 mm slabs, each holding
#: most of the thalamus (z about -6 to +20 mm), so every MNI152 slab has a non-empty reference.
SLAB_STARTS_MM = (-30.0, -22.0, -14.0, -6.0)
OPTIONS = {"weights": "default", "device": "cpu", "seed": 0, "modality": "mr"}


def make_cohort(folder: Path, patients: int) -> tuple[Path, tuple[Path, Path], list[datasets.Case]]:
    """Write the support pair, ``patients`` query slabs (and references) and the manifest into ``folder``."""
    colin = datasets.select_structures(datasets.colin27_aal(), [STRUCTURE])
    mni = datasets.select_structures(datasets.mni152_harvard_oxford(), [STRUCTURE])
    icbm = datasets.nilearn_mni()
    support = (save_volume(colin.image, folder / "support.nii.gz"), save_volume(colin.labels, folder / "support_label.nii.gz"))
    rows = []
    for source, scored in ((mni, True), (icbm, False)):
        for start in SLAB_STARTS_MM:
            slab = crop_axial(source, start, start + SLAB_SLICES - 1)
            pid = f"{source.name.split('/')[-1].split('_')[0]}_z{int(start):+d}"
            row = {"id": pid, "image": save_volume(slab.image, folder / f"{pid}.nii.gz").name, "reference": ""}
            if scored:
                row["reference"] = save_volume(slab.labels, folder / f"{pid}_ref.nii.gz").name
            rows.append(row)
    rows = rows[:patients]
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "image", "reference"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest, support, [colin, mni, icbm]


def plain_loop(manifest: Path, support: tuple[Path, Path], out: Path, threads: int) -> dict[str, Any]:
    """Today's way: one process, a loop over ``Segmenter.predict`` (same outputs and scores as a cohort)."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    seg = Segmenter(**OPTIONS, progress=False).fit([support[0]], [support[1]])
    per_patient = []
    for patient in cohort.read_manifest(manifest):
        t = time.perf_counter()
        prediction = seg.predict(load_volume(patient.image))
        save_volume(prediction, out / f"{patient.id}.nii.gz")
        if patient.reference is not None:
            score(prediction, load_volume(patient.reference, label=True))
        per_patient.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    return {"config": f"plain loop, {threads} thread(s)", "workers": 0, "threads": threads, "wall_s": wall,
            "worker_s_per_patient": sum(per_patient) / len(per_patient)}


def cohort_run(manifest: Path, support: tuple[Path, Path], out: Path, workers: int) -> dict[str, Any]:
    """``fx.cohort.run`` on a private local Ray (started and stopped inside, as the CLI does)."""
    start = time.perf_counter()
    results = cohort.run(manifest, [support], out, workers=workers, segmenter_options=OPTIONS, progress=False)
    wall = time.perf_counter() - start
    if results.count("ok") != len(results.rows):
        raise RuntimeError(f"cohort run failed: {results.rows}")
    seconds = [float(r["seconds"]) for r in results.rows]
    return {"config": f"cohort, {workers} worker(s)", "workers": workers, "threads": 1, "wall_s": wall,
            "worker_s_per_patient": sum(seconds) / len(seconds),
            "mean_dice": round(sum(float(r["dice"]) for r in results.rows if r["dice"] is not None)
                               / max(1, sum(r["dice"] is not None for r in results.rows)), 4)}


def measure(manifest: Path, support: tuple[Path, Path], work: Path, patients: int, note: str) -> list[dict[str, Any]]:
    """Plain loop (1 thread), cohort with 1 and 2 workers, plain loop (2 threads), in that order."""
    runs = [("plain1", lambda out: plain_loop(manifest, support, out, 1)),
            ("cohort1", lambda out: cohort_run(manifest, support, out, 1)),
            ("cohort2", lambda out: cohort_run(manifest, support, out, 2)),
            ("plain2", lambda out: plain_loop(manifest, support, out, 2))]
    rows = []
    for name, fn in runs:
        out = work / f"out_{name}"
        out.mkdir()
        load = os.getloadavg()[0]
        row = fn(out)
        row["load_avg_before"], row["load_avg_after"] = round(load, 2), round(os.getloadavg()[0], 2)
        print(f"{row['config']}: {row['wall_s']:.1f} s", flush=True)
        rows.append(row)
    base, one = rows[0], rows[1]
    for row in rows:
        row.update(patients=patients, patients_per_min=round(60 * patients / row["wall_s"], 2),
                   overhead_vs_plain_1_thread_pct=round(100 * (row["wall_s"] / base["wall_s"] - 1), 1),
                   per_patient_overhead_pct=round(100 * (row["worker_s_per_patient"] / base["worker_s_per_patient"] - 1), 1),
                   speedup_vs_cohort_1_worker=round(one["wall_s"] / row["wall_s"], 3),
                   wall_s=round(row["wall_s"], 2), worker_s_per_patient=round(row["worker_s_per_patient"], 3),
                   machine=machine_info(), note=note)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=8, help="cohort size (at most 8)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="CSV folder")
    parser.add_argument("--note", default="",
                        help="recorded in the CSV (e.g. what else ran; each row also records the load average)")
    args = parser.parse_args(argv)
    print(f"machine: {machine_info()}")
    with tempfile.TemporaryDirectory(prefix="fewshotcx-cohort-bench-") as tmp:
        work = Path(tmp)
        manifest, support, cases = make_cohort(work, args.patients)
        print_provenance(cases)
        rows = measure(manifest, support, work, args.patients, args.note)
    print_table([{k: r[k] for k in ("config", "wall_s", "patients_per_min", "worker_s_per_patient",
                                    "overhead_vs_plain_1_thread_pct", "speedup_vs_cohort_1_worker")} for r in rows])
    print(f"wrote {write_csv(rows, args.out / 'cohort_scaling.csv')}")


if __name__ == "__main__":
    main()
