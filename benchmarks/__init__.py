"""Benchmark scripts of nonlocal_zoo (run from the repository root): `python -m benchmarks.run [--quick]`."""
