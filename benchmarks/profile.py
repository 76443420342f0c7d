"""Where the forward time of a model goes, in TensorFlow and in the PyTorch reference, op by op.

TensorFlow: the model's `tf.function` graph with its variables frozen to constants (so BN folds into the
convolutions, as grappler does for constants; the live graph runs BN as separate multiply-adds, ~10% more time),
run once in a `tf.compat.v1.Session` with a full trace; op times are summed by op type and by network part. PyTorch:
`torch.profiler` on the equivalent pytorchvideo model (`nonlocal_zoo.benchmark.torch_model_like`). XLA:CPU has no
per-op trace here, so its convolution and matmul kernels are timed alone against the TensorFlow graph kernels.

Run: `python -m benchmarks.profile [--preset i3d_nl5_r50_8x8_kinetics400] [--frames 8] [--batch 1] [--threads 1]`.
"""
import argparse
import collections
import re
import time

import numpy as np

from nonlocal_zoo import benchmark


def _part(node_name):
    if "nonlocal" in node_name:
        return "non-local blocks"
    match = re.search(r"(res[2-5])_\d+_", node_name)
    if match:
        return f"{match.group(1)} (convs, BN, ReLU, sums)"
    if re.search(r"conv1|res_conv1|pool1", node_name):
        return "stem (conv1, pool1)"
    return "other (pool2, head, reshapes)"


def profile_tensorflow(model, x, threads):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda a: model(a, training=False))
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)))
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
    feed, fetch = {frozen.inputs[0].name: x}, frozen.outputs[0].name
    with tf.compat.v1.Session(graph=graph, config=config) as sess:
        sess.run(fetch, feed)
        start = time.perf_counter()
        sess.run(fetch, feed)
        wall = time.perf_counter() - start
        metadata = tf.compat.v1.RunMetadata()
        sess.run(fetch, feed, options=tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE),
                 run_metadata=metadata)
    by_op, by_part = collections.Counter(), collections.Counter()
    for device in metadata.step_stats.dev_stats:
        for node in device.node_stats:
            seconds = node.all_end_rel_micros / 1e6
            label = node.timeline_label
            op = label.split("=", 1)[1].split("(")[0].strip() if "=" in label else node.node_name
            by_op[op] += seconds
            by_part[_part(node.node_name)] += seconds
    return wall, by_op, by_part


def profile_torch(ref, x):
    import torch

    xr = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))
    with torch.no_grad():
        ref(xr)
        start = time.perf_counter()
        ref(xr)
        wall = time.perf_counter() - start
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            ref(xr)
    by_op = collections.Counter()
    for event in prof.key_averages():
        by_op[event.key] += event.self_cpu_time_total / 1e6
    return wall, by_op


def xla_kernels(threads):
    """A res3 3x3 conv, a 3x1x1 conv and a non-local matmul alone: TensorFlow graph vs XLA (jit_compile=True)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    cases = {
        "Conv3D 1x3x3, (1,4,28,28,128) -> 128": ((1, 4, 28, 28, 128), (1, 3, 3, 128, 128)),
        "Conv3D 3x1x1, (1,4,28,28,512) -> 128": ((1, 4, 28, 28, 512), (3, 1, 1, 512, 128)),
        "MatMul (3136, 256) x (256, 784)": ((3136, 256), (256, 784)),
    }
    rows = {}
    for name, (xs, ws) in cases.items():
        x = tf.constant(rng.standard_normal(xs).astype("float32"))
        w = tf.constant(rng.standard_normal(ws).astype("float32"))
        if len(xs) == 5:
            pad = [[0, 0]] + [[k // 2, k // 2] for k in ws[:3]] + [[0, 0]]
            op = lambda a, b, pad=pad: tf.nn.conv3d(tf.pad(a, pad), b, [1] * 5, "VALID")  # noqa: E731
        else:
            op = tf.linalg.matmul
        graph, xla = tf.function(op), tf.function(op, jit_compile=True)
        times = benchmark.time_interleaved({"graph": lambda g=graph: g(x, w).numpy(),
                                            "xla": lambda f=xla: f(x, w).numpy()}, warmup=2, repeats=7)
        rows[name] = {k: v["cpu_median_s"] for k, v in times.items()}
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="i3d_nl5_r50_8x8_kinetics400")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args(argv)
    benchmark.configure_threads(args.threads)
    model, arch = benchmark.keras_model(args.preset, args.frames, 224, "float32")
    x = np.random.default_rng(0).standard_normal((args.batch, args.frames, 224, 224, 3)).astype("float32")
    wall, by_op, by_part = profile_tensorflow(model, x, args.threads)
    total = sum(by_op.values())
    print(f"## TensorFlow (frozen graph, {args.threads} thread(s)): {wall:.3f} s wall, {total:.3f} s in ops\n")
    print("| op type | s | share |\n|---|---|---|")
    for op, s in by_op.most_common(args.top):
        print(f"| {op} | {s:.3f} | {100 * s / total:.0f}% |")
    print("\n| part | s | share |\n|---|---|---|")
    for part, s in by_part.most_common():
        print(f"| {part} | {s:.3f} | {100 * s / total:.0f}% |")
    if benchmark.import_pytorchvideo() is not None:
        wall, by_op = profile_torch(benchmark.torch_model_like(arch, args.frames, 224), x)
        total = sum(by_op.values())
        print(f"\n## PyTorch (pytorchvideo, {args.threads} thread(s)): {wall:.3f} s wall, {total:.3f} s self CPU\n")
        print("| op | self CPU s | share |\n|---|---|---|")
        for op, s in by_op.most_common(args.top):
            print(f"| {op} | {s:.3f} | {100 * s / total:.0f}% |")
    print(f"\n## Single kernels, CPU seconds (median of 7): TensorFlow graph vs XLA\n")
    print("| kernel | graph | XLA | XLA / graph |\n|---|---|---|---|")
    for name, t in xla_kernels(args.threads).items():
        print(f"| {name} | {t['graph'] * 1e3:.1f} ms | {t['xla'] * 1e3:.1f} ms | {t['xla'] / t['graph']:.2f} |")


if __name__ == "__main__":
    main()
