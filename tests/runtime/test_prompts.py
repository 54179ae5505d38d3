"""Prompts and sizes that are likely mistakes (issue 25, items 10 and 14): a box with its
corners swapped or points outside the image run as the official predictor runs them, with one
clear warning; an ``original_size`` no image has is refused before ``predict`` allocates it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from support.official import predictor_pair

import samexport
from samexport.errors import InvalidInputError, PromptWarning
from samexport.testing import make_image, mask_iou


@pytest.fixture(scope="module")
def pair(tiny_artifact, tiny_official):
    return predictor_pair(tiny_artifact, tiny_official)


def _predict_with_warnings(predictor, calls: int, **prompt) -> tuple[tuple, list[warnings.WarningMessage]]:
    """``predictor.predict(**prompt)`` ``calls`` times from one line, under Python's default filter."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(calls):
            result = predictor.predict(**prompt)
    return result, [w for w in caught if issubclass(w.category, PromptWarning)]


@pytest.mark.parametrize("prompt, says", [
    (dict(box=np.array([300, 250, 40, 30])), "a box has x2 < x1 or y2 < y1"),
    (dict(box=np.array([40, 250, 300, 30])), "a box has x2 < x1 or y2 < y1"),
    (dict(point_coords=np.array([[-20, 100], [100, 120]]), point_labels=np.array([1, 0])), "outside the image"),
    (dict(point_coords=np.array([[100, 120]]), point_labels=np.array([1]), box=np.array([40, 30, 600, 250])),
     "outside the image"),
])
def test_a_likely_mistake_warns_once_and_runs_as_the_official(pair, prompt, says):
    ours, theirs = pair
    (masks, scores, low_res), caught = _predict_with_warnings(ours, 3, **prompt)
    assert len(caught) == 1 and says in str(caught[0].message)
    assert caught[0].filename == __file__  # it names the caller's line, not samexport's
    official = theirs.predict(**prompt)
    np.testing.assert_allclose(scores, official[1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(low_res, official[2], rtol=0, atol=5e-5)
    assert min(mask_iou(a, b) for a, b in zip(masks, official[0])) >= 0.999


def test_ordinary_prompts_do_not_warn(pair):
    ours, _ = pair
    height, width = ours.original_size
    _, caught = _predict_with_warnings(
        ours, 1, point_coords=np.array([[0, 0], [width, height]]), point_labels=np.array([1, -1]),
        box=np.array([0, 0, width, height]),
    )
    assert caught == []
    _, caught = _predict_with_warnings(ours, 1, point_coords=np.array([[-5, -5]]), point_labels=np.array([-1]))
    assert caught == []  # a padding point is ignored by the decoder, wherever it is


@pytest.mark.parametrize("size", [(10**6, 10**6), (16385, 16384), (1, 2**28 + 1)])
def test_sizes_over_the_pixel_limit_are_refused(pair, size):
    ours, _ = pair
    embedding = ours.embedding
    with pytest.raises(InvalidInputError, match=r"original_size .* over samexport's limit of 268 MP"):
        ours.set_embedding(embedding, size)
    with pytest.raises(InvalidInputError, match="over samexport's limit"):
        ours.original_size = size  # the official attribute, assigned when restoring a cache
    assert ours.original_size == (300, 450)  # the image set before is kept


def test_the_largest_allowed_size_is_accepted(tiny_artifact):
    predictor = samexport.SamPredictor(tiny_artifact)
    predictor.set_image(make_image(64, 64, seed=1))
    predictor.set_embedding(predictor.embedding, (16384, 16384))
    assert predictor.original_size == (16384, 16384) and predictor.input_size == (1024, 1024)
