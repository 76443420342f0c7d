"""Run the nonlocal_zoo benchmarks: `python -m benchmarks.run [--quick] [--output PATH] [--sections ...]`.

A thin wrapper around `nonlocal_zoo.benchmark.main` (also the `nonlocal-zoo benchmark` command). Without `--quick`
it writes benchmarks/RESULTS.md; `--quick` (CI, `make bench`) writes to a temporary file unless `--output` is given.
"""
import sys

from nonlocal_zoo.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
