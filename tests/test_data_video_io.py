"""read_video: frame-exact decoding of clips written with cv2.VideoWriter, and a corpus of bad inputs."""
import os
import struct
import time
import wave

import numpy as np
import pytest

from nonlocal_zoo import data
from nonlocal_zoo.data import VideoDecodeError, count_frames, read_video
from nonlocal_zoo.data import video_io
from tests.conftest import decode_index, write_index_video

cv2 = pytest.importorskip("cv2")

FORMATS = [("mp4", "mp4v"), ("avi", "MJPG"), ("avi", "XVID")]


@pytest.mark.parametrize("ext,fourcc", FORMATS)
def test_decodes_every_frame_in_order(tmp_path, ext, fourcc):
    path = tmp_path / f"clip.{ext}"
    written = write_index_video(path, 150, height=48, width=80, fourcc=fourcc)
    clip = read_video(path)
    assert clip.dtype == np.uint8 and clip.shape == (150, 48, 80, 3)
    assert [decode_index(f) for f in clip] == list(range(150))
    # RGB order and pixel fidelity: the decoded frames are close to what was written (lossy codecs)
    assert np.abs(clip.astype(int) - written.astype(int)).mean() < 8
    assert count_frames(path) == 150


def _frame_count_from_header(path):
    cap = cv2.VideoCapture(str(path))
    n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    cap.release()
    return n


def test_counts_decoded_frames_not_the_header(tmp_path):
    # An AVI whose header claims more frames than the file holds (truncated): the count comes from decoding.
    path = tmp_path / "clip.avi"
    write_index_video(path, 40, fourcc="MJPG")
    raw = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(raw[: int(len(raw) * 0.5)])
    assert _frame_count_from_header(cut) == 40  # the header still says 40
    clip = read_video(cut)
    n = clip.shape[0]
    assert 0 < n < 40
    assert [decode_index(f) for f in clip] == list(range(n))
    assert count_frames(cut) == n


@pytest.mark.parametrize("ext,fourcc", FORMATS[:2])
def test_frame_indices_select_exact_frames(tmp_path, ext, fourcc):
    path = tmp_path / f"clip.{ext}"
    write_index_video(path, 60, fourcc=fourcc)
    wanted = [37, 3, 3, 59, 0, 12]
    clip = read_video(path, frame_indices=wanted)
    assert clip.shape == (6, 64, 64, 3)
    assert [decode_index(f) for f in clip] == wanted
    assert [decode_index(f) for f in read_video(path, max_frames=7)] == list(range(7))


def test_frame_indices_decode_only_up_to_the_last_needed_frame(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    write_index_video(path, 80)
    calls = {"read": 0, "grab": 0}

    class Spy(video_io._OpenCVReader):
        def read(self):
            calls["read"] += 1
            return super().read()

        def grab(self):
            calls["grab"] += 1
            return super().grab()

    monkeypatch.setitem(video_io._READERS, "opencv", Spy)
    clip = read_video(path, frame_indices=[2, 9, 20])
    assert [decode_index(f) for f in clip] == [2, 9, 20]
    assert calls["read"] + calls["grab"] == 21  # frames 0..20, nothing after
    assert calls["read"] == 4  # frame 0 (its true size) and the three wanted frames


def test_frame_index_past_the_end_raises(tmp_path):
    path = tmp_path / "clip.mp4"
    write_index_video(path, 10)
    with pytest.raises(VideoDecodeError, match=r"frame 10 was requested but the video has only 10"):
        read_video(path, frame_indices=[0, 10])


def test_pyav_backend_matches_opencv(tmp_path):
    pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    write_index_video(path, 30, height=48, width=64)
    a = read_video(path)
    b = read_video(path, backend="pyav")
    assert a.shape == b.shape
    assert [decode_index(f) for f in b] == list(range(30))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    sel = read_video(path, frame_indices=[5, 1], backend="pyav")
    assert [decode_index(f) for f in sel] == [5, 1]


def test_odd_sizes_decode_exactly_with_a_lossless_codec(tmp_path):
    av = pytest.importorskip("av")
    rng = np.random.default_rng(0)
    for height, width in [(35, 47), (1, 1), (17, 3)]:
        frames = rng.integers(0, 256, size=(4, height, width, 3), dtype=np.uint8)
        path = tmp_path / f"odd_{height}x{width}.mkv"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("ffv1", rate=25)
            stream.width, stream.height, stream.pix_fmt = width, height, "bgr0"
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        np.testing.assert_array_equal(read_video(path), frames)
        np.testing.assert_array_equal(read_video(path, backend="pyav"), frames)


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs: each must raise VideoDecodeError naming the file within 5 s, or decode to its true frames.


def _mp4_boxes(raw):
    boxes, i = {}, 0
    while i + 8 <= len(raw):
        size, kind = struct.unpack(">I4s", raw[i:i + 8])
        boxes[kind.decode("latin-1")] = (i, size)
        if kind == b"moov":  # one level down, for mvhd
            j = i + 8
            while j + 8 <= i + size:
                s2, k2 = struct.unpack(">I4s", raw[j:j + 8])
                boxes[k2.decode("latin-1")] = (j, s2)
                j += max(s2, 8)
        i += max(size, 8)
    return boxes


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    good_mp4, good_avi = d / "good.mp4", d / "good.avi"
    write_index_video(good_mp4, 30)
    write_index_video(good_avi, 30, fourcc="MJPG")
    mp4, avi = good_mp4.read_bytes(), good_avi.read_bytes()
    boxes = _mp4_boxes(mp4)
    rng = np.random.default_rng(0)
    errors = {}  # name -> expected reason fragment
    truths = {}  # name -> predicate on the list of decoded indices

    def put(name, content):
        (d / name).write_bytes(content)

    errors["missing.mp4"] = "file not found"
    put("empty.mp4", b"")
    errors["empty.mp4"] = "empty"
    put("random.mp4", rng.bytes(4096))
    errors["random.mp4"] = "cannot open"
    put("random.avi", rng.bytes(4096))
    errors["random.avi"] = "cannot open"
    put("text.mp4", b"not a video\n" * 40)
    errors["text.mp4"] = "cannot open"
    (d / "folder.mp4").mkdir()
    errors["folder.mp4"] = "directory"
    put("truncated_half.mp4", mp4[: len(mp4) // 2])  # moov atom lost
    errors["truncated_half.mp4"] = "cannot open"
    put("truncated_tail10.mp4", mp4[: int(len(mp4) * 0.9)])
    errors["truncated_tail10.mp4"] = "cannot open"
    start, _ = boxes["moov"]
    put("header_moov.mp4", mp4[: start + 4] + b"junk" + mp4[start + 8:])
    errors["header_moov.mp4"] = "cannot open"
    put("header_hdrl.avi", avi[:12] + b"\xff" * 200 + avi[212:])
    errors["header_hdrl.avi"] = "cannot open"
    writer = cv2.VideoWriter(str(d / "zero_frames.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
    writer.release()
    errors["zero_frames.avi"] = "no decodable video frames"
    writer = cv2.VideoWriter(str(d / "zero_frames.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 64))
    writer.release()
    errors["zero_frames.mp4"] = ""  # an mp4 without frames has no moov: cannot open
    with wave.open(str(d / "audio.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(800, np.int16).tobytes())
    os.replace(d / "audio.wav", d / "audio_only.mp4")
    errors["audio_only.mp4"] = ""  # "cannot open" (OpenCV) or "no video stream" (PyAV)
    writer = cv2.VideoWriter(str(d / "huge_5000x4000.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (5000, 4000))
    writer.write(np.zeros((4000, 5000, 3), np.uint8))
    writer.release()
    errors["huge_5000x4000.avi"] = "exceeds max_pixels"

    put("truncated_tail.avi", avi[: int(len(avi) * 0.6)])
    truths["truncated_tail.avi"] = lambda idx: 0 < len(idx) < 30 and idx == list(range(len(idx)))
    start, _ = boxes["ftyp"]
    put("header_ftyp.mp4", mp4[: start + 8] + b"\xff" * 12 + mp4[start + 20:])
    truths["header_ftyp.mp4"] = lambda idx: idx == list(range(30))
    start, size = boxes["mvhd"]
    put("header_mvhd.mp4", mp4[: start + 8] + b"\xff" * (size - 8) + mp4[start + size:])
    truths["header_mvhd.mp4"] = lambda idx: idx == list(range(30))
    put("header_riff.avi", b"XXXX" + avi[4:])  # FFmpeg no longer sees an AVI: a raw MJPEG stream without index
    truths["header_riff.avi"] = lambda idx: idx == list(range(30))  # (damaged: read with on_damage="warn")
    write_index_video(d / "one_frame.mp4", 1)
    truths["one_frame.mp4"] = lambda idx: idx == [0]
    write_index_video(d / "too_short.avi", 3, fourcc="MJPG")
    truths["too_short.avi"] = lambda idx: idx == [0, 1, 2]
    for h, w, fourcc, ext in [(33, 17, "mp4v", "mp4"), (1, 1, "MJPG", "avi"), (2, 2, "mp4v", "mp4")]:
        writer = cv2.VideoWriter(str(d / f"odd_{h}x{w}.{ext}"), cv2.VideoWriter_fourcc(*fourcc), 25, (w, h))
        for t in range(5):
            writer.write(np.full((h, w, 3), 40 * t, np.uint8))
        writer.release()
        truths[f"odd_{h}x{w}.{ext}"] = None  # checked against the PyAV decoder below
    return d, errors, truths


def _backends():
    try:
        import av  # noqa: F401

        return ["opencv", "pyav"]
    except ImportError:  # pragma: no cover
        return ["opencv"]


@pytest.mark.parametrize("backend", _backends())
def test_bad_inputs_raise_video_decode_error_naming_the_file(corpus, backend):
    d, errors, _ = corpus
    assert len(errors) >= 12
    for name, fragment in errors.items():
        path = d / name
        start = time.monotonic()
        with pytest.raises(VideoDecodeError) as info:
            read_video(path, backend=backend)
        assert time.monotonic() - start < 5, name
        err = info.value
        assert isinstance(err, ValueError)
        assert str(path) in str(err) and err.path == str(path)
        if backend == "opencv":
            assert fragment in err.reason, (name, err.reason)
        with pytest.raises(VideoDecodeError):
            count_frames(path, backend=backend)


# Files whose container header FFmpeg cannot read: their frames cannot be checked against an index, so they raise
# by default (see tests/test_video_damage.py) and decode with on_damage="warn".
HEADER_DAMAGED = {"header_riff.avi"}


@pytest.mark.parametrize("backend", _backends())
def test_damaged_or_short_inputs_decode_to_their_true_frames(corpus, backend):
    d, _, truths = corpus
    for name, check in truths.items():
        start = time.monotonic()
        if name in HEADER_DAMAGED:
            with pytest.raises(VideoDecodeError, match="raw 'mjpeg' stream"):
                read_video(d / name, backend=backend)
            with pytest.warns(data.VideoDamageWarning, match="container frames: unknown"):
                clip = read_video(d / name, backend=backend, on_damage="warn")
        else:
            clip = read_video(d / name, backend=backend)
        assert time.monotonic() - start < 5, name
        assert clip.dtype == np.uint8 and clip.ndim == 4 and clip.shape[-1] == 3, name
        if check is None:  # odd sizes: same frames as an independent decoder (PyAV) gives
            av = pytest.importorskip("av")
            with av.open(str(d / name)) as container:
                ref = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            assert clip.shape == ref.shape, name
            assert np.abs(clip.astype(int) - ref.astype(int)).max() <= 2, name
        else:
            assert check([decode_index(f) for f in clip]), (name, [decode_index(f) for f in clip])


def test_too_short_video_still_gives_a_full_clip(corpus):
    d, _, _ = corpus
    clip = data.train_clip(d / "too_short.avi", rng=0, normalize=False, num_frames=8, sampling_rate=8,
                           train_crop=64, train_short_side_range=(64, 64))
    # official: start 0 (F - T*r < 0), indices (0 + 8 i) % 3
    assert [decode_index(f) for f in clip] == [(8 * i) % 3 for i in range(8)]


def test_pixel_cap_is_checked_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "clip.avi"
    write_index_video(path, 5, height=48, width=64, fourcc="MJPG")

    def no_decoding(self):
        raise AssertionError("a frame was decoded")

    monkeypatch.setattr(video_io._OpenCVReader, "read", no_decoding)
    monkeypatch.setattr(video_io._OpenCVReader, "grab", no_decoding)
    with pytest.raises(VideoDecodeError, match=r"64x48 \(3072 pixels, from the header\) exceeds max_pixels=3071"):
        read_video(path, max_pixels=64 * 48 - 1)


def test_read_time_is_bounded(tmp_path):
    path = tmp_path / "long.avi"
    write_index_video(path, 400, height=96, width=128, fourcc="MJPG")
    start = time.monotonic()
    with pytest.raises(VideoDecodeError, match="time limit"):
        read_video(path, timeout=0.005)
    assert time.monotonic() - start < 2


def test_invalid_arguments_are_quoted(tmp_path):
    path = tmp_path / "clip.mp4"
    write_index_video(path, 3)
    with pytest.raises(ValueError, match=r"Received: backend='ffmpeg'"):
        read_video(path, backend="ffmpeg")
    with pytest.raises(ValueError, match=r"Received: frame_indices=\[-1\]"):
        read_video(path, frame_indices=[-1])
    with pytest.raises(ValueError, match=r"Received: max_frames=0"):
        read_video(path, max_frames=0)
    with pytest.raises(ValueError, match=r"Received: path=3"):
        read_video(3)


def test_video_decode_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(VideoDecodeError("/x/clip.mp4", "file not found")))
    assert (err.path, err.reason) == ("/x/clip.mp4", "file not found")
    assert str(err) == "Cannot decode video '/x/clip.mp4': file not found"


def test_read_frames_for_uses_decoded_counts_in_one_or_two_passes(tmp_path):
    from nonlocal_zoo.data import read_frames_for
    from nonlocal_zoo.data.video_io import cached_frame_count

    path = tmp_path / "clip.avi"
    write_index_video(path, 45, fourcc="MJPG")
    seen = []

    def select(num_frames):
        seen.append(num_frames)
        return np.array([[num_frames - 1, 0], [7, 7]])

    for buffer in (1, 512 * 2**20):  # too small to hold the video (count, then select) / large enough (one pass)
        video_io._COUNT_CACHE.clear()
        frames, indices, count = read_frames_for(path, select, max_buffer_bytes=buffer)
        assert count == 45 and frames.shape == (2, 2, 64, 64, 3)
        assert [[decode_index(f) for f in row] for row in frames] == [[44, 0], [7, 7]]
        assert cached_frame_count(path) == 45
    frames, _, _ = read_frames_for(path, select)  # cached count: decodes only up to frame 44
    assert seen == [45, 45, 45]
    with pytest.raises(ValueError, match=r"outside \[0, 45\)"):
        read_frames_for(path, lambda n: [n])
