"""Benchmarks: each `bench_*.py` measures a figure an issue names, run by `python -m tests.perf`."""
