"""One registration per (support volume, query): shared by every draw of predict_uncertainty, by
predict_proba then predict, and remembered when it fails; ``fraction=`` bags registered support too;
draws of hybrid backends never touch the fitted value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_strategies import AFFINE, _head, _segmenter, tiny_universeg
from fewshotcx import Segmenter, Volume
from fewshotcx.registration import RegistrationCache


def test_uncertainty_draws_and_predictions_register_each_support_volume_once(registrations):
    (a, la), (b, lb), (query, _) = _head(0), _head(3, shift=(1.0, 0.0, 0.0)), _head(1)
    seg = _segmenter("registered").fit([a, b], [la, lb])
    seg.predict_uncertainty(query, draws=4)
    assert len(registrations) == 2  # not 2 x 4 draws
    seg.predict_proba(query)
    seg.predict(query)
    assert len(registrations) == 2
    seg.predict(Volume(query.array[..., 2:], AFFINE))  # another query registers again
    assert len(registrations) == 4


def test_a_failed_registration_is_tried_once_per_query(registrations):
    image, label = _head(0)
    blank = image.with_array(np.zeros(image.shape, np.float32))
    query, _ = _head(1)
    seg = _segmenter("auto").fit([blank], [label])
    with pytest.warns(UserWarning, match="support volume 1"):
        seg.predict_uncertainty(query, draws=3)
    assert len(registrations) == 1


def test_fraction_bags_registered_support_and_leaves_the_segmenter_as_it_was():
    image, label = _head(0)
    query, _ = _head(1)
    seg = _segmenter("registered").fit([image], [label])
    fitted = seg.fitted
    before = seg.predict_proba(query).array
    whole = seg.predict_uncertainty(query, draws=3, fraction=1.0).array
    bagged = seg.predict_uncertainty(query, draws=3, fraction=0.3).array
    assert not np.array_equal(whole, bagged)  # fraction= reaches the registered pools
    np.testing.assert_array_equal(seg.predict_proba(query).array, before)
    assert seg.fitted is fitted


def test_a_query_value_draws_a_fraction_of_each_query_pool():
    image, label = _head(0)
    query, _ = _head(1)
    seg = _segmenter("registered").fit([image], [label])
    normalised = torch.as_tensor(query.array / query.array.max(), dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    whole = len(seg.backend.for_query(seg.fitted, query, normalised, gen).pools[2])
    half = seg.backend.for_query(seg.fitted, query, normalised, gen, fraction=0.5)
    assert len(half.pools[2]) == int(np.ceil(0.5 * whole)) and len(seg.pools[2]) != len(half.pools[2])
    with pytest.raises(ValueError, match="fraction"):
        seg.backend.for_query(seg.fitted, query, normalised, gen, fraction=0.0)


def test_hybrid_draws_leave_the_fitted_value():
    image, label = _head(0)
    query, _ = _head(1)
    seg = Segmenter(backend="universeg+atlas", model=tiny_universeg(), slice_size=32, support_size=3,
                    progress=False, device="cpu").fit([image], [label])
    fitted, pools = seg.fitted, dict(seg.pools)
    seg.predict_samples(query, draws=2)
    assert seg.fitted is fitted and all(seg.pools[axis] is pool for axis, pool in pools.items())


def test_registration_cache_is_bounded_and_remembers_failures():
    from fewshotcx.registration import RegistrationError

    cache = RegistrationCache(max_bytes=0)
    cache[("a",)] = RegistrationError("refused")
    assert isinstance(cache.get(("a",)), RegistrationError) and cache.nbytes == 0
