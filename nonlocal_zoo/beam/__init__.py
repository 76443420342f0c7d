"""Classification and feature extraction at scale with Apache Beam (`pip install 'nonlocal_zoo[beam]'`).

The same two jobs as the single-machine commands, as one Beam pipeline that the DirectRunner, Dataflow, Flink and
Spark run unchanged: `classify` (one row per video: top-k labels and the aggregated scores of the preset's multi-view
protocol) and `features` (the per-video `.npz` files and `manifest.jsonl` of `nonlocal-zoo features`). Videos are
decoded and cut into views/windows by the single-machine code (`nonlocal_zoo.features`, the task preprocessor), the
model runs through `apache_beam.ml.inference.RunInference` (loaded once per worker process, batches spanning videos),
and a video that cannot be read goes to a dead-letter output instead of failing the pipeline.

This package imports Beam lazily: `require_beam()` is cheap to call and raises one clear `ImportError` naming the
extra; the pipeline names (`build_pipeline`, `run_pipeline`, `ZooModelHandler`, `read_videos`, ...) come from
`nonlocal_zoo.beam.pipeline` on first use.

Example:
    >>> from nonlocal_zoo.beam import run_pipeline
    >>> run_pipeline("classify", "videos/", "out/", model="demo",
    ...              options=["--runner", "DirectRunner", "--direct_num_workers", "2",
    ...                       "--direct_running_mode", "multi_processing"])
"""
import importlib

EXTRA = "beam"
INSTALL_HINT = "pip install 'nonlocal_zoo[beam]'"
RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")
_PIPELINE_NAMES = ("build_pipeline", "run_pipeline", "read_videos", "describe_model", "ZooModelHandler",
                   "OUTPUT_FILES", "DEAD_LETTER", "JOBS")


def require_beam():
    """Imports Apache Beam; raises `ImportError` naming the `beam` extra when it is not installed.

    Example:
        >>> require_beam()   # ImportError: ... pip install 'nonlocal_zoo[beam]'
    """
    try:
        import apache_beam
    except ImportError as error:
        raise ImportError(f"Apache Beam is not installed; the Beam pipeline (--runner) needs the '{EXTRA}' extra: "
                          f"{INSTALL_HINT} ({error})") from None
    return apache_beam


def __getattr__(name):
    if name in _PIPELINE_NAMES:
        return getattr(importlib.import_module("nonlocal_zoo.beam.pipeline"), name)
    raise AttributeError(f"module 'nonlocal_zoo.beam' has no attribute {name!r}")


__all__ = ["EXTRA", "INSTALL_HINT", "RUNNERS", "require_beam", *_PIPELINE_NAMES]
