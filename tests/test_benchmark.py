"""The benchmark harness: its timer and memory meter measure real quantities, and the quick mode (CI) runs every
section and writes its table to the path given (never over the committed benchmarks/RESULTS.md)."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from nonlocal_zoo import benchmark, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_time_interleaved_measures_sleep():
    times = benchmark.time_interleaved({"short": lambda: time.sleep(0.01), "long": lambda: time.sleep(0.05)},
                                       warmup=1, repeats=3)
    assert times["short"]["runs"] == times["long"]["runs"] == 3
    assert 0.01 <= times["short"]["median_s"] < 0.045
    assert 0.05 <= times["long"]["median_s"] < 0.2
    assert times["long"]["cpu_median_s"] < 0.02  # sleeping takes no CPU time


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/clear_refs and VmHWM are Linux")
def test_peak_memory_sees_a_temporary_allocation():
    with benchmark.peak_memory() as small:
        np.ones(1000)
    with benchmark.peak_memory() as large:
        a = np.ones(200 * 10**6 // 8)  # 200 MB, touched
        del a
    assert large["peak_bytes"] >= 190e6
    assert small["peak_bytes"] < 20e6


def test_quick_block_and_chunking_sections_in_process(tmp_path):
    results = benchmark.run(quick=True, sections=("machine", "matmul", "block", "chunking"), log=lambda m: None)
    block = results["block"]["rows"][0]
    assert block["max_abs_diff"] < 1e-4  # our block and pytorchvideo's NonLocal compute the same function
    for variant in ("eager", "graph", "xla", "torch"):
        assert block["forward"][variant]["median_s"] > 0
    chunk = results["chunking"]["rows"][0]
    assert chunk["max_abs_diff"] <= 1e-5
    assert chunk["buffer_auto"] <= chunk["budget_mb"] * 1e6 < chunk["buffer_unchunked"]
    assert results["matmul"]["peak_float32"] > 0
    report = benchmark.render_markdown(results, "test")
    assert "## NonLocalBlock vs pytorchvideo NonLocal" in report and "## Exact memory-bounded attention" in report


def test_quick_precision_section_in_process():
    """The bfloat16 path of the quick mode: the task API's predict path in both dtypes, real deviations."""
    from nonlocal_zoo.tasks import precision

    results = benchmark.run(quick=True, sections=("precision",), log=lambda m: None)
    section = results["precision"]
    if not precision.bf16_support()[0]:
        assert section["skipped"].startswith("no bfloat16 hardware") and not section["rows"]
        return
    demo_row, tiny = section["rows"]
    assert demo_row["clips"] == 24 and demo_row["top1_agreement"] == 1.0
    assert demo_row["accuracy_bfloat16"] == demo_row["accuracy_float32"]
    for row in (demo_row, tiny):
        assert 0 < row["max_prob_diff"] <= 0.03 and 0 < row["max_rel_logit_diff"] <= 0.05  # bf16 really ran
        assert row["times"]["float32"]["median_s"] > 0 and row["times"]["bfloat16"]["median_s"] > 0
    report = benchmark.render_markdown(results, "test")
    assert "## bfloat16 inference" in report and "| demo (held-out clips) | packaged |" in report


def test_quick_coldstart_section():
    """The cold start of `classify` in fresh processes: real phases, one trace of the forward pass for 10 views."""
    results = benchmark.run(quick=True, sections=("coldstart",), log=lambda m: None)
    (row,) = results["coldstart"]["rows"]
    assert "error" not in row, row
    assert row["model"] == "demo" and row["views"] == 10 and row["traces"] == 1
    phases = row["phases"]
    assert all(phases[key] > 0 for key in benchmark.coldstart.PHASES)
    assert phases["import_tensorflow_s"] > phases["import_cli_s"]  # the command line alone does not import TF
    assert phases["second_predict_s"] < phases["first_predict_s"]  # the first call traces
    assert row["command_s"] > phases["import_tensorflow_s"]
    report = benchmark.render_markdown(results, "test")
    assert "## Cold start of `classify`" in report and "| demo | 10 |" in report


def test_cli_errors():
    with pytest.raises(SystemExit):
        cli.main(["benchmark", "--threads", "0"])
    with pytest.raises(SystemExit):
        cli.main(["benchmark", "--sections", "nonsense"])


@pytest.mark.slow
def test_quick_mode_writes_its_table_and_not_results_md(tmp_path):
    results_md = os.path.join(ROOT, "benchmarks", "RESULTS.md")
    before = os.path.getmtime(results_md) if os.path.exists(results_md) else None
    output, raw = tmp_path / "quick.md", tmp_path / "quick.json"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--output", str(output), "--json",
                           str(raw)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    wall = time.perf_counter() - start
    results = json.loads(raw.read_text())
    assert set(results) >= set(benchmark.SECTIONS)
    text = output.read_text()
    for title in ("## Machine", "## Dense matmul peak", "## NonLocalBlock vs", "## Exact memory-bounded attention",
                  "## Full models, forward", "## bfloat16 inference", "## Input pipeline", "## Keras backends",
                  "## Cold start of `classify`", "## End to end: `classify` vs mmaction2"):
        assert title in text, title
    assert results["e2e"]["times"]["ours float32"]["runs"] > 0  # our end-to-end classify ran in quick mode
    for backend in ("jax", "torch"):
        row = results["backends"]["rows"][backend]
        assert "error" not in row, row
        assert max(row["max_abs_diff"].values()) < 1e-5
    assert (os.path.getmtime(results_md) if os.path.exists(results_md) else None) == before
    print(f"quick benchmark: {wall:.0f} s wall")


def test_write_report_keeps_the_hand_written_summary(tmp_path):
    path = tmp_path / "RESULTS.md"
    benchmark.write_report(str(path), "# tables v1")
    assert "# tables v1" in path.read_text()
    path.write_text("# Summary\nkeep me\n\n" + path.read_text() + "\n## Notes\nkeep me too\n")
    benchmark.write_report(str(path), "# tables v2")
    text = path.read_text()
    assert "keep me\n" in text and "keep me too" in text and "# tables v2" in text and "# tables v1" not in text
    assert text.index("# Summary") < text.index("# tables v2") < text.index("## Notes")
