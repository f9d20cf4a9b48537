"""Quick start: labelled support volumes in, a label map on the query's grid out, scored.

    python examples/quickstart.py --support a.nii.gz:a_lab.nii.gz --support b.nii.gz:b_lab.nii.gz \
        --query q.nii.gz --out q_pred.nii.gz [--reference q_lab.nii.gz] [--weights default|official|PATH]

``--synthetic --workdir DIR`` generates two support cases and a query (in LPS layout) under DIR
instead. That mode exists for smoke tests: the generated volumes are not anatomy, and the Dice it
prints says nothing about segmentation quality.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import fewshotcx as fx


def segment(supports: list[tuple[str, str]], query: str, out: str, reference: str | None = None,
            weights: str = "default", device: str = "auto") -> dict | None:
    """Fit on ``supports`` (image, label) paths, predict ``query``, write ``out``; return scores or None."""
    seg = fx.Segmenter(backend="universeg", weights=weights, device=device, ensemble=2, seed=0, progress=False)
    seg.fit(images=[image for image, _ in supports], labels=[label for _, label in supports])

    volume = fx.load_volume(query)                  # float32 (X, Y, Z) in closest-canonical RAS
    print(f"query {query}: shape {volume.shape}, spacing {tuple(round(s, 2) for s in volume.spacing)} mm")
    mask = seg.predict(volume)                      # uint8 label map on the query's grid (0 = background)
    fx.save_volume(mask, out, overwrite=True)       # written in the query file's own orientation and affine
    print(f"wrote {out} (labels {sorted(set(mask.array.ravel().tolist()) - {0})})")

    if reference is None:
        return None
    scores = fx.metrics.evaluate(mask, fx.load_volume(reference, label=True), tolerance=2.0)
    print("Dice {dice:.3f}  HD95 {hd95:.1f} mm  ASSD {assd:.1f} mm  surface Dice@2mm {surface_dice:.3f}".format(**scores))
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--support", action="append", default=[], metavar="IMAGE:LABEL",
                        help="a labelled support volume (repeat)")
    parser.add_argument("--query", help="volume to segment")
    parser.add_argument("--reference", help="reference label map of the query, for scores")
    parser.add_argument("--out", help="output label map (.nii.gz)")
    parser.add_argument("--weights", default="default", help="'default', 'official' or a checkpoint path")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--synthetic", action="store_true", help="generate smoke-test inputs under --workdir")
    parser.add_argument("--workdir", default="quickstart-output", help="where --synthetic writes everything")
    args = parser.parse_args(argv)

    if args.synthetic:
        from synthetic_data import write_synthetic_cases

        work = Path(args.workdir)
        supports = [tuple(map(str, pair)) for pair in write_synthetic_cases(work / "data", 2)]
        [(query, reference)] = write_synthetic_cases(work / "data", 1, first_seed=2, orientation="LPS")
        segment(supports, str(query), str(work / "prediction.nii.gz"), str(reference), args.weights, args.device)
        return
    if not (args.support and args.query and args.out):
        parser.error("give --support (at least one), --query and --out, or --synthetic")
    supports = [tuple(text.rsplit(":", 1)) for text in args.support]
    if any(len(pair) != 2 for pair in supports):
        parser.error("--support expects IMAGE:LABEL")
    segment(supports, args.query, args.out, args.reference, args.weights, args.device)


if __name__ == "__main__":
    main()
