"""A float64 numpy transcription of the non-local block (Wang et al., CVPR 2018, eq. 1-6), used as the independent
reference in the tests. Written from the paper and DESIGN.md §2, not from our layer; it is deliberately naive
(explicit max-pool windows, explicit pairwise tensors, explicit concatenation).

Channels-last: `x` is `(B, *S, C)` with `S` the 1, 2 or 3 position axes. `params` maps names to numpy arrays:
`theta_kernel` `(C, D)`, `theta_bias` `(D,)` or None, the same for `phi`, `g`, `out_kernel` `(D, C)`, `out_bias`,
`concat_kernel` `(2D, 1)` (theta half first), and for the normalization `bn_gamma`, `bn_beta`, `bn_mean`, `bn_var`
("batch") or `bn_scale`, `bn_bias` ("affine").
"""
import itertools

import numpy as np


def pool_size_for(compression, rank):
    """The max-pool window per position axis: an int pools the spatial (last two, or only) axes; a tuple as is."""
    axes = rank - 2
    if compression is None:
        return (1,) * axes
    if isinstance(compression, (tuple, list)):
        return tuple(compression)
    if axes == 3:
        return (1, compression, compression)
    if axes == 2:
        return (compression, compression)
    return (compression,)


def max_pool(x, pool):
    """Max pool with kernel = stride = `pool`, no padding (trailing positions that do not fill a window are dropped)."""
    spatial = x.shape[1:-1]
    out_shape = tuple(s // p for s, p in zip(spatial, pool))
    out = np.empty((x.shape[0],) + out_shape + (x.shape[-1],), dtype=x.dtype)
    for index in itertools.product(*(range(n) for n in out_shape)):
        window = tuple(slice(i * p, (i + 1) * p) for i, p in zip(index, pool))
        block = x[(slice(None),) + window + (slice(None),)]  # (B, *pool, C)
        out[(slice(None),) + index + (slice(None),)] = block.reshape(x.shape[0], -1, x.shape[-1]).max(axis=1)
    return out


def _project(x, params, name):
    y = x @ params[f"{name}_kernel"]
    bias = params.get(f"{name}_bias")
    return y if bias is None else y + bias


def _softmax(a, axis=-1):
    a = a - a.max(axis=axis, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=axis, keepdims=True)


def _nonlocal_once(
    x, params, mode, pool, pool_position, use_scale, normalization, add_residual, epsilon, intermediates
):
    batch, channels = x.shape[0], x.shape[-1]
    spatial = x.shape[1:-1]

    def pooled(t):
        return max_pool(t, pool)

    # Keys (phi) and values (g): pooled before the projections ("input") or after them ("projection").
    if mode == "gaussian":
        queries = x  # theta is the identity
        keys = pooled(x)  # phi is the identity, keys subsampled
    else:
        queries = _project(x, params, "theta")
        if pool_position == "input":
            keys = _project(pooled(x), params, "phi")
        else:
            keys = pooled(_project(x, params, "phi"))
    if pool_position == "input":
        values = _project(pooled(x), params, "g")
    else:
        values = pooled(_project(x, params, "g"))

    q = queries.reshape(batch, -1, queries.shape[-1])  # (B, N, Dq)
    k = keys.reshape(batch, -1, keys.shape[-1])  # (B, M, Dq)
    v = values.reshape(batch, -1, values.shape[-1])  # (B, M, D)
    num_keys = k.shape[1]

    if mode == "concatenate":
        n, d = q.shape[1], q.shape[2]
        pairs = np.concatenate(
            [np.broadcast_to(q[:, :, None, :], (batch, n, num_keys, d)),
             np.broadcast_to(k[:, None, :, :], (batch, n, num_keys, d))],
            axis=-1,
        )  # (B, N, M, 2D): [theta_i, phi_j]
        f = np.maximum(pairs @ params["concat_kernel"][:, 0], 0.0)  # (B, N, M)
        if intermediates is not None:
            intermediates.setdefault("pairwise", []).append(f)
        weights = f / num_keys
    else:
        f = np.einsum("bnd,bmd->bnm", q, k)  # (B, N, M)
        if intermediates is not None:
            intermediates.setdefault("pairwise", []).append(f)  # unscaled theta_i . phi_j (x_i . x_j)
        if mode == "dot":
            weights = f / num_keys
        else:  # embedded Gaussian or Gaussian: softmax over the keys j
            if use_scale:
                f = f / np.sqrt(q.shape[-1])
            weights = _softmax(f, axis=-1)
    y = np.einsum("bnm,bmd->bnd", weights, v)  # (B, N, D)
    if intermediates is not None:
        intermediates.setdefault("y", []).append(y)
    y = y.reshape((batch,) + spatial + (y.shape[-1],))
    z = _project(y, params, "out")  # W_z y
    if normalization == "batch":
        z = (z - params["bn_mean"]) / np.sqrt(params["bn_var"] + epsilon) * params["bn_gamma"] + params["bn_beta"]
    elif normalization == "affine":
        z = z * params["bn_scale"] + params["bn_bias"]
    assert z.shape[-1] == channels
    return x + z if add_residual else z


def nonlocal_reference(
    x,
    params,
    *,
    mode="embedded",
    compression=2,
    pool_position="input",
    use_scale=True,
    normalization="batch",
    add_residual=True,
    temporal_group_size=None,
    epsilon=1e-5,
    intermediates=None,
):
    """`z = x + bn(W_z y)`, `y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j)`, in float64 (BatchNorm in inference mode).

    If `intermediates` is a dict, the pairwise terms `f` (B, N, M) and `y` (B, N, D) of every group are appended to its
    lists `"pairwise"` and `"y"`.
    """
    x = np.asarray(x, dtype=np.float64)
    params = {k: None if v is None else np.asarray(v, dtype=np.float64) for k, v in params.items()}
    pool = pool_size_for(compression, x.ndim)
    kwargs = dict(
        mode=mode, pool=pool, pool_position=pool_position, use_scale=use_scale, normalization=normalization,
        add_residual=add_residual, epsilon=epsilon, intermediates=intermediates,
    )
    if temporal_group_size is None:
        return _nonlocal_once(x, params, **kwargs)
    frames = x.shape[1]
    assert frames % temporal_group_size == 0
    groups = [
        _nonlocal_once(x[:, t : t + temporal_group_size], params, **kwargs)
        for t in range(0, frames, temporal_group_size)
    ]
    return np.concatenate(groups, axis=1)
