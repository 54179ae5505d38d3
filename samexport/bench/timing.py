"""Wall-clock timing with warm-up: median, min and max of repeated calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from samexport.errors import InvalidInputError


@dataclass(frozen=True)
class Timing:
    """Latency of one stage over ``runs`` timed calls (after warm-up), in milliseconds.

    Attributes:
        median_ms, min_ms, max_ms: over the timed calls.
        runs: number of timed calls.
        items: work items per call (prompts in a batch); ``per_item_ms`` divides by it.
    """

    median_ms: float
    min_ms: float
    max_ms: float
    runs: int
    items: int = 1

    @property
    def per_item_ms(self) -> float:
        return self.median_ms / self.items

    @classmethod
    def from_samples(cls, seconds: list[float], items: int = 1) -> Timing:
        if not seconds:
            raise ValueError("no timing samples")
        ordered = sorted(s * 1e3 for s in seconds)
        mid = len(ordered) // 2
        median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        return cls(median, ordered[0], ordered[-1], len(ordered), items)

    def to_dict(self) -> dict:
        out = {
            "median_ms": round(self.median_ms, 3),
            "min_ms": round(self.min_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "runs": self.runs,
        }
        if self.items != 1:
            out |= {"items": self.items, "per_item_ms": round(self.per_item_ms, 3)}
        return out

    def __str__(self) -> str:
        return f"{self.median_ms:.1f} ms ({self.min_ms:.1f}-{self.max_ms:.1f}, n={self.runs})"


def measure(fn: Callable[[], object], *, runs: int, warmup: int = 1, items: int = 1) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed with ``perf_counter``."""
    if runs < 1:
        raise InvalidInputError(f"runs must be at least 1; got {runs}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return Timing.from_samples(samples, items)
