"""The local executor: a job's batches in this process, or in ``workers`` spawned processes.

Worker processes never outlive the job's driver (this process):

- on Linux each asks the kernel to SIGKILL it when the driver dies (``prctl(PR_SET_PDEATHSIG)``),
  which covers SIGKILL and the OOM killer;
- everywhere, each checks between images that its parent is still the driver, and exits if not;
- a driver that stops on an exception, Ctrl-C or SIGTERM (see :func:`sigterm_as_interrupt`)
  terminates its workers before it returns.

And whatever a worker still does, it only *stages* parts: the driver commits them holding the
folder lock (:meth:`samexport.datasets.store.OutputFolder.commit`), so a worker that outlived its
driver can never add a row behind the back of a resumed run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from samexport.datasets.worker import ImageWorker, JobSpec

Commit = Callable[[str, "list[str | None]"], None]
"""What the driver does with a finished batch: ``commit(staged_part_path, errors)``."""

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_PROCESS_WORKER: ImageWorker | None = None
_DRIVER_PID: int | None = None


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies. ctypes rather than a
    package (e.g. python-prctl) because it is one documented call into libc."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no libc prctl (e.g. a static build): the pid check remains
        pass


def _stop_if_orphaned() -> None:
    """Exit at once when the driver is gone (this process was re-parented). Nothing is lost: the
    batch in hand was never committed, and the next run deletes its staged file."""
    if os.getppid() != _DRIVER_PID:
        os._exit(1)


def _init_process(spec: JobSpec, driver_pid: int) -> None:
    global _PROCESS_WORKER, _DRIVER_PID
    _DRIVER_PID = driver_pid
    _die_with_parent()
    _stop_if_orphaned()  # the driver may have died before the prctl took effect
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the driver decides
    _PROCESS_WORKER = ImageWorker(spec)


def _process_batch(folder: str, keys: list[str]) -> tuple[str, list[str | None]]:
    return _PROCESS_WORKER.write_batch(folder, keys, check=_stop_if_orphaned)


def _batches(keys: Sequence[str], size: int) -> list[list[str]]:
    return [list(keys[i : i + size]) for i in range(0, len(keys), size)]


def _terminate_workers(pool) -> None:
    """Terminate a ``ProcessPoolExecutor``'s processes now (their batches are not committed).

    ``terminate_workers`` exists from Python 3.14; before it, the pool's ``_processes`` mapping
    is the only handle on them (``multiprocessing.active_children`` would include processes that
    are not the pool's).
    """
    if hasattr(pool, "terminate_workers"):
        pool.terminate_workers()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()


def run_local(
    spec: JobSpec, folder: Path, todo: Sequence[str], *, workers: int, batch_size: int, commit: Commit,
) -> None:
    """Process ``todo`` in batches here (``workers=1``) or in ``workers`` spawned processes;
    ``commit`` is called here, in the driver, for every finished batch."""
    batches = _batches(todo, batch_size)
    if not batches:
        return
    if workers == 1:
        worker = ImageWorker(spec)
        for keys in batches:
            commit(*worker.write_batch(folder, keys))
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")  # no fork of ONNX Runtime's threads
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_process, initargs=(spec, os.getpid()))
    try:
        queue, pending = list(reversed(batches)), set()
        while queue or pending:
            # two batches per worker in flight: a stop loses little and memory stays flat
            while queue and len(pending) < 2 * workers:
                pending.add(pool.submit(_process_batch, str(folder), queue.pop()))
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                commit(*future.result())
    except BaseException:
        _terminate_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (``timeout``, ``docker stop``, a scheduler) stops the job like
    Ctrl-C: a ``KeyboardInterrupt`` that terminates the workers and releases the lock. After the
    cleanup the process dies of SIGTERM as its sender expects.

    Only in the main thread and only while SIGTERM has its default action (a program that handles
    SIGTERM itself keeps its handler).
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    received: list[int] = []

    def interrupt(signum, frame) -> None:
        if not received:  # a second SIGTERM during the cleanup is not a second interrupt
            received.append(signum)
            raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if received:
            os.kill(os.getpid(), signal.SIGTERM)
