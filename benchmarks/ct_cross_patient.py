"""In-context segmentation across two real CT patients whose scans cover different anatomy.

The pair (the model's report set, :mod:`roles`: neither its training nor its selection saw either
patient; before issue #33 it did set the registration gate's and coverage thresholds, and the
deformable registration default was chosen after this benchmark's run; the thresholds are now fitted
on calibration data, ``registration_gates.py`` and ``retrieval_coverage.py``):

* **LUNG1-001** (NSCLC-Radiomics, TCIA, CC BY-NC: development data in ``../shared/data``, never
  bundled): a clinical planning CT, 512×512×134, 0.98 mm pixels, 3 mm slices, with its clinical
  RTSTRUCT (``Lung-Left``, ``Lung-Right``);
* **CTChest4** (slicerio, MIT): another patient, another scanner, 128×128×34, 3.05 mm pixels, 10 mm
  slices, LPS, with ``left lung`` / ``right lung`` segments.

Each is the support for the other (both directions). The query is cropped to the caudal 60 % of its
extent (``kind=cropped``: support and query cover different anatomy, the case ``position`` matching
gets wrong) and also used whole (``kind=full``: same coverage, where ``auto`` must lose nothing against
``position``). Methods: UniverSeg (bundled default weights) with the support strategies
``position``, ``retrieval``, ``registered`` and ``auto``; ``atlas`` (deformable registration + label
fusion: one atlas here); ``universeg+atlas``; and the rule baseline ``hu-threshold``, no support and no
model: :func:`fewshotcx.datasets.ct_anatomy.hu_anatomy` (body > −500 HU; air < −400 HU inside it, in
components of at least 2 % of the body, split at the body's centre of mass into left and right).
Per structure: Dice, HD95 (mm), surface Dice, seconds per query.

The rule is the bar every method must be read against: a structure it draws with Dice ≥
``common.RULE_SOLVED_DICE`` (0.8) on every query of a kind is *rule-solved* (the summary's
``rule_solved`` column names them), and a table of rule-solved structures measures the rule's
structure, not in-context segmentation: it cannot rank methods.

Seeds (``--seeds``, ``--full-seeds``): a Segmenter's ``seed`` draws its support slices (the Gumbel
top-k of ``position``, the noise of ``retrieval``, the position draw on the registered grid) and seeds
every registration's metric sampling (``registered``, ``auto``, ``atlas``, ``universeg+atlas``), so every
method but ``hu-threshold`` can change with it; the rule is deterministic and runs once (the lowest seed).
The summary gives, per kind and method, the mean and SD of Dice and HD95 over structures, directions
and seeds, and how many seeds.

Lungs *as a structure type* were seen in training (HU-defined lungs on other patients' CTs,
``fewshotcx.datasets.ct_anatomy``), so this measures generalisation to unseen patients, scanners and
coverage, not to an unseen structure.

    python benchmarks/ct_cross_patient.py --weights default --seeds 0,1,2 --full-seeds 0 --out benchmarks/results
    # 73 min on 2 cores shared with other jobs: about 20 per seed of the cropped queries, 12 for the whole
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RULE_SOLVED_DICE, development_data_parser, machine_info, read_csv, score, summarise, write_csv  # noqa: E402
from fewshotcx import Segmenter, Volume, datasets, load_volume  # noqa: E402
from fewshotcx.datasets.ct_anatomy import HU_STRUCTURES, hu_anatomy  # noqa: E402
from fewshotcx.rt.rtstruct import read_rtstruct  # noqa: E402

LUNG1 = Path("mirp/ct_images_seg_nsclc/LUNG1-001")
STRUCTURES = ("left lung", "right lung")
METHODS = {
    "universeg-position": dict(strategy="position"),
    "universeg-retrieval": dict(strategy="retrieval"),
    "universeg-registered": dict(strategy="registered", registration="deformable"),
    "universeg-auto": dict(strategy="auto", registration="deformable"),
    "atlas": dict(backend="atlas", registration="deformable"),
    "universeg+atlas": dict(backend="universeg+atlas", registration="deformable"),
}
#: The rule baseline (no support, no model, deterministic): :func:`rule_labels`.
RULE = "hu-threshold"
#: Share of the query's axial extent kept (from its caudal end) for ``kind=cropped``.
CROP = 0.6


def lung1_001(root: Path) -> tuple[Volume, Volume]:
    """LUNG1-001's canonical CT and its lungs (1 = left, 2 = right) from the clinical RTSTRUCT."""
    folder = root / LUNG1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identifying-data warnings: nothing is written from this series
        image = load_volume(folder / "image")
        masks = read_rtstruct(folder / "mask_rtstruct" / "1-1.dcm", folder / "image")
    by_name = {datasets.canonical_name(k): v for k, v in masks.items()}
    labels = np.zeros(image.shape, dtype=np.uint8)
    for value, name in enumerate(STRUCTURES, start=1):
        mask = by_name[{"left lung": "lung left", "right lung": "lung right"}[name]].canonical()
        labels[mask.array > 0] = value
    return image, image.with_array(labels, label=True)


def ctchest4() -> tuple[Volume, Volume]:
    case = datasets.select_structures(datasets.slicerio_chest(), STRUCTURES)
    return case.image.canonical(), case.labels.canonical()


def load_patients(shared: Optional[Path]) -> Optional[dict[str, tuple[Volume, Volume]]]:
    """``{"LUNG1-001": (CT, lungs), "CTChest4": (CT, lungs)}``, canonical; ``None`` (said on stderr)
    when LUNG1-001, development data in ``shared`` (default ``../shared/data``), is not there."""
    root = shared or datasets.shared_data_dir()
    if root is None or not (root / LUNG1).is_dir():
        print("error: LUNG1-001 is development data in ../shared/data (or --shared); it is not distributed",
              file=sys.stderr)
        return None
    return {"LUNG1-001": lung1_001(root), "CTChest4": ctchest4()}


def crop(image: Volume, labels: Volume, share: float) -> tuple[Volume, Volume]:
    """The caudal ``share`` of the axial extent (canonical RAS: low z is caudal), affine shifted."""
    keep = max(1, round(image.shape[2] * share))
    return (Volume(image.array[..., :keep], image.affine.copy()),
            Volume(labels.array[..., :keep], labels.affine.copy(), label=True))


def rule_labels(image: Volume) -> np.ndarray:
    """The HU rule's lungs on ``image`` (canonical CT), numbered as :data:`STRUCTURES` (1 = left, 2 = right)."""
    anatomy, _ = hu_anatomy(image)
    value_of = {name: value for value, name in HU_STRUCTURES.items()}
    labels = np.zeros(anatomy.shape, dtype=np.uint8)
    for value, structure in enumerate(STRUCTURES, start=1):
        labels[anatomy == value_of[structure]] = value
    return labels


def predict(method: str, options: dict, support: tuple[Volume, Volume], query: Volume, weights: str,
            seed: int) -> tuple[np.ndarray, str]:
    """One method's label map on ``query`` (values of :data:`STRUCTURES`) and its warnings, joined."""
    if method == RULE:
        return rule_labels(query), ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = Segmenter(progress=False, seed=seed, weights=weights, **options)
        pred = seg.fit([support[0]], [support[1]]).predict(query).array
    return pred, "; ".join(sorted({str(w.message)[:120] for w in caught}))[:300]


def run_pair(support: tuple[Volume, Volume], query: tuple[Volume, Volume], direction: str, kind: str,
             methods: dict[str, dict], weights: str = "default", seed: int = 0) -> list[dict]:
    """Rows (one per method and structure) for ``query`` segmented from ``support`` with ``seed``."""
    rows = []
    for method, options in methods.items():
        start = time.perf_counter()
        try:
            pred, note = predict(method, options, support, query[0], weights, seed)
            error = ""
        except Exception as err:  # noqa: BLE001 - a failing method is a result (recorded), not a crash
            pred, note, error = np.zeros(query[1].shape, dtype=np.uint8), "", f"{type(err).__name__}: {err}"[:300]
        seconds = round(time.perf_counter() - start, 1)
        for value, structure in enumerate(STRUCTURES, start=1):
            reference = query[1].with_array((query[1].array == value).astype(np.uint8), label=True)
            rows.append({"direction": direction, "kind": kind, "method": method, "seed": seed,
                         "structure": structure, **score((pred == value).astype(np.uint8), reference),
                         "predicted_voxels": int((pred == value).sum()), "seconds": seconds,
                         "warnings": note, "error": error})
        print(f"{direction:28s} {kind:8s} {method:22s} seed {seed} dice "
              + " ".join(f"{r['dice']:.3f}" for r in rows[-2:]) + f"  {seconds:6.1f} s {error}", flush=True)
    return rows


def summary_rows(rows: list[dict]) -> list[dict]:
    """Per kind and method: Dice and HD95 mean and SD over structures, directions and seeds, ``n``
    rows, ``seeds``, ``dice_seed_sd`` (the SD over seeds of each seed's mean Dice: the seed noise, blank
    with one seed); and on the rule's rows, ``rule_solved``: the structures it draws with Dice ≥
    :data:`RULE_SOLVED_DICE` on every query of that kind ("; "-joined), ``rule_solved_n`` their count."""
    dice = summarise(rows, ("kind", "method"))
    hd95 = summarise(rows, ("kind", "method"), "hd95")
    out = []
    for d, h in zip(dice, hd95):
        mine = [r for r in rows if r["kind"] == d["kind"] and r["method"] == d["method"]]
        per_seed = summarise(mine, ("seed",))
        solved = [s for s in STRUCTURES if d["method"] == RULE and all(
            float(r["dice"]) >= RULE_SOLVED_DICE for r in mine if r["structure"] == s)]
        spread = round(float(np.std([p["dice_mean"] for p in per_seed])), 4) if len(per_seed) > 1 else ""
        out.append({**d, "seeds": len(per_seed), "dice_seed_sd": spread, "hd95_mean": h["hd95_mean"],
                    "hd95_sd": h["hd95_sd"], "rule_solved": "; ".join(solved),
                    "rule_solved_n": len(solved) if d["method"] == RULE else ""})
    return out


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``."""
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: Optional[list[str]] = None) -> int:
    parser = development_data_parser(__doc__)
    parser.add_argument("--methods", default=",".join([*METHODS, RULE]), help="methods for the cropped queries")
    parser.add_argument("--full-methods", default=f"universeg-position,universeg-auto,{RULE}",
                        help="methods for the whole queries (same coverage: does auto lose against position?)")
    parser.add_argument("--kinds", default="cropped,full")
    parser.add_argument("--weights", default="default", help="UniverSeg checkpoint: 'default', 'fov64' or a path")
    parser.add_argument("--seeds", default="0", help="Segmenter seeds for the cropped queries, e.g. 0,1,2")
    parser.add_argument("--full-seeds", default=None, help="seeds for the whole queries (default: --seeds)")
    parser.add_argument("--from-csv", type=Path, default=None,
                        help="only rewrite NAME_summary.csv in --out from these rows (a ct_cross_patient.csv)")
    args = parser.parse_args(argv)
    if args.from_csv:
        write_summary(read_csv(args.from_csv), args.out, "ct_cross_patient")
        return 0
    patients = load_patients(args.shared)
    if patients is None:
        return 2
    methods = {"cropped": {m: METHODS.get(m, {}) for m in args.methods.split(",")},
               "full": {m: METHODS.get(m, {}) for m in args.full_methods.split(",")}}
    seeds = {"cropped": seed_list(args.seeds), "full": seed_list(args.full_seeds or args.seeds)}
    rows: list[dict] = []
    for seed in sorted(set(seeds["cropped"]) | set(seeds["full"])):
        for kind in (k for k in args.kinds.split(",") if seed in seeds[k]):
            # the rule is deterministic: run once, with the kind's lowest seed
            todo = {m: o for m, o in methods[kind].items() if m != RULE or seed == min(seeds[kind])}
            for src, dst in (("LUNG1-001", "CTChest4"), ("CTChest4", "LUNG1-001")):
                query = crop(*patients[dst], CROP) if kind == "cropped" else patients[dst]
                rows += run_pair(patients[src], query, f"{src} -> {dst}", kind, todo, args.weights, seed)
            if rows:  # written after every block: an interrupted run keeps what it measured
                write_report([{**r, "weights": args.weights} for r in rows], args.out, "ct_cross_patient")
    return 0


def write_report(rows: list[dict], out: Path, name: str) -> None:
    """``out/NAME.csv`` (the rows, as report-set data, with the machine) and ``out/NAME_summary.csv``
    (:func:`summary_rows`), the summary printed."""
    machine = machine_info()
    rows = [{**r, "data_role": "report", "machine": machine} for r in rows]
    write_csv(rows, out / f"{name}.csv")
    write_summary(rows, out, name)


def write_summary(rows: list[dict], out: Path, name: str) -> None:
    """``out/NAME_summary.csv`` (:func:`summary_rows` of ``rows``), printed. Rows read back from a CSV
    (``--from-csv``) pass on the provenance they were measured with, not this process's."""
    measured = {k: ";".join(dict.fromkeys(str(r[k]) for r in rows)) for k in ("git_commit", "checkpoint_sha256")
                if all(r.get(k) for r in rows)}
    summary = [{**r, **measured} for r in summary_rows(rows)]
    write_csv(summary, out / f"{name}_summary.csv")
    for r in summary:
        print(r)


if __name__ == "__main__":
    sys.exit(main())
