"""One predictor shared by threads: ``set_image`` racing ``predict`` never mixes two images.

Issue 12, item 8: with the image's embedding and its sizes kept as separate attributes, a
prediction that ran while another thread called ``set_image`` combined one image's embedding with
the other image's size (41 of 90 calls), or found no image at all. Each test below has one thread
switching images and others predicting, and checks that every prediction is wholly one image's.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from samexport.runtime.predictor import SamPredictor
from samexport.testing import make_image

# Two images of different sizes and aspect ratios, so a mixture shows in the mask shape.
SIZES = ((300, 400), (500, 180))


class SlowTaggedBackend:
    """Embeds an image as a constant that identifies it, and decodes that constant back as the
    score; sleeps inside both calls so that other threads run in the middle of them."""

    name = "slow-tagged"
    thread_safe = True

    def __init__(self, delay: float = 0.003) -> None:
        self.delay = delay

    def encode(self, image: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        tag = float(image[0, 0, 0, 0])  # normalised value of the top-left pixel: one per image
        return np.full((1, 256, 64, 64), tag, np.float32)

    def decode(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        tag = float(image_embeddings[0, 0, 0, 0])
        time.sleep(self.delay)
        batch = point_coords.shape[0]
        return np.full((batch, 4, 256, 256), 1.0, np.float32), np.full((batch, 4), tag, np.float32)


def _race(predictor: SamPredictor, images: list[np.ndarray], predict, calls: int, switches: int):
    """Thread 0 alternates ``set_image`` between ``images``; two threads call ``predict``.
    Returns (results, exceptions) of the predicting threads."""
    predictor.set_image(images[0])
    results, errors = [], []
    stop = threading.Event()

    def switcher():
        for i in range(switches):
            predictor.set_image(images[(i + 1) % len(images)])
        stop.set()

    def predicting():
        count = 0
        while count < calls and not (stop.is_set() and count >= calls // 4):
            try:
                results.append(predict())
            except Exception as exc:  # noqa: BLE001 - any failure is a finding
                errors.append(exc)
            count += 1

    threads = [threading.Thread(target=switcher)] + [threading.Thread(target=predicting) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results, errors


def test_set_image_racing_predict_never_mixes_images():
    predictor = SamPredictor(SlowTaggedBackend())
    images = [np.full((*size, 3), 40 + 150 * i, np.uint8) for i, size in enumerate(SIZES)]
    tags = {}
    for image in images:  # the tag each image's embedding carries
        predictor.set_image(image)
        tags[round(float(np.asarray(predictor.features)[0, 0, 0, 0]), 4)] = image.shape[:2]

    def predict():
        masks, scores, _ = predictor.predict(box=np.array([10, 10, 100, 100]), multimask_output=False)
        return masks.shape[1:], round(float(scores[0]), 4)

    results, errors = _race(predictor, images, predict, calls=60, switches=40)
    assert not errors, f"{len(errors)} predictions failed, e.g. {errors[0]!r}"
    assert len(results) >= 30
    mixed = [(shape, tag) for shape, tag in results if tags.get(tag) != shape]
    assert not mixed, f"{len(mixed)} of {len(results)} predictions mixed two images: {mixed[:3]}"
    assert {tag for _, tag in results} == set(tags), "the race never saw both images"


def test_state_is_one_snapshot():
    """Reading the image state once gives a consistent triple even while another thread sets
    images (what ``predict`` relies on)."""
    predictor = SamPredictor(SlowTaggedBackend(delay=0.0005))
    images = [np.full((*size, 3), 40 + 150 * i, np.uint8) for i, size in enumerate(SIZES)]
    expected = {}
    for image in images:
        predictor.set_image(image)
        state = predictor.image_state
        expected[round(float(state.embedding[0, 0, 0, 0]), 4)] = (state.original_size, state.input_size)

    def snapshot():
        state = predictor.image_state
        return round(float(state.embedding[0, 0, 0, 0]), 4), (state.original_size, state.input_size)

    results, errors = _race(predictor, images, snapshot, calls=400, switches=200)
    assert not errors
    assert all(expected[tag] == sizes for tag, sizes in results)


def test_onnxruntime_predictor_under_contention(tiny_artifact):
    """The real decoder: every concurrent prediction equals the single-threaded one for the
    image whose size it has."""
    predictor = SamPredictor(tiny_artifact)
    images = [make_image(*size, seed=i) for i, size in enumerate(SIZES)]
    prompt = dict(point_coords=np.array([[60.0, 90.0]]), point_labels=np.array([1]), multimask_output=False)
    reference = {}
    for image in images:
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(**prompt)
        reference[masks.shape[1:]] = (masks, scores)

    def predict():
        return predictor.predict(**prompt)[:2]

    results, errors = _race(predictor, images, predict, calls=16, switches=6)
    assert not errors, f"{errors[0]!r}"
    for masks, scores in results:
        ref_masks, ref_scores = reference[masks.shape[1:]]
        np.testing.assert_array_equal(scores, ref_scores)
        np.testing.assert_array_equal(masks, ref_masks)


def test_unsafe_backends_are_serialised():
    """A backend that is not known to be thread-safe is never entered by two threads at once,
    even from two predictors sharing it."""

    class Exclusive(SlowTaggedBackend):
        thread_safe = False

        def __init__(self):
            super().__init__(delay=0.002)
            self.inside = 0
            self.overlaps = 0

        def _enter(self):
            self.inside += 1
            if self.inside > 1:
                self.overlaps += 1

        def encode(self, image):
            self._enter()
            try:
                return super().encode(image)
            finally:
                self.inside -= 1

        def decode(self, *args):
            self._enter()
            try:
                return super().decode(*args)
            finally:
                self.inside -= 1

    backend = Exclusive()
    first, second = SamPredictor(backend), SamPredictor(backend)
    image = np.full((64, 64, 3), 9, np.uint8)
    first.set_image(image)
    second.set_image(image)

    def work(predictor):
        for _ in range(20):
            predictor.set_image(image)
            predictor.predict(box=np.array([1, 1, 30, 30]))

    threads = [threading.Thread(target=work, args=(p,)) for p in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert backend.overlaps == 0


@pytest.mark.parametrize("field", ["original_size", "input_size", "is_image_set"])
def test_field_by_field_restore_still_works(field):
    """Client code restoring a cached embedding sets the official attributes one by one."""
    predictor = SamPredictor(SlowTaggedBackend(delay=0))
    image = np.full((120, 200, 3), 77, np.uint8)
    predictor.set_image(image)
    cached = (predictor.embedding.copy(), predictor.original_size, predictor.input_size)
    reference = predictor.predict(box=np.array([5, 5, 50, 50]))
    predictor.reset_image()
    assert not predictor.is_image_set and predictor.features is None
    predictor.features = cached[0]
    predictor.original_size = cached[1]
    predictor.input_size = cached[2]
    predictor.is_image_set = True
    restored = predictor.predict(box=np.array([5, 5, 50, 50]))
    for a, b in zip(restored, reference):
        np.testing.assert_array_equal(a, b)
    # and one missing field is an error, not a wrong answer
    setattr(predictor, field, None if field != "is_image_set" else False)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(box=np.array([5, 5, 50, 50]))
