"""Prompt requests collected for a short window and decoded together.

Requests arrive one prompt each. :class:`PromptBatcher` queues them (a bounded queue: a full one
refuses with :class:`Overloaded`), and one worker thread takes the first waiting request, waits up
to ``window_s`` for more, groups what it has by image and prompt shape, and hands each group to
``decode`` as one batch. With ``adaptive`` (the default) the window is only an upper bound: the
batch closes as soon as nothing is queued and no prompt is on its way (requests announce
themselves with :meth:`PromptBatcher.arriving` while they are parsed and looked up), so a lone
client never waits for company that is not coming, while prompts that queue up during a decode
go together into the next call. Each group is one decoder call for all the prompts on one image, with one shared
no-mask input (see ``SamPredictor.predict_batch``). Prompts of different shapes (number of points,
box or not, mask input or not, one mask or three) are not padded into one call: padding points
would change the decoder's attention and so the masks.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from samexport.errors import SamExportError


class Overloaded(SamExportError):
    """The queue is full or the service is shutting down: try again later (HTTP 503)."""


@dataclass
class PromptJob:
    """One queued prompt.

    Attributes:
        group: jobs with equal ``group`` may be decoded in one call (same image, same shapes).
        payload: what ``decode`` needs for this prompt.
        future: resolved with ``decode``'s result for this prompt, or its exception.
        queued_at: ``time.perf_counter()`` when it was queued.
    """

    group: Hashable
    payload: Any
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)
    batch_size: int = 0
    started_at: float = 0.0


_STOP = object()
_NUDGE = object()  # wakes the worker when an announced prompt went away without being queued


class PromptBatcher:
    """A bounded queue of prompt jobs and the worker thread that decodes them in batches.

    Args:
        decode: ``jobs -> results``, one result per job, for jobs of one group (called from the
            worker thread only).
        window_s: how long the worker waits after the first job for others to join its batch.
        max_batch: most jobs per ``decode`` call (1: every prompt decoded alone).
        max_pending: most jobs queued or being decoded; more are refused with :class:`Overloaded`.
        adaptive: stop waiting before the window ends once no job is queued or announced
            (:meth:`arriving`); False waits the whole window whenever the batch is not full.
    """

    def __init__(
        self, decode: Callable[[Sequence[PromptJob]], Sequence[Any]], *, window_s: float, max_batch: int,
        max_pending: int, adaptive: bool = True,
    ) -> None:
        if window_s < 0 or max_batch < 1 or max_pending < 1:
            raise ValueError("window_s must be >= 0, max_batch and max_pending >= 1")
        self._decode = decode
        self.window_s, self.max_batch, self.max_pending = float(window_s), int(max_batch), int(max_pending)
        self.adaptive = bool(adaptive)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._arriving = 0
        self._closed = False
        self.calls = 0  # decode calls made
        self.jobs = 0  # jobs decoded
        self._worker = threading.Thread(target=self._run, name="samexport-serve-decoder", daemon=True)
        self._worker.start()

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, group: Hashable, payload: Any) -> PromptJob:
        """Queue one prompt; its ``future`` gives the result.

        Raises:
            Overloaded: ``max_pending`` jobs are already waiting, or :meth:`close` was called.
        """
        job = PromptJob(group, payload)
        with self._lock:
            if self._closed:
                raise Overloaded("the server is shutting down")
            if self._pending >= self.max_pending:
                raise Overloaded(f"too many prompt requests waiting ({self._pending}); try again shortly")
            self._pending += 1
        self._queue.put(job)
        return job

    @contextlib.contextmanager
    def arriving(self):
        """Announce a prompt that is on its way (being checked, its image looked up) for the
        time of the ``with`` block, in which it is :meth:`submit`-ted or dropped: an adaptive
        worker keeps its batch open for it (up to the window)."""
        with self._lock:
            self._arriving += 1
        try:
            yield
        finally:
            with self._lock:
                self._arriving -= 1
                last = self._arriving == 0
            if last:
                self._queue.put(_NUDGE)  # a worker waiting for it re-checks at once

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish the queued ones, stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._worker.join(timeout)

    def _collect(self, first: PromptJob) -> tuple[list[PromptJob], bool]:
        """``first`` and the jobs that arrive within the window (at most ``max_batch``)."""
        jobs, stop = [first], False
        deadline = time.perf_counter() + self.window_s
        while len(jobs) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if self.adaptive and self._arriving == 0:
                remaining = 0.0  # take what is queued now, wait for nothing more
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                stop = True
                break
            if job is not _NUDGE:
                jobs.append(job)
        return jobs, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            if first is _NUDGE:
                continue
            jobs, stop = self._collect(first)
            groups: dict[Hashable, list[PromptJob]] = {}
            for job in jobs:
                groups.setdefault(job.group, []).append(job)
            for group in groups.values():
                self._decode_group(group)
        while True:  # after close(): anything queued before the stop marker is still answered
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP and job is not _NUDGE:
                self._decode_group([job])

    def _decode_group(self, group: list[PromptJob]) -> None:
        started = time.perf_counter()
        for job in group:
            job.batch_size, job.started_at = len(group), started
        try:
            results = self._decode(group)
            if len(results) != len(group):
                raise RuntimeError(f"decode returned {len(results)} results for {len(group)} prompts")
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            for job in group:
                job.future.set_exception(exc)
        else:
            for job, result in zip(group, results):
                job.future.set_result(result)
        finally:
            self.calls += 1
            self.jobs += len(group)
            with self._lock:
                self._pending -= len(group)
