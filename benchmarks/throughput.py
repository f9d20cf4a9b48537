"""Whole-volume UniverSeg inference: fewshotcx's batched path versus the plain network slice by slice.

Baseline = the official usage pattern: for each query slice, one call of the v1 network with that
slice and the support set (``model(target (1,1,H,W), support (1,S,1,H,W), labels (1,S,1,H,W))``).
Ours = ``Segmenter.predict_proba`` on the whole volume (slicing, batched shared-support forward,
reassembly included). Both use the same v1-sized network with seeded random weights (speed does not
depend on the weights), the same support size and 128² slices, one after the other in one process.

    python benchmarks/throughput.py            # 96×96×40 volume, S = 16, plus an S sweep
    python benchmarks/throughput.py --quick    # fewer slices
    python benchmarks/throughput.py --quick --batch-sizes 1,2,4,8   # + query slabs per call
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine_info, write_csv  # noqa: E402
from fewshotcx import Segmenter, Volume  # noqa: E402
from fewshotcx.pipeline.intensity import minmax_per_slice  # noqa: E402
from fewshotcx.models import UniverSeg  # noqa: E402
from fewshotcx.pipeline.slicing import extract_slabs, make_geometry  # noqa: E402
from fewshotcx.pipeline.support import select_support  # noqa: E402


def synthetic_case(shape=(96, 96, 40), seed=0) -> tuple[Volume, Volume, Volume]:
    """Speed only: a smooth random image with an ellipsoid label, and a second image as the query."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    label = ((grid / [0.4, 0.3, 0.6]) ** 2).sum(-1) <= 1
    image = (label + rng.normal(0, 0.2, shape)).astype(np.float32)
    query = (np.roll(label, 3, axis=0) + rng.normal(0, 0.2, shape)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    return Volume(image, affine), Volume(label.astype(np.uint8), affine, label=True), Volume(query, affine)


def plain_slice_by_slice(model: UniverSeg, seg: Segmenter, query: Volume) -> tuple[float, torch.Tensor]:
    """Baseline timing: one network call per query slice, the support drawn once (as in the official demo)."""
    from fewshotcx.pipeline.intensity import normalize

    volume = torch.from_numpy(normalize(query.array, seg.modality))
    geometry = make_geometry(query.shape, query.spacing, "axial", 128)
    pool = seg.pools[2]
    idx = select_support(pool, geometry.positions[:1], seg.backend.support_size, "random",
                         torch.Generator().manual_seed(0))[0]
    sup_img = minmax_per_slice(pool.images[idx])[None]  # (1, S, 1, H, W)
    sup_lab = pool.labels[idx][None]  # (1, S, 1, H, W)
    slabs = extract_slabs(volume, geometry)
    start = time.perf_counter()
    outs = []
    with torch.no_grad():
        for z in range(slabs.shape[0]):  # the per-slice loop this library exists to avoid
            outs.append(torch.sigmoid(model(minmax_per_slice(slabs[z:z + 1]), sup_img, sup_lab)))
    return time.perf_counter() - start, torch.cat(outs)


def run(support_size: int, depth: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = UniverSeg().eval()
    image, label, query = synthetic_case((96, 96, depth))
    seg = Segmenter(model=model, support_size=support_size, progress=False, strategy="random", group_size=depth,
                    device="cpu")
    seg.fit([image], [label])
    ours, plain = [], []
    for _ in range(repeats):  # interleaved so drift on a noisy machine hits both alike
        t = time.perf_counter()
        seg.predict_proba(query)
        ours.append(time.perf_counter() - t)
        plain.append(plain_slice_by_slice(model, seg, query)[0])
    best_ours, best_plain = min(ours), min(plain)
    return {"support_size": support_size, "slices": depth, "ours_s": round(best_ours, 2),
            "plain_s": round(best_plain, 2), "ours_slices_per_s": round(depth / best_ours, 3),
            "plain_slices_per_s": round(depth / best_plain, 3), "speedup": round(best_plain / best_ours, 2)}


def batch_sweep(batch_sizes, support_size: int, depth: int) -> list[dict]:
    """Our path with ``N`` query slabs per forward call (memory budget = N slabs), same volume and support."""
    torch.manual_seed(0)
    model = UniverSeg().eval()
    image, label, query = synthetic_case((96, 96, depth))
    rows = []
    for n in batch_sizes:
        seg = Segmenter(model=model, support_size=support_size, progress=False, strategy="random", group_size=n,
                        device="cpu")
        seg.fit([image], [label])
        seg.memory_budget = n * seg.backend.bytes_per_slab()
        start = time.perf_counter()
        seg.predict_proba(query)
        seconds = time.perf_counter() - start
        rows.append({"batch": n, "support_size": support_size, "slices": depth, "seconds": round(seconds, 2),
                     "slices_per_s": round(depth / seconds, 3)})
        print(f"batch N={n:2d}  S={support_size}  D={depth}  {seconds:7.2f} s  ({depth / seconds:.2f} slices/s)",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 slices, S in (4, 16), one repeat")
    parser.add_argument("--out", default="bench-output/throughput.csv")
    parser.add_argument("--batch-sizes", default="", help="also sweep query slabs per call, e.g. 1,2,4,8 (S = 16)")
    args = parser.parse_args()
    depth, sizes, repeats = (10, (4, 16), 1) if args.quick else (40, (16, 4, 32), 2)
    print(f"machine: {machine_info()}")
    print("UniverSeg v1 (1.18 M params, random weights), 128x128 slices, query 96x96xD, fp32, CPU\n")
    rows = []
    for s in sizes:
        row = run(s, depth, repeats)
        rows.append(row)
        print(f"S={row['support_size']:3d}  D={row['slices']:3d}  ours {row['ours_s']:7.2f} s "
              f"({row['ours_slices_per_s']:.2f} slices/s)   plain slice-by-slice {row['plain_s']:7.2f} s "
              f"({row['plain_slices_per_s']:.2f} slices/s)   speed-up x{row['speedup']:.2f}", flush=True)
    out = write_csv(rows, Path(args.out))
    print(f"\nwrote {out}")
    if args.batch_sizes:
        sizes = [int(n) for n in args.batch_sizes.split(",")]
        batch_rows = batch_sweep(sizes, 16, depth)
        print(f"wrote {write_csv(batch_rows, out.with_name(out.stem + '_batch.csv'))}")


if __name__ == "__main__":
    main()
