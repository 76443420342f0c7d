"""The `models` section: I3D-NL5 R50 and C2D R50 forward clips/s against the equivalent pytorchvideo `create_resnet`
(+ `NonLocal`) model; eager, `tf.function`, XLA; float32 and bfloat16; achieved GFLOP/s from the analytic MAC count
(`nonlocal_zoo.models.flops`) against the matmul peak.

Example:
    >>> model, arch = keras_model("i3d_nl5_r50_8x8_kinetics400", 8, 224, "float32")
    >>> reference = torch_model_like(arch, 8, 224)
"""
import numpy as np

from nonlocal_zoo.benchmark.config import TINY_ARCH
from nonlocal_zoo.benchmark.timing import import_pytorchvideo, import_torch, time_interleaved


def torch_model_like(arch, frames, size):
    """pytorchvideo `create_resnet` with `NonLocal` blocks after the same residual blocks, from a builder arch."""
    torch = import_torch()
    ptv = import_pytorchvideo()
    from torch import nn

    from nonlocal_zoo.models.arch import feature_shapes, normalize_arch

    a = normalize_arch(**arch)
    res5 = feature_shapes(a, (frames, size, size, 3))["res5"]
    torch.manual_seed(0)
    model = ptv.models.resnet.create_resnet(
        input_channel=3, model_depth={(3, 4, 6, 3): 50, (3, 4, 23, 3): 101}[tuple(a["stage_depths"])],
        model_num_class=400, dropout_rate=0.5, norm=nn.BatchNorm3d,
        stem_conv_kernel_size=tuple(a["conv1_kernel"]), stem_conv_stride=tuple(a["conv1_strides"]),
        stem_pool_kernel_size=tuple(a["pool1_size"]), stem_pool_stride=tuple(a["pool1_strides"]),
        stage1_pool=nn.MaxPool3d if a["pool2_size"] else None,
        stage1_pool_kernel_size=tuple(a["pool2_size"] or (1, 1, 1)),
        stage_conv_a_kernel_size=[[(k, 1, 1) for k in stage] for stage in a["temporal_kernels"]],
        head_pool=nn.AvgPool3d, head_pool_kernel_size=tuple(res5[:3]), head_activation=None,
    )
    model.blocks[0].pool = nn.MaxPool3d(tuple(a["pool1_size"]), stride=tuple(a["pool1_strides"]),
                                        padding=tuple(a["pool1_padding"]))
    stages = [b for b in model.blocks if isinstance(b, ptv.models.resnet.ResStage)]
    for s, blocks in enumerate(a["nonlocal_blocks"]):
        for i in blocks:
            dim = stages[s].res_blocks[i].branch2.conv_c.out_channels
            nl = ptv.layers.nonlocal_net.create_nonlocal(dim_in=dim, dim_inner=dim // 2, pool_size=(1, 2, 2),
                                                         instantiation="softmax")
            stages[s].res_blocks[i] = nn.Sequential(stages[s].res_blocks[i], nl)
    return model.eval()


def keras_model(preset, frames, size, dtype):
    """`(model, arch)`: a preset (or `"tiny"`, `TINY_ARCH`) built for `(frames, size, size, 3)` clips, logits head,
    under the `float32` or `mixed_bfloat16` policy (`dtype`)."""
    import keras

    from nonlocal_zoo.models import build_backbone, create_model
    from nonlocal_zoo.presets import get_preset

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")
    try:
        if preset == "tiny":
            arch = {**get_preset("i3d_nl5_r50_8x8_kinetics400")["arch"], **TINY_ARCH}
            model = build_backbone(input_shape=(frames, size, size, 3), **arch)
        else:
            arch = get_preset(preset)["arch"]
            model = create_model(preset, input_shape=(frames, size, size, 3), classifier_activation=None)
    finally:
        keras.config.set_dtype_policy(previous)
    return model, arch


def bench_models(cfg, matmul, log):
    """Full-model forward clips/s: TensorFlow eager / tf.function / XLA, float32 / bfloat16, against PyTorch."""
    from nonlocal_zoo.models import count_macs, count_params

    have_ref = import_pytorchvideo() is not None
    size = cfg["model_size"]
    rows = []
    for label, preset, frames in cfg["models"]:
        models = {dtype: keras_model(preset, frames, size, dtype) for dtype in ("float32", "bfloat16")}
        arch = models["float32"][1]
        macs = count_macs(arch, (frames, size, size, 3), include_top=preset != "tiny")["total"]
        ref = torch_model_like(arch, frames, size) if have_ref and preset != "tiny" else None
        params = {"ours": count_params(arch, include_top=preset != "tiny")["trainable"]}
        if ref is not None:
            params["torch"] = sum(p.numel() for p in ref.parameters())
        for batch in cfg["model_batches"]:
            x = np.random.default_rng(3).standard_normal((batch, frames, size, size, 3)).astype("float32")
            fns, traced = _model_callables(models, ref, x)
            times = _time_variants(fns, traced, cfg)
            _add_rates(times, batch=batch, macs=macs, matmul=matmul)
            rows.append({"model": label, "preset": preset, "clip": f"{frames}x{size}x{size}", "batch": batch,
                         "gmacs_per_clip": macs / 1e9, "params": params, "times": times})
            log(f"model {label} {preset} batch {batch}: " + ", ".join(
                f"{k} {v.get('clips_per_s', float('nan')):.2f} clips/s" for k, v in times.items()))
    return {"rows": rows}


def _model_callables(models, ref, x):
    """(`{variant: callable}`, `{variant: tf.function}`): TensorFlow eager/graph/XLA per dtype, PyTorch per dtype."""
    import tensorflow as tf

    xt = tf.constant(x)
    fns, traced = {}, {}
    for dtype, (model, _) in models.items():
        call = lambda a, m=model: m(a, training=False)  # noqa: E731
        graph, xla = tf.function(call), tf.function(call, jit_compile=True)
        traced[f"tf graph {dtype}"], traced[f"tf xla {dtype}"] = graph, xla
        if dtype == "float32":
            fns["tf eager float32"] = lambda m=model: np.asarray(m(xt, training=False))
        fns[f"tf graph {dtype}"] = lambda f=graph: np.asarray(f(xt))
        fns[f"tf xla {dtype}"] = lambda f=xla: np.asarray(f(xt))
    if ref is not None:
        torch = import_torch()
        xr = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))  # NTHWC -> NCTHW

        def torch_fwd(dtype):
            def fn():
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                    return ref(xr)
            return fn

        fns["torch float32"] = torch_fwd("float32")
        fns["torch bfloat16"] = torch_fwd("bfloat16")
    return fns, traced


def _time_variants(fns, traced, cfg):
    """Interleaved times of the variants that run (a failing one, e.g. a missing bfloat16 kernel, is reported), with
    the number of `tf.function` traces (no retracing: one per shape)."""
    times = {}
    for name, fn in list(fns.items()):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            times[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
            del fns[name]
    times.update(time_interleaved(fns, warmup=cfg["model_warmup"], repeats=cfg["model_repeats"]))
    for name, fn in traced.items():
        if "median_s" in times.get(name, {}):
            times[name]["traces"] = fn.experimental_get_tracing_count()
    return times


def _add_rates(times, *, batch, macs, matmul):
    """Clips/s, GFLOP/s and the fraction of the matmul peak (wall and per CPU-second) of each timed variant."""
    for name, t in times.items():
        if "median_s" in t:
            t["clips_per_s"] = batch / t["median_s"]
            dtype = "bfloat16" if "bfloat16" in name else "float32"
            t["gflops"] = 2 * macs * batch / t["median_s"] / 1e9
            t["fraction_of_peak"] = t["gflops"] / matmul[f"peak_{dtype}"]
            t["gflops_per_cpu_s"] = 2 * macs * batch / t["cpu_median_s"] / 1e9
            t["fraction_of_peak_per_cpu_s"] = t["gflops_per_cpu_s"] / matmul[f"peak_{dtype}_per_cpu_s"]
