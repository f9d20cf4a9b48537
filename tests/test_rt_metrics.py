"""RT contour metrics (surface Dice from surface areas, added path length, per-structure tables) and
TG-263 structure names: hand-computed cases and MONAI where the definitions agree."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from fewshotcx import rt
from fewshotcx.io.volume import Volume
from fewshotcx.rt import names

SPACING = (0.8, 0.8, 2.5)
AFFINE = np.diag([*SPACING, 1.0])


def vol(array: np.ndarray, affine: np.ndarray = AFFINE) -> Volume:
    return Volume(array.astype(np.uint8), affine, label=True)


def square_stack(shift: int = 0, missing: tuple[int, ...] = ()) -> np.ndarray:
    """10 x 10 squares on slices 2..5 of a 20 x 20 x 8 grid, moved ``shift`` voxels along x."""
    mask = np.zeros((20, 20, 8), bool)
    mask[4 + shift:14 + shift, 5:15, 2:6] = True
    for z in missing:
        mask[:, :, z] = False
    return mask


def blobs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random((26, 24, 14)), 2) > 0.5
    b = a ^ (ndimage.binary_dilation(a) & (rng.random(a.shape) > 0.7))
    return a, b


def test_apl_of_a_missing_slice_is_its_whole_contour():
    ref = vol(square_stack())
    pred = vol(square_stack(missing=(3,)))
    # a 10 x 10 square has 36 contour pixels; 0.8 mm pixels
    assert rt.added_path_length(pred, ref) == pytest.approx(36 * 0.8)
    assert rt.added_path_length(ref, ref) == 0.0
    assert rt.added_path_length(ref, pred) == 0.0  # extra slices in the prediction add nothing to draw


def test_apl_of_a_one_voxel_shift():
    ref, pred = vol(square_stack()), vol(square_stack(shift=1))
    # per slice: the left column (10 pixels) and the right column without its corners (8) are not on the
    # shifted contour; the top and bottom rows are; 4 slices
    assert rt.added_path_length(pred, ref) == pytest.approx(4 * 18 * 0.8)
    assert rt.added_path_length(pred, ref, tolerance=0.8) == 0.0  # every pixel within one pixel
    with pytest.raises(ValueError, match="tolerance"):
        rt.added_path_length(pred, ref, tolerance=-1.0)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("tolerance", [0.5, 1.0, 2.0, 4.0])
def test_surface_dice_from_areas_matches_monai_subvoxels(seed, tolerance):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    a, b = blobs(seed)
    ours = rt.surface_dice_area(vol(b), vol(a), tolerance)
    theirs = monai_metrics.compute_surface_dice(torch.tensor(b)[None, None].float(), torch.tensor(a)[None, None].float(),
                                                [tolerance], spacing=SPACING, use_subvoxels=True,
                                                include_background=True)
    assert ours == pytest.approx(float(theirs), abs=1e-6)
    assert 0.0 < ours <= 1.0 and (tolerance > 2.0 or ours < 1.0)


def test_surface_dice_weighs_by_area_not_voxel_count():
    """A 20 x 20 x 2 voxel slab (0.8 x 0.8 x 2.5 mm) one voxel off along z: its big faces (2 x 256 mm²)
    move 2.5 mm, its sides (64 mm x 5 mm) stay. Within 1 mm lie the sides only: about 320 / 832 of the
    area (less the bevelled edges), while counting boundary voxels gives one half."""
    from fewshotcx.evaluation import metrics

    ref = np.zeros((30, 30, 8), bool)
    ref[5:25, 5:25, 3:5] = True
    pred = np.roll(ref, 1, axis=2)
    area = rt.surface_dice_area(vol(pred), vol(ref), tolerance=1.0)
    assert area == pytest.approx(320 / 832, abs=0.03)
    assert metrics.surface_dice(vol(pred), vol(ref), tolerance=1.0) == 0.5
    assert rt.surface_dice_area(vol(pred), vol(ref), tolerance=2.5) == pytest.approx(1.0)


def test_surface_dice_empty_conventions():
    empty, a = np.zeros((20, 20, 8), bool), square_stack()
    assert rt.surface_dice_area(vol(empty), vol(empty)) == 1.0
    assert rt.surface_dice_area(vol(empty), vol(a)) == 0.0
    assert rt.surface_dice_area(vol(a), vol(a)) == pytest.approx(1.0, abs=1e-12)


def test_evaluate_structures_rows_and_statuses():
    ref = {"Lung-Left": vol(square_stack()), "GTV-1": vol(square_stack(shift=2)), "Heart": vol(square_stack())}
    pred = {"lung_l": vol(square_stack(shift=1)), "GTV-1": vol(np.zeros((20, 20, 8))), "Liver": vol(square_stack())}
    rows = {r["structure"]: r for r in rt.evaluate_structures(prediction=pred, reference=ref, tolerance=2.0)}
    lung = rows["Lung-Left"]
    assert lung["prediction_name"] == "lung_l" and lung["status"] == "ok"
    assert lung["dice"] == pytest.approx(2 * 9 * 10 * 4 / (2 * 400))
    assert lung["apl"] == pytest.approx(4 * 18 * 0.8) and 0 < lung["surface_dice_2mm"] <= 1
    assert lung["volume_reference_cc"] == pytest.approx(400 * 0.8 * 0.8 * 2.5 / 1000, abs=1e-3)
    assert rows["GTV-1"]["status"] == "empty_prediction" and rows["GTV-1"]["dice"] == 0.0
    assert rows["GTV-1"]["hd95"] is None and rows["GTV-1"]["apl"] is None
    assert rows["Heart"]["status"] == "missing_in_prediction" and rows["Heart"]["dice"] is None
    assert rows["Liver"]["status"] == "missing_in_reference" and rows["Liver"]["volume_reference_cc"] is None
    assert set(rows["Heart"]) == set(lung)


def test_evaluate_structures_against_itself():
    a, b = blobs(3)
    masks = {"Bladder": vol(a), "Rectum": vol(b)}
    for row in rt.evaluate_structures(prediction=masks, reference=masks):
        assert row["dice"] == 1.0 and row["apl"] == 0.0 and row["hd95"] == 0.0
        assert row["surface_dice_2mm"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("asked, rois, expected", [
    ("Lung_L", ["Lung-Right", "Lung-Left"], "Lung-Left"),
    ("lung left", ["LUNG_L"], "LUNG_L"),
    ("Aorta", ["A_Aorta", "Heart"], "A_Aorta"),
    ("Femur_Head_L", ["Left Femoral Head", "Femur_Head_R"], "Left Femoral Head"),
    ("Bowel_Small", ["small bowel"], "small bowel"),
    ("SpinalCord", ["Spinal-Cord", "SpinalCanal"], "Spinal-Cord"),
    ("GTV", ["GTV-1", "CTV_High"], "GTV-1"),
    ("CTV", ["GTV-1", "CTV_High"], "CTV_High"),
    ("Rectum", ["RECTUM", "Rectum_1"], "RECTUM"),
])
def test_structure_names_match_through_tg263(asked, rois, expected):
    assert names.match_structure(asked, rois) == expected


def test_structure_name_errors_are_one_line():
    with pytest.raises(ValueError, match=r"'Liver' is not in the RTSTRUCT; its ROIs are: 'GTV-1', 'Heart'"):
        names.match_structure("Liver", ["GTV-1", "Heart"])
    with pytest.raises(ValueError, match="matches several ROIs"):
        names.match_structure("GTV", ["GTV-1", "GTVp"])
    with pytest.raises(ValueError, match="name the same structure"):
        names.check_names(["Lung_L", "left lung"])
    with pytest.raises(ValueError, match="1-64 characters"):
        names.check_names(["GTV", " "])
    assert names.match_structure("Liver", ["Heart"], missing_ok=True) is None


def test_interpreted_types_and_colours():
    assert [names.interpreted_type(n) for n in ("Lung-Left", "GTV-1", "CTV_High", "PTV", "Body", "zOpt_Ring", "Foo")] == [
        "ORGAN", "GTV", "CTV", "PTV", "EXTERNAL", "AVOIDANCE", ""]
    assert names.display_colour("GTVp", 0) == (255, 0, 0)
    assert names.display_colour("Foo", 1) != names.display_colour("Foo", 2)
