"""What registering one support scan to a query costs, and what the quality check measures.

Cases (all real CT/MR):

* ``chest→moved slab``: slicerio's chest CT resampled to 3 mm (130×130×113) registered onto a
  512×512×20 query (0.76×0.76×5 mm) made from the same CT under a known rotation (6°, -4°, 8°) and a
  250-mm shift, cropped to a 100-mm axial slab: landmark error against the known transform;
* ``chest→lung1``, ``lung2→lung1``: other patients (pyradiomics lung CTs, 512×512×48/61);
* ``chest→colin27`` / ``colin27→chest`` / ``noise→chest``: wrong body part / nothing to align, for the
  check's refusal margin.

    nice python benchmarks/registration_cost.py            # ~5–10 min on a loaded 2-core CPU

Writes benchmarks/results/registration_cost.csv (one row per case and mode) and prints it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

import fewshotcx as fx
from fewshotcx import registration as reg
from fewshotcx.datasets import resample_to_spacing

from common import machine_info, print_table, write_csv

RESULTS = Path(__file__).parent / "results" / "registration_cost.csv"
FLIP = np.diag([-1.0, -1.0, 1.0])


def known_motion() -> np.ndarray:
    """RAS map from query points to support points: rotation about the chest centre, then a shift."""
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", [6, -4, 8], degrees=True).as_matrix()
    about, shift = np.eye(4), np.eye(4)
    about[:3, 3] = [0.0, -20.0, -170.0]
    shift[:3, 3] = [15.0, -10.0, -250.0]
    return about @ motion @ np.linalg.inv(about) @ shift


def moved_query(ct: fx.Volume, query_to_support: np.ndarray) -> fx.Volume:
    """512×512×20 query at 0.76×0.76×5 mm sampling ``ct`` (linear, air outside) through the motion."""
    shape, spacing = (512, 512, 20), (0.76, 0.76, 5.0)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-195.0, -215.0, -20.0]  # ~250 mm above the CT's own world range
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1)
    source = np.linalg.solve(ct.affine, query_to_support @ affine @ np.vstack([index, np.ones(index.shape[1])]))
    array = ndimage.map_coordinates(ct.array, source[:3], order=1, mode="constant", cval=-1000.0)
    return fx.Volume(array.reshape(shape), affine)


def landmark_error(result: reg.Registration, query: fx.Volume, query_to_support: np.ndarray) -> tuple[float, float]:
    """Mean and max mm error at 200 random body voxels of the query."""
    body = np.argwhere(query.array > -300)
    points = body[np.random.default_rng(0).choice(len(body), 200, replace=False)]
    world = query.affine @ np.vstack([points.T, np.ones(len(points))])
    mapped = np.array([FLIP @ np.asarray(result.transform.TransformPoint(tuple(FLIP @ w[:3]))) for w in world.T])
    errors = np.linalg.norm(mapped - (query_to_support @ world)[:3].T, axis=1)
    return float(errors.mean()), float(errors.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=list(reg.MODES))
    args = parser.parse_args()

    chest = fx.datasets.slicerio_chest().image
    support = resample_to_spacing(chest, 3.0)
    lung1, lung2 = (case.image for case in fx.datasets.pyradiomics_cases(["lung1", "lung2"]))
    brain = fx.datasets.colin27_aal(downsample=3.0).image
    noise = fx.Volume(np.random.default_rng(0).normal(0, 300, (100, 100, 40)).astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    motion = known_motion()
    query = moved_query(chest, motion)
    cases = [("chest(3mm)->moved slab 512x512x20", support, query, args.modes),
             ("chest->lung1", chest, lung1, args.modes),
             ("lung2->lung1", lung2, lung1, args.modes),
             ("chest->colin27 (wrong body part)", chest, brain, ["affine"]),
             ("colin27->chest (wrong body part)", brain, chest, ["affine"]),
             ("noise->chest", noise, chest, ["affine"])]
    machine, rows = machine_info(), []
    for name, moving, fixed, modes in cases:
        for mode in modes:
            start = time.perf_counter()
            result = reg.register(moving, fixed, mode=mode, threads=args.threads, check=False)
            seconds = time.perf_counter() - start
            row = {"case": name, "mode": mode, "moving_shape": "x".join(map(str, moving.shape)),
                   "fixed_shape": "x".join(map(str, fixed.shape)), "seconds": round(seconds, 1),
                   "body_dice": round(result.quality.body_dice, 3), "ncc": round(result.quality.ncc, 3),
                   "overlap": round(result.quality.overlap, 3), "ok": result.ok}
            mean, worst = landmark_error(result, query, motion) if fixed is query else ("", "")
            row.update(landmark_mean_mm=mean and round(mean, 2), landmark_max_mm=worst and round(worst, 2))
            row.update(threads=args.threads, load_avg=round(os.getloadavg()[0], 1), machine=machine)
            rows.append(row)
            print({k: v for k, v in row.items() if k != "machine"}, flush=True)
    write_csv(rows, RESULTS)
    print(f"# registration cost — {machine}")
    print_table([{k: v for k, v in r.items() if k not in ("machine", "moving_shape", "fixed_shape")} for r in rows])
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
