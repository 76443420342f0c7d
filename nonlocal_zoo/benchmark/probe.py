"""One measurement in a fresh process: `python -m nonlocal_zoo.benchmark.probe SPEC_JSON` prints `PROBE <json>`.

Started by `nonlocal_zoo.benchmark.timing.run_probes` (peak memory of a block; a Keras backend other than
TensorFlow). Not a command for users.

Example:
    $ python -m nonlocal_zoo.benchmark.probe '{"kind": "block_memory", "impl": "tensorflow", "shape": [1, 2, 8, 8, 16], "train": false}'
"""
import json
import os
import sys

from nonlocal_zoo.benchmark.backends import probe_backend
from nonlocal_zoo.benchmark.block import probe_block_memory
from nonlocal_zoo.benchmark.timing import configure_threads


def run_probe(spec):
    """The result dict of one probe spec (`kind`: `"block_memory"` or `"backend"`)."""
    configure_threads(spec.get("threads") or os.cpu_count() or 1)
    if spec["kind"] == "block_memory":
        return probe_block_memory(spec)
    if spec["kind"] == "backend":
        return probe_backend(spec)
    raise ValueError(f"Unknown probe kind. Received: kind={spec['kind']!r}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m nonlocal_zoo.benchmark.probe SPEC_JSON")
    print("PROBE " + json.dumps(run_probe(json.loads(sys.argv[1]))), flush=True)
