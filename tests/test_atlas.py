"""The multi-atlas backend through the Segmenter API, on a real brain (Colin27 + AAL at 4 mm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fewshotcx as fx
from conftest import cached_colin27
from fewshotcx.backends import create_backend
from fewshotcx.backends import atlas as atlas_module
from fewshotcx.registration import Quality, Registration, RegistrationError, onto_query


@pytest.fixture(scope="module")
def brain():
    case = cached_colin27(downsample=4.0)  # cache only (make test fetches it once)
    # two structures: left and right hemisphere (AAL odd / even values)
    aal = case.labels.array
    labels = np.where(aal > 0, 1 + (aal % 2 == 0), 0).astype(np.uint8)
    return case.image, case.labels.with_array(labels)


def test_identical_volumes_give_dice_one_for_every_fusion(brain):
    image, labels = brain
    for fusion in ("majority", "staple", "weighted"):
        seg = fx.Segmenter(backend="atlas", fusion=fusion, registration="rigid", device="cpu")
        pred = seg.fit([image], [labels]).predict(image)
        assert pred.same_grid(image)
        for value in (1, 2):
            assert fx.metrics.dice(pred.array == value, labels.array == value) > 0.995, fusion


def test_majority_of_three_identical_atlases_is_the_atlas(brain):
    image, labels = brain
    seg = fx.Segmenter(backend="atlas", fusion="majority", registration="rigid", device="cpu")
    seg.fit([image] * 3, [labels] * 3)
    probs = seg.predict_proba(image)
    atlases = seg.backend.registered_support(seg.fitted, image.canonical())
    one = atlases[0].labels.array
    for value, prob in probs.items():
        np.testing.assert_array_equal(prob.array, (one == value).astype(np.float32))


def test_registrations_are_cached_per_query(brain, monkeypatch):
    image, labels = brain
    calls = []
    real = onto_query.register
    monkeypatch.setattr(onto_query, "register", lambda *a, **k: calls.append(1) or real(*a, **k))
    seg = fx.Segmenter(backend="atlas", registration="rigid", device="cpu").fit([image], [labels])
    seg.predict_proba(image)
    seg.predict(image)
    assert len(calls) == 1


def test_weighted_fusion_prefers_the_atlas_that_looks_like_the_query(brain):
    image, labels = brain
    backend = create_backend("atlas", fusion="weighted", registration="rigid")
    wrong = labels.with_array(np.where(labels.array > 0, 3 - labels.array, 0).astype(np.uint8))  # hemispheres swapped
    # same anatomy, other contrast (gamma 2: survives percentile scaling): larger local differences
    scale = float(image.array.max())
    other = image.with_array(scale * (image.array / scale) ** 2)
    seg = fx.Segmenter(backend=backend, device="cpu", modality="mr").fit([image, other], [labels, wrong])
    pred = seg.predict(image)
    assert fx.metrics.dice(pred.array == 1, labels.array == 1) > 0.9


def test_blank_support_volume_is_named(brain):
    image, labels = brain
    blank = image.with_array(np.zeros(image.shape, np.float32))
    seg = fx.Segmenter(backend="atlas", registration="rigid", device="cpu").fit([image, blank], [labels, labels])
    with pytest.raises(RegistrationError, match="support volume 2.*blank"):
        seg.predict(image)
    skipping = fx.Segmenter(backend="atlas", registration="rigid", device="cpu", skip_failed=True)
    with pytest.warns(UserWarning, match="support volume 2"):
        pred = skipping.fit([image, blank], [labels, labels]).predict(image)
    assert fx.metrics.dice(pred.array == 2, labels.array == 2) > 0.995


def test_atlas_options_are_checked():
    with pytest.raises(ValueError, match="fusion must be one of"):
        create_backend("atlas", fusion="mean")
    with pytest.raises(ValueError, match="registration must be one of"):
        create_backend("atlas", registration="bspline")
    with pytest.raises(ValueError, match="does not take weights"):
        create_backend("atlas", weights="official")
    with pytest.raises(ValueError, match="does not take tune_steps"):
        create_backend("atlas", tune_steps=3)
    backend = create_backend("atlas", fusion="staple", device=torch.device("cpu"))
    assert backend.name == "atlas" and backend.fusion == "staple"


def test_cli_predict_with_the_atlas_backend(brain, tmp_path, capsys):
    from fewshotcx.cli.main import main

    image, labels = brain
    one = labels.with_array((labels.array == 1).astype(np.uint8))
    fx.save_volume(image, tmp_path / "ct.nii.gz")
    fx.save_volume(one, tmp_path / "lab.nii.gz")
    out = tmp_path / "pred.nii.gz"
    args = ["predict", "--image", str(tmp_path / "ct.nii.gz"), "--support", f"{tmp_path / 'ct.nii.gz'}:{tmp_path / 'lab.nii.gz'}",
            "--out", str(out), "--backend", "atlas", "--fusion", "weighted", "--registration", "rigid", "--device", "cpu"]
    assert main(args) == 0
    pred = fx.load_volume(out, label=True)
    assert fx.metrics.dice(pred.array == 1, one.array == 1) > 0.995
    blank = image.with_array(np.zeros(image.shape, np.float32))
    fx.save_volume(blank, tmp_path / "blank.nii.gz")
    args[4] = f"{tmp_path / 'blank.nii.gz'}:{tmp_path / 'lab.nii.gz'}"
    assert main([*args, "--overwrite"]) == 2
    assert "support volume 1" in capsys.readouterr().err


def test_the_registration_cache_stays_within_its_byte_budget_over_ten_queries(brain, monkeypatch):
    """A cohort worker segments patient after patient: the cache keeps the most recent entries only."""
    import SimpleITK as sitk

    image, labels = brain
    identity = Registration(sitk.Transform(3, sitk.sitkIdentity), "rigid", quality=Quality(1.0, 1.0, 1.0, 2.0, 1.0))
    calls = []
    monkeypatch.setattr(onto_query, "register", lambda *a, **k: calls.append(1) or identity)
    backend = create_backend("atlas", registration="rigid")
    seg = fx.Segmenter(backend=backend, device="cpu").fit([image], [labels])
    cache = seg.fitted.state  # the fitted value's registration memo
    seg.predict(image.with_array(image.array - 1))
    entry_bytes = cache.nbytes  # one registered support volume
    cache.max_bytes = 3 * entry_bytes
    calls.clear()
    for i in range(10):
        query = image.with_array(image.array + i)  # ten different patients on the same grid
        pred = seg.predict(query)
        assert fx.metrics.dice(pred.array == 1, labels.array == 1) > 0.995
        assert len(cache) <= 3 and cache.nbytes <= 3 * entry_bytes
    assert len(calls) == 10 and len(cache) == 3
    seg.predict(image.with_array(image.array + 9))  # the most recent query is still cached
    assert len(calls) == 10
    seg.predict(image.with_array(image.array + 0))  # the first one was evicted
    assert len(calls) == 11


def test_registration_cache_evicts_least_recently_used():
    cache = atlas_module.RegistrationCache(max_bytes=250)

    class Entry:
        nbytes = 100

    cache["a"], cache["b"] = Entry(), Entry()
    assert cache.get("a") is not None  # "a" becomes the most recent
    cache["c"] = Entry()
    assert list(cache) == ["a", "c"] and cache.nbytes == 200
    big = atlas_module.RegistrationCache(max_bytes=10)
    big["x"] = Entry()  # the newest entry is kept even when larger than the budget
    assert list(big) == ["x"]
