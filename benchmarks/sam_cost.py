"""What the SAM backend costs on this machine: encoding, prompt tuning, whole volumes with/without the cache.

Uses the real ViT-B architecture (``sam_model_registry["vit_b"]()``) with seeded *random* weights: the
cost of a forward pass does not depend on the weight values, and no checkpoint is needed. Slices
are resized to 1024² whatever their size, so a small synthetic volume is enough.

    python benchmarks/sam_cost.py                    # ~3–5 min on a 2-core CPU
    python benchmarks/sam_cost.py --query-slices 8   # longer, tighter numbers

Prints a table (seconds) and the machine it ran on.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time

import numpy as np
import torch
from segment_anything import sam_model_registry

import fewshotcx as fx


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def synthetic(depth: int, seed: int) -> tuple[fx.Volume, fx.Volume]:
    """A 64×64×depth textured volume with a bright ellipse through every slice."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:64, :64]
    disk = ((x - 30) / 14.0) ** 2 + ((y - 34) / 10.0) ** 2 <= 1
    label = np.repeat(disk[:, :, None], depth, axis=2).astype(np.uint8)
    image = (0.3 + 0.1 * rng.normal(size=label.shape) + 0.4 * label).clip(0, 1).astype(np.float32)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    return fx.Volume(image, affine), fx.Volume(label, affine, label=True)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--support-slices", type=int, default=2)
    parser.add_argument("--query-slices", type=int, default=3)
    parser.add_argument("--tune-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2, help="support slices per tuning step")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = sam_model_registry["vit_b"]().eval()
    support, support_label = synthetic(args.support_slices, seed=0)
    query, _ = synthetic(args.query_slices, seed=1)
    common = dict(backend="sam", model=model, device=args.device, progress=False, batch_size=args.batch_size)
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        untuned = fx.Segmenter(tune_steps=0, cache_dir=cache_dir, **common)
        _, t_encode = timed(lambda: untuned.fit([support], [support_label]))
        encoded = untuned.backend.encoder.encoded
        rows.append(("encode support (cold cache)", t_encode, t_encode / encoded, f"{encoded} slices"))

        tuned = fx.Segmenter(tune_steps=args.tune_steps, cache_dir=cache_dir, **common)
        _, t_fit = timed(lambda: tuned.fit([support], [support_label]))
        warm_fit = fx.Segmenter(tune_steps=0, cache_dir=cache_dir, **common)
        _, t_fit0 = timed(lambda: warm_fit.fit([support], [support_label]))
        per_step = max(t_fit - t_fit0, 0.0) / args.tune_steps
        rows.append((f"prompt tuning, {args.tune_steps} steps (warm cache)", t_fit - t_fit0, per_step,
                     f"per step, batch {args.batch_size}"))

        _, t_cold = timed(lambda: tuned.predict_proba(query))
        _, t_warm = timed(lambda: tuned.predict_proba(query))
        n = args.query_slices
        rows.append((f"predict volume, {n} slices, no cache", t_cold, t_cold / n, "per slice"))
        rows.append((f"predict volume, {n} slices, cached", t_warm, t_warm / n, "per slice"))

    print(f"# SAM backend cost — {datetime.date.today().isoformat()}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {platform.platform()}, load avg "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print("model: SAM ViT-B architecture (image 1024², embedding 256×64×64), random weights, fp32")
    print()
    print(f"| {'stage':<44} | {'total s':>8} | {'s/unit':>8} | unit |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 10}|------|")
    for name, total, unit, note in rows:
        print(f"| {name:<44} | {total:8.2f} | {unit:8.2f} | {note} |")
    print()
    per_cold, per_warm = t_cold / n, t_warm / n
    print(f"cache speed-up on repeated prediction: {t_cold / max(t_warm, 1e-9):.0f}×; "
          f"a 100-slice volume ≈ {100 * per_cold / 60:.0f} min cold, {100 * per_warm:.0f} s cached")


if __name__ == "__main__":
    main()
