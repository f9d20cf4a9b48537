"""Segment with SAM or MedSAM: prompts tuned on the labelled support, no clicks.

    python examples/sam_backend.py --checkpoint sam_vit_b_01ec64.pth --support a.nii.gz:a_lab.nii.gz \
        --query q.nii.gz --out q_pred.nii.gz [--tune-steps 200] [--preprocess sam|medsam]

``--checkpoint`` is a SAM (ViT-B/L/H, detected from the weights) or MedSAM file; a file name
containing "medsam" selects MedSAM preprocessing unless ``--preprocess`` says otherwise. Every
support and query slice goes once through the ViT image encoder (1024 × 1024), which dominates the
cost: on a CPU expect tens of seconds per slice for ViT-B. ``--tune-steps 0`` uses support-derived
point prompts instead of learned ones.

``--tiny`` uses a small randomly initialised ``Sam`` (:func:`fewshotcx.models.sam.tiny_sam`, 64 × 64
input) on generated volumes. It exists for smoke tests: it runs the same code path in seconds, but
an untrained network's output is not a segmentation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import fewshotcx as fx


def segment_with_sam(supports: list, query, out: str, sam_model=None, checkpoint: str | None = None,
                     tune_steps: int = 200, preprocess: str | None = None, device: str = "auto") -> None:
    """Fit prompts on ``supports`` ((image, label) pairs), segment ``query``, write ``out``."""
    seg = fx.Segmenter(backend="sam", model=sam_model, weights=checkpoint, device=device,
                       tune_steps=tune_steps, preprocess=preprocess, progress=False)
    seg.fit(images=[image for image, _ in supports], labels=[label for _, label in supports])
    mask = seg.predict(query)
    fx.save_volume(mask, out, overwrite=True)
    losses = seg.fitted.state[2].losses  # the fitted value: per plane axis, the tuned prompts
    tuned = f"prompt-tuning loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "untuned point prompts"
    print(f"wrote {out} ({tuned}; {int((mask.array > 0).sum())} foreground voxels)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="SAM or MedSAM checkpoint file")
    parser.add_argument("--support", action="append", default=[], metavar="IMAGE:LABEL")
    parser.add_argument("--query")
    parser.add_argument("--out")
    parser.add_argument("--tune-steps", type=int, default=200, help="prompt-tuning steps (0 = untuned)")
    parser.add_argument("--preprocess", choices=["sam", "medsam"], default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny random Sam on generated volumes (smoke test)")
    parser.add_argument("--workdir", default="sam-output", help="where --tiny writes its output")
    args = parser.parse_args(argv)

    if args.tiny:
        from synthetic_data import synthetic_case

        from fewshotcx.models.sam import tiny_sam

        supports = [synthetic_case(0), synthetic_case(1)]
        query, _ = synthetic_case(2, orientation="LPS")
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        segment_with_sam(supports, query, str(Path(args.workdir) / "prediction.nii.gz"), sam_model=tiny_sam(seed=0),
                         tune_steps=min(args.tune_steps, 10), preprocess=args.preprocess, device="cpu")
        return
    pairs = [text.rsplit(":", 1) for text in args.support]
    if not args.checkpoint or not pairs or any(len(p) != 2 for p in pairs) or not (args.query and args.out):
        parser.error("give --checkpoint, --support IMAGE:LABEL (at least one), --query and --out, or --tiny")
    segment_with_sam([tuple(p) for p in pairs], args.query, args.out, checkpoint=args.checkpoint,
                     tune_steps=args.tune_steps, preprocess=args.preprocess, device=args.device)


if __name__ == "__main__":
    main()
