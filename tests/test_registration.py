"""Registration: SimpleITK conversion, known-transform recovery on a real brain, determinism,
save/load, warping onto the fixed grid, and refusals that name the volume."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from conftest import cached_colin27
from fewshotcx.io.volume import Volume
from fewshotcx import registration as reg

FLIP = np.diag([-1.0, -1.0, 1.0])


def test_conversion_round_trip_any_orientation(orientations):
    rng = np.random.default_rng(0)
    for name, affine in orientations.items():
        volume = Volume(rng.normal(size=(7, 5, 4)).astype(np.float32), affine)
        image = reg.to_sitk(volume)
        assert image.GetSize() == (7, 5, 4), name
        for index in [(0, 0, 0), (6, 1, 3), (2, 4, 1)]:
            assert image[index] == pytest.approx(float(volume.array[index]))  # same voxel, same index
            world = affine @ np.r_[index, 1.0]
            np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(index), FLIP @ world[:3], atol=1e-9)
        back = reg.from_sitk(image)
        np.testing.assert_array_equal(back.array, volume.array)
        np.testing.assert_allclose(back.affine, affine, atol=1e-9)


def test_label_conversion_keeps_integer_values():
    labels = Volume(np.arange(24, dtype=np.uint8).reshape(4, 3, 2) % 5, np.diag([-1.0, 2.0, 3.0, 1.0]), label=True)
    back = reg.from_sitk(reg.to_sitk(labels, dtype=np.uint8), label=True)
    assert back.label and np.array_equal(back.array, labels.array)


# ------------------------------------------------------------------ a real brain, moved and cropped
@pytest.fixture(scope="module")
def brain():
    return cached_colin27(downsample=3.0)  # cache only (make test fetches it once)


def _known_rigid() -> np.ndarray:
    """World (RAS) map from fixed points to moving points: 7° / -5° / 10° rotation about a point
    in the brain, then a 300-mm shift (unrelated world coordinates)."""
    rotation = np.eye(4)
    rotation[:3, :3] = Rotation.from_euler("xyz", [7, -5, 10], degrees=True).as_matrix()
    centre, shift = np.eye(4), np.eye(4)
    centre[:3, 3] = [0.0, -20.0, 10.0]
    shift[:3, 3] = [-40.0, 25.0, -300.0]
    return centre @ rotation @ np.linalg.inv(centre) @ shift


def _moved_slab(volume: Volume, fixed_to_moving: np.ndarray, z_slices=slice(24, 44)) -> Volume:
    """``volume`` resampled (linear) on a 3.5-mm grid in a shifted world, then cropped to an axial slab."""
    shape = (56, 64, 60)
    affine = np.diag([3.5, 3.5, 3.5, 1.0])
    affine[:3, 3] = [-98.0, -120.0, 200.0]  # fixed world ≈ moving world + 300 mm in z
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=0).reshape(3, -1)
    world = affine @ np.vstack([index, np.ones(index.shape[1])])
    source = np.linalg.solve(volume.affine, fixed_to_moving @ world)[:3]
    array = ndimage.map_coordinates(volume.array, source, order=1, mode="constant", cval=0.0).reshape(shape)
    slab = array[:, :, z_slices]
    slab_affine = affine.copy()
    slab_affine[:3, 3] = (affine @ np.r_[0, 0, z_slices.start, 1.0])[:3]
    return Volume(slab, slab_affine)


def _landmark_errors(registration: reg.Registration, fixed: Volume, fixed_to_moving: np.ndarray) -> np.ndarray:
    """mm errors at brain voxels of the fixed slab: registered vs true moving point."""
    inside = np.argwhere(fixed.array > np.percentile(fixed.array, 60))
    points = inside[np.random.default_rng(0).choice(len(inside), 50, replace=False)]
    errors = []
    for point in points:
        world = fixed.affine @ np.r_[point, 1.0]
        mapped = FLIP @ np.asarray(registration.transform.TransformPoint(tuple(FLIP @ world[:3])))
        errors.append(np.linalg.norm(mapped - (fixed_to_moving @ world)[:3]))
    return np.asarray(errors)


@pytest.fixture(scope="module")
def moved(brain):
    truth = _known_rigid()
    return truth, _moved_slab(brain.image, truth)


def test_rigid_recovers_known_transform_of_a_cropped_slab(brain, moved):
    truth, fixed = moved
    result = reg.register(brain.image, fixed, mode="rigid", seed=0)
    errors = _landmark_errors(result, fixed, truth)
    assert errors.max() < 3.0, errors  # under one 3-mm voxel everywhere in the slab
    assert result.ok and result.quality.body_dice > 0.9 and result.quality.overlap > 0.9
    assert result.metric < 0  # Mattes MI is reported negated (lower = better)


def test_affine_registration_starts_and_ends_near_the_truth(brain, moved):
    truth, fixed = moved
    result = reg.register(brain.image, fixed, mode="affine", seed=0)
    assert np.median(_landmark_errors(result, fixed, truth)) < 3.0


def test_same_seed_same_transform(brain, moved):
    _, fixed = moved
    a = reg.register(brain.image, fixed, mode="rigid", seed=3)
    b = reg.register(brain.image, fixed, mode="rigid", seed=3)
    assert a.transform.GetParameters() == b.transform.GetParameters()
    assert a.metric == b.metric and a.quality == b.quality


def test_thread_count_is_set_per_registration_never_process_wide(brain, moved, monkeypatch):
    """Two threads registering at once must not change each other's thread count (issue #23 item 1:
    swapping SimpleITK's process-wide default made concurrent ``registered`` predictions differ)."""
    _, fixed = moved
    single = reg.register(brain.image, fixed, mode="deformable", seed=3, demons_iterations=5)
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    calls: list[int] = []
    monkeypatch.setattr(sitk.ProcessObject, "SetGlobalDefaultNumberOfThreads", staticmethod(calls.append))
    try:
        other = reg.register(brain.image, fixed, mode="deformable", seed=3, demons_iterations=5)
    finally:
        monkeypatch.undo()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
    assert calls == []
    assert other.metric == single.metric and other.quality == single.quality  # threads=1 still holds


def test_warp_lands_on_the_fixed_grid_and_matches_the_truth(brain, moved):
    truth, fixed = moved
    result = reg.register(brain.image, fixed, mode="rigid", seed=0)
    labels = reg.warp(brain.labels, result, fixed, label=True)
    image = reg.warp(brain.image, result, fixed)
    assert labels.shape == fixed.shape and np.array_equal(labels.affine, fixed.affine) and labels.label
    assert set(np.unique(labels.array)) <= set(np.unique(brain.labels.array))
    true_labels = _moved_slab(brain.labels.with_array(brain.labels.array.astype(np.float32), label=False), truth)
    inside = fixed.array > 0
    # nearest-label agreement inside the brain (true labels resampled linearly, so compare rounded)
    agree = np.mean(labels.array[inside] == np.rint(true_labels.array[inside]))
    assert agree > 0.6
    assert np.corrcoef(image.array[inside], fixed.array[inside])[0, 1] > 0.95


def test_save_and_load_round_trip(brain, moved, tmp_path):
    _, fixed = moved
    result = reg.register(brain.image, fixed, mode="affine", seed=0)
    path = tmp_path / "support0.tfm"
    result.save(path)
    with pytest.raises(FileExistsError):
        result.save(path)
    result.save(path, overwrite=True)
    loaded = reg.Registration.load(path)
    for point in [(0.0, 0.0, -300.0), (30.0, -20.0, -280.0)]:
        np.testing.assert_allclose(loaded.transform.TransformPoint(point), result.transform.TransformPoint(point), atol=1e-6)
    assert loaded.mode == "affine" and loaded.quality == result.quality and loaded.ok
    with pytest.raises(ValueError, match="not a readable SimpleITK transform"):
        (tmp_path / "junk.tfm").write_text("nonsense")
        reg.Registration.load(tmp_path / "junk.tfm")


def test_deformable_transform_saves_as_h5(brain, moved, tmp_path):
    _, fixed = moved
    result = reg.register(brain.image, fixed, mode="deformable", seed=0)
    assert result.ok
    path = tmp_path / "support0.h5"
    result.save(path)
    loaded = reg.Registration.load(path)
    point = tuple(float(v) for v in FLIP @ (fixed.affine @ np.r_[28, 32, 10, 1.0])[:3])
    np.testing.assert_allclose(loaded.transform.TransformPoint(point), result.transform.TransformPoint(point), atol=1e-6)


# ------------------------------------------------------------------ refusals
def test_blank_image_is_refused_with_the_volume_named(brain):
    blank = Volume(np.zeros((30, 30, 20), np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    with pytest.raises(reg.RegistrationError, match="support volume 2 .*blank"):
        reg.register(blank, brain.image, name="support volume 2")
    with pytest.raises(reg.RegistrationError, match="the query is blank"):
        reg.register(brain.image, blank, name="support volume 0")


def test_unrelated_image_is_refused_by_the_quality_check(brain):
    """Noise has a 'body' (Otsu finds one) but nothing the brain can align to: the check refuses it."""
    noise = Volume(np.random.default_rng(0).normal(0, 1, (40, 40, 30)).astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    with pytest.raises(reg.RegistrationError, match="support volume 1 refused by the quality check"):
        reg.register(noise, brain.image, mode="rigid", name="support volume 1")
    unchecked = reg.register(noise, brain.image, mode="rigid", check=False)
    assert not unchecked.ok and unchecked.quality.ncc < reg.MIN_NCC


def test_bad_mode_is_a_value_error(brain):
    with pytest.raises(ValueError, match="mode must be one of"):
        reg.register(brain.image, brain.image, mode="bspline")
