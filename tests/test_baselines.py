"""Tests for fewshotcx.baselines: shape-based slice interpolation and position-matched label fusion."""

import numpy as np
import pytest

from fewshotcx.baselines.interpolation import interpolate_slices, label_fusion
from fewshotcx.evaluation.metrics import dice


def disc(shape, centre, radius, spacing=(1.0, 1.0)):
    x, y = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius ** 2


# ---------------------------------------------------------------------- interpolate_slices
def test_midpoint_of_two_discs_is_a_disc_of_intermediate_radius():
    spacing = (0.8, 1.2, 3.0)
    plane, centre = (60, 40), (24.0, 24.0)
    volume = np.zeros(plane + (11,), dtype=np.uint8)
    volume[..., 0] = disc(plane, centre, 6.0, spacing[:2])
    volume[..., 10] = disc(plane, centre, 14.0, spacing[:2])
    out = interpolate_slices(volume, [0, 10], spacing=spacing)
    assert dice(out[..., 5], disc(plane, centre, 10.0, spacing[:2])) > 0.95
    assert dice(out[..., 5], disc(plane, centre, 8.5, spacing[:2])) < 0.92  # not just any disc
    areas = out.reshape(-1, 11).sum(axis=0)
    assert np.all(np.diff(areas) > 0)  # grows monotonically from r=6 to r=14


def test_in_plane_spacing_is_used():
    # a 20 x 4 voxel bar tapering to nothing: halfway it has lost half its depth on every side,
    # and that depth is 4 mm (the 8 mm side) at spacing (0.5, 2) but 2 voxels when isotropic
    volume = np.zeros((40, 20, 3), dtype=np.uint8)
    volume[10:30, 8:12, 0] = 1
    width = {}
    for spacing in [(0.5, 2.0, 1.0), (1.0, 1.0, 1.0)]:
        middle = interpolate_slices(volume, [0, 2], spacing=spacing)[..., 1]
        width[spacing[0]] = np.count_nonzero(middle.any(axis=1))
    assert width[0.5] == pytest.approx(12, abs=1)  # 10 mm - 2 * 2 mm = 6 mm = 12 voxels
    assert width[1.0] == pytest.approx(18, abs=1)  # 20 - 2 * 1 voxels


def test_labelled_slices_unchanged_and_unlabelled_slices_never_read():
    rng = np.random.default_rng(0)
    labelled = [2, 7, 13]
    clean = np.zeros((30, 28, 16), dtype=np.int16)
    for z, r in zip(labelled, (5.0, 9.0, 4.0)):
        clean[..., z] = disc((30, 28), (14.0, 13.0), r) * (1 + (z == 7))
    garbage = rng.integers(0, 5, size=clean.shape).astype(np.int16)
    garbage[..., labelled] = clean[..., labelled]
    out_clean = interpolate_slices(clean, labelled)
    out_garbage = interpolate_slices(garbage, labelled)
    np.testing.assert_array_equal(out_clean, out_garbage)
    np.testing.assert_array_equal(out_clean[..., labelled], clean[..., labelled])
    assert out_clean.dtype == np.int16
    assert not out_clean[..., :2].any() and not out_clean[..., 14:].any()  # no extrapolation


def test_extrapolate_copies_nearest_labelled_slice():
    volume = np.zeros((12, 12, 10), dtype=np.uint8)
    volume[..., 3] = disc((12, 12), (6, 6), 3)
    volume[..., 6] = disc((12, 12), (6, 6), 4)
    out = interpolate_slices(volume, [6, 3], extrapolate=True)
    for z in range(3):
        np.testing.assert_array_equal(out[..., z], volume[..., 3])
    for z in range(7, 10):
        np.testing.assert_array_equal(out[..., z], volume[..., 6])


def test_multilabel_interpolation_per_class():
    plane = (50, 30)
    volume = np.zeros(plane + (9,), dtype=np.uint8)
    volume[..., 0] = disc(plane, (12, 15), 5) * 1 + disc(plane, (37, 15), 8) * 2
    volume[..., 8] = disc(plane, (12, 15), 9) * 1 + disc(plane, (37, 15), 4) * 2 + disc(plane, (25, 3), 2) * 3
    out = interpolate_slices(volume, [0, 8])
    middle = out[..., 4]
    assert dice(middle == 1, disc(plane, (12, 15), 7)) > 0.9
    assert dice(middle == 2, disc(plane, (37, 15), 6)) > 0.9
    # class 3 exists on slice 8 only: it erodes steadily towards slice 0, where it vanishes
    sizes = [np.count_nonzero(out[..., z] == 3) for z in range(9)]
    assert sizes[0] == 0 and 0 < sizes[1] < sizes[4] < sizes[8] and sizes == sorted(sizes)


def test_sphere_from_three_slices():
    n, radius = 40, 12.0
    grid = np.indices((n, n, n)) - (n - 1) / 2
    sphere = (np.sqrt((grid ** 2).sum(axis=0)) <= radius).astype(np.uint8)
    labelled = [11, 20, 28]  # about +-0.7 radius around the centre
    out = interpolate_slices(sphere, labelled)
    assert dice(out, sphere) > 0.8


def test_other_axis_and_bool_dtype():
    volume = np.zeros((9, 14, 14), dtype=bool)
    volume[0] = disc((14, 14), (7, 7), 3)
    volume[8] = disc((14, 14), (7, 7), 6)
    out = interpolate_slices(volume, [0, 8], axis=0)
    assert out.dtype == bool
    moved = interpolate_slices(np.moveaxis(volume, 0, 2), [0, 8], axis=2)
    np.testing.assert_array_equal(out, np.moveaxis(moved, 2, 0))


def test_interpolate_slices_errors():
    volume = np.zeros((4, 4, 5), dtype=np.uint8)
    with pytest.raises(ValueError, match="at least one"):
        interpolate_slices(volume, [])
    with pytest.raises(ValueError, match="lie in"):
        interpolate_slices(volume, [0, 5])
    with pytest.raises(ValueError, match="integer"):
        interpolate_slices(volume.astype(np.float32), [0])
    with pytest.raises(ValueError, match="spacing"):
        interpolate_slices(volume, [0], spacing=(1.0, 1.0))


# ---------------------------------------------------------------------- label_fusion
def test_fusion_of_identical_supports_returns_the_support():
    rng = np.random.default_rng(1)
    support = rng.integers(0, 3, size=(10, 9, 7)).astype(np.uint8)
    out = label_fusion(support.shape, [support, support.copy()])
    np.testing.assert_array_equal(out, support)
    assert out.dtype == np.uint8


def test_majority_vote_of_three_supports():
    rng = np.random.default_rng(2)
    supports = [rng.integers(0, 3, size=(8, 8, 6)).astype(np.int16) for _ in range(3)]
    out = label_fusion((8, 8, 6), supports)
    stacked = np.stack(supports)
    counts = np.stack([(stacked == k).sum(axis=0) for k in range(3)])
    has_majority = counts.max(axis=0) >= 2
    np.testing.assert_array_equal(out[has_majority], counts.argmax(axis=0)[has_majority])
    np.testing.assert_array_equal(out[~has_majority], 0)  # three-way tie: smallest label wins
    binary = [s == 1 for s in supports]
    np.testing.assert_array_equal(label_fusion((8, 8, 6), binary), sum(b.astype(int) for b in binary) >= 2)


def test_fusion_matches_relative_positions_across_shapes():
    rng = np.random.default_rng(3)
    small = rng.integers(0, 2, size=(5, 6, 4)).astype(np.uint8)
    big = np.repeat(np.repeat(np.repeat(small, 2, axis=0), 3, axis=1), 2, axis=2)  # (10, 18, 8)
    np.testing.assert_array_equal(label_fusion(small.shape, [big]), small)  # downsampling
    np.testing.assert_array_equal(label_fusion(big.shape, [small]), big)  # upsampling
    np.testing.assert_array_equal(label_fusion(small.shape, [big], axis=0), small)


def test_label_fusion_errors():
    with pytest.raises(ValueError, match="at least one"):
        label_fusion((4, 4, 4), [])
    with pytest.raises(ValueError, match="query_shape"):
        label_fusion((4, 4), [np.zeros((4, 4, 4), dtype=np.uint8)])
    with pytest.raises(ValueError, match="3D"):
        label_fusion((4, 4, 4), [np.zeros((4, 4), dtype=np.uint8)])
