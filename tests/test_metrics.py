"""Tests for fewshotcx.evaluation.metrics: hand-computed geometry, empty-mask conventions, MONAI agreement."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

import fewshotcx as fx
from fewshotcx.evaluation import metrics
from fewshotcx.io.volume import Volume, VolumeError


def cube(shape, start, size):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def ball(shape, centre_mm, radius_mm, spacing):
    coords = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((c - o) ** 2 for c, o in zip(coords, centre_mm)) <= radius_mm ** 2


def blob(shape, seed, sigma=2.5, level=0.55):
    """A random smooth mask: smoothed noise above a quantile."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    return field > np.quantile(field, level)


def brute_force_distances(a, b, spacing):
    """Independent oracle: boundary voxels by explicit face-neighbour checks, distances by cdist."""

    def boundary_points(mask):
        padded = np.pad(mask, 1)
        inner = tuple(slice(1, -1) for _ in range(mask.ndim))
        all_fg_neighbours = np.ones_like(mask)
        for axis in range(mask.ndim):
            for step in (-1, 1):
                all_fg_neighbours &= np.roll(padded, step, axis=axis)[inner]
        return np.argwhere(mask & ~all_fg_neighbours) * np.asarray(spacing)

    pa, pb = boundary_points(a), boundary_points(b)
    pairwise = cdist(pa, pb)
    return pairwise.min(axis=1), pairwise.min(axis=0)


# ---------------------------------------------------------------------- hand-computed geometry
def test_offset_cubes_on_anisotropic_grid_match_hand_computation():
    # Two 8-voxel cubes shifted by d=3 voxels along x; spacing (0.25, 1, 2) mm. Per direction:
    # 64 end-face voxels and 36 far-face interior voxels lie d*sx = 0.75 mm away (since
    # 0.75 <= sy, sz), the 28-voxel side rings at the 2 slices before the overlap lie 0.5 and
    # 0.25 mm away, all other boundary voxels (296 in all) lie on the other surface.
    spacing, n, d = (0.25, 1.0, 2.0), 8, 3
    a = cube((20, 14, 14), (3, 3, 3), n)
    b = cube((20, 14, 14), (3 + d, 3, 3), n)
    count = n ** 3 - (n - 2) ** 3
    total = 0.25 * (64 * 3 + 28 * (2 + 1) + 36 * 3)
    res = metrics.evaluate(a, b, spacing=spacing, tolerance=0.5)
    assert res["hd"] == pytest.approx(0.75)
    assert res["hd95"] == pytest.approx(0.75)
    assert res["assd"] == pytest.approx(total / count)
    assert res["surface_dice"] == pytest.approx((count - 100) / count)
    assert res["dice"] == pytest.approx(2 * (n - d) * n * n / (2 * n ** 3))
    assert res["iou"] == pytest.approx((n - d) * n * n / ((n + d) * n * n))
    # the same cubes measured with isotropic spacing give different (voxel) distances
    assert metrics.hd95(a, b) == pytest.approx(3.0)


def test_offset_squares_2d():
    # 2D analogue: 6-pixel squares shifted by 2 along x, spacing (0.3, 1): 6 end pixels and
    # 4 far-edge pixels at 0.6 mm, 2 side pixels at 0.3 mm, 20 boundary pixels per square.
    a = cube((16, 12), (3, 3), 6)
    b = cube((16, 12), (5, 3), 6)
    assert metrics.hd95(a, b, spacing=(0.3, 1.0)) == pytest.approx(0.6)
    assert metrics.assd(a, b, spacing=(0.3, 1.0)) == pytest.approx(0.3 * (6 * 2 + 2 * 1 + 4 * 2) / 20)
    assert metrics.dice(a, b) == pytest.approx(2 * 4 * 6 / 72)
    assert "volume_diff_ml" not in metrics.evaluate(a, b)
    with pytest.raises(ValueError, match="3D"):
        metrics.volume_difference(a, b)


def test_concentric_spheres_distances_are_radius_difference():
    spacing, shape = (0.8, 0.9, 2.0), (60, 56, 26)
    centre = (24.0, 25.0, 25.0)
    inner = ball(shape, centre, 12.0, spacing)
    outer = ball(shape, centre, 18.0, spacing)
    res = metrics.evaluate(inner, outer, spacing=spacing)
    voxel = max(spacing)
    assert abs(res["hd95"] - 6.0) <= voxel
    assert abs(res["assd"] - 6.0) <= voxel
    assert res["surface_dice"] < 0.05  # 2 mm tolerance, 6 mm apart
    assert metrics.surface_dice(inner, outer, spacing=spacing, tolerance=8.0) == 1.0
    assert res["dice"] == pytest.approx(2 * 12 ** 3 / (12 ** 3 + 18 ** 3), rel=0.05)
    expected_ml = 4 / 3 * np.pi * (12 ** 3 - 18 ** 3) / 1000
    assert res["volume_diff_ml"] == pytest.approx(expected_ml, rel=0.05)


def test_single_voxels():
    spacing = (0.5, 1.5, 3.0)
    a = np.zeros((5, 6, 7), dtype=np.uint8)
    b = np.zeros_like(a)
    a[1, 2, 3] = 1
    b[3, 1, 5] = 1
    expected = float(np.linalg.norm(np.array([2, -1, 2]) * spacing))
    res = metrics.evaluate(a, b, spacing=spacing, tolerance=expected + 0.01)
    assert res["hd"] == pytest.approx(expected)
    assert res["hd95"] == pytest.approx(expected)
    assert res["assd"] == pytest.approx(expected)
    assert res["dice"] == 0.0
    assert res["surface_dice"] == 1.0
    assert metrics.surface_dice(a, b, spacing=spacing, tolerance=expected - 0.01) == 0.0
    same = metrics.evaluate(a, a, spacing=spacing)
    assert (same["dice"], same["hd95"], same["assd"], same["surface_dice"]) == (1.0, 0.0, 0.0, 1.0)


# ---------------------------------------------------------------------- empty conventions
def test_both_empty():
    empty = np.zeros((10, 12, 8), dtype=np.uint8)
    res = metrics.evaluate(empty, empty, spacing=(1.0, 1.0, 2.5))
    expected = dict(dice=1.0, iou=1.0, hd95=0.0, hd=0.0, assd=0.0, surface_dice=1.0,
                    pred_empty=True, gt_empty=True, volume_diff_ml=0.0, volume_diff_rel=0.0)
    assert {k: res[k] for k in expected} == expected
    assert metrics.hd95(empty, empty) == 0.0 and metrics.dice(empty, empty) == 1.0


@pytest.mark.parametrize("empty_side", ["pred", "gt"])
def test_exactly_one_empty_gets_finite_diagonal_penalty(empty_side):
    spacing, shape = (0.5, 2.0, 3.0), (10, 12, 8)
    full = cube(shape, (2, 2, 2), 3)
    empty = np.zeros(shape, dtype=bool)
    pred, gt = (empty, full) if empty_side == "pred" else (full, empty)
    diagonal = np.sqrt((10 * 0.5) ** 2 + (12 * 2.0) ** 2 + (8 * 3.0) ** 2)
    res = metrics.evaluate(pred, gt, spacing=spacing)
    assert res["dice"] == 0.0 and res["iou"] == 0.0 and res["surface_dice"] == 0.0
    assert res["hd95"] == pytest.approx(diagonal)
    assert res["assd"] == pytest.approx(diagonal)
    assert metrics.hd95(pred, gt, spacing=spacing) == pytest.approx(diagonal)
    assert metrics.assd(pred, gt, spacing=spacing) == pytest.approx(diagonal)
    assert res["pred_empty"] is (empty_side == "pred")
    assert res["gt_empty"] is (empty_side == "gt")
    assert all(np.isfinite(v) for k, v in res.items() if k != "volume_diff_rel")
    assert res["volume_diff_rel"] == (-1.0 if empty_side == "pred" else np.inf)
    assert res["volume_diff_ml"] == pytest.approx((-1 if empty_side == "pred" else 1) * 27 * 3.0 / 1000)


# ---------------------------------------------------------------------- properties and oracle
def test_symmetric_and_matches_brute_force_oracle():
    spacing = (0.7, 1.0, 2.2)
    a, b = blob((24, 22, 14), seed=1), blob((24, 22, 14), seed=2)
    forward = metrics.evaluate(a, b, spacing=spacing)
    backward = metrics.evaluate(b, a, spacing=spacing)
    for key in ("dice", "iou", "hd95", "hd", "assd", "surface_dice"):
        assert forward[key] == pytest.approx(backward[key])
    assert forward["volume_diff_ml"] == pytest.approx(-backward["volume_diff_ml"])
    d_ab, d_ba = brute_force_distances(a, b, spacing)
    assert forward["hd"] == pytest.approx(max(d_ab.max(), d_ba.max()))
    assert forward["hd95"] == pytest.approx(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))
    pooled = np.concatenate([d_ab, d_ba])
    assert forward["assd"] == pytest.approx(pooled.mean())
    assert forward["surface_dice"] == pytest.approx(np.mean(pooled <= 2.0))


def test_masks_touching_the_array_border_and_cropping():
    # structures on the array edge: the border counts as background, and cropping changes nothing
    a = np.zeros((12, 10, 6), dtype=bool)
    a[:5, :, :3] = True
    b = np.zeros_like(a)
    b[:7, 2:, :4] = True
    d_ab, d_ba = brute_force_distances(a, b, (1.0, 1.0, 1.0))
    assert metrics.assd(a, b) == pytest.approx(np.concatenate([d_ab, d_ba]).mean())
    big_a, big_b = np.zeros((40, 30, 20), dtype=bool), np.zeros((40, 30, 20), dtype=bool)
    big_a[10:22, 5:15, 4:10], big_b[10:22, 5:15, 4:10] = a, b
    # embedded away from the border, the former border faces become ordinary faces
    assert metrics.hd95(big_a, big_b) == pytest.approx(metrics.hd95(a, b))


def test_per_slice_dice():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = np.zeros_like(a)
    a[:2, :2, 0] = 1
    b[:2, :, 0] = 1  # slice 0: 4 vs 8 voxels, overlap 4
    a[0, 0, 1] = 1  # slice 1: only pred
    np.testing.assert_allclose(metrics.per_slice_dice(a, b), [8 / 12, 0.0, 1.0])
    np.testing.assert_allclose(metrics.per_slice_dice(a, b, axis=0), [2 * 2 / 7, 2 * 2 / 6, 1.0, 1.0])


# ---------------------------------------------------------------------- inputs
def test_multilabel_maps_use_label_or_nonzero():
    pred = np.zeros((8, 8, 4), dtype=np.int16)
    gt = np.zeros_like(pred)
    pred[1:4, 1:4, 1] = 1
    pred[5:7, 5:7, 2] = 2
    gt[1:4, 1:4, 1] = 2
    gt[5:7, 5:7, 2] = 2
    assert metrics.dice(pred, gt) == 1.0  # nonzero vs nonzero
    assert metrics.dice(pred, gt, label=1) == 0.0  # gt has no label 1
    assert metrics.dice(pred, gt, label=2) == pytest.approx(2 * 4 / (4 + 13))
    per_label = metrics.evaluate_labels(pred, gt)
    assert sorted(per_label) == [1, 2]
    assert per_label[1]["gt_empty"] and not per_label[1]["pred_empty"]
    assert per_label[2]["dice"] == pytest.approx(metrics.dice(pred, gt, label=2))


def test_volume_inputs_take_spacing_from_affine():
    spacing = (0.5, 1.0, 2.5)
    a = cube((20, 14, 14), (3, 3, 3), 8).astype(np.uint8)
    b = cube((20, 14, 14), (6, 3, 3), 8).astype(np.uint8)
    affine = np.diag([*spacing, 1.0])
    va, vb = Volume(a, affine, label=True), Volume(b, affine, label=True)
    assert metrics.hd95(va, vb) == pytest.approx(metrics.hd95(a, b, spacing=spacing))
    assert metrics.hd95(va, b) == pytest.approx(3 * 0.5)  # one Volume is enough
    assert metrics.hd95(va, vb, spacing=(1.0, 1.0, 1.0)) == pytest.approx(3.0)  # explicit wins
    vd = metrics.volume_difference(va, vb)
    assert vd.ml == 0.0 and vd.relative == 0.0
    assert fx.metrics.evaluate(va, vb)["dice"] == pytest.approx(5 / 8)


def test_grid_mismatch_and_bad_input_errors():
    a = np.zeros((6, 6, 6), dtype=np.uint8)
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    with pytest.raises(VolumeError, match="different grids"):
        metrics.dice(Volume(a, np.eye(4), label=True), Volume(a, shifted, label=True))
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(a, np.zeros((6, 6, 5)))
    with pytest.raises(ValueError, match="threshold"):
        metrics.dice(a, np.full((6, 6, 6), 0.4))
    with pytest.raises(ValueError, match="spacing"):
        metrics.hd95(a, a, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        metrics.hd95(a, a, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        metrics.surface_dice(a, a, tolerance=-1.0)
    with pytest.raises(ValueError, match="2D or 3D"):
        metrics.dice(np.zeros(5), np.zeros(5))


# ---------------------------------------------------------------------- MONAI agreement
@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own internal deprecation notices
def test_agrees_with_monai_on_random_blobs():
    pytest.importorskip("monai", reason="MONAI (dev extra) is needed for the cross-check")
    import torch
    from monai.metrics import (compute_average_surface_distance, compute_dice,
                               compute_hausdorff_distance, compute_surface_dice)

    spacing, tolerance = (0.8, 1.1, 2.5), 1.7
    for seed in (3, 4):
        a, b = blob((28, 26, 16), seed=seed), blob((28, 26, 16), seed=seed + 10)
        ours = metrics.evaluate(a, b, spacing=spacing, tolerance=tolerance)
        ta, tb = (torch.from_numpy(m[None, None].astype(np.float32)) for m in (a, b))
        theirs = {
            "dice": compute_dice(ta, tb, include_background=True),
            "hd95": compute_hausdorff_distance(ta, tb, include_background=True, percentile=95, spacing=spacing),
            "assd": compute_average_surface_distance(ta, tb, include_background=True, symmetric=True,
                                                     spacing=spacing),
            "surface_dice": compute_surface_dice(ta, tb, [tolerance], include_background=True, spacing=spacing),
        }
        for key, value in theirs.items():
            assert ours[key] == pytest.approx(float(value.item()), rel=1e-5, abs=1e-6), key
