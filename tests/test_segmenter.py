from __future__ import annotations

import numpy as np
import pytest
import torch

from scipy import ndimage

from conftest import ORIENTATIONS, UNREGISTERED, blob_volume
from fewshotcx import Segmenter, Volume, VolumeError, load_volume, save_volume
from fewshotcx.backends.universeg import UniverSegBackend
from fewshotcx.pipeline.intensity import minmax_per_slice, normalize
from fewshotcx.models import UniverSeg
from fewshotcx.pipeline.slicing import make_geometry
from fewshotcx.predictor import foreground_extent


class EchoBackend:
    """Returns each query slab's centre slice as its 'probability': reveals the geometry path."""

    name, slice_size, context, resize_mode = "echo", 32, 1, "pad"
    device = torch.device("cpu")

    def fit(self, pools, generator):
        self.classes = next(iter(pools.values())).classes

    def predict_slices(self, slabs, geometry, generator):
        centre = slabs[:, self.context:self.context + 1]
        return centre.expand(-1, len(self.classes), -1, -1).clone()

    def bytes_per_slab(self):
        return 1 << 20


def _smooth_query():
    """An asymmetric, smooth image (so interpolation error is small and any flip is visible)."""
    image = blob_volume(shape=(26, 22, 10), seed=5, centre=(8, 14, 3), radius=3.0)[0]
    x, y, z = np.meshgrid(*[np.linspace(0, 1, n) for n in image.shape], indexing="ij")
    return ndimage.gaussian_filter(image, 1.0) + 0.6 * x + 0.4 * y + 0.5 * z


def tiny_universeg(seed=0, in_channels=1):
    torch.manual_seed(seed)
    return UniverSeg((8, 8, 8, 8), (8, 8, 8), in_channels=in_channels)


def _support(seed=1, affine=ORIENTATIONS["RAS"]):
    image, label = blob_volume(seed=seed)
    return Volume(image, affine), Volume(label, affine, label=True)


@pytest.mark.parametrize("name", list(ORIENTATIONS))
@pytest.mark.parametrize("axis", ["axial", "sagittal", "all"])
def test_prediction_lands_on_query_grid(name, axis):
    """The echo backend returns the normalised query: any flip/transpose would show up here."""
    query_array = _smooth_query()
    query = Volume(query_array, ORIENTATIONS[name])
    seg = Segmenter(backend=EchoBackend(), axis=axis, modality="mr", progress=False)
    seg.fit(*map(list, zip(_support())))
    prob = seg.predict_proba(query)
    assert prob.shape == query.shape and np.allclose(prob.affine, query.affine)
    expected = normalize(query_array, "mr")
    error = np.abs(prob.array - expected).mean()
    assert error < 0.02
    for flipped_axis in range(3):  # control: a flipped result would be caught by a wide margin
        assert np.abs(prob.array - np.flip(expected, flipped_axis)).mean() > 5 * error


def test_loaded_query_is_saved_in_source_orientation(tmp_path):
    import nibabel as nib

    image, _ = blob_volume(shape=(20, 18, 8), seed=7)
    affine = ORIENTATIONS["PIR"]
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "q.nii.gz"))
    seg = Segmenter(backend=EchoBackend(), modality="mr", progress=False)
    seg.fit(*map(list, zip(_support())))
    out = save_volume(seg.predict_proba(tmp_path / "q.nii.gz"), tmp_path / "p.nii.gz")
    written = nib.load(str(out))
    assert written.shape == image.shape and np.allclose(written.affine, affine)
    assert np.corrcoef(np.asanyarray(written.dataobj).ravel(), normalize(image, "mr").ravel())[0, 1] > 0.97


@UNREGISTERED
def test_universeg_end_to_end_shapes_and_determinism():
    support = _support()
    seg = Segmenter(model=tiny_universeg(), slice_size=32, support_size=4, progress=False, seed=3)
    seg.fit([support[0]], [support[1]])
    query = _support(seed=2, affine=ORIENTATIONS["LPS"])[0]
    p1, p2 = seg.predict_proba(query), seg.predict_proba(query)
    assert p1.array.dtype == np.float32 and p1.shape == query.shape
    assert np.array_equal(p1.array, p2.array)  # seeded
    assert np.ptp(p1.array) > 0  # a real map, not a constant
    mask = seg.predict(query)
    assert mask.label and mask.array.dtype == np.uint8
    assert np.array_equal(mask.array, (p1.array > seg.threshold).astype(np.uint8))  # predict = thresholded proba


def test_seed_changes_random_support():
    support = _support()
    kwargs = dict(model=tiny_universeg(), slice_size=32, support_size=2, progress=False, strategy="random")
    a = Segmenter(seed=0, **kwargs).fit([support[0]], [support[1]]).predict_proba(support[0])
    b = Segmenter(seed=1, **kwargs).fit([support[0]], [support[1]]).predict_proba(support[0])
    assert not np.array_equal(a.array, b.array)


@UNREGISTERED
def test_multiclass_gives_one_map_per_label_value():
    image, label = blob_volume(seed=1)
    label = label * 2
    label[:, :, :3][label[:, :, :3] > 0] = 5
    affine = ORIENTATIONS["RAS"]
    seg = Segmenter(model=tiny_universeg(), slice_size=32, support_size=3, progress=False)
    seg.fit([Volume(image, affine)], [Volume(label, affine, label=True)])
    assert seg.classes == (2, 5)
    probs = seg.predict_proba(Volume(image, affine))
    assert set(probs) == {2, 5} and all(p.shape == image.shape for p in probs.values())
    assert set(np.unique(seg.predict(Volume(image, affine)).array)) <= {0, 2, 5}


def test_partially_labelled_support_uses_only_those_slices():
    support = _support()
    seg = Segmenter(model=tiny_universeg(), slice_size=32, progress=False)
    seg.fit([support[0]], [support[1]], slices=[[4, 6, 7]])
    pool = seg.pools[2]
    assert len(pool) == 3 and torch.allclose(pool.positions * (support[0].shape[2] - 1), torch.tensor([4.0, 6, 7]))
    with pytest.raises(VolumeError, match="axial"):
        Segmenter(model=tiny_universeg(), slice_size=32, axis="all").fit([support[0]], [support[1]], slices=[[1]])


def test_fit_rejects_bad_support():
    image, label = _support()
    seg = Segmenter(model=tiny_universeg(), slice_size=32, progress=False)
    with pytest.raises(VolumeError, match="empty"):
        seg.fit([image], [label.with_array(np.zeros(label.shape, np.uint8))])
    with pytest.raises(VolumeError, match="grids differ"):
        seg.fit([image], [Volume(label.array, ORIENTATIONS["LPS"], label=True)])
    with pytest.raises(VolumeError, match="support images"):
        seg.fit([image, image], [label])
    with pytest.raises(RuntimeError, match="fit"):
        Segmenter(model=tiny_universeg(), slice_size=32).predict(image)


def test_batched_backend_equals_plain_network_slice_by_slice():
    """The fast path (many queries per call, shared support) equals official one-query-per-call usage."""
    model = tiny_universeg(seed=4)
    support = _support()
    seg = Segmenter(model=model, slice_size=32, support_size=5, progress=False, strategy="random", group_size=64)
    seg.fit([support[0]], [support[1]])
    backend: UniverSegBackend = seg.backend
    query = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    geometry = make_geometry((32, 32, 6), (1, 1, 1), "axial", 32)
    fast = backend.predict_slices(seg.fitted, query, geometry, torch.Generator().manual_seed(9))
    pool = seg.pools[2]
    idx = backend.draw_support(seg.fitted, geometry, 0, 0, torch.Generator().manual_seed(9))  # the one group
    sup_img, sup_lab = minmax_per_slice(pool.images[idx]), pool.labels[idx]
    with torch.no_grad():
        plain = torch.cat([torch.sigmoid(model(minmax_per_slice(q[None]), sup_img[None], sup_lab[None]))
                           for q in query])
    assert torch.allclose(fast, plain, atol=1e-5)


def test_the_0_3_backend_call_forms_still_work_with_a_warning():
    support = _support()
    seg = Segmenter(model=tiny_universeg(seed=4), slice_size=32, support_size=5, progress=False, strategy="random")
    seg.fit([support[0]], [support[1]])
    backend: UniverSegBackend = seg.backend
    query = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    geometry = make_geometry((32, 32, 6), (1, 1, 1), "axial", 32)
    new = backend.predict_slices(seg.fitted, query, geometry, torch.Generator().manual_seed(9))
    with pytest.warns(DeprecationWarning, match="backend.condition"):
        backend.fit(dict(seg.pools), torch.Generator())
    with pytest.warns(DeprecationWarning, match=r"predict_slices\(fitted"):
        old = backend.predict_slices(query, geometry, torch.Generator().manual_seed(9))
    assert torch.equal(old, new) and backend.bytes_per_slab(seg.fitted) > 0


def test_bad_options_are_clear():
    with pytest.raises(ValueError, match="unknown backend"):
        Segmenter(backend="nnunet")
    with pytest.raises(ValueError, match="unexpected keyword argument 'tune_stpes'"):
        Segmenter(model=tiny_universeg(), tune_stpes=3)
    with pytest.raises(ValueError, match="unknown axis"):
        Segmenter(model=tiny_universeg(), axis="oblique")
    with pytest.raises(ValueError, match="context"):
        Segmenter(model=tiny_universeg(), context=2)
    with pytest.raises(ValueError, match="divisible by 8"):
        Segmenter(model=tiny_universeg(), slice_size=30)


@UNREGISTERED
def test_support_extent_comes_only_from_labelled_slices():
    """Unlabelled slices of a partially labelled volume must not leak into the prediction."""
    image, label = _support()
    z = np.nonzero(label.array.any(axis=(0, 1)))[0]
    labelled = [int(z[len(z) // 2])]
    seg = Segmenter(model=tiny_universeg(), slice_size=32, progress=False, postprocess=("support_extent",))
    seg.fit([image], [label], slices=[labelled])
    depth = image.shape[2] - 1
    assert foreground_extent(seg.support.labels, seg.support.slices) == (labelled[0] / depth, labelled[0] / depth)
    pred = seg.predict(image).array
    outside = [k for k in range(image.shape[2]) if abs(k / depth - labelled[0] / depth) > 0.05 + 1e-9]
    assert pred[..., outside].sum() == 0


def test_complete_keeps_drawn_slices_and_the_drawn_extent():
    image, label = _support(affine=ORIENTATIONS["LPS"])
    canonical_label = label.canonical()
    z = np.nonzero(canonical_label.array.any(axis=(0, 1)))[0]
    drawn = [int(z[1]), int(z[len(z) // 2]), int(z[-2])]
    seg = Segmenter(model=tiny_universeg(), slice_size=32, progress=False)
    out = seg.complete(image, label, drawn)
    assert out.shape == image.shape and np.allclose(out.affine, image.affine)  # the caller's layout
    result = out.canonical().array
    for k in drawn:
        assert np.array_equal(result[..., k], canonical_label.array[..., k])
    outside = [k for k in range(result.shape[2]) if k < drawn[0] or k > drawn[-1]]
    assert result[..., outside].sum() == 0
    with pytest.raises(VolumeError, match="axial indices"):
        seg.complete(image, label, [image.shape[2] + 5])


def test_classes_come_only_from_labelled_slices():
    image, label = _support()
    array = label.array.copy()
    array[..., 0] = 7  # a structure on a slice nobody says was labelled
    z = np.nonzero(label.array.any(axis=(0, 1)))[0]
    seg = Segmenter(model=tiny_universeg(), slice_size=32, progress=False)
    seg.fit([image], [label.with_array(array)], slices=[[int(z[len(z) // 2])]])
    assert seg.classes == (1,)


def test_checkpoint_can_record_its_default_support_size(tmp_path):
    from fewshotcx.models.weights import save_checkpoint

    model = tiny_universeg()
    path = save_checkpoint(model, tmp_path / "m.pt", model.config, {"slice_size": 32, "support_size": 5})
    assert Segmenter(weights=str(path)).backend.support_size == 5
    assert Segmenter(weights=str(path), support_size=3).backend.support_size == 3
    assert Segmenter(model=model, slice_size=32).backend.support_size == 16  # no metadata: the v1 default


@UNREGISTERED
def test_predictions_do_not_depend_on_chunking():
    """Support draws are seeded per group of slices, so the memory budget cannot change the result."""
    image, label = _support()
    probs = []
    for budget in (1, 1 << 40):  # one slab per call vs the whole volume in one call
        seg = Segmenter(model=tiny_universeg(), slice_size=32, support_size=3, group_size=4, ensemble=2,
                        memory_budget=budget, progress=False)
        probs.append(seg.fit([image], [label]).predict_proba(image).array)
    assert np.allclose(probs[0], probs[1], atol=1e-6)


def test_complete_counts_slices_in_the_files_own_order(tmp_path):
    """One slice convention for paths, Volumes and the CLI: the third array axis as stored. A file
    stored LPS superior-first (file slice k = canonical Z-1-k) drawn on file slices 2, 5, 8: the
    result keeps exactly those file slices and nothing outside them (it took canonical indices)."""
    import nibabel as nib

    image, label = _support(affine=ORIENTATIONS["RAS"])
    depth = image.shape[2]
    lps = np.diag([-0.8, -1.1, -2.5, 1.0])  # L, P, and superior-first
    stored_img, stored_lab = image.array[::-1, ::-1, ::-1].copy(), label.array[::-1, ::-1, ::-1].copy()
    z = np.nonzero(stored_lab.any(axis=(0, 1)))[0]
    drawn = [int(z[1]), int(z[len(z) // 2]), int(z[-2])]
    paths = {}
    for name, array in {"img": stored_img, "lab": stored_lab}.items():
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, lps), str(paths[name]))
    seg = Segmenter(model=tiny_universeg(), slice_size=32, progress=False)
    out = seg.complete(paths["img"], paths["lab"], drawn)
    assert np.allclose(out.affine, lps) and out.shape == stored_img.shape  # the file's layout
    for k in drawn:
        assert np.array_equal(out.array[..., k], stored_lab[..., k])
    outside = [k for k in range(depth) if k < drawn[0] or k > drawn[-1]]
    assert out.array[..., outside].sum() == 0
    as_volume = seg.complete(load_volume(paths["img"], canonical=False), paths["lab"], drawn)
    np.testing.assert_array_equal(as_volume.array, out.array)
