"""Benchmarks of nonlocal_zoo against the PyTorch reference, side by side on one machine.

Everything is measured in one run, with the same input, the same number of threads (TensorFlow intra-op threads =
`torch.set_num_threads`), warm-up calls first, then repeated timings whose medians are reported. Variants that are
compared with each other are timed interleaved (one call of each in turn, repeated), so that a load change on a
shared machine hits all of them alike; the tables report ratios measured that way.

Sections (`--sections`, default all):

- `machine`: CPU model, cores, RAM, library versions.
- `matmul`: the machine's dense float32/bfloat16 matmul peak (GFLOP/s), TensorFlow and PyTorch.
- `block`: `NonLocalBlock` forward and forward+backward at the res3/res4 shapes of 8x8 (= 32x2) and 32x4 clips
  against pytorchvideo's `NonLocal`; eager, `tf.function` and XLA; peak memory of each in a fresh process.
- `chunking`: `chunk_size="auto"` against the unchunked block at long-clip shapes (up to the 629 MB affinity of 32
  frames without temporal downsampling): time ratio, max |difference|, affinity buffer and peak memory.
- `models`: I3D-NL5 R50 and C2D R50 forward, batch 1 and 8, 8x224x224 and 32x224x224, clips/s against the
  equivalent pytorchvideo `create_resnet` (+ `NonLocal`) model; eager, `tf.function`, XLA; float32 and bfloat16;
  achieved GFLOP/s from the analytic MAC count (`nonlocal_zoo.models.flops`) against the matmul peak.
- `precision`: bfloat16 inference through the task API (`VideoClassifier(dtype="bfloat16")`) against float32: the
  demo model on its held-out clips (top-1 agreement, score deviations) and a full-size I3D-NL5 R50 (random weights),
  predict-path speed-up (`nonlocal_zoo.benchmark.precision`).
- `pipeline`: the input pipeline in clips/s (`nonlocal_zoo.benchmark.pipeline`) against the models' consumption
  rate and plain OpenCV decoding.
- `backends`: the same block and a tiny backbone under KERAS_BACKEND=jax and =torch (one process each), time and
  max |difference| against TensorFlow.
- `families`: the float32 forward of one preset per family (official 8x8 / 32x2, PySlowFast, mmaction2, gluon-cv)
  at its protocol's input geometries, as `classify` runs it, in GFLOP/s and % of the sustained matmul peak measured
  interleaved with it (`nonlocal_zoo.benchmark.families`).
- `coldstart`: `nonlocal-zoo classify CLIP --model M` of one clip from fresh processes, split into phases (imports,
  model build, weight load, views, first and second forward pass) and timed end to end
  (`nonlocal_zoo.benchmark.coldstart`).
- `e2e`: `classify` of mmaction2's demo clip against mmaction2's `inference_recognizer` run in its own venv
  (`scripts/setup_mmaction2_venv.sh`), same checkpoint (mmaction2's own, converted), same views, float32 and
  bfloat16, with our time split into views, normalisation and forward (`nonlocal_zoo.benchmark.e2e`).

Peak memory is the growth of the resident set (Linux `VmHWM`, reset through `/proc/self/clear_refs`) of a fresh
process over its size before the measured calls; TensorFlow allocations are invisible to `tracemalloc`.

The package, one module per job: `config` (sections and sizes), `timing` (interleaved timings, threads, peak
memory, fresh processes), `machine`, `block`, `chunking`, `models`, `pipeline`, `backends` (the sections), `report`
(Markdown), `runner` (`run`, `run_and_report`) and `probe` (one measurement in a fresh process). The command line is
`nonlocal-zoo benchmark` (`nonlocal_zoo.cli`).

Example:
    $ nonlocal-zoo benchmark --quick --output /tmp/bench.md
    $ python -m benchmarks.run                      # the full run that writes benchmarks/RESULTS.md
"""
from nonlocal_zoo.benchmark.backends import backend_fixture, bench_backends, input_gradient, probe_backend
from nonlocal_zoo.benchmark.block import (
                                          bench_block,
                                          block_callables,
                                          make_block,
                                          measure_memory,
                                          probe_block_memory,
                                          random_block_weights,
                                          torch_block_callable,
                                          torch_block_like,
)
from nonlocal_zoo.benchmark.chunking import affinity_bytes, bench_chunking
from nonlocal_zoo.benchmark.coldstart import bench_coldstart, measure_coldstart, probe_coldstart
from nonlocal_zoo.benchmark.e2e import bench_e2e, find_mmaction2_python, find_video, render_e2e
from nonlocal_zoo.benchmark.families import FAMILIES, bench_families, family_geometries
from nonlocal_zoo.benchmark.config import (
                                          BLOCK_SHAPES,
                                          CHUNK_SHAPES,
                                          DEFAULT_OUTPUT,
                                          FULL,
                                          MODELS,
                                          QUICK,
                                          SECTIONS,
                                          TINY_ARCH,
)
from nonlocal_zoo.benchmark.machine import bench_matmul, machine_info, matmul_callables, matmul_rates
from nonlocal_zoo.benchmark.models import bench_models, keras_model, torch_model_like
from nonlocal_zoo.benchmark.pipeline import bench_pipeline, measure_pipeline, plain_opencv, write_clips
from nonlocal_zoo.benchmark.precision import bench_precision, randomize_weights
from nonlocal_zoo.benchmark.report import GENERATED_END, GENERATED_START, render_markdown, write_report
from nonlocal_zoo.benchmark.runner import run, run_and_report
from nonlocal_zoo.benchmark.timing import (
                                          configure_threads,
                                          import_pytorchvideo,
                                          import_torch,
                                          median,
                                          peak_memory,
                                          run_probes,
                                          time_interleaved,
)

__all__ = [
    "BLOCK_SHAPES", "CHUNK_SHAPES", "DEFAULT_OUTPUT", "FULL", "GENERATED_END", "GENERATED_START", "MODELS", "QUICK",
    "SECTIONS", "TINY_ARCH", "affinity_bytes", "backend_fixture", "bench_backends", "bench_block", "bench_chunking",
    "bench_coldstart", "bench_families", "bench_matmul", "FAMILIES", "family_geometries", "bench_models", "bench_pipeline", "bench_precision", "block_callables", "configure_threads", "import_pytorchvideo",
    "import_torch", "input_gradient", "keras_model", "machine_info", "make_block", "matmul_callables", "matmul_rates", "measure_memory",
    "measure_coldstart", "measure_pipeline", "median", "peak_memory", "plain_opencv", "probe_backend", "probe_block_memory", "probe_coldstart",
    "random_block_weights", "randomize_weights", "render_markdown", "run", "run_and_report", "run_probes", "time_interleaved",
    "torch_block_callable", "torch_block_like", "torch_model_like", "write_clips", "write_report",
]


def __getattr__(name):
    if name == "main":  # the command line moved to nonlocal_zoo.cli (benchmark sits below it)
        raise AttributeError("nonlocal_zoo.benchmark.main moved to the `nonlocal-zoo benchmark` command: "
                             "nonlocal_zoo.cli.main(['benchmark', ...]); the library entry is run_and_report")
    raise AttributeError(f"module 'nonlocal_zoo.benchmark' has no attribute {name!r}")
