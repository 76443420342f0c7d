"""The `families` section: the full-network float32 forward of one preset per family, as `classify` runs it, against
the dense float32 matmul peak measured in the same run (issue 16, deliverable 1).

One representative preset per family (official 8x8 in the "repo" geometry, official 32x2 in the "paper" geometry,
PySlowFast, mmaction2's embedded Gaussian 32x2, gluon-cv) at each input geometry its protocol uses: the 224 training
crop, the test crop (256 for every family here) with the family's test head (the official fully-convolutional head
for the official and PySlowFast families, the global-pool head otherwise) and, for the fully-convolutional families,
a full 256x340 frame (short side 256 of a 4:3 video: feature maps of odd sizes). The forward pass is
`VideoClassifier.view_scores` on one pass of views (`predict_on_batch`, the `tf.function` graph `classify` runs, no
XLA) with the view batch `classify` uses for the family's test protocol (`view_batches(clips x crops, 8)`). Weights
are random (`randomize_weights`; speed does not depend on their values).

Every geometry is timed interleaved with dense float32 matmuls (the code of the `matmul` section): one forward, then
each library's *sustained* matmul (back-to-back 2048^2 products lasting about one forward pass,
`sustained_matmul_callables`) and single products, in turn, repeated. GFLOP/s = 2 x the analytic MAC count
(`nonlocal_zoo.models.count_macs`, the zoos' convention) x views / median wall time; "% of peak" divides it by the
sustained matmul's median GFLOP/s (best library) of the same rounds: like against like, a long computation against a
long computation, both medians. "% of burst" divides it by the best single product instead: a 0.1 s product can run
in a burst of turbo clock or a quiet moment of a shared host that a multi-second forward pass never sees (on this
project's 2-vCPU KVM guest the best burst is up to ~25% above the sustained median). The CPU-time columns (GFLOP per
CPU-second of the process, against the sustained matmul's) are less sensitive to other processes on a shared machine.

With `families_unfolded` (default), the same network traced inside `nonlocal_zoo.layers.folding.folding_disabled()`
(BatchNorm / Affine and the non-local `bn(out(y))` computed unfolded, as before issue 16) is timed in the same rounds:
the before/after of the inference folds, measured interleaved.

Example:
    >>> from nonlocal_zoo.benchmark import run
    >>> run(quick=True, sections=("families",))["families"]["rows"][0]["fraction_of_peak"]
"""
import numpy as np

from nonlocal_zoo.benchmark.machine import matmul_callables, matmul_rates, sustained_matmul_callables, sustained_rates
from nonlocal_zoo.benchmark.precision import randomize_weights
from nonlocal_zoo.benchmark.timing import time_interleaved, wall_time

# (family, representative preset).
FAMILIES = (
    ("official 8x8 (repo geometry)", "i3d_nl5_r50_8x8_kinetics400"),
    ("official 32x2 (paper geometry)", "i3d_nl5_r50_32x2_kinetics400"),
    ("PySlowFast 8x8", "i3d_nl5_r50_8x8_kinetics400_pyslowfast"),
    ("mmaction2 32x2 embedded Gaussian", "i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded"),
    ("gluon-cv 32x2", "i3d_nl5_r50_32x2_kinetics400_gluoncv"),
)
QUICK_FAMILIES = (("tiny I3D-NL (official flavour)", "tiny_nl_i3d"),)
TARGET_FRACTION = 0.85  # issue 16: every family's forward at >= 85% of the matmul peak
FULL_FRAME_ASPECT = 340 / 256  # a 4:3 video at short side 256 (mmaction2's demo clip is 340x256)


def family_geometries(preprocessing, train_crop=None):
    """The input geometries of a family: `[(label, (H, W))]`.

    The training crop, the test crop and, when the protocol tests fully convolutionally, a full frame of short side
    `test_short_side` and aspect 4:3.

    Args:
        preprocessing: a preset's `"preprocessing"` dict.
        train_crop: overrides the training crop (224 for every full-size family).

    Example:
        >>> from nonlocal_zoo.presets import get_preset
        >>> family_geometries(get_preset("i3d_nl5_r50_8x8_kinetics400")["preprocessing"])
        [('train crop 224', (224, 224)), ('test crop 256', (256, 256)), ('full frame 256x340', (256, 340))]
    """
    crop = train_crop or preprocessing["train_crop"]
    test, short = preprocessing["test_crop"], preprocessing["test_short_side"]
    out = [(f"train crop {crop}", (crop, crop))]
    if test != crop:
        out.append((f"test crop {test}", (test, test)))
    if preprocessing["test_fully_convolutional"]:
        width = int(round(short * FULL_FRAME_ASPECT))
        out.append((f"full frame {short}x{width}", (short, width)))
    return out


def bench_families(cfg, log):
    """Forward GFLOP/s of each family's representative preset at its geometries, against the interleaved matmul peak.

    Args:
        cfg: the benchmark config (`families`, `families_repeats`, `families_warmup`, `matmul_size`; optional:
            `families_batch` overrides the view batch, `families_geometries` keeps some of "train", "test", "full",
            `families_unfolded=False` skips the unfolded reference).
        log: progress messages.

    Returns:
        `{"rows": [...], "min_fraction_of_peak": float, "target": 0.85}`; each row has the family, preset, geometry,
        clip, head, views per pass, GFLOP per pass, the forward's and matmul's times, GFLOP/s and fractions of peak.
    """
    from nonlocal_zoo.models import count_macs
    from nonlocal_zoo.presets import get_preset, num_classes
    from nonlocal_zoo.tasks.classifier import DEFAULT_BATCH_SIZE, VideoClassifier, view_batches

    n = cfg["matmul_size"]
    rows = []
    for family, preset in cfg["families"]:
        p = get_preset(preset)
        pre = p["preprocessing"]
        clf = VideoClassifier.from_preset(preset, weights=None)
        randomize_weights(clf)
        frames = pre["num_frames"]
        views = pre["test_num_clips"] * pre["test_num_crops"]
        batch = cfg.get("families_batch") or view_batches(views, DEFAULT_BATCH_SIZE)[0]
        kinds = cfg.get("families_geometries") or ("train", "test", "full")  # a subset, e.g. ("test",)
        for geometry, (height, width) in family_geometries(pre, cfg.get("families_train_crop")):
            if not geometry.startswith(tuple(f"{k} " for k in kinds)):
                continue
            macs = count_macs(p["arch"], (frames, height, width, 3), classes=num_classes(p))["total"]
            x = np.random.default_rng(0).standard_normal((batch, frames, height, width, 3)).astype("float32")
            fns = {"forward": lambda c=clf, x=x, b=batch: c.view_scores(x, batch_size=b)}
            fns["forward"]()  # traced; then timed once, to size the sustained matmul calls
            sustained, products = sustained_matmul_callables(n, wall_time(fns["forward"]), ("float32",))
            fns.update({f"sustained {k}": fn for k, fn in sustained.items()})
            if cfg.get("families_unfolded", True):
                fns["unfolded"] = _unfolded_forward(clf, x)
            matmuls = matmul_callables(n, ("float32",))
            fns.update(matmuls)
            times = time_interleaved(fns, warmup=cfg["families_warmup"], repeats=cfg["families_repeats"])
            burst = matmul_rates({k: times[k] for k in matmuls}, n, ("float32",))
            peak = sustained_rates({k: times[f"sustained {k}"] for k in sustained}, n, products, ("float32",))
            t = times["forward"]
            flops = 2 * macs * batch
            row = {
                "family": family, "preset": preset, "geometry": geometry, "clip": f"{frames}x{height}x{width}",
                "head": "fully convolutional" if clf.fully_convolutional else "global pool", "views_per_pass": batch,
                "gmacs_per_view": macs / 1e9, "gflop_per_pass": flops / 1e9, "forward": t, "sustained": peak,
                "matmul": burst, "gflops": flops / t["median_s"] / 1e9,
                "gflops_per_cpu_s": flops / t["cpu_median_s"] / 1e9,
            }
            row.update(_fractions(row["gflops"], row["gflops_per_cpu_s"], peak, burst))
            if "unfolded" in times:
                u = times["unfolded"]
                row["unfolded"] = {**u, "gflops": flops / u["median_s"] / 1e9,
                                   **_fractions(flops / u["median_s"] / 1e9, flops / u["cpu_median_s"] / 1e9, peak,
                                                burst)}
            rows.append(row)
            log(f"families {family} {geometry}: {row['gflops']:.0f} GFLOP/s = {row['fraction_of_peak']:.0%} of the "
                f"sustained {peak['peak_float32']:.0f} ({row['fraction_of_burst_peak']:.0%} of the best burst "
                f"{burst['peak_float32']:.0f}; CPU time: {row['fraction_of_peak_per_cpu_s']:.0%})")
        del clf
    return {"rows": rows, "target": TARGET_FRACTION,
            "min_fraction_of_peak": min(r["fraction_of_peak"] for r in rows),
            "min_fraction_of_burst_peak": min(r["fraction_of_burst_peak"] for r in rows),
            "min_fraction_of_peak_per_cpu_s": min(r["fraction_of_peak_per_cpu_s"] for r in rows)}


def _fractions(gflops, gflops_per_cpu_s, sustained, burst):
    """A forward's rates as fractions of the sustained peak (the target's yardstick, median against median), of the
    best single-product burst (`fraction_of_burst_peak`) and, per CPU-second, of the sustained matmul's."""
    return {"fraction_of_peak": gflops / sustained["peak_float32"],
            "fraction_of_burst_peak": gflops / burst["peak_float32"],
            "fraction_of_peak_per_cpu_s": gflops_per_cpu_s / sustained["peak_float32_per_cpu_s"]}


def _unfolded_forward(clf, x):
    """A callable running `clf`'s logits/probabilities graph on `x` traced with the inference folds disabled."""
    import tensorflow as tf

    from nonlocal_zoo.layers.folding import folding_disabled  # imports Keras (and TensorFlow): not at module import

    model = clf.logits_model() if clf.preprocessor.aggregation == "logits" and clf.activation is not None else clf
    fn = tf.function(lambda a: model(a, training=False))
    with folding_disabled():
        fn.get_concrete_function(tf.TensorSpec(x.shape, tf.float32))  # traced (and kept) unfolded
    xt = tf.constant(x)
    return lambda: np.asarray(fn(xt))


def render_families(results):
    """Markdown lines of the `families` section."""
    f = results["families"]
    out = ["## Forward efficiency per preset family (float32, `classify`'s predict path)", "",
           "GFLOP/s = 2 x analytic MACs x views / median wall time of one forward pass (`view_scores`, one batch of "
           "views). **% of peak** divides it by the *sustained* dense float32 matmul peak: back-to-back 2048^2 "
           "products for as long as one forward pass, timed interleaved with it, median against median, best "
           "library (`machine.sustained_matmul_callables`). *% of burst* divides it by the best single 2048^2 product "
           "of the same rounds instead (the definition used before: a short burst against a long median). The CPU "
           "columns divide by CPU time (all threads), against the sustained matmul's GFLOP per CPU-second. "
           f"Target: >= {f['target']:.0%}. *Unfolded*: the same network traced with the inference BatchNorm folds "
           "disabled (`nonlocal_zoo.layers.folding.folding_disabled`), timed in the same rounds: before/after.", "",
           "| family | preset | geometry | head | views/pass | GFLOP/pass | forward s | CPU s | GFLOP/s | "
           "sustained matmul GFLOP/s | % of peak | burst matmul GFLOP/s | % of burst | GFLOP/CPU-s | "
           "% of per-CPU peak | unfolded: % of peak | unfolded: % of per-CPU peak |", "|---" * 17 + "|"]
    for r in f["rows"]:
        t, m, b = r["forward"], r["sustained"], r["matmul"]
        u = r.get("unfolded")
        out.append(f"| {r['family']} | {r['preset']} | {r['geometry']} ({r['clip']}) | {r['head']} | "
                   f"{r['views_per_pass']} | {r['gflop_per_pass']:.4g} | {t['median_s']:.3g} | {t['cpu_median_s']:.3g} | "
                   f"{r['gflops']:.1f} | {m['peak_float32']:.1f} | **{100 * r['fraction_of_peak']:.0f}%** | "
                   f"{b['peak_float32']:.1f} | {100 * r['fraction_of_burst_peak']:.0f}% | "
                   f"{r['gflops_per_cpu_s']:.1f} | {100 * r['fraction_of_peak_per_cpu_s']:.0f}% | "
                   + (f"{100 * u['fraction_of_peak']:.0f}% | {100 * u['fraction_of_peak_per_cpu_s']:.0f}% |" if u
                      else "n/a | n/a |"))
    out += ["", f"Lowest: {100 * f['min_fraction_of_peak']:.0f}% of the sustained peak (wall), "
                f"{100 * f['min_fraction_of_burst_peak']:.0f}% of the best burst, "
                f"{100 * f['min_fraction_of_peak_per_cpu_s']:.0f}% (CPU time).", ""]
    return out
