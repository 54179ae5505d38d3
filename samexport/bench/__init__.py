"""Latency benchmarks: per pipeline stage and backend, with the official recipe as a peer baseline.

``run_benchmark(BenchConfig(...))`` returns a JSON-ready dict; ``report.to_markdown`` and
``report.plot`` turn it into a table and a PNG. ``samexport bench`` is the command-line front end.
"""

from samexport.bench.run import BACKEND_KINDS, BenchConfig, run_benchmark
from samexport.bench.timing import Timing, measure

__all__ = ["BACKEND_KINDS", "BenchConfig", "Timing", "measure", "run_benchmark"]
