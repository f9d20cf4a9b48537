"""A few contoured slices of one volume → the whole structure, next to shape-based interpolation.

    python examples/few_slices.py --image ct.nii.gz --labels partial.nii.gz --slices 12,20,28 \
        --out-dir OUT [--reference full.nii.gz] [--weights default|official|PATH]

``--slices`` are the file's own slice indices (``array[:, :, k]`` as nibabel and SimpleITK index the
file; docs/geometry.md, "Slice indices"), like ``fewshotcx complete --slices``; only those slices of
``--labels`` are read. Draw the structure's first and last slices (both methods need the extent) and a few between.
Writes ``OUT/model.nii.gz`` (``Segmenter.complete``: drawn slices kept as drawn, drawn extent) and
``OUT/interpolation.nii.gz`` (signed-distance interpolation between the same slices), both in the
image file's orientation, and prints their Dice/HD95 against ``--reference`` when given.

``--synthetic`` generates one fully labelled volume and labels three of its slices instead; it exists
for smoke tests, and its scores say nothing about segmentation quality.
"""

from __future__ import annotations

import argparse
from pathlib import Path


import fewshotcx as fx
from fewshotcx.baselines.interpolation import interpolate_slices
from fewshotcx.viz import spread_slices


def contour_from_slices(image: fx.Volume, labels: fx.Volume, slices: list[int], out_dir: Path,
                        reference: fx.Volume | None = None, weights: str = "default", device: str = "auto") -> None:
    """Segment ``image`` from its labelled axial ``slices``; write and (optionally) score both methods."""
    depth = image.shape[2]
    if not slices or min(slices) < 0 or max(slices) >= depth:
        raise ValueError(f"slices must be axial indices in [0, {depth - 1}], got {slices}")
    seg = fx.Segmenter(weights=weights, device=device, seed=0, progress=False)
    model = seg.complete(image, labels, slices)   # only the drawn slices are read
    interpolated = labels.with_array(interpolate_slices(labels.array, slices, axis=2, spacing=labels.spacing))

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, result in (("model", model), ("interpolation", interpolated)):
        path = fx.save_volume(result, out_dir / f"{name}.nii.gz", overwrite=True)
        line = f"{name:13s} -> {path}"
        if reference is not None:
            s = fx.metrics.evaluate(result, reference)
            line += f"   Dice {s['dice']:.3f}  HD95 {s['hd95']:.1f} mm"
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="the volume to contour")
    parser.add_argument("--labels", help="label map on the image's grid, drawn on --slices")
    parser.add_argument("--slices", help="comma-separated slice indices of the file, e.g. 12,20,28")
    parser.add_argument("--reference", help="complete reference label map, for scores")
    parser.add_argument("--out-dir", default="few-slices-output")
    parser.add_argument("--weights", default="default", help="'default', 'official' or a checkpoint path")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--synthetic", action="store_true", help="generate a smoke-test volume")
    args = parser.parse_args(argv)

    if args.synthetic:
        from synthetic_data import synthetic_case

        image, full = synthetic_case(seed=3)
        image, full = image.canonical(), full.canonical()
        slices = spread_slices(full.array > 0, 3, ends=True)  # end slices + middle
        contour_from_slices(image, full, slices, Path(args.out_dir), full, args.weights, args.device)
        return
    if not (args.image and args.labels and args.slices):
        parser.error("give --image, --labels and --slices, or --synthetic")
    slices = [int(s) for s in args.slices.split(",")]
    own = dict(canonical=False)  # the files' own layout: --slices count along their third axis
    reference = fx.load_volume(args.reference, label=True, **own) if args.reference else None
    contour_from_slices(fx.load_volume(args.image, **own), fx.load_volume(args.labels, label=True, **own), slices,
                        Path(args.out_dir), reference, args.weights, args.device)


if __name__ == "__main__":
    main()
