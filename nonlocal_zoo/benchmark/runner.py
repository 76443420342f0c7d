"""Running the benchmark: the sections in order, the results dict, the report files.

Example:
    >>> results = run(quick=True, sections=("machine", "matmul"))
    >>> run_and_report(quick=True, output="/tmp/bench.md")
"""
import json
import os
import sys
import tempfile
import time

from nonlocal_zoo.benchmark.backends import bench_backends
from nonlocal_zoo.benchmark.block import bench_block
from nonlocal_zoo.benchmark.chunking import bench_chunking
from nonlocal_zoo.benchmark.coldstart import bench_coldstart
from nonlocal_zoo.benchmark.e2e import bench_e2e
from nonlocal_zoo.benchmark.families import bench_families
from nonlocal_zoo.benchmark.config import DEFAULT_OUTPUT, FULL, QUICK, SECTIONS
from nonlocal_zoo.benchmark.machine import bench_matmul, machine_info
from nonlocal_zoo.benchmark.models import bench_models
from nonlocal_zoo.benchmark.pipeline import bench_pipeline
from nonlocal_zoo.benchmark.precision import bench_precision
from nonlocal_zoo.benchmark.report import render_markdown, write_report
from nonlocal_zoo.benchmark.timing import configure_threads


def run(*, quick=False, sections=SECTIONS, threads=None, model_batches=None, model_frames=None, mmaction2_python=None,
        e2e_video=None, log=print):
    """Run the benchmark sections; returns the results dict (see `render_markdown`).

    Args:
        quick: tiny shapes (CI).
        sections: names from `SECTIONS`, run in that order.
        threads: intra-op threads of TensorFlow and PyTorch. Defaults to all cores.
        model_batches: batch sizes of the `models` section (default 1 and 8).
        model_frames: clip lengths of the `models` section (default 8 and 32).
        mmaction2_python: the Python of an mmaction2 venv for the `e2e` section (default:
            `$NONLOCAL_ZOO_MMACTION2_PYTHON`, else `/work/venvs/mmaction2/bin/python` when it exists).
        e2e_video: the video of the `e2e` section (default: `$NONLOCAL_ZOO_E2E_VIDEO`, else mmaction2's demo clip
            inside the mmaction2 venv).
        log: progress messages.
    """
    cfg = dict(QUICK if quick else FULL)
    cfg["quick"] = quick
    if model_batches:
        cfg["model_batches"] = tuple(model_batches)
    if model_frames and not quick:
        cfg["models"] = tuple(m for m in cfg["models"] if m[2] in model_frames)
    cfg["threads"] = configure_threads(threads or os.cpu_count() or 1)
    cfg["isolated_memory"] = not quick
    cfg["mmaction2_python"], cfg["e2e_video"] = mmaction2_python, e2e_video
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "The benchmark compares the TensorFlow backend with PyTorch and runs the other Keras backends in their own "
            f"processes; start it with KERAS_BACKEND=tensorflow. Received: KERAS_BACKEND={keras.backend.backend()!r}"
        )
    start = time.perf_counter()
    results = {"config": {"quick": quick, "threads": cfg["threads"], "sections": list(sections)}}
    for section in sections:
        t0 = time.perf_counter()
        results[section] = _run_section(section, cfg, results, log)
        log(f"[{section}: {time.perf_counter() - t0:.1f} s]")
    results["wall_s"] = time.perf_counter() - start
    return results


def _run_section(section, cfg, results, log):
    """The results of one section (`models` uses the `matmul` peak, `pipeline` the models' rates)."""
    if section == "machine":
        return machine_info()
    if section == "matmul":
        return bench_matmul(cfg)
    if section == "block":
        return bench_block(cfg, log)
    if section == "chunking":
        return bench_chunking(cfg, log)
    if section == "models":
        return bench_models(cfg, results.get("matmul") or bench_matmul(cfg), log)
    if section == "precision":
        return bench_precision(cfg, log)
    if section == "pipeline":
        return bench_pipeline(cfg, results.get("models"), log)
    if section == "backends":
        return bench_backends(cfg, log)
    if section == "coldstart":
        return bench_coldstart(cfg, log)
    if section == "e2e":
        return bench_e2e(cfg, log)
    if section == "families":
        return bench_families(cfg, log)
    raise ValueError(f"Unknown benchmark section. Expected one of {SECTIONS}. Received: section={section!r}")


def run_and_report(*, quick=False, sections=None, threads=None, model_batches=None, model_frames=None, output=None,
                   json_path=None, command="nonlocal-zoo benchmark", log=None):
    """Run the sections and write the Markdown report (and the raw results as JSON); returns the report's path.

    Args:
        quick, sections, threads, model_batches, model_frames: as `run` (`sections=None`: all).
        output: the Markdown report. Defaults to `benchmarks/RESULTS.md` for the full run and a temporary file in
            quick mode (so CI never overwrites the published results).
        json_path: also write the raw results there, or None.
        command: the command line recorded in the report.
        log: progress messages (default: stderr).

    Example:
        >>> run_and_report(quick=True, sections=["machine"], output="/tmp/bench.md")
        '/tmp/bench.md'
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"`threads` must be a positive integer. Received: threads={threads!r}")
    if log is None:
        def log(msg):
            print(msg, file=sys.stderr, flush=True)
    results = run(quick=quick, sections=tuple(sections or SECTIONS), threads=threads, model_batches=model_batches,
                  model_frames=model_frames, log=log)
    if output is None:
        output = os.path.join(tempfile.gettempdir(), "nonlocal_zoo_benchmark_quick.md") if quick else DEFAULT_OUTPUT
    write_report(output, render_markdown(results, command))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return output
