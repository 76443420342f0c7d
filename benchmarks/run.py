"""Run the nonlocal_zoo benchmarks: `python -m benchmarks.run [--quick] [--output PATH] [--sections ...]`.

A thin wrapper around `nonlocal-zoo benchmark` (`nonlocal_zoo.cli`; the harness is `nonlocal_zoo.benchmark`). Without
`--quick` it writes benchmarks/RESULTS.md; `--quick` (CI, `make bench`) writes to a temporary file unless `--output`
is given.
"""
import sys

from nonlocal_zoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
