"""Damaged videos are refused or flagged, never silently frame-shifted; memory is bounded before decoding; rotated
videos come back in the same orientation from OpenCV and PyAV (issue 15, deliverable 5).

Every failure is first reproduced with an independent decoder (PyAV's own `container.decode`, or OpenCV's), then
`read_video` is checked against the frame indices the clips encode in their pixels (`tests/conftest.py`).
"""
import os
import pickle
import time
import warnings

import numpy as np
import pytest

from nonlocal_zoo import data
from nonlocal_zoo.data import VideoDamageWarning, VideoDecodeError, count_frames, read_video, video_io
from tests.conftest import decode_index, index_frame, write_index_video

cv2 = pytest.importorskip("cv2")
av = pytest.importorskip("av")

BACKENDS = ["opencv", "pyav"]


def _indices(clip):
    return [decode_index(f) for f in clip]


def _packets(path):
    """(position, size) in the file of each video packet, in decoding order, read with PyAV's demuxer."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [(p.pos, p.size) for p in container.demux(stream) if p.size]


def _zero(path, out, start, stop):
    raw = bytearray(path.read_bytes())
    raw[start:stop] = bytes(stop - start)
    out.write_bytes(bytes(raw))
    return out


def _reference_indices(path):
    """What FFmpeg itself (PyAV's plain demux + decode loop, errors skipped) gives, as encoded indices."""
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            try:
                out += [decode_index(f.to_ndarray(format="rgb24")) for f in packet.decode()]
            except av.FFmpegError:
                pass
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("damage")
    # MJPEG frames in an mp4 (what cv2.VideoWriter writes for fourcc MJPG): every frame is a key frame
    good = d / "good.mp4"
    write_index_video(good, 32, fourcc="MJPG")
    return d, good


# ----------------------------------------------------------------------------------------------------------------
# 1. The first 1 KB zeroed: FFmpeg no longer sees an mp4 and reads the bytes as a raw MJPEG stream.


def test_zeroed_first_kilobyte_shifted_frames_before_and_raises_now(clips):
    d, good = clips
    bad = _zero(good, d / "zeroed_1k.mp4", 0, 1024)
    # The failure, reproduced with FFmpeg alone: frames 4..31 come back as the first 28 frames (labelled 0..27).
    with av.open(str(bad)) as container:
        assert container.format.name == "mjpeg"  # not "mov,mp4,...": the container header is gone
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert [decode_index(f) for f in frames] == list(range(4, 32))

    for backend in BACKENDS:
        with pytest.raises(VideoDecodeError) as info:
            read_video(bad, backend=backend)
        err = info.value
        assert err.path == str(bad) and str(bad) in str(err)
        assert "raw 'mjpeg' stream" in err.reason and "28 frames decoded" in err.reason, err.reason
        assert "frame count is unknown" in err.reason and "on_damage='warn'" in err.reason
        assert (err.decoded_frames, err.container_frames, err.missing_frames) == (28, None, None)
        with pytest.raises(VideoDecodeError, match="raw 'mjpeg' stream"):
            count_frames(bad, backend=backend, use_cache=False)
        with pytest.raises(VideoDecodeError, match="raw 'mjpeg' stream"):
            read_video(bad, backend=backend, frame_indices=[0, 5])

        with pytest.warns(VideoDamageWarning, match=r"Using the 28 decoded frames.*missing container frames: unknown"):
            clip = read_video(bad, backend=backend, on_damage="warn")
        assert _indices(clip) == list(range(4, 32))  # what was decoded, in decoding order


def test_damaged_mp4_through_the_classification_path(clips):
    """multiview_clips (what classify and evaluate run) refuses it; decode_options={"on_damage": "warn"} reaches
    the decoder."""
    d, good = clips
    bad = _zero(good, d / "zeroed_1k_views.mp4", 0, 1024)
    kwargs = dict(preset="i3d_nl5_r50_8x8_kinetics400", num_clips=1, num_crops=1, test_crop=32, test_short_side=32,
                  normalize=False)
    with pytest.raises(VideoDecodeError, match="raw 'mjpeg' stream"):
        data.multiview_clips(bad, **kwargs)
    with pytest.warns(VideoDamageWarning):
        views = data.multiview_clips(bad, decode_options={"on_damage": "warn"}, **kwargs)
    assert views.shape == (1, 8, 32, 32, 3)


# ----------------------------------------------------------------------------------------------------------------
# 2. The index is intact but frames do not decode: counted against the container's frame list.


def test_lost_first_frames_with_an_intact_index(clips):
    d, good = clips
    packets = _packets(good)
    assert len(packets) == 32
    bad = _zero(good, d / "first_frames.mp4", packets[0][0], packets[3][0] + packets[3][1])  # frames 0..3
    assert _reference_indices(bad) == list(range(4, 32))  # FFmpeg decodes the rest: a shift by 4 without a check

    with pytest.raises(VideoDecodeError) as info:
        read_video(bad, backend="pyav")
    err = info.value
    assert err.path == str(bad)
    assert "decoded 28 frames but the container holds 32" in err.reason, err.reason
    assert "frames 0-3 did not decode, so the later frames would be shifted" in err.reason
    assert "the decoder rejected 4 packets" in err.reason
    assert (err.decoded_frames, err.container_frames, err.missing_frames) == (28, 32, [0, 1, 2, 3])
    with pytest.warns(VideoDamageWarning, match=r"missing container frames: 0-3\."):
        clip = read_video(bad, backend="pyav", on_damage="warn")
    assert _indices(clip) == list(range(4, 32))
    # frame selection: frame 0 of the damaged file would be true frame 4; refused before returning anything
    with pytest.raises(VideoDecodeError, match="frames 0-3 did not decode"):
        read_video(bad, backend="pyav", frame_indices=[0])

    # OpenCV stops at the first packet its decoder rejects: nothing decodes, and the error says what the file holds
    with pytest.raises(VideoDecodeError, match=r"0 frames decoded; the container holds 32"):
        read_video(bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lost_middle_frames_are_named(clips, backend):
    d, good = clips
    packets = _packets(good)
    bad = _zero(good, d / f"middle_{backend}.mp4", packets[10][0], packets[13][0] + packets[13][1])  # 10..13
    ref = _reference_indices(bad)
    assert ref == list(range(10)) + list(range(14, 32))

    with pytest.raises(VideoDecodeError) as info:
        read_video(bad, backend=backend)
    err = info.value
    assert err.container_frames == 32 and str(bad) in str(err)
    if backend == "pyav":  # decodes past the damage: frames 14.. would have been labelled 10..
        assert err.decoded_frames == 28 and err.missing_frames == [10, 11, 12, 13]
        assert "frames 10-13 did not decode, so the later frames would be shifted" in err.reason
        expected = ref
    else:  # OpenCV ends at the damage: the frames it returns are exact, but 22 of the file's frames are missing
        assert err.decoded_frames == 10 and err.missing_frames == list(range(10, 32))
        assert "decoded 10 frames but the container holds 32: frames 10-31 did not decode" in err.reason
        expected = list(range(10))
    with pytest.warns(VideoDamageWarning, match="missing container frames: 10-"):
        clip = read_video(bad, backend=backend, on_damage="warn")
    assert _indices(clip) == expected
    with pytest.warns(VideoDamageWarning):
        assert count_frames(bad, backend=backend, on_damage="warn", use_cache=False) == len(expected)
    # frames before the damage are exact and are all a selective read needs: no error
    assert _indices(read_video(bad, backend=backend, frame_indices=[9, 2])) == [9, 2]


# ----------------------------------------------------------------------------------------------------------------
# 3. No false positives on healthy files of every kind the test suite writes, on files cut short, and in pipelines.


def _write_pyav(path, codec, num_frames, *, height=64, width=64, options=None, rotation=None, frame=None):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height = width, height
        stream.pix_fmt = {"ffv1": "bgr0", "mjpeg": "yuvj420p"}.get(codec, "yuv420p")
        if options:
            stream.options = options
        if rotation is not None:
            if not hasattr(stream, "set_display_rotation"):
                pytest.skip("this PyAV cannot write a display matrix (set_display_rotation)")
            stream.set_display_rotation(rotation)
        for t in range(num_frames):
            image = index_frame(t, height, width) if frame is None else frame
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    d = tmp_path_factory.mktemp("healthy")
    for ext, fourcc in [("mp4", "mp4v"), ("avi", "MJPG"), ("avi", "XVID"), ("mp4", "MJPG"), ("mkv", "MJPG")]:
        write_index_video(d / f"cv_{fourcc}.{ext}", 40, fourcc=fourcc)
    _write_pyav(d / "ffv1.mkv", "ffv1", 40)
    _write_pyav(d / "x264_bframes.mp4", "libx264", 40, options={"bframes": "3", "preset": "ultrafast"})  # edit list
    _write_pyav(d / "x264_bframes.mkv", "libx264", 40, options={"bframes": "3", "preset": "ultrafast"})
    _write_pyav(d / "mpeg4.mp4", "mpeg4", 40, options={"bf": "2"})
    _write_pyav(d / "mjpeg.avi", "mjpeg", 40)
    write_index_video(d / "one.mp4", 1)
    # cut short: the header states 40 frames, the file holds fewer (the last one partly)
    write_index_video(d / "full.avi", 40, fourcc="MJPG")
    raw = (d / "full.avi").read_bytes()
    (d / "cut.avi").write_bytes(raw[: int(len(raw) * 0.55)])
    os.remove(d / "full.avi")
    return d


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_false_positives_on_healthy_or_cut_files(healthy, backend):
    names = sorted(os.listdir(healthy))
    assert len(names) == 12
    with warnings.catch_warnings():
        warnings.simplefilter("error", VideoDamageWarning)
        for name in names:
            clip = read_video(healthy / name, backend=backend)
            idx = _indices(clip)
            if name == "cut.avi":
                assert 0 < len(idx) < 40 and idx == list(range(len(idx))), idx
            elif name == "one.mp4":
                assert idx == [0]
            else:
                assert idx == list(range(40)), (name, idx)
            assert count_frames(healthy / name, backend=backend, use_cache=False) == len(idx)
            sel = read_video(healthy / name, backend=backend, frame_indices=[len(idx) - 1, 0])
            assert _indices(sel) == [len(idx) - 1, 0]


def test_pipeline_skips_damaged_files_and_keeps_healthy_ones(tmp_path):
    """The tf.data pipeline's skip report names a damaged file instead of training on shifted frames."""
    root = tmp_path / "videos"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            write_index_video(root / cls / f"{i}.mp4", 20, fourcc="MJPG")
    _zero(root / "a" / "0.mp4", root / "a" / "0.mp4", 0, 1024)
    report = data.DecodeReport(log=False)
    ds = data.make_dataset(str(root), training=False, batch_size=1, test_crop=32, test_short_side=32, num_frames=4,
                           sampling_rate=1, report=report)
    assert sum(1 for _ in ds) == 3
    (path, message), = report.skipped
    assert path.endswith(os.path.join("a", "0.mp4")) and "raw 'mjpeg' stream" in message, message


# ----------------------------------------------------------------------------------------------------------------
# 4. Memory is bounded before decoding.


def _bomb(path, width=1920, height=1080, num_frames=1206):
    """A ~44 KB H.264 mp4 of a flat colour that decodes to `num_frames` x width x height x 3 bytes (7.5 GB).

    Two frames are encoded; the second (a P frame of skipped macroblocks) is muxed `num_frames - 1` times.
    """
    image = np.full((height, width, 3), (40, 120, 200), np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "bframes": "0", "g": "100000"}
        packets = []
        for t in range(2):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = t
            packets += list(stream.encode(frame))
        packets += list(stream.encode())
        repeat, time_base = bytes(packets[1]), packets[0].time_base
        for packet in packets:
            container.mux(packet)
        for t in range(2, num_frames):
            packet = av.Packet(repeat)
            packet.pts = packet.dts = t
            packet.time_base, packet.stream = time_base, stream
            container.mux(packet)
    return path


def _forbid_decoding(monkeypatch):
    def no_decoding(self):
        raise AssertionError("a frame was decoded")

    for reader in (video_io._OpenCVReader, video_io._PyAVReader):
        monkeypatch.setattr(reader, "read", no_decoding)
        monkeypatch.setattr(reader, "grab", no_decoding)


def test_memory_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = _bomb(tmp_path / "bomb.mp4")
    size = path.stat().st_size
    assert size < 60_000
    expected = 1206 * 1920 * 1080 * 3
    assert expected > 7.4e9
    # the file really is what it claims: OpenCV decodes its frames (a few, here) at full size
    cap = cv2.VideoCapture(str(path))
    ok, first = cap.read()
    assert ok and first.shape == (1080, 1920, 3) and cap.get(cv2.CAP_PROP_FRAME_COUNT) == 1206
    cap.release()

    monkeypatch.delenv(video_io.MAX_BYTES_ENV, raising=False)
    _forbid_decoding(monkeypatch)
    for backend in BACKENDS:
        start = time.monotonic()
        with pytest.raises(VideoDecodeError) as info:
            read_video(path, backend=backend)
        assert time.monotonic() - start < 2
        reason = info.value.reason
        assert info.value.path == str(path)
        assert f"about 6.99 GiB ({expected} bytes)" in reason, reason  # 7.5 GB
        assert "the 1206 frames of 1920x1080 RGB requested (the container holds 1206 frames" in reason
        assert f"max_bytes={2**32}" in reason and "NONLOCAL_ZOO_MAX_VIDEO_BYTES" in reason
    # the environment variable lowers (or raises) the default cap
    monkeypatch.setenv(video_io.MAX_BYTES_ENV, str(2 * 1920 * 1080 * 3))
    with pytest.raises(VideoDecodeError, match=r"the 3 frames of 1920x1080 .* max_bytes=12441600 "):
        read_video(path, max_frames=3)
    video_io._PROBE_CACHE.clear()  # a partial read demuxes only the start of the file: 2 + 1 + 64 packets
    with pytest.raises(VideoDecodeError, match=r"the 3 frames .* holds at least 67 frames"):
        read_video(path, frame_indices=[2, 0, 1])
    monkeypatch.setenv(video_io.MAX_BYTES_ENV, "lots")
    with pytest.raises(ValueError, match=r"NONLOCAL_ZOO_MAX_VIDEO_BYTES='lots'"):
        read_video(path, max_frames=3)


def test_raising_the_cap_decodes(tmp_path, monkeypatch):
    monkeypatch.delenv(video_io.MAX_BYTES_ENV, raising=False)
    path = tmp_path / "clip.mp4"
    write_index_video(path, 20, height=48, width=64)
    size = 20 * 48 * 64 * 3
    with pytest.raises(VideoDecodeError, match=rf"about .* \({size} bytes\), more than max_bytes={size - 1} "):
        read_video(path, max_bytes=size - 1)
    assert _indices(read_video(path, max_bytes=size)) == list(range(20))
    # the bound counts what is returned: 2 frames of a 20-frame video fit in 2 frames' bytes
    assert _indices(read_video(path, frame_indices=[19, 3], max_bytes=2 * 48 * 64 * 3)) == [19, 3]
    monkeypatch.setenv(video_io.MAX_BYTES_ENV, str(size))
    assert read_video(path).shape == (20, 48, 64, 3)
    with pytest.raises(ValueError, match=r"Received: max_bytes=0"):
        read_video(path, max_bytes=0)


def test_memory_bound_holds_when_the_header_has_no_count(tmp_path, monkeypatch):
    """A header without a frame count cannot be estimated: the cap is enforced while decoding."""
    path = tmp_path / "clip.avi"
    write_index_video(path, 30, height=48, width=64, fourcc="MJPG")
    monkeypatch.setattr(video_io, "_probe", lambda *args: None)

    class NoCount(video_io._OpenCVReader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.header_frames = 0

    monkeypatch.setitem(video_io._READERS, "opencv", NoCount)
    with pytest.raises(VideoDecodeError, match=r"the first 11 decoded frames take about"):
        read_video(path, max_bytes=10 * 48 * 64 * 3 + 1)


# ----------------------------------------------------------------------------------------------------------------
# 5. Rotation: both backends apply the display matrix.


@pytest.mark.parametrize("rotation,turns", [(90, 1), (-90, 3), (180, 2)])
def test_rotated_videos_have_the_same_orientation_in_both_backends(tmp_path, rotation, turns):
    height, width = 48, 80
    image = np.zeros((height, width, 3), np.uint8)  # asymmetric: no rotation or flip maps it onto itself
    image[:16, :16] = (230, 40, 20)
    image[-16:, 30:60] = (20, 200, 40)
    path = _write_pyav(tmp_path / f"rot{rotation}.mp4", "mpeg4", 4, height=height, width=width, rotation=rotation,
                       frame=image)
    with av.open(str(path)) as container:  # the matrix is in the file, and PyAV alone does not apply it
        frame = next(container.decode(video=0))
        assert frame.rotation % 360 == rotation % 360
        assert frame.to_ndarray(format="rgb24").shape == (height, width, 3)
    upright = np.rot90(image, turns)  # FFmpeg's convention: rotate counter-clockwise by `rotation` degrees
    a = read_video(path)
    b = read_video(path, backend="pyav")
    assert a.shape == b.shape == (4,) + upright.shape
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    assert np.abs(a[0].astype(int) - upright.astype(int)).mean() < 3
    assert np.abs(b[0].astype(int) - upright.astype(int)).mean() < 3


# ----------------------------------------------------------------------------------------------------------------
# Arguments and the error object.


def test_on_damage_is_checked_and_the_error_pickles(tmp_path):
    path = tmp_path / "clip.mp4"
    write_index_video(path, 3)
    with pytest.raises(ValueError, match=r"Received: on_damage='ignore'"):
        read_video(path, on_damage="ignore")
    err = VideoDecodeError("/x/a.mp4", "broken", decoded_frames=28, container_frames=32, missing_frames=[0, 1])
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.reason, copy.decoded_frames, copy.container_frames, copy.missing_frames) == (
        "/x/a.mp4", "broken", 28, 32, [0, 1])
    assert str(copy) == "Cannot decode video '/x/a.mp4': broken"
