"""What the SAM 2 backend costs on this machine's CPU: seconds per slice and peak memory of
``Segmenter.complete`` (the two-way propagation), for the real SAM 2.1 Hiera-T and Hiera-B+ architectures.

Weights are seeded *random* (sam2's own builder, no checkpoint): the cost of a forward pass does not
depend on the weight values. Frames are resized to the model's image size (1024² for SAM 2.1) whatever
the slice size, so a small synthetic volume is enough. Each architecture runs in a fresh process, so
its peak resident memory is its own.

    nice -n 10 python benchmarks/sam2_cost.py --frames 3 --threads 1   # minutes on an idle 2-core CPU
    python benchmarks/sam2_cost.py --frames 10 --threads 2

Writes benchmarks/results/sam2_cost.csv (one row per architecture) and prints it with the machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, print_table, write_csv  # noqa: E402
from fewshotcx import Segmenter, Volume  # noqa: E402
from fewshotcx.models.sam.sam2_models import build_video_predictor  # noqa: E402

CONFIGS = ("sam2.1_hiera_t", "sam2.1_hiera_b+")


def synthetic(frames: int) -> tuple[Volume, Volume]:
    """A 64×64×frames textured volume with an ellipse through every slice."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:64, :64]
    disk = ((x - 30) / 14.0) ** 2 + ((y - 34) / 10.0) ** 2 <= 1
    label = np.repeat(disk[:, :, None], frames, axis=2).astype(np.uint8)
    image = (0.3 + 0.1 * rng.normal(size=label.shape) + 0.4 * label).clip(0, 1).astype(np.float32)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    return Volume(image, affine), Volume(label, affine, label=True)


def measure(config: str, frames: int = 3, overrides: Sequence[str] = (), threads: int = 0) -> dict:
    """``Segmenter.complete`` over ``frames`` slices drawn on the first and last: timings and peak RSS.

    Returns one row: encoder seconds per frame, tracking seconds per propagated frame and pass, whole
    seconds per slice, and this process's peak resident memory (MiB).
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    predictor = build_video_predictor(config, None, overrides=overrides)
    encoded = {"seconds": 0.0, "frames": 0}
    forward_image = predictor.forward_image

    def timed_forward(images):
        start = time.perf_counter()
        out = forward_image(images)
        encoded["seconds"] += time.perf_counter() - start
        encoded["frames"] += int(images.shape[0])
        return out

    predictor.forward_image = timed_forward
    image, label = synthetic(frames)
    seg = Segmenter(backend="sam2", model=predictor, device="cpu", modality="mr", progress=False)
    start, cpu_start = time.perf_counter(), time.process_time()
    seg.complete(image, label, [0, frames - 1])
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    propagated = 2 * (frames - 2)  # frames between the drawn ends, once per direction
    return {
        "config": config, "image_size": int(predictor.image_size), "frames": frames,
        "params_m": round(sum(p.numel() for p in predictor.parameters()) / 1e6, 2),
        "encoded_frames": encoded["frames"],
        "encode_s_per_frame": round(encoded["seconds"] / max(encoded["frames"], 1), 3),
        "track_s_per_frame_pass": round((total - encoded["seconds"]) / max(propagated, 1), 3),
        "complete_s_per_slice": round(total / frames, 3),
        "complete_cpu_s_per_slice": round(cpu / frames, 3),  # process CPU time: what a busy machine hides
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(), "device": "cpu", "machine": machine_info(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--frames", type=int, default=3, help="slices in the volume (drawn: first and last)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sam2_cost.csv"))
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    rows = []
    for config in args.configs:
        with context.Pool(1) as pool:  # a fresh process per architecture: its own peak memory
            rows.append(pool.apply(measure, (config, args.frames, (), args.threads)))
        print_table([{k: v for k, v in rows[-1].items() if k != "machine"}])
        write_csv(rows, args.out)  # after every architecture: a long run keeps what it measured
    print(f"machine: {rows[0]['machine']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
