"""Benchmarks (being split into modules; see runner.py)."""
from nonlocal_zoo.benchmark.runner import *  # noqa: F401,F403
