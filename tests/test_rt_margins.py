"""Exact mm margins and structure algebra (fewshotcx.rt), and the ``margin`` CLI command."""

from __future__ import annotations

import argparse
import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fewshotcx import rt
from fewshotcx.cli import rt as cli_rt
from fewshotcx.io.volume import Volume, VolumeError, load_volume

SPACING = (0.8, 1.2, 3.0)
# Array axis directions in RAS: RAS, LPS and a permuted layout (axes: P, I, R).
AFFINES = {
    "RAS": np.diag([*SPACING, 1.0]),
    "LPS": np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0]),
    "PIR": np.array([[0, 0, SPACING[2], 0], [-SPACING[0], 0, 0, 0], [0, -SPACING[1], 0, 0], [0, 0, 0, 1.0]]),
}
for _a in AFFINES.values():
    _a[:3, 3] = [12.5, -40.0, 7.0]


def world_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``(X, Y, Z, 3)`` RAS mm of every voxel centre."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def grid_shape(affine: np.ndarray, extent_mm=(50.0, 44.0, 42.0)) -> tuple[int, int, int]:
    """Voxel counts covering ``extent_mm`` (R–L, A–P, S–I) in the layout of ``affine``."""
    axes = np.abs(affine[:3, :3]).argmax(axis=0)
    return tuple(int(np.ceil(extent_mm[w] / np.abs(affine[w, i]))) | 1 for i, w in enumerate(axes))


def single_voxel(affine: np.ndarray) -> tuple[Volume, np.ndarray, np.ndarray]:
    shape = grid_shape(affine)
    array = np.zeros(shape, np.uint8)
    centre = tuple(n // 2 for n in shape)
    array[centre] = 1
    world = world_grid(affine, shape)
    return Volume(array, affine, label=True), world, world[centre]


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_sphere_plus_margin_is_bigger_sphere(name):
    affine = AFFINES[name]
    shape = grid_shape(affine)
    world = world_grid(affine, shape)
    radius = np.linalg.norm(world - world[tuple(n // 2 for n in shape)], axis=-1)
    grown = rt.expand_margin(Volume((radius <= 6.0).astype(np.uint8), affine, label=True), 7.0)
    assert grown.array.dtype == np.uint8 and np.allclose(grown.affine, affine)
    grown = grown.array.astype(bool)
    # Every grown voxel is within 7 mm of a voxel of the 6 mm sphere, hence inside the 13 mm sphere;
    # missing voxels come only from sampling the inner sphere: within half a voxel diagonal of 13 mm.
    assert not (grown & (radius > 13.0 + 1e-6)).any()
    missing = (radius <= 13.0) & ~grown
    assert np.abs(radius[missing] - 13.0).max(initial=0.0) <= 0.5 * np.linalg.norm(SPACING)


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_per_axis_margin_on_one_voxel_is_the_world_ellipsoid(name):
    mask, world, centre = single_voxel(AFFINES[name])
    semi = np.array([4.0, 10.0, 7.0])  # x (L-R), y (A-P), z (S-I) in mm
    grown = rt.expand_margin(mask, tuple(semi)).array.astype(bool)
    expected = ((((world - centre) / semi) ** 2).sum(-1)) <= 1.0 + 1e-9
    np.testing.assert_array_equal(grown, expected)
    extent = np.ptp(world[grown], axis=0)
    assert extent[1] > extent[2] > extent[0]  # A-P widest, whatever the array layout


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_anterior_margin_grows_towards_anterior_only(name):
    mask, world, centre = single_voxel(AFFINES[name])
    grown = rt.expand_margin(mask, {"anterior": 6.0}).array.astype(bool)
    d = world - centre
    expected = (np.abs(d[..., 0]) < 1e-9) & (np.abs(d[..., 2]) < 1e-9) & (d[..., 1] > -1e-9) & (d[..., 1] <= 6.0 + 1e-9)
    np.testing.assert_array_equal(grown, expected)
    assert grown.sum() >= 6  # 0 .. 6 mm in 1.2 mm (or finer) steps


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_per_direction_margins_form_ellipsoid_octants(name):
    mask, world, centre = single_voxel(AFFINES[name])
    margins = {"right": 3.0, "left": 8.0, "anterior": 9.0, "posterior": 2.5, "superior": 12.0, "inferior": 6.0}
    grown = rt.expand_margin(mask, margins).array.astype(bool)
    d = world - centre
    semi = np.stack([np.where(d[..., 0] >= 0, 3.0, 8.0), np.where(d[..., 1] >= 0, 9.0, 2.5),
                     np.where(d[..., 2] >= 0, 12.0, 6.0)], axis=-1)
    np.testing.assert_array_equal(grown, ((d / semi) ** 2).sum(-1) <= 1.0 + 1e-9)


def test_isotropic_margin_is_exact_on_a_rotated_grid_and_anisotropic_ones_warn():
    angle = np.radians(25.0)
    affine = np.eye(4)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine[:3, :3] = rotation @ np.diag(SPACING)
    mask, world, centre = single_voxel(affine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grown = rt.expand_margin(mask, 5.0).array.astype(bool)
    np.testing.assert_array_equal(grown, np.linalg.norm(world - centre, axis=-1) <= 5.0 + 1e-9)
    with pytest.warns(UserWarning, match="oblique by up to 25.0 degrees"):
        rt.expand_margin(mask, (2.0, 5.0, 6.0))


def test_symmetric_direction_margins_match_the_distance_transform():
    rng = np.random.default_rng(3)
    blobs = ndimage.gaussian_filter(rng.random((30, 26, 14)), 2.0) > 0.52
    mask = Volume(blobs.astype(np.uint8), AFFINES["LPS"], label=True)
    per_axis = rt.expand_margin(mask, (5.0, 3.0, 6.5))
    per_direction = rt.expand_margin(mask, {"right": 5.0, "left": 5.0, "anterior": 3.0, "posterior": 3.0,
                                            "superior": 6.5, "inferior": 6.5 + 1e-9})
    np.testing.assert_array_equal(per_axis.array, per_direction.array)


def element_offsets(affine: np.ndarray, margins: dict) -> list[tuple[int, int, int]]:
    """Voxel-index offsets whose world displacement lies in the octant ellipsoid (brute force)."""
    spans = [int(np.ceil(max(margins.values()) / s)) for s in np.linalg.norm(affine[:3, :3], axis=0)]
    offsets = []
    for abc in np.ndindex(*[2 * n + 1 for n in spans]):
        index = np.array(abc) - spans
        d = affine[:3, :3] @ index
        semi = [margins["right" if d[0] >= 0 else "left"], margins["anterior" if d[1] >= 0 else "posterior"],
                margins["superior" if d[2] >= 0 else "inferior"]]
        if all(abs(x) < 1e-9 or m > 0 for x, m in zip(d, semi)) and sum(
                (x / m) ** 2 for x, m in zip(d, semi) if m > 0) <= 1 + 1e-9:
            offsets.append(tuple(index))
    return offsets


@pytest.mark.parametrize("name", ["LPS", "PIR"])
def test_expand_and_shrink_match_brute_force_definition(name):
    affine = AFFINES[name]
    margins = {"right": 2.0, "left": 4.0, "anterior": 3.0, "posterior": 1.0, "superior": 7.0, "inferior": 0.0}
    blobs = ndimage.gaussian_filter(np.random.default_rng(8).random((15, 13, 9)), 1.5) > 0.5
    blobs[0, 5:9, 3:6] = True  # touches the border
    offsets = element_offsets(affine, margins)
    grown = np.zeros_like(blobs)
    kept = blobs.copy()
    for x in np.ndindex(blobs.shape):
        for e in offsets:
            p = tuple(np.add(x, e))
            q = tuple(np.subtract(x, e))
            if all(0 <= v < n for v, n in zip(q, blobs.shape)) and blobs[q]:
                grown[x] = True
            if all(0 <= v < n for v, n in zip(p, blobs.shape)) and not blobs[p]:
                kept[x] = False
    mask = Volume(blobs.astype(np.uint8), affine, label=True)
    np.testing.assert_array_equal(rt.expand_margin(mask, margins).array.astype(bool), grown)
    np.testing.assert_array_equal(rt.shrink_margin(mask, margins).array.astype(bool), kept)


@pytest.mark.parametrize("margin", [4.0, (2.0, 5.0, 6.0), {"anterior": 7.0, "left": 3.0, "inferior": 6.0}])
def test_shrink_then_expand_stays_inside(margin):
    rng = np.random.default_rng(5)
    blobs = ndimage.gaussian_filter(rng.random((40, 34, 16)), 2.5) > 0.5
    mask = Volume(blobs.astype(np.uint8), AFFINES["PIR"], label=True)
    shrunk = rt.shrink_margin(mask, margin)
    opened = rt.expand_margin(shrunk, margin).array.astype(bool)
    assert 0 < shrunk.array.sum() < blobs.sum()
    assert not (opened & ~blobs).any()


def test_shrink_moves_only_the_named_surface():
    affine = AFFINES["LPS"]
    shape = grid_shape(affine)
    world = world_grid(affine, shape)
    box = np.all(np.abs(world - world[tuple(n // 2 for n in shape)]) <= [10, 10, 10], axis=-1)
    shrunk = rt.shrink_margin(Volume(box.astype(np.uint8), affine, label=True), {"anterior": 4.0}).array.astype(bool)
    kept, removed = world[shrunk], world[box & ~shrunk]
    # 1.2 mm rows: those 0, 1.2 and 2.4 mm below the anterior surface are within 4 mm of the row outside.
    assert kept[:, 1].max() == pytest.approx(world[box][:, 1].max() - 3.6)
    np.testing.assert_allclose(np.ptp(kept[:, [0, 2]], axis=0), np.ptp(world[box][:, [0, 2]], axis=0))
    assert removed[:, 1].min() > kept[:, 1].max()


def test_margin_is_clipped_at_the_grid_border():
    affine = AFFINES["RAS"]
    array = np.zeros((20, 20, 10), np.uint8)
    array[0, 10, 5] = 1
    grown = rt.expand_margin(Volume(array, affine, label=True), 5.0)
    assert grown.shape == (20, 20, 10) and grown.array[0:7, 10, 5].all() and grown.array[7, 10, 5] == 0


def test_boolean_helpers_and_ptv_recipe():
    affine = AFFINES["LPS"]
    a = np.zeros((12, 10, 6), np.uint8)
    b = np.zeros_like(a)
    a[2:8, 2:8, 1:4] = 1
    b[5:10, 5:10, 2:5] = 1
    va, vb = Volume(a, affine, label=True), Volume(b, affine, label=True)
    np.testing.assert_array_equal(rt.union(va, vb).array, (a | b))
    np.testing.assert_array_equal(rt.intersect(va, vb).array, (a & b))
    np.testing.assert_array_equal(rt.subtract(va, vb).array, (a & ~b.astype(bool)))
    ptv = rt.subtract(rt.expand_margin(va, 2.0), vb)
    assert ptv.array.dtype == np.uint8 and not (ptv.array & b).any() and ptv.array.sum() > a.sum() - (a & b).sum()


def test_grid_mismatch_and_bad_input_raise():
    a = Volume(np.ones((4, 4, 4), np.uint8), AFFINES["RAS"], label=True)
    shifted = AFFINES["RAS"].copy()
    shifted[0, 3] += 1.0
    with pytest.raises(VolumeError, match="grid"):
        rt.union(a, Volume(np.ones((4, 4, 4), np.uint8), shifted, label=True))
    with pytest.raises(VolumeError, match="grid"):
        rt.subtract(a, Volume(np.ones((4, 4, 5), np.uint8), AFFINES["RAS"], label=True))
    with pytest.raises(ValueError, match="unknown margin direction"):
        rt.expand_margin(a, {"forward": 3})
    with pytest.raises(ValueError, match=">= 0"):
        rt.expand_margin(a, -2)
    with pytest.raises(ValueError, match="3 values"):
        rt.expand_margin(a, (1, 2))
    with pytest.raises(VolumeError, match="binary"):
        rt.expand_margin(Volume(np.full((4, 4, 4), 0.3), AFFINES["RAS"]), 2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewshotcx")
    cli_rt.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_margin_command_expands_subtracts_and_keeps_the_file_layout(tmp_path, capsys):
    affine = AFFINES["PIR"]
    ctv = np.zeros((21, 15, 9), np.uint8)
    ctv[8:13, 6:9, 3:6] = 1
    oar = np.zeros_like(ctv)
    oar[:, :, 6:] = 1
    nib.save(nib.Nifti1Image(ctv, affine), tmp_path / "ctv.nii.gz")
    nib.save(nib.Nifti1Image(oar, affine), tmp_path / "oar.nii.gz")
    out = tmp_path / "ptv.nii.gz"
    args = _parser().parse_args(["margin", "--mask", str(tmp_path / "ctv.nii.gz"), "--margin", "5",
                                 "--directions", "superior=0", "--subtract", str(tmp_path / "oar.nii.gz"),
                                 "--out", str(out)])
    assert args.func(args) == 0 and "wrote" in capsys.readouterr().out
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, affine)
    expected = rt.subtract(rt.expand_margin(Volume(ctv, affine, label=True),
                                            {**dict.fromkeys(rt.DIRECTIONS, 5.0), "superior": 0.0}),
                           Volume(oar, affine, label=True))
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected.array)
    assert load_volume(out, label=True).array.sum() > ctv.sum()
    with pytest.raises(FileExistsError):
        args.func(args)


@pytest.mark.parametrize("argv, message", [
    ([], "give a margin"),
    (["--directions", "forward=3"], "NAME=MM"),
    (["--directions", "anterior=three"], "not a number"),
])
def test_margin_command_rejects_bad_margins(tmp_path, argv, message):
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), np.eye(4)), tmp_path / "m.nii.gz")
    args = _parser().parse_args(["margin", "--mask", str(tmp_path / "m.nii.gz"), "--out",
                                 str(tmp_path / "o.nii.gz"), *argv])
    with pytest.raises(ValueError, match=message):
        args.func(args)


def test_margin_spec_precedence():
    args = _parser().parse_args(["margin", "--mask", "m", "--out", "o", "--margin", "7", "--margin-ap", "5",
                                 "--directions", "posterior=2"])
    spec = cli_rt.margin_spec(args)
    assert spec == {"right": 7.0, "left": 7.0, "anterior": 5.0, "posterior": 2.0, "superior": 7.0, "inferior": 7.0}
