from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ORIENTATIONS
from fewshotcx.pipeline.slicing import extract_slabs, iter_chunks, make_geometry, plane_axes, reassemble
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
