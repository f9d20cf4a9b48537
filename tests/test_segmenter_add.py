"""``Segmenter.add``: an accepted contour becomes support for the next patient (issue #31 item 4)."""

from __future__ import annotations

import numpy as np
import pytest

from test_strategies import AFFINE, _head, _segmenter
from fewshotcx import Volume, VolumeError


@pytest.mark.parametrize("strategy", ["position", "auto"])
def test_add_is_fit_on_the_grown_support(strategy):
    (a, la), (b, lb), (query, _) = _head(0), _head(3, shift=(1.0, 0.0, 0.0)), _head(1)
    grown = _segmenter(strategy).fit([a], [la]).add(b, lb)
    whole = _segmenter(strategy).fit([a, b], [la, lb])
    assert len(grown.support.images) == 2
    np.testing.assert_array_equal(grown.predict_proba(query).array, whole.predict_proba(query).array)


def test_add_before_any_fit_is_a_fit():
    (a, la), (query, _) = _head(0), _head(1)
    np.testing.assert_array_equal(_segmenter("position").add(a, la).predict_proba(query).array,
                                  _segmenter("position").fit([a], [la]).predict_proba(query).array)


def test_add_keeps_the_registrations_already_made(registrations):
    (a, la), (b, lb), (query, _) = _head(0), _head(3, shift=(1.0, 0.0, 0.0)), _head(1)
    seg = _segmenter("registered").fit([a], [la])
    seg.predict(query)
    seg.add(b, lb)
    seg.predict(query)
    assert len(registrations) == 2  # the first volume once, the added one once


def test_add_takes_the_labelled_slices_of_a_partial_contour_and_checks_its_grid():
    (a, la), (b, lb) = _head(0), _head(3)
    seg = _segmenter("position").fit([a], [la]).add(b, lb, slices=[10, 12])
    assert seg.support.slices[0] is None and len(seg.support.slices[1]) == 2
    with pytest.raises(VolumeError):
        seg.add(b, Volume(lb.array[..., :-1], AFFINE, label=True))
