"""The CVPR 2025 interactive 3D segmentation protocol on every labelled structure we have (docs/interactive.md).

Per structure (``fewshotcx.evaluation.interactive`` defines every piece): step 0 is the reference's
3D bounding box, steps 1–5 are clicks at the distance-transform maximum (mm) of the largest
26-connected error region (positive on a miss, negative on a spill); after each step Dice and NSD
(2 mm; 0 when Dice ≤ 0.2, as the challenge) are measured; Dice-AUC and NSD-AUC are the trapezoid
over the five click steps (at most 4.0). Seconds per interaction = ``add_*`` + ``result()``.

Starts and methods, through the public API (``fx.ContourSession(image, segmenter=...)``, ``add_box``,
``add_point``, ``result``): ``blank`` — ``session`` (an empty session: the box, then 5 clicks),
``session-box-only`` (its box result, clicks ignored), ``box-filled`` (the box, solid),
``hu-rule-in-box`` (the HU structure of ``fewshotcx.datasets.ct_anatomy`` that best matches the
reference, in the box: which structures a rule solves); ``auto`` — ``session`` started from
``fx.Segmenter()`` fitted on *another* patient's image and label of the structure, then 5 clicks
(where another patient has it), and ``session-universeg+atlas`` and ``session-atlas`` the same from
``fx.Segmenter(backend="universeg+atlas")`` (registered support fused with the atlas prior) and
``fx.Segmenter(backend="atlas")`` (the registered support alone; an error row where it does not register);
``slices`` — ``interpolation`` of the reference drawn on ``step + 1`` axial slices spread evenly over
its extent (6 = box + 5 interactions).

Images are cropped to an axial slab around the structure (its extent ± ``MARGIN_MM``) and, on
LUNG1-001's 512 × 512 slices, in-plane to its extent ± ``PLANE_MARGIN_MM`` (the CPU budget; the
``crop`` column says where). LUNG1-001 (CC BY-NC) and the sarcoma scans (CC BY 3.0) are development
data in ``../shared/data``: a structure whose data are absent is skipped with one line on stderr.

    python benchmarks/interactive_protocol.py --out benchmarks/results --plots docs/img   # ~8 min, 2 cores
    python benchmarks/interactive_protocol.py --quick                                      # 2 structures
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import development_data_parser, machine_info, print_table, write_csv  # noqa: E402
from interactive_report import docs_table, plot, summarise_runs  # noqa: E402
import fewshotcx as fx  # noqa: E402
from fewshotcx import Volume, datasets  # noqa: E402
from fewshotcx.baselines.interpolation import interpolate_slices  # noqa: E402
from fewshotcx.datasets.ct_anatomy import body_mask, hu_anatomy  # noqa: E402
from fewshotcx.evaluation.interactive import (  # noqa: E402
    CLICKS, box_from_reference, box_mask, evenly_spaced_slices, next_click, step_scores,
)

#: Axial margin (mm) kept on each side of the structure's extent.
MARGIN_MM = 15.0
#: In-plane margin (mm) kept around the structure on large slices (more than ``PLANE_VOXELS`` voxels:
#: LUNG1-001's 512 × 512), which keeps the CPU run within its budget.
PLANE_MARGIN_MM, PLANE_VOXELS = 50.0, 256 * 256
LUNG1_ROIS = {"left lung": "Lung-Left", "right lung": "Lung-Right", "spinal cord": "Spinal-Cord", "GTV": "GTV-1"}
#: Brain structures (T1 MR at 2 mm; the left thalamus is in the default checkpoint's report set).
BRAIN = ("left thalamus", "left hippocampus")
CTCHEST4 = ("ribs", "cervical vertebral column", "thoracic vertebral column", "lumbar vertebral column",
            "right lung", "left lung", "tissue")
#: key → the key of the same structure on another patient (support of the ``auto`` start).
OTHER = {"LUNG1-001:left lung": "CTChest4:left lung", "LUNG1-001:right lung": "CTChest4:right lung",
         "CTChest4:left lung": "LUNG1-001:left lung", "CTChest4:right lung": "LUNG1-001:right lung",
         "STS_001:GTV": "STS_002:GTV", "STS_002:GTV": "STS_003:GTV", "STS_003:GTV": "STS_001:GTV",
         **{f"{a}:{s}": f"{b}:{s}" for a, b in (("Colin27", "MNI152"), ("MNI152", "Colin27")) for s in BRAIN}}
ALL = [*(f"LUNG1-001:{s}" for s in ("GTV", "spinal cord", "left lung", "right lung")),
       *(f"STS_00{i}:GTV" for i in (1, 2, 3)), *(f"CTChest4:{s}" for s in CTCHEST4),
       *(f"{b}:{s}" for s in BRAIN for b in ("Colin27", "MNI152"))]
QUICK = ["STS_002:GTV", "CTChest4:thoracic vertebral column"]
#: The ``auto`` start's first passes: the default segmenter, in-context on registered support fused
#: with the atlas prior, and the registered support alone (the multi-atlas baseline): on the development
#: set's brains the two registered starts are far better than the default's.
AUTO_BACKENDS = ("universeg", "universeg+atlas", "atlas")


@dataclass(frozen=True)
class Task:
    """One structure on one (cropped) image; ``reference`` is a 0/1 label Volume on ``image``'s grid."""

    key: str
    image: Volume
    reference: Volume
    crop: str
    licence: str
    modality: str = "CT"
    full: Optional[np.ndarray] = None  # the uncropped image array (the HU rule's context) ...
    window: tuple = ()  # ... and the crop's slices in it


# ------------------------------------------------------------------------------------------ data
def load_all(shared: Optional[Path], brains: bool = True) -> dict[str, tuple]:
    """``key → (canonical image, 0/1 mask, licence[, modality])`` for every structure whose data are
    here; a line on stderr for each source that is absent."""
    found: dict[str, tuple] = {}
    chest = datasets.slicerio_chest()
    image, labels = chest.image.canonical(), chest.labels.canonical()
    by_name = {datasets.canonical_name(n): v for v, n in chest.structures.items()}
    for name in CTCHEST4:
        found[f"CTChest4:{name}"] = (image, _binary(labels, labels.array == by_name[datasets.canonical_name(name)]),
                                     f"CTChest4 (slicerio): {chest.licence}")
    root = shared or datasets.shared_data_dir()
    lung1 = None if root is None else root / "mirp" / "ct_images_seg_nsclc" / "LUNG1-001"
    if lung1 is not None and lung1.is_dir():
        from fewshotcx.rt.rtstruct import read_rtstruct
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # identifying-data warnings: nothing is written from this series
            ct = fx.load_volume(lung1 / "image")
            masks = read_rtstruct(lung1 / "mask_rtstruct" / "1-1.dcm", lung1 / "image")
        for name, roi in LUNG1_ROIS.items():
            found[f"LUNG1-001:{name}"] = (ct, _binary(ct, masks[roi].canonical().array > 0),
                                          "LUNG1-001 (NSCLC-Radiomics, TCIA): CC BY-NC 3.0, development only")
    else:
        print("skip: LUNG1-001 is development data in ../shared/data (not distributed)", file=sys.stderr)
    try:
        for case in datasets.sts_cases(("CT",)):
            patient = case.name.split("/")[-1].replace("_CT", "")
            found[f"{patient}:GTV"] = (case.image.canonical(), _binary(case.image.canonical(),
                                       case.labels.canonical().array > 0), f"{patient}: {case.licence}")
    except datasets.DatasetError:
        print("skip: the sarcoma scans are development data in ../shared/data (not distributed)", file=sys.stderr)
    from common import binary_mask, brain_cases
    for name, case in zip(("Colin27", "MNI152"), brain_cases(2.0) if brains else ()):
        found.update({f"{name}:{s}": (case.image, binary_mask(case, s), f"{case.name}: {case.licence}", "MR")
                      for s in BRAIN})
    return found


def _binary(grid: Volume, mask: np.ndarray) -> Volume:
    return grid.with_array(mask.astype(np.uint8), label=True)

def crop_to_structure(image: Volume, reference: Volume, margin_mm: float = MARGIN_MM,
                      plane_mm: float = PLANE_MARGIN_MM, plane_voxels: int = PLANE_VOXELS) -> tuple:
    """The structure's axial extent ± ``margin_mm``; on slices of more than ``plane_voxels`` voxels also
    its in-plane extent ± ``plane_mm`` (canonical arrays, affine shifted, world positions kept). Returns
    ``(image, reference, note, window)``, ``window`` the crop's slices of the original arrays."""
    lo, hi = (np.array(c) for c in box_from_reference(reference.array))
    pad = np.ceil(np.array([plane_mm, plane_mm, margin_mm]) / np.asarray(reference.spacing)).astype(int)
    if image.shape[0] * image.shape[1] <= plane_voxels:
        pad[:2] = image.shape[:2]  # small slices stay whole
    start, stop = np.maximum(lo - pad, 0), np.minimum(hi + pad + 1, image.shape)
    window = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    shift = np.eye(4)
    shift[:3, 3] = start
    affine = image.affine @ shift
    note = " ".join(f"{axis} {a}..{b - 1} of {n}" for axis, a, b, n in zip("xyz", start, stop, image.shape)
                    if a > 0 or b < n)
    return (Volume(image.array[window], affine), Volume(reference.array[window], affine, label=True), note or "none",
            window)


def make_task(key: str, data: tuple) -> Task:
    image, reference, licence, *modality = data
    cropped, ref, note, window = crop_to_structure(image, reference)
    return Task(key, cropped, ref, note, licence, *(modality or ["CT"]), image.array, window)


# ----------------------------------------------------------------------------------------- methods
Factory = Callable[..., object]


def drive(task: Task, session: object, start: str) -> list[dict]:
    """Run the protocol on an open session: the box (``start == "blank"``) or the session's first
    result (``"auto"``) as step 0, then 5 clicks. One row per step."""
    ref, rows, click = task.reference, [], None
    for step in range(CLICKS + 1):
        if step == 0 and start == "blank":
            lo, hi = box_from_reference(ref)
            action, call = f"box {lo}-{hi}", lambda: session.add_box(lo, hi, label=1)
        elif step == 0:
            action, call = "automatic", lambda: None
        else:  # no click on a perfect prediction: the challenge runs the model again unchanged
            click = next_click(pred, ref, spacing=ref.spacing)
            action = "none (perfect)" if click is None else f"{'positive' if click.positive else 'negative'} {click.ijk}"
            call = (lambda: None) if click is None else (lambda c=click: session.add_point(c.ijk, positive=c.positive, label=1))
        began = time.perf_counter()
        call()
        pred = (np.asarray(session.result().array) == 1).astype(np.uint8)
        rows.append({"step": step, "interaction": action, "seconds": round(time.perf_counter() - began, 3),
                     **_scores(pred, ref), "click_kept": "" if click is None else int(pred[click.ijk] == click.positive)})
    return rows


def _scores(pred: np.ndarray, ref: Volume) -> dict:
    return {k: round(v, 4) for k, v in step_scores(pred, ref.array, spacing=ref.spacing).items()} | {
        "predicted_voxels": int(pred.sum())}


def constant(task: Task, mask: np.ndarray, seconds: float, action: str) -> list[dict]:
    """A method that ignores the clicks: the same mask at every step."""
    scores = _scores(mask.astype(np.uint8), task.reference)
    return [{"step": s, "interaction": action if s == 0 else "ignored", "seconds": seconds if s == 0 else 0.0,
             **scores} for s in range(CLICKS + 1)]


def hu_rule_in_box(task: Task) -> tuple[np.ndarray, str]:
    """The HU structure (or the body) that best matches the reference, inside the box, and its name; the
    structures are found on the whole slices (an in-plane crop would move the body's midline)."""
    full = task.image.array if task.full is None else task.full[:, :, task.window[2]]
    plane = task.window[:2] if task.full is not None else (slice(None),) * 2
    labels, names = hu_anatomy(Volume(full, task.image.affine))  # only the array is read
    candidates = {n: (labels == v)[plane] for v, n in names.items()} | {"body": body_mask(full)[plane]}
    inside = box_mask(task.reference.shape, *box_from_reference(task.reference.array))
    scored = {n: step_scores(m & inside, task.reference.array)["dice"] for n, m in candidates.items()}
    best = max(scored, key=scored.get) if scored else "none"
    return (candidates[best] & inside if scored else np.zeros(task.reference.shape, bool)), best


def interpolation(task: Task) -> list[dict]:
    ref = task.reference
    rows = []
    for step in range(CLICKS + 1):
        drawn = evenly_spaced_slices(ref.array, step + 1)
        began = time.perf_counter()
        pred = interpolate_slices(ref.array, drawn, axis=2, spacing=ref.spacing) > 0
        rows.append({"step": step, "interaction": f"{len(drawn)} slices {drawn}",
                     "seconds": round(time.perf_counter() - began, 3), **_scores(pred.astype(np.uint8), ref)})
    return rows


def run_task(task: Task, other: Optional[Task], session_factory: Factory, segmenter_factory: Factory,
             starts: Sequence[str] = ("blank", "auto", "slices"), auto_backends: Sequence[str] = ("universeg",)
             ) -> list[dict]:
    """Every start × method on one structure; a method that raises gives one row with its error.
    ``segmenter_factory(backend)`` makes an unfitted segmenter (``()``: the default one); the ``auto``
    start runs once per backend of ``auto_backends``: method ``session`` for ``"universeg"`` (the
    default), ``session-<backend>`` for another."""
    runs: list[tuple[str, str, Callable[[], list[dict]]]] = []
    blank: dict[str, list[dict]] = {}

    def blank_session() -> list[dict]:
        began = time.perf_counter()
        session = session_factory(task.image, segmenter=segmenter_factory())
        blank["rows"] = [r | {"setup_seconds": round(time.perf_counter() - began, 2)} for r in drive(task, session, "blank")]
        return blank["rows"]

    def box_only() -> list[dict]:  # the blank session's box step, its clicks ignored
        first = {k: blank["rows"][0][k] for k in ("interaction", "seconds", "dice", "nsd", "nsd_ungated", "predicted_voxels")}
        return [first | {"step": s} | ({"interaction": "ignored", "seconds": 0.0} if s else {}) for s in range(CLICKS + 1)]

    def auto_session(backend: str) -> list[dict]:
        began = time.perf_counter()
        fitted = segmenter_factory(backend).fit([other.image], [other.reference])
        session = session_factory(task.image, segmenter=fitted)
        setup = round(time.perf_counter() - began, 2)
        return [r | {"setup_seconds": setup, "support": other.key} for r in drive(task, session, "auto")]

    if "blank" in starts:
        lo_hi = box_from_reference(task.reference.array)
        runs += [("blank", "session", blank_session), ("blank", "session-box-only", box_only),
                 ("blank", "box-filled", lambda: constant(task, box_mask(task.reference.shape, *lo_hi), 0.0, "box")),
                 *[("blank", "hu-rule-in-box", lambda: constant(task, *_rule(task)))] * (task.modality == "CT")]
    if "auto" in starts and other is not None:
        runs += [("auto", "session" if b == "universeg" else f"session-{b}", lambda b=b: auto_session(b))
                 for b in auto_backends]
    if "slices" in starts:
        runs.append(("slices", "interpolation", lambda: interpolation(task)))
    rows = []
    for start, method, run in runs:
        base = {"structure": task.key, "modality": task.modality, "start": start, "method": method, "crop": task.crop}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                produced = run()
            error = ""
        except Exception as err:  # noqa: BLE001 - a failing method is a result (recorded), not a crash
            produced, error = [{"step": 0, "interaction": "", "seconds": float("nan"), "dice": float("nan"),
                                "nsd": float("nan")}], f"{type(err).__name__}: {err}"[:300]
        rows += [base | r | {"error": error} for r in produced]
        print(f"{task.key:36s} {start:6s} {method:18s} dice " + " ".join(
            f"{r['dice']:.3f}" for r in rows[-len(produced):]) + f"  {error}", flush=True)
    return rows


def _rule(task: Task) -> tuple[np.ndarray, float, str]:
    began, (mask, name) = time.perf_counter(), hu_rule_in_box(task)
    return mask, round(time.perf_counter() - began, 3), f"HU {name} in box"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = development_data_parser(__doc__)
    parser.add_argument("--structures", default=None, help=f"comma-separated keys (default: all): {', '.join(ALL)}")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--starts", default="blank,auto,slices")
    parser.add_argument("--plots", type=Path, default=None, help="PNG folder (default: --out)")
    args = parser.parse_args(argv)
    wanted = QUICK if args.quick else ALL if args.structures is None else args.structures.split(",")
    unknown = [k for k in wanted if k not in ALL]
    if unknown:
        parser.error(f"unknown structure(s) {unknown}; choose from {ALL}")
    if not hasattr(fx.ContourSession, "add_box"):
        print("error: this fewshotcx has no ContourSession.add_box / add_point (interactive prompts)", file=sys.stderr)
        return 2
    data = load_all(args.shared, brains=any(k.split(":")[0] in ("Colin27", "MNI152") for k in wanted))
    rows = []
    for key in wanted:
        if key not in data:
            continue
        other = make_task(OTHER[key], data[OTHER[key]]) if OTHER.get(key) in data else None
        rows += run_task(make_task(key, data[key]), other, fx.ContourSession,
                         lambda backend="universeg": fx.Segmenter(backend=backend, progress=False),
                         args.starts.split(","), AUTO_BACKENDS)
    if not rows:
        print("error: none of the structures' data are here", file=sys.stderr)
        return 2
    machine = machine_info()
    licences = "; ".join(sorted({v[2] for k, v in data.items() if k in wanted}))
    print(f"data: {licences}")
    write_csv([r | {"machine": machine} for r in rows], args.out / "interactive_protocol.csv")
    summary = [s | {"machine": machine} for s in summarise_runs(rows)]
    write_csv(summary, args.out / "interactive_protocol_summary.csv")
    print_table([{k: s[k] for k in ("structure", "start", "method", "rule_solved", "final_dice", "final_nsd",
                                    "dice_auc", "nsd_auc", "median_seconds")} for s in summary])
    plot(rows, (args.plots or args.out) / "interactive_protocol.png")
    (args.out / "interactive_protocol_table.md").write_text(docs_table(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
