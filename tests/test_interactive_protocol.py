"""The interactive protocol's pieces (fewshotcx.evaluation.interactive) on synthetic masks."""

import numpy as np
import pytest

from fewshotcx import Volume
from fewshotcx.evaluation.interactive import (
    Click, box_from_reference, box_mask, click_auc, evenly_spaced_slices, largest_error_region, next_click,
    step_scores,
)


def _ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), -1)
    return np.linalg.norm(grid - np.asarray(centre) * np.asarray(spacing), axis=-1) <= radius


def test_box_is_the_inclusive_bounding_box():
    ref = np.zeros((10, 12, 8), dtype=np.uint8)
    ref[2:5, 3:9, 1:7] = 1
    ref[7, 10, 6] = 1  # a stray voxel widens the box
    lo, hi = box_from_reference(ref)
    assert lo == (2, 3, 1) and hi == (7, 10, 6)
    filled = box_mask(ref.shape, lo, hi)
    assert filled.sum() == 6 * 8 * 6 and filled[ref > 0].all()


def test_challenge_box_is_the_middle_slice_box_over_the_axial_extent():
    ref = np.zeros((20, 20, 9), dtype=bool)
    ref[2:18, 2:18, 0:3] = True   # wide at the bottom
    ref[8:11, 9:12, 3:9] = True   # narrow higher up: 768 wide voxels against 54 narrow ones, so the
    # median foreground voxel (the challenge's z_mid) lies in the wide part
    lo, hi = box_from_reference(ref, kind="challenge")
    assert (lo[2], hi[2]) == (0, 8)
    assert lo[:2] == (2, 2) and hi[:2] == (17, 17)
    ref[2:18, 2:18, 0:3] = False
    ref[8:11, 9:12, 0:3] = True
    lo, hi = box_from_reference(ref, kind="challenge")
    assert lo == (8, 9, 0) and hi == (10, 11, 8)


def test_empty_reference_has_no_box_and_bad_kind_is_refused():
    with pytest.raises(ValueError, match="empty"):
        box_from_reference(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="kind"):
        box_from_reference(np.ones((4, 4, 4)), kind="loose")
    with pytest.raises(ValueError, match="3D"):
        box_from_reference(np.ones((4, 4)))


def test_perfect_prediction_gives_no_click():
    ref = _ball((16, 16, 16), (8, 8, 8), 4)
    assert next_click(ref, ref) is None
    assert not largest_error_region(ref, ref).any()


def test_missed_structure_gives_a_positive_click_at_its_centre():
    ref = _ball((21, 21, 21), (10, 10, 10), 5)
    click = next_click(np.zeros_like(ref), ref, spacing=None)
    assert isinstance(click, Click) and click.positive
    assert click.ijk == (10, 10, 10) and click.region_voxels == ref.sum()
    assert click.distance == pytest.approx(np.sqrt(26.0))  # nearest outside voxel: (15, 11, 10)


def test_spill_gives_a_negative_click_in_the_largest_region_only():
    ref = np.zeros((30, 30, 10), dtype=bool)
    ref[5:10, 5:10, 2:8] = True
    pred = ref.copy()
    pred[15:25, 15:25, 2:8] = True   # large spill (600 voxels)
    pred[5:7, 5:7, 2:8] = False      # small miss (24 voxels)
    click = next_click(pred, ref, spacing=None)
    assert not click.positive and click.region_voxels == 600
    assert 15 <= click.ijk[0] < 25 and 15 <= click.ijk[1] < 25 and not ref[click.ijk] and pred[click.ijk]
    # remove the spill: now the miss is the only (largest) error, and the click is positive there
    missed = ref.copy()
    missed[5:7, 5:7, 2:8] = False
    click = next_click(missed, ref, spacing=None)
    assert click.positive and click.region_voxels == 24 and click.ijk[:2] in {(5, 5), (5, 6), (6, 5), (6, 6)}


def test_regions_are_26_connected():
    ref = np.zeros((10, 10, 10), dtype=bool)
    pred = ref.copy()
    for i in range(5):  # a diagonal chain of 5 voxels touching only at corners: one region
        pred[i, i, i] = True
    pred[8, 0, 0] = pred[8, 1, 0] = pred[9, 0, 0] = True  # a face-connected region of 3
    region = largest_error_region(pred, ref)
    assert region.sum() == 5 and region[0, 0, 0] and region[4, 4, 4]


def test_distance_uses_the_spacing():
    # a slab thin in z but 3 mm slices: in voxels the centre ties along x; in mm the z axis is far
    ref = np.zeros((15, 15, 5), dtype=bool)
    ref[2:13, 2:13, 1:4] = True
    in_mm = next_click(np.zeros_like(ref), ref, spacing=(1.0, 1.0, 3.0))
    in_voxels = next_click(np.zeros_like(ref), ref, spacing=None)
    assert in_mm.ijk == (7, 7, 2) and in_mm.distance == pytest.approx(6.0)
    assert in_voxels.distance == pytest.approx(2.0)  # two voxels to the outside along z
    # a Volume brings its spacing ("auto"); a plain array means voxel units
    volume = Volume(ref.astype(np.uint8), np.diag([1.0, 1.0, 3.0, 1.0]), label=True)
    assert next_click(np.zeros_like(ref), volume).distance == pytest.approx(6.0)


def test_array_border_counts_as_outside_the_region():
    ref = np.zeros((9, 9, 9), dtype=bool)
    ref[:, :, :] = True
    click = next_click(np.zeros_like(ref), ref, spacing=None)
    assert click.ijk == (4, 4, 4) and click.distance == pytest.approx(5.0)


def test_ties_are_deterministic_and_follow_the_rule():
    ref = np.zeros((12, 6, 6), dtype=bool)
    ref[1:11, 2:4, 2:4] = True  # a 2x2 rod: many voxels share the maximum distance
    first = next_click(np.zeros_like(ref), ref, spacing=None, tie="first")
    assert first.ijk == (1, 2, 2)
    seeded = [next_click(np.zeros_like(ref), ref, spacing=None).ijk for _ in range(3)]
    assert len(set(seeded)) == 1
    tied = np.argwhere(np.pad(ref, 0))  # every rod voxel is at distance 1
    assert seeded[0] == tuple(tied[np.random.RandomState(42).choice(len(tied))])
    with pytest.raises(ValueError, match="tie"):
        next_click(np.zeros_like(ref), ref, tie="random")


def test_empty_reference_clicks_are_negative():
    pred = np.zeros((8, 8, 8), dtype=bool)
    pred[2:6, 2:6, 2:6] = True
    click = next_click(pred, np.zeros_like(pred), spacing=None)
    assert not click.positive and pred[click.ijk]


def test_shape_mismatch_and_bad_spacing_are_refused():
    with pytest.raises(ValueError, match="shape"):
        next_click(np.zeros((4, 4, 4)), np.ones((4, 4, 5)))
    with pytest.raises(ValueError, match="spacing"):
        next_click(np.zeros((4, 4, 4)), np.ones((4, 4, 4)), spacing=(1.0, 0.0, 1.0))


def test_auc_is_the_trapezoid_over_the_five_click_steps():
    assert click_auc([0.0, 1, 1, 1, 1, 1]) == pytest.approx(4.0)  # the box step is left out
    assert click_auc([0.2, 0.4, 0.6, 0.8, 1.0]) == pytest.approx(2.4)
    scores = [0.9, 0.1, 0.3, 0.5, 0.5, 0.7]
    assert click_auc(scores) == pytest.approx((0.1 + 0.3) / 2 + (0.3 + 0.5) / 2 + 0.5 + (0.5 + 0.7) / 2)
    with pytest.raises(ValueError, match="5 click"):
        click_auc([1.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        click_auc([1.0, 1.0, float("nan"), 1.0, 1.0])


def test_step_scores_gate_nsd_like_the_challenge():
    ref = _ball((20, 20, 20), (10, 10, 10), 6)
    perfect = step_scores(ref, ref, spacing=(1.0, 1.0, 1.0))
    assert perfect == {"dice": 1.0, "nsd": 1.0, "nsd_ungated": 1.0}
    poor = np.zeros_like(ref)
    poor[10, 10, 4] = True  # one voxel on the surface: Dice tiny, NSD not zero
    scores = step_scores(poor, ref, spacing=(1.0, 1.0, 1.0))
    assert scores["dice"] < 0.2 and scores["nsd"] == 0.0 and scores["nsd_ungated"] > 0.0
    assert step_scores(poor, ref, spacing=(1.0, 1.0, 1.0), nsd_dice_gate=None)["nsd"] == scores["nsd_ungated"]


def test_evenly_spaced_slices_cover_the_extent():
    ref = np.zeros((4, 4, 30), dtype=bool)
    ref[1:3, 1:3, 5:26] = True
    assert evenly_spaced_slices(ref, 6) == [5, 9, 13, 17, 21, 25]
    assert evenly_spaced_slices(ref, 1) == [15]
    assert evenly_spaced_slices(ref, 2) == [5, 25]
    small = np.zeros((4, 4, 30), dtype=bool)
    small[1, 1, 3:5] = True
    assert evenly_spaced_slices(small, 6) == [3, 4]
    with pytest.raises(ValueError):
        evenly_spaced_slices(np.zeros((4, 4, 4)), 2)


# ------------------------------------------------------------------ benchmarks/interactive_protocol.py
def _bench():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import interactive_protocol
    return interactive_protocol


class _FakeSession:
    """Duck-typed ContourSession: the box filled, each click paints a 2-voxel ball in or out."""

    def __init__(self, image, segmenter=None):
        self.image, self.mask = image, np.zeros(image.shape, dtype=np.uint8)
        if getattr(segmenter, "fitted", False):
            self.mask[segmenter.start] = 1
        self.calls = []

    def add_box(self, lo, hi, label=1):
        self.calls.append(("box", lo, hi))
        self.mask[tuple(slice(a, b + 1) for a, b in zip(lo, hi))] = label

    def add_point(self, ijk, positive=True, label=1):
        self.calls.append(("point", ijk, positive))
        self.mask[_ball(self.mask.shape, ijk, 2)] = label if positive else 0

    def result(self):
        return self.image.with_array(self.mask.copy(), label=True)


class _FakeSegmenter:
    fitted = False
    start = (slice(8, 14), slice(8, 14), slice(8, 14))

    def __init__(self, backend: str = "universeg"):
        self.backend = backend

    def fit(self, images, labels):
        self.fitted = True
        return self


def _task(bench, centre=(12, 12, 12)):
    ref = _ball((24, 24, 24), centre, 6, spacing=(1.0, 1.0, 1.5))
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    image = Volume(np.where(ref, 40.0, -1000.0).astype(np.float32), affine)
    return bench.make_task("synthetic", (image, Volume(ref.astype(np.uint8), affine, label=True), "synthetic"))


def test_benchmark_runs_every_start_and_method_and_summarises():
    bench = _bench()
    task, other = _task(bench), _task(bench, centre=(11, 13, 12))
    rows = bench.run_task(task, other, _FakeSession, _FakeSegmenter)
    methods = {(r["start"], r["method"]) for r in rows}
    assert methods == {("blank", "session"), ("blank", "session-box-only"), ("blank", "box-filled"),
                       ("blank", "hu-rule-in-box"), ("auto", "session"), ("slices", "interpolation")}
    assert all(r["error"] == "" for r in rows)
    session = [r for r in rows if (r["start"], r["method"]) == ("blank", "session")]
    assert [r["step"] for r in session] == list(range(6)) and session[0]["interaction"].startswith("box")
    assert session[1]["interaction"].startswith("negative")  # the box spills: the first click removes
    box_only = [r["dice"] for r in rows if r["method"] == "session-box-only"]
    assert box_only == [session[0]["dice"]] * 6
    interpolated = [r for r in rows if r["method"] == "interpolation"]
    assert interpolated[-1]["interaction"].startswith("6 slices") and interpolated[-1]["dice"] > interpolated[0]["dice"]
    summary = {(s["start"], s["method"]): s for s in bench.summarise_runs(rows)}
    assert summary[("blank", "hu-rule-in-box")]["final_dice"] == pytest.approx(1.0)  # a threshold solves it
    assert summary[("blank", "session")]["rule_solved"] == "yes"
    s = summary[("blank", "session")]
    assert s["dice_auc"] == pytest.approx(click_auc([r["dice"] for r in session]), abs=1e-4) and s["dice_auc"] <= 4.0


def test_benchmark_records_a_failing_method_and_needs_another_patient_for_auto():
    bench = _bench()

    class Broken(_FakeSession):
        def add_box(self, lo, hi, label=1):
            raise RuntimeError("no box here")

    rows = bench.run_task(_task(bench), None, Broken, _FakeSegmenter)
    assert not any(r["start"] == "auto" for r in rows)
    failed = [r for r in rows if (r["start"], r["method"]) == ("blank", "session")]
    assert len(failed) == 1 and "no box here" in failed[0]["error"]
    summary = {(s["start"], s["method"]): s for s in bench.summarise_runs(rows)}
    assert np.isnan(summary[("blank", "session")]["dice_auc"])
    assert summary[("blank", "session-box-only")]["error"]  # it needs the session's box result


def test_benchmark_runs_the_auto_start_once_per_backend():
    bench = _bench()
    used = []

    class Recording(_FakeSegmenter):
        def fit(self, images, labels):
            used.append(self.backend)
            return super().fit(images, labels)

    rows = bench.run_task(_task(bench), _task(bench, centre=(11, 13, 12)), _FakeSession, Recording,
                          starts=("auto",), auto_backends=("universeg", "universeg+atlas"))
    assert used == ["universeg", "universeg+atlas"]
    assert [(r["method"], r["step"]) for r in rows] == [(m, s) for m in ("session", "session-universeg+atlas")
                                                         for s in range(6)]
    assert all(r["start"] == "auto" and r["error"] == "" for r in rows)


def test_benchmark_crops_an_axial_slab_around_the_structure():
    bench = _bench()
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    ref = np.zeros((8, 8, 40), dtype=np.uint8)
    ref[2:5, 2:5, 20:25] = 1
    image, cropped, note, _ = bench.crop_to_structure(Volume(np.zeros((8, 8, 40), np.float32), affine),
                                                   Volume(ref, affine, label=True), margin_mm=15.0)
    assert note == "z 15..29 of 40" and cropped.shape == (8, 8, 15) and cropped.array.sum() == ref.sum()
    assert cropped.affine[2, 3] == pytest.approx(45.0)
    # large slices are cropped in-plane too, world positions kept
    big = np.zeros((300, 300, 10), dtype=np.uint8)
    big[100:110, 150:160, 4:6] = 1
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    image, cropped, note, window = bench.crop_to_structure(Volume(np.zeros(big.shape, np.float32), affine),
                                                   Volume(big, affine, label=True), margin_mm=3.0, plane_mm=20.0)
    assert note == "x 90..119 of 300 y 140..169 of 300 z 3..6 of 10" and cropped.array.sum() == big.sum()
    assert np.allclose(cropped.affine[:3, 3], [180.0, 280.0, 9.0]) and window[2] == slice(3, 7)


def test_docs_table_tags_check_against_the_summary_csv(tmp_path):
    bench = _bench()
    import evidence
    rows = bench.run_task(_task(bench), _task(bench, centre=(11, 13, 12)), _FakeSession, _FakeSegmenter)
    summary = bench.summarise_runs(rows)
    bench.write_csv(summary, tmp_path / "interactive_protocol_summary.csv")
    page = tmp_path / "page.md"
    page.write_text(bench.docs_table(summary) + "\n")
    found = [evidence.Claim("page.md", n, m.group(1), m.group(2)) for n, line in enumerate(page.read_text().splitlines())
             for m in evidence._CLAIM.finditer(line)]
    assert len(found) == 9  # one structure: the rule, 3 + 3 session numbers, 2 baselines
    assert all(evidence.check(c, tmp_path) is None for c in found)
