"""Non-local attention maps: where a non-local block looks from one query position (the paper's Fig. 1 and 3).

For a query position `(t, y, x)` of the clip given to the model, the model is run up to a chosen `NonLocalBlock`,
and that block's pairwise weights `f(x_i, x_j) / C(x)` are recomputed from its own `theta`/`phi` projections (and
key pooling) for the query's feature position `i` over every key position `j`:

- `embedded`: softmax over keys of `theta_i . phi_j` (times `D**-0.5` when `use_scale`);
- `gaussian`: softmax over keys of `x_i . x_j` (times `C**-0.5` when `use_scale`);
- `dot`: `theta_i . phi_j / M` and `concatenate`: `ReLU(w . [theta_i, phi_j]) / M` (not normalised to sum 1).

These are exactly the weights the block uses: `block output at i = x_i + bn(out(sum_j w_j g_j))`. The weights are
drawn as heatmaps over the frames (upsampled to frame size), the strongest key positions are circled, the query is
marked with a cross, and the frames are written as a PNG contact sheet and an animated GIF.

Example:
    >>> from nonlocal_zoo.demo import load_demo_model, demo_clip
    >>> model, clip = load_demo_model(), demo_clip("moving_right")
    >>> att = attention_map(model, clip, query=(4, 32, 32), preprocess=demo_preprocess)
    >>> paths = save_attention(att, "attention_out")  # {"png": ..., "gif": ...}
"""
import dataclasses
import math
import os

import numpy as np

from nonlocal_zoo import _compat

DEFAULT_TOP_K = 8
"""Strongest key positions circled on the frames."""


@dataclasses.dataclass
class AttentionMap:
    """Non-local weights of one query position.

    Attributes:
        weights: float `(Tk, Hk, Wk)` weights over the key grid of the block (after key pooling); with
            `temporal_group_size`, only the query's group of frames (`frame_offset` says where it starts).
        frames: uint8 RGB `(T, H, W, 3)` frames the map is drawn on (the model-input frames).
        query: `(t, y, x)` in frame coordinates.
        feature_query: `(t, y, x)` of the query on the block's input feature map.
        feature_shape: `(T', H', W')` of the block's input feature map.
        frame_offset: first feature frame of the keys (non-zero only with temporal groups).
        block: the block's name.
        mode: the block's non-local mode.
        predictions: the model's output for the clip (one row), or `None`.
    """

    weights: np.ndarray
    frames: np.ndarray
    query: tuple
    feature_query: tuple
    feature_shape: tuple
    frame_offset: int
    block: str
    mode: str
    predictions: np.ndarray = None

    def frame_weights(self):
        """The weights upsampled to the frames: float `(T, H, W)`, zero on frames outside the query's group."""
        import cv2

        num_frames, height, width = self.frames.shape[:3]
        out = np.zeros((num_frames, height, width), np.float32)
        for t, k in enumerate(self.key_frames()):
            if k is not None:
                out[t] = cv2.resize(self.weights[k].astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        return out

    def key_frames(self):
        """For each input frame, the index of the key frame that covers it, or `None` (outside the query's group)."""
        num_frames, key_frames = self.frames.shape[0], self.weights.shape[0]
        # Key frame k covers feature frames [offset + k * s, offset + (k + 1) * s) with s = T' / Tk (temporal
        # key pooling); feature frame f covers input frames [f * T / T', (f + 1) * T / T').
        span = self.feature_shape[0] / key_frames
        result = []
        for t in range(num_frames):
            k = math.floor((t * self.feature_shape[0] / num_frames - self.frame_offset) / span)
            result.append(k if 0 <= k < key_frames else None)
        return result

    def top_keys(self, k=DEFAULT_TOP_K):
        """The `k` strongest key positions as `(weight, t, y, x)` in frame coordinates (key cell centres).

        A key frame that covers several input frames is reported at its first input frame.
        """
        num_frames, height, width = self.frames.shape[:3]
        key_t, key_h, key_w = self.weights.shape
        order = np.argsort(self.weights, axis=None)[::-1][:k]
        span = self.feature_shape[0] / key_t
        result = []
        for index in order:
            kt, ky, kx = np.unravel_index(index, self.weights.shape)
            t = math.ceil((self.frame_offset + kt * span) * num_frames / self.feature_shape[0])
            y = (ky + 0.5) * height / key_h
            x = (kx + 0.5) * width / key_w
            result.append((float(self.weights[kt, ky, kx]), min(t, num_frames - 1), y, x))
        return result


# ------------------------------------------------------------------------------------------------ model access


def nonlocal_blocks(model):
    """The `NonLocalBlock` layers of a model, in call order, searching nested models.

    Returns:
        A dict `{name: layer}`.

    Example:
        >>> list(nonlocal_blocks(model))
        ['nonlocal_conv3_1', 'nonlocal_conv4_1']
    """
    import keras

    from nonlocal_zoo.layers import NonLocalBlock

    found = {}

    def visit(layer):
        if isinstance(layer, NonLocalBlock):
            found.setdefault(layer.name, layer)
        elif isinstance(layer, keras.Model) or hasattr(layer, "layers"):
            for sub in getattr(layer, "layers", []):
                visit(sub)

    visit(model)
    return found


def _select_block(model, block):
    blocks = nonlocal_blocks(model)
    if not blocks:
        raise ValueError(f"The model has no NonLocalBlock layer. Received: model={getattr(model, 'name', model)!r}")
    if block is None:
        return list(blocks.values())[-1]
    if isinstance(block, int) and not isinstance(block, bool):
        names = list(blocks)
        if not -len(names) <= block < len(names):
            raise ValueError(f"`block` index out of range for the {len(names)} blocks {names}. Received: block={block}")
        return blocks[names[block]]
    if block not in blocks:
        raise ValueError(f"Unknown non-local block. Expected one of {list(blocks)}. Received: block={block!r}")
    return blocks[block]


class _RecordInputs:
    """Records the input of one layer while the model runs (eagerly), for any model structure.

    The layer's `call` is shadowed by an instance attribute for the duration of the `with` block; Keras' `__call__`
    looks `call` up on the instance, so nested and subclassed models need no graph surgery (private Keras
    behaviour: `nonlocal_zoo._compat.set_instance_call`, version-checked).
    """

    def __init__(self, layer):
        self.layer = layer
        self.inputs = None

    def __enter__(self):
        original = type(self.layer).call.__get__(self.layer)

        def call(inputs, *args, **kwargs):
            self.inputs = inputs
            return original(inputs, *args, **kwargs)

        _compat.set_instance_call(self.layer, call)
        return self

    def __exit__(self, *exc):
        _compat.clear_instance_call(self.layer)
        return False


# ------------------------------------------------------------------------------------------------ the weights


def _to_numpy(x):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def block_attention(block, features, query):
    """Recomputes a non-local block's weights for one query position from its input feature map.

    Args:
        block: a built `NonLocalBlock` with a rank-5 input.
        features: the block's input, `(1, T', H', W', C)` (array or tensor).
        query: `(t, y, x)` on the feature map.

    Returns:
        `(weights, frame_offset)`: float64 `(Tk, Hk, Wk)` weights over the (pooled) key grid, and the first feature
        frame of the keys (the start of the query's temporal group, else 0).

    Example:
        >>> weights, _ = block_attention(block, features, (2, 3, 3))
    """
    from keras import ops

    shape = tuple(features.shape)
    if len(shape) != 5 or shape[0] != 1:
        raise ValueError(f"`features` must have shape (1, T, H, W, C). Received: shape={shape}")
    t, y, x = (int(v) for v in query)
    if not (0 <= t < shape[1] and 0 <= y < shape[2] and 0 <= x < shape[3]):
        raise ValueError(f"`query` must lie on the {shape[1:4]} feature map. Received: query={tuple(query)}")
    offset = 0
    if block.temporal_group_size is not None:  # keys come only from the query's group of frames
        group = block.temporal_group_size
        offset = (t // group) * group
        features = features[:, offset:offset + group]
        t -= offset

    def pool(v):
        if block.pool_size is None:
            return v
        return ops.max_pool(v, pool_size=block.pool_size, strides=block.pool_size, padding="valid")

    point = features[:, t, y, x]  # (1, C)
    if block.mode == "gaussian":
        q = _to_numpy(point)[0]  # (C,)
        keys = _to_numpy(pool(features))[0]  # (Tk, Hk, Wk, C)
    else:
        q = _to_numpy(block.theta(point))[0]  # (D,)
        if block.pool_position == "input":
            keys = _to_numpy(block.phi(pool(features)))[0]  # (Tk, Hk, Wk, D)
        else:
            keys = _to_numpy(pool(block.phi(features)))[0]
    grid = keys.shape[:3]
    keys = keys.reshape(-1, keys.shape[-1])  # (Tk, Hk, Wk, D) -> (M, D)
    num_keys = keys.shape[0]
    if block.mode == "concatenate":
        w = _to_numpy(block.concat_project.kernel)[:, 0]  # (2D,)
        dim = q.shape[0]
        weights = np.maximum(q @ w[:dim] + keys @ w[dim:], 0.0) / num_keys  # (M,)
    else:
        logits = keys @ q  # (M, D) x (D,) -> (M,)
        if block.mode == "dot":
            weights = logits / num_keys
        else:
            if block.use_scale:
                logits = logits / math.sqrt(keys.shape[-1])
            weights = np.exp(logits - logits.max())
            weights /= weights.sum()
    return weights.reshape(grid), offset


def attention_map(model, clip, query, *, block=None, preprocess=None):
    """Computes the non-local attention map of one query position of a clip.

    Args:
        model: a Keras model with at least one `NonLocalBlock`.
        clip: uint8 RGB frames `(T, H, W, 3)`, exactly as the model sees them (sampled, resized, cropped).
        query: `(t, y, x)`: frame index, row and column in `clip`.
        block: name or index of the block (see `nonlocal_blocks(model)`); `None` takes the last one.
        preprocess: function mapping the uint8 clip to the model input (e.g. the preset's normalisation);
            `None` feeds `clip` as float32.

    Returns:
        An `AttentionMap`.

    Example:
        >>> att = attention_map(model, clip, (4, 32, 32), block="nonlocal_conv4_1")
        >>> att.top_keys(3)
    """
    clip = np.asarray(clip)
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"`clip` must be (T, H, W, 3) frames. Received: shape={clip.shape}")
    query = tuple(int(v) for v in query)
    if len(query) != 3 or not all(0 <= q < n for q, n in zip(query, clip.shape[:3])):
        raise ValueError(
            f"`query` must be (t, y, x) inside the clip of shape {clip.shape[:3]}. Received: query={query}"
        )
    layer = _select_block(model, block)
    inputs = clip.astype(np.float32) if preprocess is None else preprocess(clip)
    with _RecordInputs(layer) as record:
        predictions = model(np.asarray(inputs)[None], training=False)
    features = record.inputs
    if features is None:
        raise ValueError(f"The block {layer.name!r} was not called when the model ran.")
    if len(features.shape) != 5:
        raise ValueError(f"Attention maps need a video block with a (B, T, H, W, C) input. Received: {features.shape}")
    feature_shape = tuple(int(s) for s in features.shape[1:4])
    feature_query = tuple(min(q * f // n, f - 1) for q, f, n in zip(query, feature_shape, clip.shape[:3]))
    weights, offset = block_attention(layer, features, feature_query)
    predictions = _to_numpy(predictions)[0] if not isinstance(predictions, (dict, list, tuple)) else None
    return AttentionMap(
        weights=weights,
        frames=clip.astype(np.uint8),
        query=query,
        feature_query=feature_query,
        feature_shape=feature_shape,
        frame_offset=offset,
        block=layer.name,
        mode=layer.mode,
        predictions=predictions,
    )


# ------------------------------------------------------------------------------------------------ drawing


def render_frames(attention, *, top_k=DEFAULT_TOP_K, scale=None, alpha=0.55):
    """Draws the attention over the frames: heatmap overlay, strongest keys circled, query crossed.

    The heat of a key is how far its weight stands above the typical one: `(w - median) / (max - median)`, clipped
    to [0, 1], over the whole clip (so frames compare; most keys are background, so the median is the background
    level, for every mode, including the unnormalised dot-product and concatenation weights). It is upsampled
    bilinearly and drawn in OpenCV's JET colormap (red = strongest), more opaque where it is stronger.

    Args:
        attention: an `AttentionMap`.
        top_k: strongest key positions to circle. Defaults to `8`.
        scale: integer upscaling of the frames; `None` picks the smallest that makes frames at least 160 px.
        alpha: opacity of the heatmap. Defaults to `0.55`.

    Returns:
        uint8 RGB `(T, H * scale, W * scale, 3)`.
    """
    import cv2

    frames = attention.frames
    height, width = frames.shape[1:3]
    if scale is None:
        scale = max(1, math.ceil(160 / min(height, width)))
    heat = _relative_heat(attention)
    out = []
    size = (width * scale, height * scale)
    for t, frame in enumerate(frames):
        big = cv2.resize(frame, size, interpolation=cv2.INTER_NEAREST).astype(np.float32)
        h = cv2.resize(heat[t], size, interpolation=cv2.INTER_LINEAR)
        colour = cv2.applyColorMap(np.uint8(255 * h), cv2.COLORMAP_JET)[..., ::-1].astype(np.float32)
        opacity = alpha * np.sqrt(h)[..., None]  # faint where weak, `alpha` at the strongest keys
        out.append(np.ascontiguousarray((big * (1 - opacity) + colour * opacity).astype(np.uint8)))
    radius = max(3, scale * 2)
    for w, t, y, x in attention.top_keys(top_k):
        if w > 0:
            cv2.circle(out[t], (int(x * scale), int(y * scale)), radius, (255, 255, 255), 1, cv2.LINE_AA)
    qt, qy, qx = attention.query
    centre = (int((qx + 0.5) * scale), int((qy + 0.5) * scale))
    cv2.drawMarker(out[qt], centre, (255, 255, 255), cv2.MARKER_CROSS, radius * 3, 2, cv2.LINE_AA)
    for t, frame in enumerate(out):
        cv2.putText(frame, f"t={t}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return np.stack(out)


def _relative_heat(attention):
    """Per-pixel heat in [0, 1]: `(w - median) / (max - median)` of the key weights, upsampled to the frames."""
    weights = attention.weights
    median, peak = float(np.median(weights)), float(weights.max())
    if peak <= median:
        return np.zeros(attention.frames.shape[:3], np.float32)
    relative = dataclasses.replace(attention, weights=(weights - median) / (peak - median))
    heat = np.clip(relative.frame_weights(), 0.0, 1.0)  # frames outside the query's group stay 0
    return heat


def contact_sheet(frames, *, columns=8, gap=2):
    """Tiles frames `(T, H, W, 3)` into one image, `columns` per row, `gap` black pixels between them.

    The sheet is `rows * H + (rows - 1) * gap` by `cols * W + (cols - 1) * gap` pixels, with
    `cols = min(T, columns)` and `rows = ceil(T / cols)`.
    """
    frames = np.asarray(frames)
    count, height, width = frames.shape[:3]
    cols = min(count, columns)
    rows = math.ceil(count / cols)
    sheet = np.zeros((rows * height + (rows - 1) * gap, cols * width + (cols - 1) * gap, 3), np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, cols)
        sheet[r * (height + gap):r * (height + gap) + height, c * (width + gap):c * (width + gap) + width] = frame
    return sheet


def save_attention(attention, out_dir, *, name="attention", top_k=DEFAULT_TOP_K, scale=None, columns=8, fps=4):
    """Writes an attention map as a PNG contact sheet and an animated GIF.

    Args:
        attention: an `AttentionMap`.
        out_dir: folder to write to (created).
        name: file stem. Defaults to `"attention"`.
        top_k, scale: see `render_frames`.
        columns: frames per row of the contact sheet. Defaults to `8`.
        fps: GIF frame rate. Defaults to `4`.

    Returns:
        `{"png": path, "gif": path}`.
    """
    from PIL import Image

    frames = render_frames(attention, top_k=top_k, scale=scale)
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, f"{name}.png")
    gif = os.path.join(out_dir, f"{name}.gif")
    Image.fromarray(contact_sheet(frames, columns=columns)).save(png, optimize=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return {"png": png, "gif": gif}


def default_query(clip):
    """A query on the most salient moving point of the middle frame: `(T // 2, y, x)`.

    The point maximises the (blurred) difference between the middle frame and the per-pixel median over time,
    i.e. it sits on whatever moves or changes.

    Example:
        >>> default_query(clip)
        (4, 23, 40)
    """
    import cv2

    clip = np.asarray(clip, np.float32)
    t = clip.shape[0] // 2
    change = np.abs(clip[t] - np.median(clip, axis=0)).sum(axis=-1)  # (H, W)
    change = cv2.GaussianBlur(change, (0, 0), sigmaX=max(1.0, clip.shape[1] / 32))
    y, x = np.unravel_index(int(np.argmax(change)), change.shape)
    return (t, int(y), int(x))


def attention_for_video(model, video, *, query=None, block=None, out_dir="attention", top_k=DEFAULT_TOP_K):
    """Attention map of a video file for a loaded model, written to `out_dir` (what `nonlocal-zoo attention` runs).

    The video is sampled and cropped into one clip by the model's test protocol (centre clip, centre crop);
    `query` is in that clip's coordinates.

    Args:
        model: a `nonlocal_zoo.VideoClassifier` (its preprocessor makes the clip).
        video: a video path or uint8 `(F, H, W, 3)` frames.
        query: `(t, y, x)`; `None` uses `default_query`.
        block: block name or index; `None` is the last block.
        out_dir: output folder. Defaults to `"attention"`.
        top_k: strongest keys to circle. Defaults to `8`.

    Returns:
        `(attention_map, {"png": path, "gif": path})`.
    """
    clip = model.preprocessor.video_views(video, num_clips=1, num_crops=1)[0]  # uint8 (T, S, S, 3)
    if query is None:
        query = default_query(clip)
    att = attention_map(model, clip, query, block=block, preprocess=model.preprocessor.normalize)
    return att, save_attention(att, out_dir, top_k=top_k)


def parse_query(text):
    """Parses `"t,y,x"` into a tuple of three non-negative ints, with a clear error otherwise."""
    try:
        values = tuple(int(v) for v in str(text).replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0:
        raise ValueError(f"`query` must be three non-negative integers 't,y,x'. Received: query={text!r}")
    return values
