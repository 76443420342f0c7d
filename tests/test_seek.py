"""Seek-based frame-exact access (`nonlocal_zoo.data.seek`) against sequential decoding, frame for frame."""
import os

import numpy as np
import pytest

from nonlocal_zoo.data import SeekReader, VideoDecodeError, frame_index, read_frames, read_video
from nonlocal_zoo.data.video_io import container_index
from tests.long_videos import decode_code, sequential_frames, write_coded_video

FILES = {  # name -> writer options
    "bframes.mp4": {"codec": "libx264", "bframes": 3, "gop": 12},
    "mpeg4_bframes.avi": {"codec": "mpeg4", "bframes": 2, "gop": 15},
    "vfr.mp4": {"codec": "libx264", "bframes": 2, "gop": 10, "vfr": True},
    "vfr.mkv": {"codec": "libx264", "bframes": 0, "gop": 16, "vfr": True},
}
NUM_FRAMES = 300


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("seek")
    out = {}
    for name, options in FILES.items():
        path = root / name
        write_coded_video(path, NUM_FRAMES, **options)
        out[name] = str(path)
    return out


def test_test_files_have_reordered_frames_and_irregular_timestamps(videos):
    for name in ("bframes.mp4", "mpeg4_bframes.avi", "vfr.mp4"):
        info = container_index(videos[name])
        assert np.any(np.diff(info.packet_pts) < 0), f"{name} has no B-frames: the test would prove nothing"
    for name in ("vfr.mp4", "vfr.mkv"):
        gaps = np.diff(frame_index(videos[name]).starts)
        assert len(np.unique(np.round(gaps, 3))) >= 3, f"{name} is not variable-frame-rate: {np.unique(gaps)}"


@pytest.mark.parametrize("name", sorted(FILES))
def test_random_ranges_equal_sequential_decoding(videos, name):
    path = videos[name]
    frames, times = sequential_frames(path)
    assert [decode_code(f) for f in frames] == list(range(NUM_FRAMES))  # sequential decoding is the reference
    reference = read_video(path, backend="pyav")
    assert np.array_equal(reference, frames)
    rng = np.random.default_rng(7)
    with SeekReader(path) as reader:
        assert reader.backend == "pyav" and reader.num_frames == NUM_FRAMES
        np.testing.assert_allclose(reader.starts, times, atol=1e-9)  # the frames' own pts, not k / fps
        assert np.all(reader.ends[:-1] == reader.starts[1:]) and reader.ends[-1] > reader.starts[-1]
        for _ in range(25):
            a = int(rng.integers(0, NUM_FRAMES - 1))
            b = int(rng.integers(a + 1, min(a + 70, NUM_FRAMES) + 1))
            got = reader.read(range(a, b))
            assert [decode_code(f) for f in got] == list(range(a, b)), (name, a, b)
            assert np.array_equal(got, frames[a:b]), (name, a, b)  # bit for bit
        # any order, repeats, strided
        picks = rng.integers(0, NUM_FRAMES, size=20)
        assert np.array_equal(reader.read(picks), frames[picks])
        assert np.array_equal(reader.read(np.arange(5, 290, 37)), frames[5:290:37])


@pytest.mark.parametrize("name", ["bframes.mp4", "vfr.mp4"])
def test_a_late_window_decodes_from_its_keyframe_only(videos, name):
    path = videos[name]
    index = frame_index(path)
    with SeekReader(path) as reader:
        a, b = 250, 282
        key = int(index.keyframes[index.keyframe_before(a)])
        next_key = int(index.keyframes[index.keyframe_before(b) + 1]) if index.keyframe_before(b) + 1 < len(
            index.keyframes) else NUM_FRAMES
        frames = reader.read(range(a, b))
        assert [decode_code(f) for f in frames] == list(range(a, b))
        assert reader.seeks == 1
        # frames from the keyframe before `a` up to `b`, plus at most the reorder delay (frames decoded before the
        # decoder hands out frame b - 1): never the 250 frames before
        assert b - key <= reader.decoded <= next_key - key + 4, (reader.decoded, key, next_key)


def test_forward_windows_reuse_the_decoder_without_seeking(videos):
    with SeekReader(videos["bframes.mp4"]) as reader:
        for start in range(0, NUM_FRAMES, 32):
            got = reader.read(range(start, min(start + 32, NUM_FRAMES)))
            assert [decode_code(f) for f in got] == list(range(start, min(start + 32, NUM_FRAMES)))
        assert reader.seeks == 1 and reader.decoded == NUM_FRAMES  # one sequential pass in all
        got = reader.read([3])  # going back seeks again
        assert decode_code(got[0]) == 3 and reader.seeks == 2


def test_read_frames_returns_timestamps(videos):
    path = videos["vfr.mp4"]
    _, times = sequential_frames(path)
    frames, starts, ends = read_frames(path, 100, 140, step=4)
    assert [decode_code(f) for f in frames] == list(range(100, 140, 4))
    np.testing.assert_allclose(starts, times[100:140:4], atol=1e-9)
    np.testing.assert_allclose(ends, times[101:141:4], atol=1e-9)


def test_index_is_rebuilt_when_the_file_changes(tmp_path):
    path = tmp_path / "changing.mp4"
    write_coded_video(path, 40, gop=8)
    assert frame_index(path).num_frames == 40
    stat = os.stat(path)
    write_coded_video(path, 64, gop=8)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with SeekReader(path) as reader:
        assert reader.num_frames == 64
        assert [decode_code(f) for f in reader.read([63, 0])] == [63, 0]


def test_opencv_fallback_for_a_raw_stream_without_timestamps(tmp_path, videos):
    import av

    raw = tmp_path / "stream.h264"
    with av.open(videos["bframes.mp4"]) as src, av.open(str(raw), "w", format="h264") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = stream
                dst.mux(packet)
    assert frame_index(raw) is None  # a raw stream has no pts to index
    with SeekReader(raw) as reader:
        assert reader.backend == "opencv" and reader.num_frames == NUM_FRAMES
        assert [decode_code(f) for f in reader.read(range(200, 210))] == list(range(200, 210))
        assert [decode_code(f) for f in reader.read([5, 6])] == [5, 6]  # backwards: reopens
        assert reader.timestamp_source == "frame_rate"  # a raw stream carries no timestamps: k / fps, said so
        np.testing.assert_allclose(reader.starts[:3], [0, 0.04, 0.08])


def test_bad_requests_name_the_problem(videos, tmp_path):
    with SeekReader(videos["bframes.mp4"]) as reader:
        with pytest.raises(ValueError, match=r"\[0, 300\).*max 300"):
            reader.read([0, 300])
        with pytest.raises(ValueError, match="1-D sequence of ints"):
            reader.read([])
    with pytest.raises(VideoDecodeError, match="file not found"):
        SeekReader(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="backend"):
        SeekReader(videos["bframes.mp4"], backend="ffmpeg")
    with pytest.raises(ValueError, match="Empty frame range"):
        read_frames(videos["bframes.mp4"], 300, 310)


def test_one_read_with_gaps_seeks_over_them(videos):
    with SeekReader(videos["bframes.mp4"]) as reader:  # keyframe every 12 frames
        got = reader.read([2, 3, 200, 201, 290])
        assert [decode_code(f) for f in got] == [2, 3, 200, 201, 290]
        assert reader.seeks == 3 and reader.decoded < 60, (reader.seeks, reader.decoded)  # not the 290 frames
