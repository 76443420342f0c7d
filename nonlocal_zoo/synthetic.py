"""Procedurally generated motion clips whose classes need temporal reasoning (the demo model's dataset).

Twelve classes in six pairs. The two classes of a pair are time reversals of each other (or, for flashing vs
steady, differ only in how brightness changes over time), and their random parameters are drawn so that any
single frame of one class is also a plausible frame of the other: a model that looks at frames one at a time
and averages cannot tell the pair apart, while a model that relates frames to each other can.

| pair | what differs over time |
|---|---|
| `moving_left` / `moving_right` | direction of a fast horizontal translation |
| `rotating_clockwise` / `rotating_counterclockwise` | direction of a clock hand's rotation |
| `approaching` / `receding` | the object grows (comes closer) or shrinks |
| `meeting` / `separating` | two objects, one above the other, move towards or away from each other |
| `flashing` / `steady` | brightness alternates between two levels, or stays at one |
| `same_direction` / `opposite_direction` | two far-apart objects move sideways in the same or opposite directions |

The last pair is relational: each object alone moves left or right with equal chance in both classes, so only
relating the two distant motions to each other tells the classes apart (out of reach of a small network's local
receptive field; a non-local block connects them directly).

Clips are rendered with OpenCV (anti-aliased shapes on a noisy coloured background, half of them with a static
distractor shape) as uint8 RGB
`(T, H, W, 3)` arrays, deterministically: clip `i` of a set with seed `s` depends only on `(s, i)`.
"""
import math

import numpy as np

from nonlocal_zoo.presets import DEMO_CLASSES  # the output order of the demo model

CLASSES = DEMO_CLASSES
"""Class names, in label order."""

SHAPES = ("circle", "square", "triangle")


def _check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _colour(rng, brightness=1.0):
    """A saturated random RGB colour (at least one strong channel), scaled by `brightness`."""
    hue = rng.uniform(0.0, 6.0)
    x = 1.0 - abs(hue % 2.0 - 1.0)
    rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(hue) % 6]
    return np.array(rgb, np.float32) * (155.0 + 100.0 * rng.uniform()) * brightness


def _background(rng, size, num_frames):
    base = rng.uniform(10.0, 70.0, size=3).astype(np.float32)
    noise = rng.normal(0.0, 6.0, size=(num_frames, size, size, 3)).astype(np.float32)
    return base + noise


def _draw_shape(canvas, shape, centre, radius, colour, angle=0.0):
    """Draws a filled, anti-aliased shape on a float32 (H, W, 3) canvas (in place, via an 8-bit sub-pixel grid)."""
    import cv2

    shift = 4  # sub-pixel precision: coordinates are multiplied by 2**shift
    scale = 1 << shift
    cx, cy = centre
    colour = tuple(float(c) for c in colour)
    if shape == "circle":
        cv2.circle(canvas, (round(cx * scale), round(cy * scale)), max(round(radius * scale), 1), colour, -1,
                   cv2.LINE_AA, shift)
        return
    corners = 4 if shape == "square" else 3
    angles = angle + np.arange(corners) * 2.0 * math.pi / corners + (math.pi / 4 if corners == 4 else -math.pi / 2)
    points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=-1)  # (corners, 2)
    cv2.fillPoly(canvas, [np.round(points * scale).astype(np.int32)], colour, cv2.LINE_AA, shift)


def _draw_hand(canvas, centre, length, angle, colour, width):
    """A clock hand: a thick line from a large hub at `centre` to its tip at `angle` (radians, image coordinates,
    y down)."""
    import cv2

    scale = 16
    cx, cy = centre
    tip = (cx + length * math.cos(angle), cy + length * math.sin(angle))
    colour = tuple(float(c) for c in colour)
    cv2.line(canvas, (round(cx * scale), round(cy * scale)), (round(tip[0] * scale), round(tip[1] * scale)), colour,
             max(int(width), 1), cv2.LINE_AA, 4)
    cv2.circle(canvas, (round(cx * scale), round(cy * scale)), round(width * 1.3 * scale), colour, -1, cv2.LINE_AA, 4)


def _forward_or_reversed(frames_fn, reverse, num_frames):
    """Calls `frames_fn(k)` for k = 0..T-1 in order, or in reverse order (the time-reversed class)."""
    order = range(num_frames - 1, -1, -1) if reverse else range(num_frames)
    return [frames_fn(k) for k in order]


def render_clip(label, *, num_frames=8, size=64, seed=0):
    """Renders one clip of a class.

    Args:
        label: class index or name from `CLASSES`.
        num_frames: frames `T` of the clip. Defaults to `8`.
        size: frame height and width in pixels (at least 32). Defaults to `64`.
        seed: an int or a sequence of ints for `numpy.random.default_rng`; the clip depends only on it.

    Returns:
        uint8 RGB array of shape `(num_frames, size, size, 3)`.

    Example:
        >>> clip = render_clip("moving_left", num_frames=8, size=64, seed=[0, 1])
        >>> clip.shape
        (8, 64, 64, 3)
    """
    name = CLASSES[_class_index(label)]
    num_frames = _check_positive_int("num_frames", num_frames, 2)
    size = _check_positive_int("size", size, 32)
    rng = np.random.default_rng(seed)
    canvas = _background(rng, size, num_frames)  # float32 (T, size, size, 3)
    if rng.uniform() < 0.5:  # a static distractor that carries no information about the class
        distractor = (SHAPES[rng.integers(len(SHAPES))], (rng.uniform(4, size - 4), rng.uniform(4, size - 4)),
                      rng.uniform(3.0, 6.0) * size / 64.0, _colour(rng, 0.6), rng.uniform(0.0, math.pi))
        for frame in canvas:
            _draw_shape(frame, *distractor)
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = _colour(rng)
    scene = _Scene(canvas, rng, name, shape, colour, size)
    _PAINTERS[name](scene)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _class_index(label):
    """The index in `CLASSES` of a class name or index; ValueError naming the label otherwise."""
    if isinstance(label, str):
        if label not in CLASSES:
            raise ValueError(f"Unknown synthetic class. Expected one of {CLASSES}. Received: label={label!r}")
        return CLASSES.index(label)
    index = int(label)
    if not 0 <= index < len(CLASSES) or isinstance(label, bool):
        raise ValueError(f"`label` must be in [0, {len(CLASSES) - 1}] or a class name. Received: label={label!r}")
    return index


class _Scene:
    """What a painter draws with: the float32 `(T, H, W, 3)` canvas (drawn on in place), the clip's random
    generator (painters draw their parameters from it in a fixed order: the clip depends only on the seed), the
    class name, the main object's shape and colour, the frame size, `s` (geometry is written for 64x64 frames and
    scaled by `s`) and `t` (0..1 over the clip)."""

    def __init__(self, canvas, rng, name, shape, colour, size):
        self.canvas, self.rng, self.name, self.shape, self.colour, self.size = canvas, rng, name, shape, colour, size
        self.num_frames = len(canvas)
        self.s = size / 64.0
        self.t = np.arange(self.num_frames, dtype=np.float64) / (self.num_frames - 1)

    def draw_frames(self, frames):
        """Draws the main object on every frame, `frames[k]` giving its `centre`, `radius` and optional `angle`."""
        for k, frame in enumerate(frames):
            _draw_shape(self.canvas[k], self.shape, frame["centre"], frame["radius"], self.colour,
                        frame.get("angle", 0.0))


def _paint_moving(scene):
    """`moving_left` / `moving_right`: a fast horizontal translation, reversed in time for `moving_left`."""
    rng, size, t = scene.rng, scene.size, scene.t
    radius = rng.uniform(5.0, 8.0) * scene.s
    travel = rng.uniform(0.4, 0.6) * size  # fast: 3.5-5.5 px per frame at 64 px and 8 frames
    start = rng.uniform(radius + 2, size - radius - 2 - travel)
    y = rng.uniform(radius + 2, size - radius - 2)
    xs = start + travel * t
    scene.draw_frames(_forward_or_reversed(lambda k: dict(centre=(xs[k], y), radius=radius),
                                           scene.name == "moving_left", scene.num_frames))


def _paint_rotating(scene):
    """`rotating_clockwise` / `rotating_counterclockwise`: a clock hand turning by a fixed step per frame."""
    rng, size, s = scene.rng, scene.size, scene.s
    length = rng.uniform(16.0, 24.0) * s
    centre = (rng.uniform(length + 3, size - length - 3), rng.uniform(length + 3, size - length - 3))
    step = math.radians(rng.uniform(12.0, 24.0))
    start = rng.uniform(0.0, 2.0 * math.pi)
    sign = 1.0 if scene.name == "rotating_clockwise" else -1.0  # y points down: a growing angle turns clockwise
    width = max(2.0, rng.uniform(3.0, 4.5) * s)
    for k in range(scene.num_frames):
        _draw_hand(scene.canvas[k], centre, length, start + sign * step * k, scene.colour, width)


def _paint_scaling(scene):
    """`approaching` / `receding`: the object grows by a constant ratio per frame, or shrinks (reversed)."""
    rng, size, s = scene.rng, scene.size, scene.s
    small, large = rng.uniform(3.0, 5.0) * s, rng.uniform(13.0, 18.0) * s
    centre = (rng.uniform(large + 2, size - large - 2), rng.uniform(large + 2, size - large - 2))
    radii = small * (large / small) ** scene.t  # constant relative growth per frame, like a steady approach
    angle = rng.uniform(0.0, 2.0 * math.pi)
    scene.draw_frames(_forward_or_reversed(lambda k: dict(centre=centre, radius=radii[k], angle=angle),
                                           scene.name == "receding", scene.num_frames))


def _paint_meeting(scene):
    """`meeting` / `separating`: two objects, one above the other, approaching or leaving each other vertically."""
    rng, size, s = scene.rng, scene.size, scene.s
    radius = rng.uniform(4.0, 6.0) * s
    other_shape = SHAPES[rng.integers(len(SHAPES))]
    other_colour = _colour(rng)
    near, far = rng.uniform(2.2, 3.0) * radius, rng.uniform(0.7, 0.85) * size
    cx, cy = rng.uniform(radius + 3, size - radius - 3), size / 2 + rng.uniform(-3, 3) * s
    gaps = far + (near - far) * scene.t  # distance between the centres: far -> near when meeting
    n = scene.num_frames
    order = range(n) if scene.name == "meeting" else range(n - 1, -1, -1)
    for k, j in enumerate(order):
        _draw_shape(scene.canvas[k], scene.shape, (cx, cy - gaps[j] / 2), radius, scene.colour)
        _draw_shape(scene.canvas[k], other_shape, (cx, cy + gaps[j] / 2), radius, other_colour)


def _paint_directions(scene):
    """`same_direction` / `opposite_direction`: two identical objects, one near the top and one near the bottom
    (at least 36 px apart at 64 px), each moving left or right (independently uniform, so each object alone says
    nothing about the class)."""
    rng, size, t = scene.rng, scene.size, scene.t
    radius = rng.uniform(4.0, 6.0) * scene.s
    travel = rng.uniform(0.35, 0.5) * size
    first = rng.integers(2) * 2 - 1  # +1: right, -1: left
    second = first if scene.name == "same_direction" else -first
    for direction, y in ((first, rng.uniform(radius + 2, 0.22 * size)),
                         (second, rng.uniform(0.78 * size, size - radius - 2))):
        x0 = rng.uniform(radius + 2, size - radius - 2 - travel)
        xs = x0 + travel * (t if direction > 0 else 1.0 - t)
        for k in range(scene.num_frames):
            _draw_shape(scene.canvas[k], scene.shape, (xs[k], y), radius, scene.colour)


def _paint_brightness(scene):
    """`flashing` / `steady`: one object, its brightness alternating between two levels, or constant."""
    rng, size, n = scene.rng, scene.size, scene.num_frames
    radius = rng.uniform(6.0, 12.0) * scene.s
    centre = (rng.uniform(radius + 2, size - radius - 2), rng.uniform(radius + 2, size - radius - 2))
    low = rng.uniform(0.2, 0.45)
    high = rng.uniform(0.8, 1.0)
    if scene.name == "flashing":
        period = int(rng.integers(1, 3))  # the level switches every 1 or 2 frames
        phase = int(rng.integers(2 * period))
        levels = [high if ((k + phase) // period) % 2 == 0 else low for k in range(n)]
    else:
        level = rng.choice([low, high, rng.uniform(low, high)])
        levels = [level] * n
    angle = rng.uniform(0.0, 2.0 * math.pi)
    for k in range(n):
        _draw_shape(scene.canvas[k], scene.shape, centre, radius, scene.colour * levels[k], angle)


_PAINTERS = {
    "moving_left": _paint_moving, "moving_right": _paint_moving,
    "rotating_clockwise": _paint_rotating, "rotating_counterclockwise": _paint_rotating,
    "approaching": _paint_scaling, "receding": _paint_scaling,
    "meeting": _paint_meeting, "separating": _paint_meeting,
    "same_direction": _paint_directions, "opposite_direction": _paint_directions,
    "flashing": _paint_brightness, "steady": _paint_brightness,
}


def make_clips(num_per_class, *, num_frames=8, size=64, seed=0):
    """Renders a balanced set of clips: `num_per_class` clips of every class, in class-interleaved order.

    Clip `i` (label `i % len(CLASSES)`) is rendered from the seed `[seed, i]`, so sets with different seeds are disjoint
    draws and a set is reproducible from its seed alone.

    Args:
        num_per_class: clips per class.
        num_frames: frames per clip. Defaults to `8`.
        size: frame height and width. Defaults to `64`.
        seed: the set's seed (use different seeds for training and held-out sets). Defaults to `0`.

    Returns:
        `(clips, labels)`: uint8 `(N, T, size, size, 3)` and int32 `(N,)`, with `N = len(CLASSES) * num_per_class`.

    Example:
        >>> clips, labels = make_clips(2, seed=1)
        >>> clips.shape, labels.tolist()[:3]
        ((24, 8, 64, 64, 3), [0, 1, 2])
    """
    num_per_class = _check_positive_int("num_per_class", num_per_class)
    count = num_per_class * len(CLASSES)
    clips = np.empty((count, num_frames, size, size, 3), np.uint8)
    labels = np.arange(count, dtype=np.int32) % len(CLASSES)
    for i in range(count):
        clips[i] = render_clip(int(labels[i]), num_frames=num_frames, size=size, seed=[int(seed), i])
    return clips, labels


def write_clip(path, clip, *, fps=8):
    """Writes a uint8 RGB `(T, H, W, 3)` clip to a video file with OpenCV (`.mp4`: MPEG-4 part 2; `.avi`: MJPG).

    Args:
        path: output file; the suffix picks the codec.
        clip: uint8 RGB frames.
        fps: frames per second. Defaults to `8`.

    Returns:
        The path written.
    """
    import cv2

    clip = np.asarray(clip)
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
        raise ValueError(f"`clip` must be a uint8 (T, H, W, 3) array. Received: shape={clip.shape}, dtype={clip.dtype}")
    path = str(path)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.lower().endswith(".avi") else "mp4v"))
    writer = cv2.VideoWriter(path, fourcc, float(fps), (clip.shape[2], clip.shape[1]))
    if not writer.isOpened():
        raise ValueError(f"OpenCV cannot write a video to this path. Received: path={path!r}")
    try:
        for frame in clip:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path
