"""Input-pipeline throughput alone: `python -m benchmarks.data_pipeline [--full]` prints the measurements as JSON.

A thin wrapper around `nonlocal_zoo.benchmark.pipeline.measure_pipeline` (the `pipeline` section of
`nonlocal-zoo benchmark`).
"""
import json
import sys

from nonlocal_zoo.benchmark.pipeline import measure_pipeline

if __name__ == "__main__":
    unknown = [a for a in sys.argv[1:] if a != "--full"]
    if unknown:
        sys.exit(f"usage: python -m benchmarks.data_pipeline [--full]  (unknown arguments: {' '.join(unknown)})")
    print(json.dumps(measure_pipeline(quick="--full" not in sys.argv[1:]), indent=2))
