"""The prompt batcher's window, with a decode function that records its batches (no model):
adaptive (the default) closes a batch as soon as nothing is queued or announced, waits for an
announced prompt, stops waiting when that prompt is dropped, and puts the prompts that queue up
during a decode into the next call; fixed waits the whole window."""

from __future__ import annotations

import threading
import time

import pytest

from samexport.serve.batcher import Overloaded, PromptBatcher


class Recorder:
    """``decode`` for the batcher: records each batch's payloads; can be held on an event."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.batches: list[list] = []
        self.hold = hold
        self.entered = threading.Event()

    def __call__(self, jobs):
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(30)
        self.batches.append([job.payload for job in jobs])
        return [job.payload * 10 for job in jobs]


@pytest.fixture
def batcher_factory():
    made = []

    def make(decode, **options):
        batcher = PromptBatcher(decode, **{"window_s": 5.0, "max_batch": 32, "max_pending": 64, **options})
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close(30)


def test_adaptive_a_lone_prompt_does_not_wait_for_the_window(batcher_factory):
    decode = Recorder()
    batcher = batcher_factory(decode)  # a 5 s window
    start = time.perf_counter()
    assert batcher.submit("image", 1).future.result(30) == 10
    assert time.perf_counter() - start < 2.5 and decode.batches == [[1]]


def test_fixed_waits_the_whole_window(batcher_factory):
    decode = Recorder()
    batcher = batcher_factory(decode, window_s=0.6, adaptive=False)
    start = time.perf_counter()
    assert batcher.submit("image", 1).future.result(30) == 10
    assert time.perf_counter() - start >= 0.55 and decode.batches == [[1]]


def test_adaptive_waits_for_an_announced_prompt(batcher_factory):
    decode = Recorder()
    batcher = batcher_factory(decode)
    announced, submit = threading.Event(), threading.Event()

    def late_request():
        with batcher.arriving():  # being parsed / looked up
            announced.set()
            submit.wait(30)
            batcher.submit("image", 2)

    thread = threading.Thread(target=late_request)
    thread.start()
    announced.wait(30)
    first = batcher.submit("image", 1)
    time.sleep(0.3)  # the worker holds the batch open for the announced prompt
    assert not first.future.done()
    submit.set()
    assert first.future.result(30) == 10
    thread.join(30)
    assert decode.batches == [[1, 2]]


def test_adaptive_stops_waiting_when_the_announced_prompt_is_dropped(batcher_factory):
    decode = Recorder()
    batcher = batcher_factory(decode)  # a 5 s window
    announced, drop = threading.Event(), threading.Event()

    def failing_request():
        with batcher.arriving():
            announced.set()
            drop.wait(30)  # e.g. its image id was unknown: never submitted

    thread = threading.Thread(target=failing_request)
    thread.start()
    announced.wait(30)
    first = batcher.submit("image", 1)
    time.sleep(0.2)
    start = time.perf_counter()
    drop.set()
    assert first.future.result(30) == 10
    assert time.perf_counter() - start < 2.5 and decode.batches == [[1]]
    thread.join(30)


def test_prompts_queued_during_a_decode_go_together_into_the_next(batcher_factory):
    release = threading.Event()
    decode = Recorder(hold=release)
    batcher = batcher_factory(decode)
    jobs = [batcher.submit("image", 1)]
    assert decode.entered.wait(30)  # the first call is running (held)
    jobs += [batcher.submit("image", n) for n in (2, 3, 4)]
    jobs.append(batcher.submit("other image", 5))
    release.set()
    assert [job.future.result(30) for job in jobs] == [10, 20, 30, 40, 50]
    assert decode.batches == [[1], [2, 3, 4], [5]]  # grouped by image
    assert batcher.calls == 3 and batcher.jobs == 5


def test_full_queue_and_closed_batcher_refuse(batcher_factory):
    release = threading.Event()
    decode = Recorder(hold=release)
    batcher = batcher_factory(decode, max_pending=2)
    jobs = [batcher.submit("image", 1), batcher.submit("image", 2)]
    with pytest.raises(Overloaded, match="try again"):
        batcher.submit("image", 3)
    release.set()
    batcher.close(30)
    assert [job.future.result(0) for job in jobs] == [10, 20]
    with pytest.raises(Overloaded, match="shutting down"):
        batcher.submit("image", 4)
