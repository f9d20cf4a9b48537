from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ORIENTATIONS
from fewshotcx.pipeline.slicing import Framing, body_centre, extract_slabs, iter_chunks, make_geometry, plane_axes, reassemble
from fewshotcx.io.volume import Volume


def _smooth(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 1, *[max(2, n // 4) for n in shape]), generator=g)
    return torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0, 0]


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("shape", [(16, 16, 16), (15, 15, 15)])
def test_round_trip_exact_without_resize(axis, k, shape):
    volume = torch.rand(shape, generator=torch.Generator().manual_seed(axis + 10 * k))
    geometry = make_geometry(shape, (1.0, 1.0, 1.0), axis, size=shape[0], context=k)
    slabs = extract_slabs(volume, geometry)
    assert slabs.shape == (shape[axis], 2 * k + 1, shape[0], shape[0])
    back = reassemble(slabs[:, k:k + 1], geometry)[0]
    assert torch.equal(back, volume)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shape,spacing", [((20, 13, 9), (0.8, 1.1, 3.0)), ((21, 30, 16), (1.0, 1.0, 1.0))])
def test_round_trip_with_resize_is_close(axis, shape, spacing):
    volume = _smooth(shape)
    geometry = make_geometry(shape, spacing, axis, size=64, context=1)
    back = reassemble(extract_slabs(volume, geometry)[:, 1:2], geometry)[0]
    assert back.shape == volume.shape
    assert (back - volume).abs().max() < 0.05


def test_neighbours_are_the_adjacent_slices_with_replicated_edges():
    volume = torch.arange(5.0).view(1, 1, 5).expand(4, 4, 5).contiguous()  # value = z index
    geometry = make_geometry(volume.shape, (1, 1, 1), "axial", size=4, context=2)
    slabs = extract_slabs(volume, geometry)
    centre_values = slabs[:, :, 0, 0]  # (N, 5)
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 4], [2, 3, 4, 4, 4]])
    assert torch.equal(centre_values, expected.float())


def test_aspect_preserving_pad_keeps_physical_shape():
    # 40 x 10 voxels at 1 x 4 mm is a 40 x 40 mm square: no padding needed.
    square = make_geometry((40, 10, 3), (1.0, 4.0, 1.0), "axial", size=32)
    assert square.resized == (32, 32) and square.offset == (0, 0)
    # 40 x 10 voxels at 1 x 1 mm: content 32 x 8, padded symmetrically.
    wide = make_geometry((40, 10, 3), (1.0, 1.0, 1.0), "axial", size=32)
    assert wide.resized == (32, 8) and wide.offset == (0, 12)
    slabs = extract_slabs(torch.ones(40, 10, 3), wide)
    assert slabs[..., :12].abs().sum() == 0 and slabs[..., 20:].abs().sum() == 0


def test_subset_indices_and_fill():
    volume = torch.rand(8, 8, 6)
    geometry = make_geometry(volume.shape, (1, 1, 1), "axial", size=8, indices=[1, 4])
    back = reassemble(extract_slabs(volume, geometry), geometry, fill=-1.0)[0]
    assert torch.equal(back[..., 1], volume[..., 1]) and torch.equal(back[..., 4], volume[..., 4])
    assert (back[..., [0, 2, 3, 5]] == -1).all()
    with pytest.raises(ValueError, match="indices"):
        make_geometry(volume.shape, (1, 1, 1), "axial", size=8, indices=[6])


def test_multichannel_volume_and_reassemble_channels():
    volume = torch.rand(2, 6, 7, 6)
    geometry = make_geometry((6, 7, 6), (1, 1, 1), "coronal", size=6, context=1)
    slabs = extract_slabs(volume, geometry)
    assert slabs.shape == (7, 6, 6, 6)  # channels stacked before slab depth: (c k)
    out = reassemble(slabs[:, [1, 4]], geometry)
    assert out.shape == (2, 6, 7, 6)
    assert torch.allclose(out[0], volume[0])
    assert torch.allclose(out[1], volume[1])


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_every_orientation_canonicalises_then_round_trips(name):
    array = _smooth((12, 10, 9), seed=3).numpy()
    vol = Volume(array, ORIENTATIONS[name]).canonical()
    for axis in plane_axes("all"):
        geometry = make_geometry(vol.shape, vol.spacing, axis, size=32, context=1)
        back = reassemble(extract_slabs(torch.from_numpy(vol.array), geometry)[:, 1:2], geometry)[0]
        restored = vol.with_array(back.numpy()).to_source()
        assert np.abs(restored.array - array).max() < 0.06
        assert np.allclose(restored.affine, ORIENTATIONS[name])


def test_chunks_cover_all_slices_within_budget():
    geometry = make_geometry((4, 4, 10), (1, 1, 1), "axial", size=4)
    chunks = list(iter_chunks(geometry, bytes_per_slab=100, budget_bytes=350))
    assert chunks == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert list(iter_chunks(geometry, bytes_per_slab=10**9, budget_bytes=1)) == [(i, i + 1) for i in range(10)]


def test_bad_axis_and_shape_mismatch():
    with pytest.raises(ValueError, match="unknown axis"):
        make_geometry((4, 4, 4), (1, 1, 1), "transverse", size=4)
    geometry = make_geometry((4, 4, 4), (1, 1, 1), "axial", size=4)
    with pytest.raises(ValueError, match="does not match"):
        extract_slabs(torch.rand(4, 4, 5), geometry)


def test_stretch_mode_fills_square_and_inverts():
    volume = _smooth((20, 12, 5))
    geometry = make_geometry(volume.shape, (1.0, 1.0, 1.0), "axial", size=32, resize_mode="stretch")
    assert geometry.resized == (32, 32) and geometry.offset == (0, 0)
    back = reassemble(extract_slabs(volume, geometry), geometry)[0]
    assert (back - volume).abs().max() < 0.05
    with pytest.raises(ValueError, match="resize_mode"):
        make_geometry(volume.shape, (1, 1, 1), "axial", size=32, resize_mode="crop")


# ------------------------------------------------------------------ physical framing
def _phantom(spacing, shape, origin):
    """A body (ellipse, 300 × 200 mm, centred at x=10, y=-20 mm) with an organ (disk, r=30 mm) and
    intensity varying along z, sampled on a grid of ``spacing`` mm with its first voxel at ``origin``."""
    axes = [origin[i] + np.arange(shape[i]) * spacing[i] for i in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    body = ((x - 10) / 150) ** 2 + ((y + 20) / 100) ** 2 < 1
    organ = (x - 60) ** 2 + (y + 10) ** 2 < 30 ** 2
    return (0.5 * body + 0.4 * organ + 0.05 * np.sin(z / 7) * body).astype(np.float32)


def test_physical_framing_gives_the_same_input_at_two_fields_of_view_and_spacings():
    framing = Framing(128, 1, "physical", pixel_mm=2.5, context_mm=6.0)
    small = _phantom((1.0, 1.0, 3.0), (400, 300, 9), (-190.0, -170.0, 0.0))   # 400 x 300 mm, 3 mm slices
    large = _phantom((0.7, 0.7, 2.0), (700, 520, 13), (-250.0, -200.0, 0.0))  # 490 x 364 mm, 2 mm slices
    slabs = []
    for volume, spacing, z in ((small, (1.0, 1.0, 3.0), 4), (large, (0.7, 0.7, 2.0), 6)):  # both at z = 12 mm
        geometry = framing.geometry(volume.shape, spacing, "axial", indices=[z], centre=framing.centre(volume, 2))
        slabs.append(extract_slabs(torch.from_numpy(volume), geometry))
    assert slabs[0].shape == slabs[1].shape == (1, 3, 128, 128)
    difference = (slabs[0] - slabs[1]).abs()
    assert difference.mean() < 0.01  # edges resampled differently; the anatomy coincides
    # the same check against field-of-view fitting ("pad"), which scales each scan differently, fails:
    fitted = [extract_slabs(torch.from_numpy(v), make_geometry(v.shape, sp, "axial", 128, 1, [z]))
              for v, sp, z in ((small, (1.0, 1.0, 3.0), 4), (large, (0.7, 0.7, 2.0), 6))]
    assert (fitted[0] - fitted[1]).abs().mean() > 5 * difference.mean()


def test_physical_framing_pixel_size_and_body_centre():
    volume = _phantom((1.0, 1.0, 3.0), (400, 300, 3), (-190.0, -170.0, 0.0))
    ch, cw = body_centre(volume, 2)
    assert abs((-190 + ch) - 10) < 4 and abs((-170 + cw) + 20) < 4  # the ellipse's centre, in mm
    geometry = make_geometry(volume.shape, (1.0, 1.0, 3.0), "axial", 64, 0, resize_mode="physical", pixel_mm=4.0,
                             centre=(ch, cw))
    assert geometry.resized == (100, 75)  # 400 mm / 4 mm, 300 mm / 4 mm: no stretching to the square
    square = extract_slabs(torch.from_numpy(volume), geometry)[0, 0]
    rows = (square > 0.2).any(dim=1).nonzero()
    assert 64 - 4 <= rows.max() - rows.min() + 1 <= 64  # the 300 mm wide body is cropped to 64 x 4 mm = 256 mm


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("pixel_mm", [0.6, 1.0, 2.0])
def test_physical_round_trip(axis, pixel_mm):
    volume = _smooth((24, 20, 16), seed=axis)
    geometry = make_geometry(volume.shape, (1.0, 1.2, 2.0), axis, 32, 1, resize_mode="physical", pixel_mm=pixel_mm,
                             centre=(9.0, 8.0))
    back = reassemble(extract_slabs(volume, geometry)[:, 1:2], geometry)[0]
    inside = reassemble(torch.ones(geometry.num_slices, 1, 32, 32), geometry)[0] > 0.999  # what the square covers
    assert inside.float().mean() > 0.3
    error = (back - volume)[inside].abs()
    assert error.mean() < 0.03 and error.max() < (0.08 if pixel_mm <= 1.0 else 0.2)  # 2 mm pixels lose detail
    if pixel_mm < 1.0:  # a 32-pixel square of 0.6 mm does not reach the whole slice: the rest comes back 0
        assert not inside.all() and back[~inside].abs().max() <= volume.abs().max()


def test_context_mm_interpolates_neighbours_at_a_fixed_distance():
    volume = torch.arange(10.0).view(1, 1, 10).expand(4, 4, 10).contiguous()  # value = z index, 2 mm slices
    geometry = make_geometry(volume.shape, (1, 1, 2.0), "axial", 4, 1, indices=[0, 5, 9], context_mm=3.0)
    assert geometry.step == 1.5
    values = extract_slabs(volume, geometry)[:, :, 0, 0]
    assert torch.allclose(values, torch.tensor([[0.0, 0.0, 1.5], [3.5, 5.0, 6.5], [7.5, 9.0, 9.0]]))
