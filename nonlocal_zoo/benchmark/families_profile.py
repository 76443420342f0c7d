"""Where the forward time of a family's network goes, op by op, in the live `predict` graph (what `classify` runs).

`benchmarks/profile.py` profiles a frozen graph (variables turned into constants, so grappler folds BatchNorm into
the convolutions); `predict` runs the graph with live variables, where it did not fold before
`nonlocal_zoo.layers.folding`. This profiles the live graph itself: one `predict_on_batch` under the TensorFlow
profiler (`tf.profiler.experimental`, host tracer level 2), op times read from the trace (`XSpace` protobuf), summed by
op type and by part of the network, with each part's analytic MACs (`count_macs`) and its GFLOP/s over its op time.

Run: `python -m nonlocal_zoo.benchmark.families_profile --preset i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded
--size 256 [--width 340] [--batch 1] [--threads 2]`. `--kernels` times the network's convolution kernels alone
(`kernel_table`): oneDNN's Conv3D at the I3D R50 shapes of an 8x256x256 clip, a 1x1x1 one also as a plain MatMul,
interleaved with the 2048^2 matmul peak.

Example:
    >>> report = profile_live(clf, x)   # {"wall_s", "by_op", "by_part"}
"""
import argparse
import collections
import glob
import os
import re
import tempfile
import time

import numpy as np

PARTS = ("conv1", "other convolutions", "non-local matmuls", "non-local other", "elementwise and pooling")


def _part(node_name, op_type):
    if "nonlocal" in node_name:
        return "non-local matmuls" if ("MatMul" in op_type or "Einsum" in op_type) else "non-local other"
    if "Conv3D" in op_type:
        # A folded convolution is named after its normalization (res_conv1_bn for conv1).
        return "conv1" if re.search(r"/(res_)?conv1(_bn)?[_/]", node_name) else "other convolutions"
    return "elementwise and pooling"


def profile_live(clf, x):
    """Op times of one `clf.predict_on_batch(x)` (after two warm-up calls), from the TensorFlow profiler trace.

    Returns:
        `{"wall_s": float, "by_op": Counter(op type -> s), "by_part": Counter(part -> s)}`; op times are the
        kernels' durations summed over threads (host tracer), so their total can exceed the wall time.
    """
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    clf.predict_on_batch(x)
    clf.predict_on_batch(x)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir, options=tf.profiler.experimental.ProfilerOptions(host_tracer_level=2))
        start = time.perf_counter()
        clf.predict_on_batch(x)
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    by_op, by_part = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name, _, op_type = plane.event_metadata[event.metadata_id].name.rpartition(":")
                # TensorFlow op events are "node_name:OpType"; executor and thread-pool events are skipped.
                if not name or not op_type or " " in op_type or op_type in ("Process", "Run", "ReadVariableOp"):
                    continue
                seconds = event.duration_ps / 1e12
                by_op[op_type] += seconds
                by_part[_part(name, op_type)] += seconds
    return {"wall_s": wall, "by_op": by_op, "by_part": by_part}


def part_macs(arch, input_shape, classes):
    """Analytic MACs of one view by part: conv1, the other convolutions (+ head), the non-local blocks."""
    from nonlocal_zoo.models import count_macs

    m = count_macs(arch, input_shape, classes=classes)
    return {"conv1": m["stem"], "non-local matmuls": m["nonlocal"],
            "other convolutions": m["total"] - m["stem"] - m["nonlocal"], "total": m["total"]}


# (label, padded input (B, T, H, W, C), kernel (kt, kh, kw, C_in, C_out), strides): an 8x256x256 clip, I3D R50.
KERNELS = (
    ("conv1 5x7x7 3->64, stride (1,2,2)", (1, 12, 262, 262, 3), (5, 7, 7, 3, 64), (1, 2, 2)),
    ("res2 1x3x3 64->64 (8x64x64)", (1, 8, 66, 66, 64), (1, 3, 3, 64, 64), (1, 1, 1)),
    ("res2 3x1x1 256->64 (8x64x64)", (1, 10, 64, 64, 256), (3, 1, 1, 256, 64), (1, 1, 1)),
    ("res2 1x1x1 256->64 (8x64x64)", (1, 8, 64, 64, 256), (1, 1, 1, 256, 64), (1, 1, 1)),
    ("res3 1x3x3 128->128 (4x32x32)", (1, 4, 34, 34, 128), (1, 3, 3, 128, 128), (1, 1, 1)),
    ("res3 3x1x1 512->128 (4x32x32)", (1, 6, 32, 32, 512), (3, 1, 1, 512, 128), (1, 1, 1)),
    ("res3 1x1x1 128->512 (4x32x32)", (1, 4, 32, 32, 128), (1, 1, 1, 128, 512), (1, 1, 1)),
    ("res4 1x3x3 256->256 (4x16x16)", (1, 4, 18, 18, 256), (1, 3, 3, 256, 256), (1, 1, 1)),
    ("res4 1x1x1 256->1024 (4x16x16)", (1, 4, 16, 16, 256), (1, 1, 1, 256, 1024), (1, 1, 1)),
)


def kernel_table(repeats=7):
    """GFLOP/s of each convolution in `KERNELS` alone (a `tf.function` of `tf.nn.conv3d`, oneDNN), of the 1x1x1 ones
    also as a reshape + MatMul, and of the dense 2048^2 matmul, timed interleaved; `{label: {"gflops", "cpu_gflops"}}`.
    """
    import tensorflow as tf

    from nonlocal_zoo.benchmark.machine import matmul_callables
    from nonlocal_zoo.benchmark.timing import time_interleaved

    rng = np.random.default_rng(0)
    fns, flops = {}, {}
    for label, xs, ws, strides in KERNELS:
        x = tf.constant(rng.standard_normal(xs).astype("float32"))
        w = tf.constant(rng.standard_normal(ws).astype("float32"))
        conv = tf.function(lambda a, b, s=strides: tf.nn.conv3d(a, b, (1, *s, 1), "VALID"))
        out = conv(x, w).shape
        flops[label] = 2 * int(np.prod(out[:4])) * int(np.prod(ws))
        fns[label] = lambda f=conv, a=x, b=w: f(a, b).numpy()
        if ws[:3] == (1, 1, 1):
            matmul = tf.function(lambda a, b: tf.linalg.matmul(a, b))
            a2, b2 = tf.reshape(x, (-1, ws[3])), tf.reshape(w, ws[3:])
            flops[f"{label} as MatMul"] = flops[label]
            fns[f"{label} as MatMul"] = lambda f=matmul, a=a2, b=b2: f(a, b).numpy()
    for name, fn in matmul_callables(2048, ("float32",)).items():
        fns[f"dense matmul 2048^2 ({name})"], flops[f"dense matmul 2048^2 ({name})"] = fn, 2 * 2048**3
    times = time_interleaved(fns, warmup=2, repeats=repeats)
    return {k: {"gflops": flops[k] / t["min_s"] / 1e9, "cpu_gflops": flops[k] / t["cpu_median_s"] / 1e9}
            for k, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded")
    parser.add_argument("--size", type=int, default=256, help="crop height (and width unless --width)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--kernels", action="store_true", help="time the convolution kernels alone instead")
    args = parser.parse_args(argv)
    from nonlocal_zoo.benchmark.precision import randomize_weights
    from nonlocal_zoo.benchmark.timing import configure_threads
    from nonlocal_zoo.presets import get_preset, num_classes
    from nonlocal_zoo.tasks.classifier import VideoClassifier

    configure_threads(args.threads or os.cpu_count() or 1)
    if args.kernels:
        table = kernel_table()
        peak = max(v["gflops"] for k, v in table.items() if k.startswith("dense"))
        peak_cpu = max(v["cpu_gflops"] for k, v in table.items() if k.startswith("dense"))
        print("| kernel (float32, alone) | GFLOP/s (best) | % of matmul peak | GFLOP/CPU-s | % of per-CPU peak |")
        print("|---|---|---|---|---|")
        for k, v in table.items():
            print(f"| {k} | {v['gflops']:.1f} | {100 * v['gflops'] / peak:.0f}% | {v['cpu_gflops']:.1f} | "
                  f"{100 * v['cpu_gflops'] / peak_cpu:.0f}% |")
        return
    preset = get_preset(args.preset)
    frames, width = preset["preprocessing"]["num_frames"], args.width or args.size
    clf = VideoClassifier.from_preset(args.preset, weights=None)
    randomize_weights(clf)
    x = np.random.default_rng(0).standard_normal((args.batch, frames, args.size, width, 3)).astype("float32")
    report = profile_live(clf, x)
    macs = part_macs(preset["arch"], (frames, args.size, width, 3), num_classes(preset))
    total = sum(report["by_op"].values())
    flops = 2 * macs["total"] * args.batch
    print(f"## {args.preset}, {args.batch} x {frames}x{args.size}x{width}: {report['wall_s']:.3f} s wall "
          f"({flops / report['wall_s'] / 1e9:.1f} GFLOP/s), {total:.3f} s in ops\n")
    print("| op type | s | share |\n|---|---|---|")
    for op, s in report["by_op"].most_common(args.top):
        print(f"| {op} | {s:.3f} | {100 * s / total:.1f}% |")
    print("\n| part | s | share of op time | share of MACs | GFLOP/s over its op time |\n|---|---|---|---|---|")
    for part in PARTS:
        s = report["by_part"].get(part, 0.0)
        mac = macs.get(part)
        rate = f"{2 * mac * args.batch / s / 1e9:.1f}" if mac and s else ""
        share = f"{100 * mac / macs['total']:.1f}%" if mac else ""
        print(f"| {part} | {s:.3f} | {100 * s / total:.1f}% | {share} | {rate} |")


if __name__ == "__main__":
    main()
