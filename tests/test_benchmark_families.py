"""The `families` benchmark section (issue 16): geometries per protocol, FLOP accounting, quick run and report."""
import numpy as np
import pytest

from nonlocal_zoo import benchmark
from nonlocal_zoo.presets import get_preset


def test_family_geometries_follow_each_protocol():
    for family, preset in benchmark.FAMILIES:
        pre = get_preset(preset)["preprocessing"]
        geometries = dict(benchmark.family_geometries(pre))
        assert geometries[f"train crop {pre['train_crop']}"] == (224, 224), family
        assert geometries["test crop 256"] == (256, 256), family
        full = [g for g in geometries if g.startswith("full frame")]
        # Only the fully-convolutional protocols (official, PySlowFast) test on whole frames.
        assert bool(full) == pre["test_fully_convolutional"], family
        if full:
            assert geometries[full[0]] == (256, 340)
    assert {p for _, p in benchmark.FAMILIES} == {
        "i3d_nl5_r50_8x8_kinetics400", "i3d_nl5_r50_32x2_kinetics400", "i3d_nl5_r50_8x8_kinetics400_pyslowfast",
        "i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded", "i3d_nl5_r50_32x2_kinetics400_gluoncv"}


def test_quick_families_section_counts_flops_from_the_registry():
    results = benchmark.run(quick=True, sections=("families",), log=lambda m: None)
    rows = results["families"]["rows"]
    assert len(rows) == 1
    r = rows[0]
    # The preset registry carries the MACs of a view as data (independent of the analytic counter's code path).
    assert r["gmacs_per_view"] * 1e9 == get_preset("tiny_nl_i3d")["metadata"]["macs"] == 2_240_832
    assert r["views_per_pass"] == 6  # 2 clips x 3 crops in one pass, as classify batches them
    assert r["gflop_per_pass"] == pytest.approx(2 * 2_240_832 * 6 / 1e9)
    assert r["gflops"] == pytest.approx(r["gflop_per_pass"] / r["forward"]["median_s"])
    # The yardstick: the sustained matmul (median calls of back-to-back products), and the best burst beside it.
    assert r["fraction_of_peak"] == pytest.approx(r["gflops"] / r["sustained"]["peak_float32"])
    assert r["fraction_of_burst_peak"] == pytest.approx(r["gflops"] / r["matmul"]["peak_float32"])
    assert r["sustained"]["products_per_call"]["tensorflow float32"] >= 1
    assert 0 < r["fraction_of_peak"] and np.isfinite(r["fraction_of_peak_per_cpu_s"])
    assert results["families"]["min_fraction_of_peak"] == r["fraction_of_peak"]
    assert r["unfolded"]["fraction_of_peak"] > 0  # the before/after reference, timed in the same rounds
    text = benchmark.render_markdown(results, "nonlocal-zoo benchmark --quick --sections families")
    assert "## Forward efficiency per preset family" in text and "tiny_nl_i3d" in text


def test_sustained_matmul_fills_the_given_time_and_rates_from_medians():
    from nonlocal_zoo.benchmark.machine import sustained_matmul_callables, sustained_rates
    from nonlocal_zoo.benchmark.timing import time_interleaved

    fns, products = sustained_matmul_callables(256, 0.05, ("float32",))
    name = "tensorflow float32"
    assert set(fns) == set(products) and products[name] >= 1
    times = time_interleaved(fns, warmup=1, repeats=3)
    rates = sustained_rates(times, 256, products)
    # GFLOP/s from the median call of `products` products of 2 n^3 FLOPs; the peak is the best library.
    assert rates["gflops"][name] == pytest.approx(2 * 256**3 * products[name] / times[name]["median_s"] / 1e9)
    assert rates["peak_float32"] == max(rates["gflops"].values())
    # Made-up times: the rates are the FLOPs over the medians, not the best repeat.
    fake = {name: {"median_s": 2.0, "min_s": 1.0, "cpu_median_s": 4.0}}
    rates = sustained_rates(fake, 1000, {name: 10})
    assert rates["peak_float32"] == pytest.approx(2 * 1000**3 * 10 / 2.0 / 1e9)
    assert rates["peak_float32_per_cpu_s"] == pytest.approx(2 * 1000**3 * 10 / 4.0 / 1e9)
