"""The `block` section: `NonLocalBlock` against pytorchvideo's `NonLocal` at the res3/res4 shapes of the official
clips; forward and forward+backward, eager / `tf.function` / XLA; output agreement; peak memory in fresh processes.

Example:
    >>> block = make_block((2, 4, 14, 14, 64))
    >>> fns = block_callables(block, x, variants=("graph",))
"""
import numpy as np

from nonlocal_zoo.benchmark.timing import import_pytorchvideo, import_torch, peak_memory, run_probes, time_interleaved


def random_block_weights(block, seed=0):
    """Random weights for every variable (BN gamma non-zero, variances positive), so the block is not the identity."""
    rng = np.random.default_rng(seed)
    for v in block.weights:
        shape = tuple(v.shape)
        if "variance" in v.path:
            value = rng.uniform(0.5, 1.5, shape)
        elif v.path.endswith(("gamma", "scale")):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.05, shape)
        v.assign(value.astype("float32"))


def make_block(shape, seed=0, **kwargs):
    """A built `NonLocalBlock` (official flavour unless overridden) for `(B, T, H, W, C)` with random weights."""
    from nonlocal_zoo.layers import NonLocalBlock

    block = NonLocalBlock(**kwargs)
    block.build(shape)
    random_block_weights(block, seed)
    return block


def torch_block_like(block):
    """pytorchvideo's `NonLocal` (softmax instantiation, 1x2x2 max-pool, BN) carrying the weights of `block`."""
    torch = import_torch()
    ptv = import_pytorchvideo()
    channels = block.out.kernel.shape[1]
    ref = ptv.layers.nonlocal_net.create_nonlocal(
        dim_in=channels, dim_inner=block.dim, pool_size=(1, 2, 2), instantiation="softmax"
    )
    with torch.no_grad():
        for name, conv in (("theta", ref.conv_theta), ("phi", ref.conv_phi), ("g", ref.conv_g), ("out", ref.conv_out)):
            layer = getattr(block, name)
            conv.weight.copy_(torch.from_numpy(np.asarray(layer.kernel).T[:, :, None, None, None].copy()))
            conv.bias.copy_(torch.from_numpy(np.asarray(layer.bias)))
        ref.norm.weight.copy_(torch.from_numpy(np.asarray(block.bn.gamma)))
        ref.norm.bias.copy_(torch.from_numpy(np.asarray(block.bn.beta)))
        ref.norm.running_mean.copy_(torch.from_numpy(np.asarray(block.bn.moving_mean)))
        ref.norm.running_var.copy_(torch.from_numpy(np.asarray(block.bn.moving_variance)))
    return ref


def block_callables(block, x, *, train=False, variants=("eager", "graph", "xla")):
    """TensorFlow callables running `block` on `x` (NTHWC numpy): forward, or forward+backward when `train`."""
    import tensorflow as tf

    xt = tf.constant(x)
    w = tf.constant(np.random.default_rng(5).standard_normal(x.shape).astype("float32"))

    def forward(a):
        return block(a, training=False)

    def train_step(a):
        with tf.GradientTape() as tape:
            tape.watch(a)
            loss = tf.reduce_sum(block(a, training=True) * w)
        grads = tape.gradient(loss, [a] + block.trainable_variables)
        return tf.add_n([tf.reduce_sum(g) for g in grads])

    fn = train_step if train else forward
    compiled = {"eager": fn, "graph": tf.function(fn), "xla": tf.function(fn, jit_compile=True)}
    return {v: (lambda f=compiled[v]: np.asarray(f(xt))) for v in variants}


def torch_block_callable(ref, x, *, train=False):
    """A callable running pytorchvideo's block `ref` on `x` (NTHWC numpy): forward, or forward+backward."""
    torch = import_torch()
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))  # NTHWC -> NCTHW
    if not train:
        ref.eval()

        def forward():
            with torch.no_grad():
                return ref(xt)

        return forward
    ref.train()
    xg = xt.clone().requires_grad_(True)
    w = torch.from_numpy(np.ascontiguousarray(
        np.random.default_rng(5).standard_normal(x.shape).astype("float32").transpose(0, 4, 1, 2, 3)))

    def step():
        for p in ref.parameters():
            p.grad = None
        xg.grad = None
        (ref(xg) * w).sum().backward()
        return xg.grad

    return step


def bench_block(cfg, log):
    """NonLocalBlock vs pytorchvideo NonLocal: forward and forward+backward times, output agreement, peak memory."""
    torch = import_torch()
    have_ref = import_pytorchvideo() is not None
    rows = []
    batch = cfg["block_batch"]
    for label, (t, h, w, c) in cfg["block_shapes"].items():
        shape = (batch, t, h, w, c)
        x = np.random.default_rng(1).standard_normal(shape).astype("float32")
        block = make_block(shape)
        row = {"shape": label, "input": list(shape)}
        if have_ref:
            ref = torch_block_like(block)
            with torch.no_grad():
                theirs = ref.eval()(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))).numpy()
            ours = np.asarray(block(x, training=False)).transpose(0, 4, 1, 2, 3)
            row["max_abs_diff"] = float(np.abs(ours - theirs).max())
        for train in (False, True):
            variants = ("graph", "xla") if train else ("eager", "graph", "xla")
            fns = block_callables(block, x, train=train, variants=variants)
            if have_ref:
                fns["torch"] = torch_block_callable(ref, x, train=train)
            times = time_interleaved(fns, warmup=cfg["warmup"], repeats=cfg["repeats"])
            row["train" if train else "forward"] = times
            log(f"block {label} {'fwd+bwd' if train else 'fwd'}: " + ", ".join(
                f"{k} {v['median_s'] * 1e3:.1f} ms" for k, v in times.items()))
        rows.append(row)
    # Peak memory, one fresh process per measurement, for the first shapes (the res3 ones in the full run).
    memory, specs = [], []
    impls = ("tensorflow", "torch") if have_ref else ("tensorflow",)
    for label, (t, h, w, c) in list(cfg["block_shapes"].items())[: cfg["memory_shapes"]]:
        for train in (False, True):
            memory.append({"shape": label, "pass": "fwd+bwd" if train else "fwd"})
            specs += [{"kind": "block_memory", "impl": impl, "shape": [batch, t, h, w, c], "train": train,
                       "threads": cfg["threads"]} for impl in impls]
    peaks = iter(measure_memory(specs, isolated=cfg["isolated_memory"]))
    for entry in memory:
        entry.update({impl: next(peaks) for impl in impls})
        log(f"block memory {entry}")
    return {"batch": batch, "rows": rows, "memory": memory, "isolated_memory": cfg["isolated_memory"],
            "reference": "pytorchvideo NonLocal" if have_ref else None}


def probe_block_memory(spec):
    """Peak RSS growth of building nothing more: one forward (or forward+backward) of the block, in this process."""
    shape = tuple(spec["shape"])
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    kwargs = {}
    if spec.get("chunk_size") is not None:
        kwargs = {"chunk_size": spec["chunk_size"], "memory_budget_mb": spec.get("budget_mb", 64)}
    block = make_block(shape, **kwargs)
    if spec["impl"] == "torch":
        fn = torch_block_callable(torch_block_like(block), x, train=spec["train"])
    else:
        fn = block_callables(block, x, train=spec["train"], variants=(spec.get("variant", "graph"),))
        fn = next(iter(fn.values()))
    with peak_memory() as result:
        for _ in range(spec.get("calls", 2)):
            fn()
    return result


def measure_memory(specs, *, isolated):
    """Peak memory of block probes: each in a fresh process (`isolated`), else in this process, in the given order.

    In-process numbers (the quick mode) can only under-estimate what a fresh process would show, since memory freed
    by an earlier measurement may be reused; order the specs from small to large.
    """
    if isolated:
        return [r.get("peak_bytes") for r in run_probes(specs)]
    return [probe_block_memory(spec)["peak_bytes"] for spec in specs]
