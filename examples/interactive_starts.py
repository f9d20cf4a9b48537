"""Which automatic start to correct from: another patient's contour by each segmenter, then clicks.

    python examples/interactive_starts.py --support prior.nii.gz:prior_label.nii.gz \
        --image new.nii.gz --reference new_label.nii.gz --out-dir OUT \
        [--backends universeg,universeg+atlas,atlas] [--clicks 5] [--weights default|official|PATH]

For each backend a :class:`fewshotcx.Segmenter` is fitted on the prior patient, and a
:class:`fewshotcx.ContourSession` on the new image starts from its contour. ``--clicks`` clicks then
stand in for a clinician's: each goes where the CVPR 2025 interactive protocol puts it (the centre of
the largest error against ``--reference``, ``fewshotcx.evaluation.interactive.next_click``). The
script prints the Dice after each click and writes each accepted contour as ``OUT/<backend>.nii.gz``
on the image file's grid. A backend that cannot start here (the atlas, when no registration of the
prior passes its quality check) gets one line and is skipped. docs/interactive.md measures the same
on the project's data.

``--synthetic`` generates a prior and a new case under ``--out-dir`` instead. That mode exists for
smoke tests: the volumes are not anatomy and the scores say nothing about quality.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import fewshotcx as fx
from fewshotcx.evaluation.interactive import next_click
from fewshotcx.registration import RegistrationError


def compare_starts(support: tuple[str, str], image_path: str, reference_path: str, backends: list[str], clicks: int,
                   out_dir: Path, weights: str = "default", device: str = "auto") -> dict[str, list[float]]:
    """Dice after the start and after each click, per backend that could start."""
    image = fx.load_volume(image_path, canonical=False)  # the file's own layout: clicks are its voxels
    reference = fx.load_volume(reference_path, label=True, canonical=False).array > 0
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = {}
    for backend in backends:
        model = {} if backend == "atlas" else {"weights": weights}  # the atlas has no network
        seg = fx.Segmenter(backend=backend, device=device, seed=0, progress=False, **model)
        session = fx.ContourSession(image, segmenter=seg.fit(images=[support[0]], labels=[support[1]]))
        try:
            contour = session.result().array == 1
        except RegistrationError as err:
            print(f"{backend:16s} cannot start here: {err}")
            continue
        dice = [fx.metrics.dice(contour, reference)]
        for _ in range(clicks):
            click = next_click(contour, reference, spacing=image.spacing)
            if click is None:  # nothing left to correct
                break
            session.add_point(click.ijk, positive=click.positive)
            contour = session.result().array == 1
            dice.append(fx.metrics.dice(contour, reference))
        fx.save_volume(session.accept(), out_dir / f"{backend.replace('+', '_')}.nii.gz", overwrite=True)
        print(f"{backend:16s} Dice " + " -> ".join(f"{d:.3f}" for d in dice))
        curves[backend] = dice
    return curves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--support", metavar="IMAGE:LABEL", help="the prior patient, labelled")
    parser.add_argument("--image", help="the new patient's image")
    parser.add_argument("--reference", help="its reference label map: where the simulated clicks go")
    parser.add_argument("--out-dir", default="interactive-starts-output")
    parser.add_argument("--backends", default="universeg,universeg+atlas,atlas")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--weights", default="default", help="'default', 'official' or a checkpoint path")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--synthetic", action="store_true", help="generate smoke-test inputs under --out-dir")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    if args.synthetic:
        from synthetic_data import write_synthetic_cases

        [prior] = write_synthetic_cases(out / "data", 1)
        [(image, reference)] = write_synthetic_cases(out / "data", 1, first_seed=1, orientation="LPS")
        support, args.image, args.reference = tuple(map(str, prior)), str(image), str(reference)
    elif not (args.support and args.image and args.reference):
        parser.error("give --support, --image and --reference, or --synthetic")
    else:
        support = tuple(args.support.rsplit(":", 1))
        if len(support) != 2:
            parser.error("--support expects IMAGE:LABEL")
    if args.clicks < 0:
        parser.error(f"--clicks must be 0 or more, got {args.clicks}")
    compare_starts(support, args.image, args.reference, args.backends.split(","), args.clicks, out, args.weights,
                   args.device)


if __name__ == "__main__":
    main()
