"""Fine-tune a UniverSeg checkpoint on your labelled volumes, then segment with it.

    python examples/finetune.py --init default --pair a.nii.gz:a_lab.nii.gz --pair b.nii.gz:b_lab.nii.gz \
        --pair c.nii.gz:c_lab.nii.gz --steps 200 --out ft.pt --query q.nii.gz --pred q_pred.nii.gz

Every non-zero label value is a structure; volumes sharing a value form one in-context task (the
support for one volume's query slices is drawn from the others), so give at least two volumes per
structure. The checkpoint written to ``--out`` loads with ``fx.Segmenter(weights=out)``; the
labelled pairs are then the support for ``--query``. The console-script equivalent of the training
step is ``fewshotcx train --init default --images a.nii.gz --labels a_lab.nii.gz ... --lr 2e-4``
(``finetune`` defaults to a learning rate of 2e-4, the console script to 1e-3).

``--tiny`` generates three small volumes and trains for a few steps with small support sets; it
exists for smoke tests (give it a small ``--init`` checkpoint), and its output is not a useful model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import fewshotcx as fx


def finetune_and_predict(init: str, pairs: list[tuple[str, str]], query: str, out: str, pred: str,
                         steps: int = 200, support_size: tuple[int, int] = (4, 16), device: str = "auto") -> None:
    """Fine-tune ``init`` on ``pairs`` into ``out``; segment ``query`` with it into ``pred``."""
    checkpoint = fx.training.finetune(init, pairs, steps=steps, out=out, support_size=support_size,
                                      device=device, progress=False, overwrite=True)
    print(f"fine-tuned checkpoint: {checkpoint}")
    seg = fx.Segmenter(weights=str(checkpoint), device=device, progress=False)
    print(f"slice size {seg.backend.slice_size}, context {seg.backend.context} (from the checkpoint)")
    mask = seg.fit(images=[i for i, _ in pairs], labels=[l for _, l in pairs]).predict(query)
    fx.save_volume(mask, pred, overwrite=True)
    print(f"wrote {pred}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", default="default", help="checkpoint to start from: 'default', 'official' or a path")
    parser.add_argument("--pair", action="append", default=[], metavar="IMAGE:LABEL", help="labelled volume (repeat)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default="fewshotcx-runs/finetuned.pt", help="fine-tuned checkpoint")
    parser.add_argument("--query", help="volume to segment with the fine-tuned model")
    parser.add_argument("--pred", help="output label map for --query (.nii.gz)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="generate smoke-test volumes under --workdir")
    parser.add_argument("--workdir", default="finetune-output")
    args = parser.parse_args(argv)

    if args.tiny:
        from synthetic_data import write_synthetic_cases

        work = Path(args.workdir)
        pairs = [tuple(map(str, p)) for p in write_synthetic_cases(work / "data", 3)]
        [(query, _)] = write_synthetic_cases(work / "data", 1, first_seed=3, orientation="LPS")
        finetune_and_predict(args.init, pairs, str(query), str(work / "finetuned.pt"), str(work / "prediction.nii.gz"),
                             steps=args.steps, support_size=(2, 4), device=args.device)
        return
    pairs = [tuple(text.rsplit(":", 1)) for text in args.pair]
    if len(pairs) < 2 or any(len(p) != 2 for p in pairs) or not (args.query and args.pred):
        parser.error("give at least two --pair IMAGE:LABEL, --query and --pred, or --tiny")
    finetune_and_predict(args.init, pairs, args.query, args.out, args.pred, args.steps, device=args.device)


if __name__ == "__main__":
    main()
