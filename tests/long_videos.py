"""Test videos for long-video access (seek, features, timeline): frames that encode their own index in 12 bits.

`write_coded_video` writes them with PyAV, optionally with B-frames (frames stored out of presentation order) and
variable frame rate (irregular pts), so that a frame read back can be identified whatever the codec did.
"""
import fractions

import numpy as np

_ON = (230, 40, 20)  # RGB
BITS = 12  # 3 x 4 blocks: indices 0..4095


def code_frame(index, height=96, width=128):
    """uint8 RGB frame `(height, width, 3)` encoding `index` (0..4095) in 3 x 4 blocks."""
    frame = np.zeros((height, width, 3), np.uint8)
    for bit in range(BITS):
        if (index >> bit) & 1:
            r, c = divmod(bit, 4)
            frame[r * height // 3:(r + 1) * height // 3, c * width // 4:(c + 1) * width // 4] = _ON
    return frame


def decode_code(frame):
    """The index `code_frame` encoded, read from the block centres of an RGB frame of any size."""
    frame = np.asarray(frame, dtype=np.float64)
    height, width = frame.shape[:2]
    value = 0
    for bit in range(BITS):
        r, c = divmod(bit, 4)
        cy, cx = (2 * r + 1) * height // 6, (2 * c + 1) * width // 8
        dy, dx = max(1, height // 24), max(1, width // 32)
        if frame[cy - dy:cy + dy + 1, cx - dx:cx + dx + 1, 0].mean() > 128:
            value |= 1 << bit
    return value


def write_coded_video(path, num_frames, *, codec="libx264", bframes=3, gop=12, vfr=False, fps=25, height=96,
                      width=128, seed=0):
    """Write `num_frames` index-coded frames with PyAV; returns the pts (in 1/1000 s for VFR) given to the encoder.

    Args:
        codec: "libx264" (B-frames via x264's `bframes`) or "mpeg4" (`max_b_frames`).
        bframes: B-frames between references (0: none).
        gop: keyframe interval.
        vfr: irregular frame durations (20, 33, 40 or 100 ms, seeded), time base 1/1000.
    """
    import av

    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.gop_size = gop
    if codec == "libx264":
        stream.codec_context.options = {
            "preset": "fast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}"}
    else:
        stream.codec_context.max_b_frames = bframes
    time_base = fractions.Fraction(1, 1000) if vfr else fractions.Fraction(1, fps)
    if vfr:
        stream.codec_context.time_base = time_base
        stream.time_base = time_base
    rng = np.random.default_rng(seed)
    pts, t = [], 0
    for i in range(num_frames):
        frame = av.VideoFrame.from_ndarray(code_frame(i, height, width), format="rgb24")
        frame.pts, frame.time_base = t, time_base
        pts.append(t)
        t += int(rng.choice([20, 33, 40, 100])) if vfr else 1
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return pts


def sequential_frames(path):
    """Every frame of a file decoded sequentially with PyAV, with its pts in s from the stream start."""
    import av

    frames, times = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float((frame.pts - start) * stream.time_base))
    return np.stack(frames), np.asarray(times)
