"""One slice-index convention (issue #30 item 4, docs/geometry.md "Slice indices"): slice ``k`` is
``array[:, :, k]`` of the file as stored, the same through ``ContourSession.draw``,
``Segmenter.complete(slices=)``, ``Segmenter.fit(slices=)`` and ``RemoteSession``, for a file stored
LPS, one stored inferior first, and one transposed in-plane as well; a file whose third axis is not
superior–inferior is refused in one line."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from servekit import SHAPE, serving, tiny_segmenter, write_image

from fewshotcx import ContourSession, VolumeError, load_volume
from fewshotcx.io.grid import AxialSlices

pytest.importorskip("fastapi")
from fewshotcx.client import RemoteSession  # noqa: E402
from fewshotcx.server import SessionStore  # noqa: E402

DRAWN = (3, 6, 9)


def file_drawing(path, tmp_path):
    """The file's own slices ``DRAWN`` with an off-centre, asymmetric structure (file planes) and the
    drawn label file on the image's grid, in the file's own layout."""
    own = load_volume(path, canonical=False)
    planes = {}
    for i, k in enumerate(DRAWN):
        plane = np.zeros(own.shape[:2], np.int64)
        plane[5 + i:14, 4:9 + i] = 1  # a transposed or flipped plane would not match
        planes[k] = plane
    drawn = np.zeros(own.shape, np.uint8)
    for k, plane in planes.items():
        drawn[..., k] = plane
    label = tmp_path / f"drawn_{path.name}"
    nib.save(nib.Nifti1Image(drawn, own.affine), str(label))
    return planes, label


@pytest.mark.parametrize("orientation", ["LPS", "LPI", "PLI"])
def test_session_complete_and_remote_agree_on_the_files_own_slices(tmp_path, orientation):
    path = write_image(tmp_path, f"ct_{orientation}.nii.gz", orientation)
    planes, label = file_drawing(path, tmp_path)
    completed = tiny_segmenter().complete(path, label, slices=list(DRAWN))
    session = ContourSession(path, tiny_segmenter(), neighbours=len(DRAWN))
    for k, plane in planes.items():
        session.draw(k, plane)
    assert session.drawn == list(DRAWN)
    assert all(np.array_equal(session.drawn_mask(k), plane) for k, plane in planes.items())
    result = session.result()
    assert result.same_grid(completed) and np.array_equal(result.array, completed.array)
    for k, plane in planes.items():  # the drawn voxels, in the file's own slice k, in both results
        assert np.array_equal(completed.array[..., k], plane)
    assert all(k not in DRAWN for k in session.suggest(3))
    with serving(SessionStore(tiny_segmenter())) as url:
        remote = RemoteSession(url, path, classes=(1,))
        for k, plane in planes.items():
            remote.draw(k, plane)
        assert remote.drawn == list(DRAWN) and remote.shape == SHAPE
        assert all(np.array_equal(remote.drawn_mask(k), plane) for k, plane in planes.items())
        local = ContourSession(path, tiny_segmenter())  # the server's default neighbours
        for k, plane in planes.items():
            local.draw(k, plane)
        assert np.array_equal(remote.result().array, local.result().array)
        assert remote.suggest(2) == local.suggest(2)
        remote.close()


def test_fit_slices_are_the_files_own_too(tmp_path):
    """``fit(slices=)`` on an inferior-first file reads the labelled slices where the file has them."""
    path = write_image(tmp_path, "ct.nii.gz", "LPI")
    planes, label = file_drawing(path, tmp_path)
    seg = tiny_segmenter().fit([path], [label], slices=[list(DRAWN)])
    order = AxialSlices.of(load_volume(path, canonical=False).affine, SHAPE)
    assert seg.support.slices == (tuple(order.to_canonical(k) for k in DRAWN),)
    assert seg.classes == (1,)


def test_a_file_whose_third_axis_is_not_axial_is_refused_in_one_line(tmp_path):
    path = write_image(tmp_path, "ct.nii.gz", "PIR")
    with pytest.raises(VolumeError, match="^slices: the third array axis of .* runs left-right, not superior-inferior"):
        ContourSession(path, tiny_segmenter())
    _, label = file_drawing(path, tmp_path)
    with pytest.raises(VolumeError, match="not superior-inferior"):
        tiny_segmenter().complete(path, label, slices=[2])


@pytest.mark.parametrize("k, plane, match", [
    (12, np.zeros(SHAPE[:2]), "slice index must be an integer in \\[0, 11\\], got 12"),
    (3, np.zeros(SHAPE[1::-1]), "has shape \\(24, 20\\)"),  # the canonical plane of a transposed file
])
def test_bad_indices_and_planes_are_one_line_errors(tmp_path, k, plane, match):
    session = ContourSession(write_image(tmp_path, "ct.nii.gz", "PLI"), tiny_segmenter())
    with pytest.raises(ValueError, match=match) as info:
        session.draw(k, plane)
    assert "\n" not in str(info.value)


def test_a_version_1_session_file_with_canonical_indices_is_converted(tmp_path):
    """Session files before 0.4.0 (version 1) stored canonical indices and planes: loading one gives
    the same drawing, now counted in the stored image's own order; version 2 round-trips."""
    import json

    path = write_image(tmp_path, "ct.nii.gz", "PLI")
    own = load_volume(path, canonical=False)
    order = AxialSlices.of(own.affine, own.shape)
    planes, _ = file_drawing(path, tmp_path)
    meta = {"format": "fewshotcx-contour-session", "version": 1, "labels": [1], "neighbours": 1,
            "modality": "mr", "slices": [order.to_canonical(k) for k in DRAWN]}
    old = tmp_path / "old.npz"
    np.savez_compressed(old, meta=np.array(json.dumps(meta)), image=own.array, affine=own.affine,
                        masks=np.stack([order.plane_to_canonical(planes[k]) for k in DRAWN]))
    loaded = ContourSession.load(old, segmenter=tiny_segmenter())
    assert loaded.drawn == list(DRAWN) and loaded.declared == (1,)
    assert all(np.array_equal(loaded.drawn_mask(k), planes[k]) for k in DRAWN)
    again = ContourSession.load(loaded.save(tmp_path / "new.npz"), image=path, segmenter=tiny_segmenter())
    assert again.drawn == list(DRAWN) and all(np.array_equal(again.drawn_mask(k), planes[k]) for k in DRAWN)
