"""The non-local block of Wang, Girshick, Gupta and He, "Non-local Neural Networks" (CVPR 2018).

Channels-last only: inputs are `(B, L, C)`, `(B, H, W, C)` or `(B, T, H, W, C)`. Written in `keras.ops`, so it runs
on the TensorFlow, JAX and PyTorch backends.

Notation in the shape comments: `B` batch, `N` query positions (L, HW or THW), `M` key positions after pooling,
`C` input channels, `D` intermediate_dim (`C` for the Gaussian keys), `G` the number of temporal groups.
"""
import math

import keras
from keras import ops

from nonlocal_zoo.layers.affine import Affine
from nonlocal_zoo.layers.folding import batchnorm_affine, bias_add, folding_enabled

MODE_ALIASES = {
    "embedded": "embedded",
    "embedded_gaussian": "embedded",
    "softmax": "embedded",
    "dot": "dot",
    "dot_product": "dot",
    "gaussian": "gaussian",
    "concatenate": "concatenate",
    "concatenation": "concatenate",
}
POOL_POSITIONS = ("input", "projection")
NORMALIZATIONS = ("batch", "affine", None)
AFFINITY_BYTES = 4  # the affinity is float32, also under mixed precision


def _positive_int_or_none(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer or None. Received: {name}={value!r}")
    return value


def _is_static(*values):
    return all(isinstance(v, int) for v in values)


def _ceil_div(a, b):
    """ceil(a / b) for Python ints or (dynamic) integer tensors."""
    return (a + b - 1) // b


def _recomputed(fn):
    """`fn` whose intermediates are recomputed in the backward pass instead of stored (gradient checkpointing).

    Used for the steps of the chunked attention: without it, differentiating the steps keeps every step's softmax
    output, i.e. the whole affinity again.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.recompute_grad(fn)
    if backend == "jax":
        import jax

        return jax.checkpoint(fn)
    if backend == "torch":
        from torch.utils.checkpoint import checkpoint

        return lambda *args: checkpoint(fn, *args, use_reentrant=False)
    return fn


def _sequential_map(fn, elems):
    """`ops.map` that runs one step at a time, so that only one step's intermediates are alive.

    On TensorFlow, `tf.map_fn` runs up to 10 iterations in parallel in graph mode, which multiplies the peak
    memory by up to 10, and `keras.ops.map` calls `fn` once more to infer the output signature; both are avoided.
    Every step returns float32.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.map_fn(fn, elems, fn_output_signature=tf.float32, parallel_iterations=1)
    return ops.map(fn, elems)


@keras.saving.register_keras_serializable(package="nonlocal_zoo")
class NonLocalBlock(keras.layers.Layer):
    """Non-local block for 1-D, 2-D and 3-D channels-last feature maps, in the paper's four instantiations.

    `y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j)` and `z_i = x_i + bn(out(y_i))` (Wang et al., 2018, eq. 1 and 6).
    The keys and values `x_j` are max-pooled over the spatial axes by `compression` (the paper's subsampling trick).

    Args:
        intermediate_dim: channels `D` of the theta/phi/g embeddings. Defaults to `None`, meaning `C // 2`.
        compression: max-pool size (kernel = stride) of the key/value positions. An int `c` pools the spatial axes
            only: `(1, c, c)` for 3-D inputs, `(c, c)` for 2-D, `(c,)` for 1-D; a tuple gives the pool per axis;
            `1` or `None` disables pooling. Defaults to `2`.
        mode: `"embedded"` (embedded Gaussian: softmax over keys of theta_i . phi_j, times `D**-0.5` when
            `use_scale`), `"dot"` (theta_i . phi_j divided by the number of keys), `"gaussian"` (softmax of
            x_i . x_j on the raw input, no theta/phi; scaled by `C**-0.5` when `use_scale`) or `"concatenate"`
            (ReLU(w . [theta_i, phi_j]) divided by the number of keys). The aliases `"embedded_gaussian"`,
            `"softmax"`, `"dot_product"` and `"concatenation"` are accepted. Defaults to `"embedded"`.
        add_residual: whether to return `x + bn(out(y))` (the block) or only `bn(out(y))`. Defaults to `True`.
        pool_position: `"input"` pools `x` before the phi and g projections (official Caffe2, PySlowFast);
            `"projection"` pools after them (mmaction2 / mmcv). Defaults to `"input"`.
        use_scale: scale the softmax logits by `D**-0.5` (`C**-0.5` in Gaussian mode). Defaults to `True`.
        use_bias: biases in the theta, phi, g and out projections. Defaults to `True`.
        out_use_bias: bias in the `out` projection; `None` follows `use_bias`. mmaction2 checkpoints have
            biased theta/phi/g but an unbiased `out`. Defaults to `None`.
        normalization: `"batch"` (BatchNormalization after `out`, epsilon 1e-5, gamma initialised to zero so a
            fresh block is the identity), `"affine"` (frozen-BN checkpoints: per-channel scale and bias, scale
            initialised to zero) or `None` (no normalization; `out` is zero-initialised instead). Defaults to
            `"batch"`.
        temporal_group_size: for 3-D inputs, attend only within groups of this many consecutive frames (the
            official long-clip setting). `T` must be divisible by it. Defaults to `None` (one group).
        chunk_size: exact memory-bounded attention. An int computes the attention for at most this many query
            positions of every clip at a time: the `(B, N, M)` float32 affinity buffer shrinks to
            `(B, chunk_size, M)`. `"auto"` picks the steps from `memory_budget_mb`: whole clips at a time while
            they fit, else one clip and as many query rows as fit, so the buffer stays within the budget for any
            clip length and batch size (also when they are unknown when the model is traced). The softmax is over
            the keys of each query, so either way the result equals the unchunked one up to float rounding. The
            steps run one after another (`ops.map`); they cost a few percent of time when they are large. In the
            backward pass the query chunks recompute their affinity instead of storing it (gradient checkpointing:
            `tf.recompute_grad`, `jax.checkpoint`, `torch.utils.checkpoint`), so training memory is bounded too,
            for about 20% more time in the block's backward pass.
            Defaults to `None` (the whole affinity at once). The `"dot"` mode never forms the affinity
            (it computes `theta (phi^T g)`), so it ignores this argument.
        memory_budget_mb: the affinity buffer budget, in MB (10**6 bytes), for `chunk_size="auto"`. The transient
            peak of one step is about twice the buffer (logits and softmax output). Defaults to `64`.
        kernel_initializer: initializer of the projection kernels. Defaults to `RandomNormal(stddev=0.01)`, the
            official initialisation.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, `trainable`).

    Sublayers mirror the checkpoint blob names: `theta`, `phi`, `g`, `out`, `bn` and, in concatenation mode,
    `concat_project` (a `2 * D -> 1` projection without bias).

    Example:
        >>> x = keras.Input((8, 14, 14, 512))
        >>> y = NonLocalBlock(name="nonlocal_conv4_1")(x)  # embedded Gaussian, keys pooled 1x2x2
        >>> model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(32, 3, padding="same"),
        ...                           NonLocalBlock(mode="dot", compression=None)])

    Reference:
        Wang, Girshick, Gupta, He. Non-local Neural Networks. CVPR 2018. https://arxiv.org/abs/1711.07971
    """

    def __init__(
        self,
        intermediate_dim=None,
        compression=2,
        mode="embedded",
        add_residual=True,
        *,
        pool_position="input",
        use_scale=True,
        use_bias=True,
        out_use_bias=None,
        normalization="batch",
        temporal_group_size=None,
        chunk_size=None,
        memory_budget_mb=64,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in MODE_ALIASES:
            raise ValueError(f"Unknown non-local `mode`. Expected one of {sorted(MODE_ALIASES)}. Received: mode={mode!r}")
        if pool_position not in POOL_POSITIONS:
            raise ValueError(f"`pool_position` must be one of {POOL_POSITIONS}. Received: pool_position={pool_position!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"`normalization` must be one of {NORMALIZATIONS}. Received: normalization={normalization!r}"
            )
        if isinstance(compression, (list, tuple)):
            compression = tuple(compression)
            if not compression or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in compression):
                raise ValueError(
                    f"`compression` must be a positive int, a tuple of positive ints or None. "
                    f"Received: compression={compression!r}"
                )
        else:
            compression = _positive_int_or_none("compression", compression)
        self.intermediate_dim = _positive_int_or_none("intermediate_dim", intermediate_dim)
        self.compression = compression
        self.mode = MODE_ALIASES[mode]
        self.add_residual = bool(add_residual)
        self.pool_position = pool_position
        self.use_scale = bool(use_scale)
        self.use_bias = bool(use_bias)
        self.out_use_bias = None if out_use_bias is None else bool(out_use_bias)
        self.normalization = normalization
        self.temporal_group_size = _positive_int_or_none("temporal_group_size", temporal_group_size)
        if not (chunk_size is None or (isinstance(chunk_size, str) and chunk_size == "auto") or (
            isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 1
        )):
            raise ValueError(
                f"`chunk_size` must be a positive integer, \"auto\" or None. Received: chunk_size={chunk_size!r}"
            )
        self.chunk_size = chunk_size
        if isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb, (int, float)) or not (
            memory_budget_mb > 0 and math.isfinite(memory_budget_mb)
        ):
            raise ValueError(
                f"`memory_budget_mb` must be a positive number. Received: memory_budget_mb={memory_budget_mb!r}"
            )
        self.memory_budget_mb = memory_budget_mb
        if kernel_initializer is None:
            kernel_initializer = keras.initializers.RandomNormal(stddev=0.01)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.supports_masking = False

    # ------------------------------------------------------------------ build
    def _pool_size(self, rank):
        """Max-pool size over the (rank - 2) position axes, or None for no pooling."""
        axes = rank - 2
        if self.compression is None or self.compression == 1:
            return None
        if isinstance(self.compression, tuple):
            if len(self.compression) != axes:
                raise ValueError(
                    f"A `compression` tuple needs one entry per position axis ({axes} for a rank-{rank} input). "
                    f"Received: compression={self.compression!r}"
                )
            pool = self.compression
        else:
            pool = (1,) * (axes - 2) + (self.compression,) * min(axes, 2)
        return None if all(p == 1 for p in pool) else pool

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        rank = len(input_shape)
        if rank not in (3, 4, 5):
            raise ValueError(
                "NonLocalBlock expects a channels-last input of rank 3 (B, L, C), 4 (B, H, W, C) or "
                f"5 (B, T, H, W, C). Received: input_shape={input_shape}"
            )
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"NonLocalBlock needs a known channel count. Received: input_shape={input_shape}")
        self.pool_size = self._pool_size(rank)
        if self.pool_size is not None:
            for axis, (size, pool) in enumerate(zip(input_shape[1:-1], self.pool_size)):
                if size is not None and pool > size:
                    raise ValueError(
                        f"`compression` pools {pool} positions on axis {axis + 1}, but the feature map has only {size}. "
                        f"Received: compression={self.compression!r}, input_shape={input_shape}"
                    )
        if self.temporal_group_size is not None:
            if rank != 5:
                raise ValueError(
                    "`temporal_group_size` needs a rank-5 (B, T, H, W, C) input. "
                    f"Received: temporal_group_size={self.temporal_group_size}, input_shape={input_shape}"
                )
            frames = input_shape[1]
            if frames is not None and frames % self.temporal_group_size:
                raise ValueError(
                    f"`temporal_group_size` must divide the number of frames T={frames}. "
                    f"Received: temporal_group_size={self.temporal_group_size}"
                )
        dim = self.intermediate_dim or max(channels // 2, 1)
        self.dim = dim
        out_bias = self.use_bias if self.out_use_bias is None else self.out_use_bias

        def projection(name, units, use_bias, initializer=self.kernel_initializer, dtype=self.dtype_policy):
            return keras.layers.Dense(units, use_bias=use_bias, kernel_initializer=initializer, name=name, dtype=dtype)

        # `out` and `bn` run in the variable dtype (float32 under mixed precision): y grows like |x|^3 in dot mode
        # (|x|^2 in concatenation mode) and overflowed float16 before bn brought it back into range.
        branch_dtype = self.dtype_policy.variable_dtype

        if self.mode != "gaussian":
            self.theta = projection("theta", dim, self.use_bias)
            self.phi = projection("phi", dim, self.use_bias)
            self.theta.build((None, channels))
            self.phi.build((None, channels))
        self.g = projection("g", dim, self.use_bias)
        self.g.build((None, channels))
        out_init = "zeros" if self.normalization is None else self.kernel_initializer
        self.out = projection("out", channels, out_bias, out_init, dtype=branch_dtype)
        self.out.build((None, dim))
        if self.mode == "concatenate":
            self.concat_project = projection("concat_project", 1, False)
            self.concat_project.build((None, 2 * dim))
        if self.normalization == "batch":
            self.bn = keras.layers.BatchNormalization(
                epsilon=1e-5, momentum=0.9, gamma_initializer="zeros", name="bn", dtype=branch_dtype
            )
            self.bn.build(input_shape)
        elif self.normalization == "affine":
            self.bn = Affine(scale_initializer="zeros", name="bn", dtype=branch_dtype)
            self.bn.build(input_shape)
        self.built = True

    # ------------------------------------------------------------------ call
    def _pool(self, x):
        if self.pool_size is None:
            return x
        if keras.backend.standardize_dtype(x.dtype) == "float16":
            # TensorFlow has no CPU MaxPool3D kernel for float16 (mixed_float16 failed with NotFoundError).
            # A max is exact in any float dtype, so pooling in float32 and casting back gives the same values.
            x = ops.cast(x, "float32")
            pooled = ops.max_pool(x, pool_size=self.pool_size, strides=self.pool_size, padding="valid")
            return ops.cast(pooled, "float16")
        return ops.max_pool(x, pool_size=self.pool_size, strides=self.pool_size, padding="valid")

    def _attend(self, query, key, value, num_keys):
        """Non-local aggregation for one chunk of queries, in float32.

        query (B, Q, D), key (B, M, D), value (B, M, Dv) -> (B, Q, Dv).
        """
        if self.mode == "concatenate":
            # ReLU(w . [theta_i, phi_j]) = ReLU(w_theta . theta_i + w_phi . phi_j): no (Q, M, 2D) tensor needed.
            kernel = ops.cast(self.concat_project.kernel, "float32")  # (2D, 1)
            q_term = ops.matmul(query, kernel[: self.dim])  # (B, Q, D) x (D, 1) -> (B, Q, 1)
            k_term = ops.matmul(key, kernel[self.dim :])  # (B, M, D) x (D, 1) -> (B, M, 1)
            affinity = ops.relu(q_term + ops.transpose(k_term, (0, 2, 1))) / num_keys  # (B, Q, M)
        else:
            if self.use_scale:
                # Scaling the (Q, D) queries instead of the (Q, M) logits: one less pass over the largest tensor.
                query = query * (1.0 / math.sqrt(key.shape[-1]))
            affinity = ops.einsum("bqd,bmd->bqm", query, key)  # (B, Q, D) x (B, M, D) -> (B, Q, M)
            affinity = ops.softmax(affinity, axis=-1)
        return ops.einsum("bqm,bmd->bqd", affinity, value)  # (B, Q, M) x (B, M, Dv) -> (B, Q, Dv)

    def _steps(self, batch, num_queries, num_keys):
        """(clips, rows): how many clips and query rows per clip one attention step takes, or None for all."""
        if self.chunk_size is None:
            return None, None
        if self.chunk_size != "auto":
            return None, self.chunk_size
        budget = int(self.memory_budget_mb * 1e6)
        row_bytes = AFFINITY_BYTES * num_keys  # one query's affinity row
        if _is_static(num_queries, num_keys) and num_queries * row_bytes <= budget:
            clips = max(1, budget // (num_queries * row_bytes))  # whole clips at a time
            return (None if _is_static(batch) and batch <= clips else clips), None
        # One clip at a time, as many query rows as fit. With unknown sizes this is decided at run time.
        rows = budget // row_bytes
        rows = max(1, rows) if _is_static(rows) else ops.maximum(rows, 1)
        return 1, rows

    def _attend_in_steps(self, query, key, value, num_keys, clips, rows):
        """`_attend` over steps of `clips` clips x `rows` query positions: the affinity buffer is (clips, rows, M).

        `None` means all clips or all rows. The steps are balanced (ceil-divided) so that padding stays small.
        """
        batch, n = ops.shape(query)[0], ops.shape(query)[1]
        dim, dim_v = query.shape[-1], value.shape[-1]
        chunks = 1 if rows is None else _ceil_div(n, rows)
        if rows is not None:
            rows = _ceil_div(n, chunks)

        step = _recomputed(lambda q, k, v: self._attend(q, k, v, num_keys))

        def attend_clips(q, k, v):
            """q (c, N, D), k (c, M, D), v (c, M, Dv) -> (c, N, Dv), `rows` queries at a time."""
            if _is_static(chunks) and chunks == 1:
                return step(q, k, v)
            c = ops.shape(q)[0]
            # Pad the queries to a whole number of chunks; padded rows are computed and dropped (rows are independent).
            q = ops.pad(q, ((0, 0), (0, chunks * rows - n), (0, 0)))
            q = ops.reshape(q, (c, chunks, rows, dim))  # (c, N', D) -> (c, K, R, D)
            q = ops.transpose(q, (1, 0, 2, 3))  # (c, K, R, D) -> (K, c, R, D)
            out = _sequential_map(lambda qc: step(qc, k, v), q)  # (K, c, R, Dv)
            out = ops.transpose(out, (1, 0, 2, 3))  # (K, c, R, Dv) -> (c, K, R, Dv)
            out = ops.reshape(out, (c, chunks * rows, dim_v))  # (c, K, R, Dv) -> (c, N', Dv)
            return out[:, :n]

        groups = 1 if clips is None else _ceil_div(batch, clips)
        if _is_static(groups) and groups == 1:
            return attend_clips(query, key, value)
        clips = _ceil_div(batch, groups)
        padding = groups * clips - batch

        def grouped(t):
            # Pad the batch to whole groups: (B, P, E) -> (G, c, P, E).
            t = ops.pad(t, ((0, padding), (0, 0), (0, 0)))
            return ops.reshape(t, (groups, clips, ops.shape(t)[1], t.shape[-1]))

        out = _sequential_map(lambda qkv: attend_clips(*qkv), (grouped(query), grouped(key), grouped(value)))
        out = ops.reshape(out, (groups * clips, n, dim_v))  # (G, c, N, Dv) -> (B', N, Dv)
        return out[:batch]

    def _aggregate(self, query, key, value):
        """y = 1/C(x) sum_j f(query_i, key_j) value_j for all queries, in steps when `chunk_size` is set."""
        num_keys = ops.cast(ops.shape(key)[1], "float32")
        if self.mode == "dot":
            # (theta phi^T) g / M == theta (phi^T g) / M: the (N, M) affinity is never formed.
            context = ops.einsum("bmd,bme->bde", key, value)  # (B, M, D) x (B, M, Dv) -> (B, D, Dv)
            return ops.einsum("bnd,bde->bne", query, context) / num_keys  # (B, N, D) x (B, D, Dv) -> (B, N, Dv)
        static = lambda i, t: t.shape[i] if t.shape[i] is not None else ops.shape(t)[i]  # noqa: E731
        clips, rows = self._steps(static(0, query), static(1, query), static(1, key))
        if clips is None and (rows is None or (_is_static(rows, query.shape[1]) and query.shape[1] <= rows)):
            return self._attend(query, key, value, num_keys)
        return self._attend_in_steps(query, key, value, num_keys, clips, rows)

    def call(self, inputs, training=None):
        x = inputs
        shape = ops.shape(x)
        channels = x.shape[-1]
        group = self.temporal_group_size
        if group is not None:
            # (B, T, H, W, C) -> (B * T / G, G, H, W, C): attention stays within each group of G frames.
            x = ops.reshape(x, (-1, group, shape[2], shape[3], channels))
        batch = ops.shape(x)[0]
        pooled = self._pool(x) if self.pool_position == "input" else x
        fused = self._fused_projections(x, pooled, training)
        if fused is not None:
            query, key, value = fused
        elif self.mode == "gaussian":
            query = x
            key = self._pool(x)
        else:
            query = self.theta(x)
            key = self.phi(pooled)
        if fused is None:
            value = self.g(pooled)
        if self.pool_position == "projection":
            value = self._pool(value)
            if self.mode != "gaussian":
                key = self._pool(key)
        # Flatten the positions: (B, *S, D) -> (B, N, D); keys and values (B, *S', D) -> (B, M, D).
        query = ops.reshape(query, (batch, -1, query.shape[-1]))
        key = ops.reshape(key, (batch, -1, key.shape[-1]))
        value = ops.reshape(value, (batch, -1, value.shape[-1]))
        # The affinity and softmax are computed in float32, also under mixed precision.
        y = self._aggregate(ops.cast(query, "float32"), ops.cast(key, "float32"), ops.cast(value, "float32"))
        folded = self._folded_output(training)
        if folded is not None:
            # bn(out(y)) == y W' + b' at inference: one matmul with a fused bias, no pass of the normalization over
            # the (N, C) map. (B, N, D) -> (B * N, D) x (D, C) -> (B * N, C) -> (B, *S, C), the input layout.
            kernel, bias = folded
            z = bias_add(ops.matmul(ops.reshape(y, (-1, self.dim)), kernel), bias)
            z = ops.reshape(z, shape)
        else:
            # (B, N, D) -> (B, *S, D): back to the (ungrouped) input layout.
            y = ops.reshape(y, tuple(shape[i] for i in range(len(x.shape) - 1)) + (self.dim,))
            z = self.out(y)
            if self.normalization == "batch":
                z = self.bn(z, training=training)
            elif self.normalization == "affine":
                z = self.bn(z)
        z = ops.cast(z, self.compute_dtype)
        return inputs + z if self.add_residual else z

    def _fused_projections(self, x, pooled, training):
        """`(query, key, value)` with the projections that read the same input computed as one matmul, or None.

        At inference theta, phi and g are three `Dense` maps of `x` (pooling after the projections, the mmaction2
        flavour) or phi and g two maps of the pooled input (pooling before, the official flavour): concatenating
        their kernels makes one GEMM of `3D` (`2D`) output columns instead of three (two) thin ones of `D`, one
        pass over the input instead of several, and a bias fused into the matmul. Each output column is the same
        dot product as before (equal up to float32 summation order). None in gaussian mode (no theta/phi), while
        training, for LoRA-enabled or quantized projections and inside
        `nonlocal_zoo.layers.folding.folding_disabled()`.
        """
        if self.mode == "gaussian" or training or not folding_enabled():
            return None
        layers = (self.theta, self.phi, self.g)
        if any(getattr(p, "lora_enabled", False) or getattr(p, "quantization_mode", None) for p in layers):
            return None
        fused = layers if self.pool_position == "projection" else layers[1:]  # the maps of the same input
        dtype = self.compute_dtype
        source = ops.cast(x if len(fused) == 3 else pooled, dtype)
        kernel = ops.concatenate([ops.cast(p.kernel, dtype) for p in fused], axis=-1)  # (C, k D)
        # (B, *S, C) -> (B * S, C) x (C, k D) -> (B * S, k D) -> k x (B, *S, D)
        flat = ops.matmul(ops.reshape(source, (-1, source.shape[-1])), kernel)
        if self.use_bias:
            flat = bias_add(flat, ops.concatenate([ops.cast(p.bias, "float32") for p in fused], axis=-1))
        spatial = ops.shape(source)[:-1]
        parts = [ops.reshape(part, tuple(spatial[i] for i in range(len(source.shape) - 1)) + (self.dim,))
                 for part in ops.split(flat, len(fused), axis=-1)]
        if len(fused) == 3:
            return tuple(parts)
        return self.theta(x), parts[0], parts[1]

    def _folded_output(self, training):
        """`(kernel (D, C), bias (C,))` of `bn(out(y))` folded into one affine map, float32, or None.

        At inference the normalization after `out` is a per-channel `z * s + t` (BatchNormalization with its moving
        statistics: `s = gamma / sqrt(var + eps)`, `t = beta - mean * s`; `Affine`: its scale and bias), so
        `bn(y W + b) = y (W s) + (b s + t)`: the same values up to float32 rounding. None while BatchNormalization
        uses batch statistics (training), for a LoRA-enabled or quantized `out` and inside
        `nonlocal_zoo.layers.folding.folding_disabled()`.
        """
        if not folding_enabled() or (self.normalization == "batch" and training and self.bn.trainable):
            return None
        if getattr(self.out, "lora_enabled", False) or getattr(self.out, "quantization_mode", None):
            return None
        kernel = ops.cast(self.out.kernel, "float32")  # (D, C)
        bias = ops.cast(self.out.bias, "float32") if self.out.bias is not None else None
        if self.normalization is None:
            return kernel, (ops.zeros((kernel.shape[-1],), "float32") if bias is None else bias)
        if self.normalization == "batch":
            scale, offset = batchnorm_affine(self.bn)
        else:
            scale, offset = ops.cast(self.bn.scale, "float32"), ops.cast(self.bn.bias, "float32")
        return kernel * scale, offset if bias is None else bias * scale + offset

    def affinity_buffer_bytes(self, input_shape):
        """Bytes of the largest float32 affinity buffer that one call allocates for `input_shape` (0 in "dot" mode).

        The buffer is `(clips, rows, M)`: with `chunk_size=None` all clips and all `N` query positions, with an int
        `chunk_size` all clips and `chunk_size` rows, with `"auto"` at most `memory_budget_mb`. One step's transient
        peak is about twice this (the logits and the softmax output).

        Args:
            input_shape: the static input shape, batch included, e.g. `(1, 32, 28, 28, 512)`.

        Example:
            >>> NonLocalBlock(chunk_size="auto").affinity_buffer_bytes((1, 32, 28, 28, 512)) <= 64e6
            True
            >>> NonLocalBlock().affinity_buffer_bytes((1, 32, 28, 28, 512))  # 25088 queries x 6272 keys
            629407744
        """
        input_shape = tuple(input_shape)
        if len(input_shape) not in (3, 4, 5) or any(not isinstance(d, int) for d in input_shape[:-1]):
            raise ValueError(
                "`affinity_buffer_bytes` needs a static input shape of rank 3, 4 or 5. "
                f"Received: input_shape={input_shape}"
            )
        if self.mode == "dot":
            return 0
        batch, sizes = input_shape[0], list(input_shape[1:-1])
        if self.temporal_group_size is not None and len(sizes) == 3:
            batch, sizes[0] = batch * (sizes[0] // self.temporal_group_size), self.temporal_group_size
        pool = self._pool_size(len(input_shape)) or (1,) * len(sizes)
        n, m = math.prod(sizes), math.prod(s // p for s, p in zip(sizes, pool))
        clips, rows = self._steps(batch, n, m)
        clips = batch if clips is None else _ceil_div(batch, _ceil_div(batch, clips))
        rows = n if rows is None or rows >= n else _ceil_div(n, _ceil_div(n, rows))
        return AFFINITY_BYTES * clips * rows * m

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "compression": list(self.compression) if isinstance(self.compression, tuple) else self.compression,
                "mode": self.mode,
                "add_residual": self.add_residual,
                "pool_position": self.pool_position,
                "use_scale": self.use_scale,
                "use_bias": self.use_bias,
                "out_use_bias": self.out_use_bias,
                "normalization": self.normalization,
                "temporal_group_size": self.temporal_group_size,
                "chunk_size": self.chunk_size,
                "memory_budget_mb": self.memory_budget_mb,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
