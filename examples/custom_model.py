"""Plug your own network or backend into ``fx.Segmenter``.

1. An in-memory :class:`fewshotcx.models.UniverSeg` (``model=``): built fresh, or loaded and then
   changed in Python (here: read from ``--weights`` with :func:`fewshotcx.models.weights.load_universeg`).
2. A backend of your own that implements :class:`fewshotcx.backends.base.Backend`: here
   ``NearestSliceBackend``, which copies the support labels found at the same relative slice position
   (an atlas without registration). The segmenter does the slicing, resizing, reassembly and geometry.

    python examples/custom_model.py --support a.nii.gz:a_lab.nii.gz --query q.nii.gz \
        --out-dir OUT [--reference q_lab.nii.gz] [--weights PATH]

Without ``--weights`` the UniverSeg is a freshly initialised (untrained) network: the example then
shows the API only. ``--synthetic`` uses generated in-memory volumes instead of files; it exists for
smoke tests and its scores say nothing about segmentation quality.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Optional

import torch

import fewshotcx as fx
from fewshotcx.backends.base import Fitted
from fewshotcx.pipeline.slicing import SliceGeometry
from fewshotcx.pipeline.support import SupportPool


class NearestSliceBackend:
    """Label transfer by relative slice position, averaged over the support volumes.

    Implements the :class:`fewshotcx.backends.base.Backend` protocol: ``condition`` receives one
    :class:`~fewshotcx.pipeline.support.SupportPool` per plane axis and returns an immutable
    :class:`~fewshotcx.backends.base.Fitted` value (the backend keeps no state); ``predict_slices`` maps
    query slabs ``(N, 2k+1, s, s)`` to probabilities ``(N, L, s, s)`` with that value, one channel per
    support class.
    """

    name = "nearest-slice"
    context = 0             # slab depth 2k+1 = 1: this backend never looks at the image anyway
    resize_mode = "pad"     # keep the physical aspect ratio when slices are resized to s × s

    def __init__(self, slice_size: int = 64, device: str = "cpu") -> None:
        self.slice_size = slice_size
        self.device = torch.device(device)

    def condition(self, support, generator: torch.Generator, pools: Mapping[int, SupportPool] = MappingProxyType({}),
                  own_scan: bool = False) -> Fitted:
        return Fitted(support, pools, None, own_scan)  # nothing to learn: the pools are the model

    def predict_slices(self, fitted: Fitted, slabs: torch.Tensor, geometry: SliceGeometry,
                       generator: torch.Generator) -> torch.Tensor:
        pool = fitted.pools[geometry.axis]
        gap = (geometry.positions[:, None] - pool.positions[None, :]).abs()   # (N, M) relative distance
        volumes = pool.volume_ids.unique()
        probs = torch.zeros(slabs.shape[0], pool.labels.shape[1], *slabs.shape[-2:], device=slabs.device)
        for v in volumes:                                                       # nearest slab of each volume
            nearest = gap.masked_fill(pool.volume_ids[None, :] != v, float("inf")).argmin(dim=1)
            probs += pool.labels[nearest]
        return probs / len(volumes)

    def bytes_per_slab(self, fitted: Optional[Fitted] = None) -> int:
        classes = max((p.labels.shape[1] for p in fitted.pools.values()), default=1) if fitted else 1
        return 4 * classes * self.slice_size ** 2


def run(images: list, labels: list, query, out_dir: Path, reference=None, weights: str | None = None) -> None:
    """Segment ``query`` with both custom set-ups; write ``out_dir/<name>.nii.gz`` and print scores."""
    if weights:
        network, meta = fx.weights.load_universeg(weights, return_metadata=True)
        slice_size = meta.get("slice_size", 128)
    else:
        network, slice_size = fx.models.UniverSeg(encoder_blocks=(16,) * 4, decoder_blocks=(16,) * 3), 64
    segmenters = {
        "universeg": fx.Segmenter(model=network, slice_size=slice_size, device="cpu", support_size=8, progress=False),
        "nearest_slice": fx.Segmenter(backend=NearestSliceBackend(slice_size=64), device="cpu", progress=False),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, seg in segmenters.items():
        mask = seg.fit(images=images, labels=labels).predict(query)
        path = fx.save_volume(mask, out_dir / f"{name}.nii.gz", overwrite=True)
        score = f"   Dice {fx.metrics.dice(mask, reference):.3f}" if reference is not None else ""
        print(f"{name:13s} -> {path}{score}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--support", action="append", default=[], metavar="IMAGE:LABEL")
    parser.add_argument("--query")
    parser.add_argument("--reference")
    parser.add_argument("--out-dir", default="custom-model-output")
    parser.add_argument("--weights", help="a UniverSeg checkpoint path (default: an untrained network)")
    parser.add_argument("--synthetic", action="store_true", help="generated in-memory smoke-test volumes")
    args = parser.parse_args(argv)

    if args.synthetic:
        from synthetic_data import synthetic_case

        (img_a, lab_a), (img_b, lab_b) = synthetic_case(0), synthetic_case(1)
        query, reference = synthetic_case(2, orientation="LPS")
        run([img_a, img_b], [lab_a, lab_b], query, Path(args.out_dir), reference, args.weights)
        return
    pairs = [text.rsplit(":", 1) for text in args.support]
    if not pairs or any(len(p) != 2 for p in pairs) or not args.query:
        parser.error("give --support IMAGE:LABEL (at least one) and --query, or --synthetic")
    reference = fx.load_volume(args.reference, label=True) if args.reference else None
    run([p[0] for p in pairs], [p[1] for p in pairs], args.query, Path(args.out_dir), reference, args.weights)


if __name__ == "__main__":
    main()
