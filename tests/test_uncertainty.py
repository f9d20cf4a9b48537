"""Uncertainty from independent support draws, review scores, and ``predict --uncertainty``."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import ORIENTATIONS, UNREGISTERED
from fewshotcx import Segmenter, Volume
from fewshotcx import review as fx_review
from fewshotcx.backends.base import Fitted
from fewshotcx.cli.main import main
from fewshotcx.evaluation.uncertainty import binary_entropy, uncertainty_map


class PoolMeanBackend:
    """Predicts, for every query slab, the mean label of the support pool it was fitted on: its output
    depends only on which support slabs a draw contains."""

    name, slice_size, context, resize_mode = "poolmean", 16, 0, "stretch"
    device = torch.device("cpu")

    def condition(self, support, generator, pools={}, own_scan=False):
        return Fitted(support, pools, None, own_scan)

    def predict_slices(self, fitted, slabs, geometry, generator):
        mean = fitted.pools[geometry.axis].labels.mean(dim=0)  # (L, s, s)
        return mean.expand(slabs.shape[0], -1, -1, -1).clone()

    def bytes_per_slab(self, fitted=None):
        return 1 << 20


def planted(affine=ORIENTATIONS["LPS"]):
    """16×16×8 image and label: region A labelled on every slice, region B on half of them, C never."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(16, 16, 8)).astype(np.float32)
    label = np.zeros((16, 16, 8), dtype=np.uint8)
    label[:8] = 1
    label[8:, :8, ::2] = 1
    regions = {"A": np.zeros_like(label, bool), "B": np.zeros_like(label, bool)}
    regions["A"][:8] = True
    regions["B"][8:, :8] = True
    regions["C"] = ~(regions["A"] | regions["B"])
    return Volume(image, affine), Volume(label, affine, label=True), regions


def fitted():
    image, label, regions = planted()
    seg = Segmenter(backend=PoolMeanBackend(), modality="mr", progress=False).fit([image], [label])
    return seg, image, regions


def test_uncertainty_is_zero_where_draws_agree_and_positive_where_they_disagree():
    seg, image, regions = fitted()
    u = seg.predict_uncertainty(image, draws=6)
    assert u.same_grid(image) and u.array.dtype == np.float32 and u.array.min() >= 0
    assert np.all(u.array[regions["A"]] == 0) and np.all(u.array[regions["C"]] == 0)
    assert np.all(u.array[regions["B"]] > 0)
    std = seg.predict_uncertainty(image, draws=6, measure="std")
    assert np.all(std.array[regions["A"] | regions["C"]] == 0) and std.array[regions["B"]].max() > 0


def test_all_of_the_support_in_every_draw_gives_no_draw_disagreement():
    seg, image, regions = fitted()
    std = seg.predict_uncertainty(image, draws=4, measure="std", fraction=1.0)
    assert np.all(std.array == 0)


def test_samples_are_label_maps_that_differ_only_where_draws_disagree():
    seg, image, regions = fitted()
    samples = seg.predict_samples(image, draws=6)
    assert len(samples) == 6 and all(s.label and s.same_grid(image) for s in samples)
    stack = np.stack([s.array for s in samples])
    assert np.all(stack[:, regions["A"]] == 1) and np.all(stack[:, regions["C"]] == 0)
    assert len({s.array[regions["B"]].tobytes() for s in samples}) > 1
    with pytest.raises(ValueError, match="k"):
        seg.predict_samples(image, draws=0)


def test_uncertainty_map_measures():
    agree = [np.zeros((1, 2, 2, 1)), np.zeros((1, 2, 2, 1))]
    agree[0][0, 0] = agree[1][0, 0] = 1.0
    assert np.all(uncertainty_map(agree) == 0)
    disagree = [np.zeros((1, 1, 1, 1)), np.ones((1, 1, 1, 1))]
    assert uncertainty_map(disagree)[0, 0, 0] == pytest.approx(1.0)
    assert uncertainty_map(disagree, "std")[0, 0, 0] == pytest.approx(0.5)
    assert binary_entropy(np.array([0.0, 0.5, 1.0])).tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="measure"):
        uncertainty_map(agree, "variance")


def test_review_flags_the_slices_where_draws_disagree(tmp_path):
    seg, image, regions = fitted()
    rev = fx_review.review(seg, image, draws=6)
    # Region B exists on every slice, so every slice carries disagreement; expected Dice < 1 there.
    assert rev.scores.shape == (8,) and np.all(rev.scores > 0)
    certain = fx_review.slice_scores(np.ones((1, 4, 4, 2)), np.ones((4, 4, 2), np.uint8), (1,))
    assert np.all(certain == 0)
    half = np.full((1, 4, 4, 1), 0.5)
    assert fx_review.slice_scores(half, np.ones((4, 4, 1), np.uint8), (1,))[0] == pytest.approx(1 - 2 * 8 / 24)
    assert set(rev.structures) == {1} and 0 < rev.structures[1]["expected_dice"] < 1
    assert rev.flagged == [z for z in np.argsort(-rev.scores, kind="stable") if rev.scores[z] > 0.3]
    png = fx_review.save_figure(rev, tmp_path / "review.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    png.write_bytes(b"a user's picture")  # replaced only with overwrite (it was silent)
    with pytest.raises(FileExistsError, match="review.png exists"):
        fx_review.save_figure(rev, png)
    assert png.read_bytes() == b"a user's picture"
    assert fx_review.save_figure(rev, png, overwrite=True).read_bytes()[:4] == b"\x89PNG"


@UNREGISTERED
def test_cli_writes_uncertainty_on_the_query_grid(tmp_path, capsys):
    image, label, _ = planted()
    affine = ORIENTATIONS["PIR"]
    paths = {}
    for name, (array, dtype) in {"img": (image.array, np.float32), "lab": (label.array, np.uint8),
                                 "query": (image.array[::-1].copy(), np.float32)}.items():
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array.astype(dtype), affine), str(paths[name]))
    out, unc = tmp_path / "pred.nii.gz", tmp_path / "unc.nii.gz"
    args = ["predict", "--image", str(paths["query"]), "--support", f"{paths['img']}:{paths['lab']}",
            "--out", str(out), "--uncertainty", str(unc), "--draws", "2", "--device", "cpu"]
    assert main(args) == 0
    written, query = nib.load(str(unc)), nib.load(str(paths["query"]))
    assert written.shape == query.shape and np.allclose(written.affine, query.affine)
    assert np.asarray(written.dataobj).min() >= 0
    unc.write_bytes(b"precious")
    assert main(args + ["--out", str(tmp_path / "other.nii.gz")]) == 2
    assert unc.read_bytes() == b"precious" and not (tmp_path / "other.nii.gz").exists()
    assert "--overwrite" in capsys.readouterr().err
