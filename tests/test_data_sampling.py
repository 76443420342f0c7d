"""Temporal sampling against line-by-line transcriptions of the reference code, on numbers and on decoded clips.

References (transcribed below, not imported): official Caffe2 `DecodeClipFromVideoFileFlex`
(`caffe2_customized_ops/video/customized_video_io.cc`), PySlowFast `decoder.get_start_end_idx` +
`temporal_sampling` (run with torch.linspace), mmaction2 `SampleFrames`, gluon-cv `VideoClsDataset`.
"""
import numpy as np
import pytest

from nonlocal_zoo.data import multiview_clips, sample_test_indices, sample_train_indices
from tests.conftest import decode_index, write_index_video

torch = pytest.importorskip("torch")


# ---------------------------------------------------------------- transcriptions of the reference code


def official_reference(num_frames_decoded, length, sampling_rate, start_frm, sample_times, jitter_start=None):
    F = num_frames_decoded
    if start_frm < 0:  # temporal jittering: uniform_int_distribution<>(0, F - L*r) drawn by the caller
        use_start_frm = jitter_start
    else:
        frame_gaps = np.float32(F) / np.float32(sample_times)  # float
        use_start_frm = int(np.float32(frame_gaps * np.float32(start_frm))) % F
    out = []
    for idx in range(length):
        i = use_start_frm + idx * sampling_rate
        i = i % F
        out.append(i)
    return out


def pyslowfast_reference(video_size, num_frames, sampling_rate, clip_idx, num_clips, random_start=None, fps_ratio=1.0):
    clip_size = num_frames * sampling_rate * fps_ratio
    delta = max(video_size - clip_size, 0)
    if clip_idx == -1:
        start_idx = random_start
    else:
        start_idx = delta * clip_idx / num_clips
    end_idx = start_idx + clip_size - 1
    index = torch.linspace(start_idx, end_idx, num_frames)
    index = torch.clamp(index, 0, video_size - 1).long()
    return index.tolist()


def mmaction2_test_reference(total_frames, clip_len, frame_interval, num_clips):
    ori_clip_len = (clip_len - 1) * frame_interval + 1
    max_offset = max(total_frames - ori_clip_len, 0)
    if num_clips > 1:
        num_segments = num_clips - 1
        offset_between = max_offset / float(num_segments)
        clip_offsets = np.arange(num_clips) * offset_between
        clip_offsets = np.round(clip_offsets)
    else:
        clip_offsets = np.array([max_offset // 2])
    frame_inds = clip_offsets[:, None] + np.arange(clip_len)[None, :] * frame_interval
    frame_inds = np.concatenate(frame_inds)
    frame_inds = frame_inds.reshape((-1, clip_len))
    frame_inds = np.mod(frame_inds, total_frames)
    return frame_inds.astype(np.int64).tolist()


def mmaction2_train_reference(total_frames, clip_len, frame_interval, random_offset):
    ori_clip_len = clip_len * frame_interval
    avg_interval = (total_frames - ori_clip_len + 1) // 1
    if avg_interval > 0:
        clip_offsets = np.arange(1) * avg_interval + random_offset
    elif total_frames > max(1, ori_clip_len):
        raise AssertionError("unreachable with num_clips=1")
    elif avg_interval == 0:
        ratio = (total_frames - ori_clip_len + 1.0) / 1
        clip_offsets = np.around(np.arange(1) * ratio)
    else:
        clip_offsets = np.zeros((1,), dtype=np.int32)
    frame_inds = clip_offsets[:, None] + np.arange(clip_len)[None, :] * frame_interval
    return np.mod(frame_inds, total_frames).astype(np.int64)[0].tolist()


def gluoncv_test_reference(n_frames, clip_len, frame_sample_rate, test_num_segment):
    all_index = [x for x in range(0, n_frames, frame_sample_rate)]
    while len(all_index) < clip_len:
        all_index.append(all_index[-1])
    buffer = np.asarray(all_index)
    out = []
    for chunk_nb in range(test_num_segment):
        temporal_step = max(1.0 * (buffer.shape[0] - clip_len) / (test_num_segment - 1), 0)
        temporal_start = int(chunk_nb * temporal_step)
        out.append(buffer[temporal_start:temporal_start + clip_len].tolist())
    return out


def gluoncv_train_reference(n_frames, clip_len, frame_sample_rate, end_idx=None):
    converted_len = int(clip_len * frame_sample_rate)
    seg_len = n_frames
    if seg_len <= converted_len:
        index = np.linspace(0, seg_len, num=seg_len // frame_sample_rate)
        index = np.concatenate((index, np.ones(clip_len - seg_len // frame_sample_rate) * seg_len))
        index = np.clip(index, 0, seg_len - 1).astype(np.int64)
    else:
        str_idx = end_idx - converted_len
        index = np.linspace(str_idx, end_idx, num=clip_len)
        index = np.clip(index, str_idx, end_idx - 1).astype(np.int64)
    return index.tolist()


CASES = [(F, T, r) for F in (1, 2, 5, 17, 31, 64, 65, 100, 127, 250, 301, 1000) for T, r in ((4, 1), (8, 8), (32, 2),
                                                                                             (8, 3), (128, 1))]


# ---------------------------------------------------------------- test (multi-view) clips


@pytest.mark.parametrize("num_clips", [1, 3, 10])
def test_official_test_clips(num_clips):
    for F, T, r in CASES:
        ours = sample_test_indices(F, num_frames=T, sampling_rate=r, num_clips=num_clips, sampling="official")
        ref = [official_reference(F, T, r, k, num_clips) for k in range(num_clips)]
        assert ours.tolist() == ref, (F, T, r)


@pytest.mark.parametrize("num_clips", [1, 3, 10])
def test_pyslowfast_test_clips_match_torch_linspace(num_clips):
    for F, T, r in CASES:
        ours = sample_test_indices(F, num_frames=T, sampling_rate=r, num_clips=num_clips, sampling="pyslowfast")
        ref = [pyslowfast_reference(F, T, r, k, num_clips) for k in range(num_clips)]
        assert ours.tolist() == ref, (F, T, r)
    # fps conversion: a 60 fps video sampled as if at 30 fps spans twice the frames
    ours = sample_test_indices(300, num_frames=8, sampling_rate=8, num_clips=num_clips, sampling="pyslowfast",
                               video_fps=60, target_fps=30)
    assert ours.tolist() == [pyslowfast_reference(300, 8, 8, k, num_clips, fps_ratio=2.0) for k in range(num_clips)]


@pytest.mark.parametrize("num_clips", [1, 3, 10])
def test_mmaction2_test_clips(num_clips):
    for F, T, r in CASES:
        ours = sample_test_indices(F, num_frames=T, sampling_rate=r, num_clips=num_clips, sampling="mmaction2")
        assert ours.tolist() == mmaction2_test_reference(F, T, r, num_clips), (F, T, r)


@pytest.mark.parametrize("num_clips", [3, 10])
def test_gluoncv_test_clips(num_clips):
    for F, T, r in CASES:
        ours = sample_test_indices(F, num_frames=T, sampling_rate=r, num_clips=num_clips, sampling="gluoncv")
        assert ours.tolist() == gluoncv_test_reference(F, T, r, num_clips), (F, T, r)


def test_published_protocol_example():
    # A 300-frame Kinetics clip, 32x2, 10 views: official starts floor(30 k), indices wrap.
    ours = sample_test_indices(300, num_frames=32, sampling_rate=2)
    assert ours[:, 0].tolist() == [30 * k for k in range(10)]
    assert ours[9].tolist() == [(270 + 2 * i) % 300 for i in range(32)]


# ---------------------------------------------------------------- training clips


def test_official_training_clips_cover_exactly_the_reference_range():
    for F, T, r in CASES:
        starts = set()
        for seed in range(60):
            ours = sample_train_indices(F, num_frames=T, sampling_rate=r, sampling="official", rng=seed)
            start = int(ours[0])
            assert ours.tolist() == official_reference(F, T, r, -1, 10, jitter_start=start)
            starts.add(start)
        high = F - T * r if F - T * r > 0 else 0
        assert min(starts) >= 0 and max(starts) <= high
        if high <= 5:  # small ranges: every admissible start is drawn
            assert starts == set(range(high + 1)), (F, T, r, starts)


def test_pyslowfast_training_clips():
    for F, T, r in CASES:
        for seed in range(5):
            ours = sample_train_indices(F, num_frames=T, sampling_rate=r, sampling="pyslowfast", rng=seed)
            delta = max(F - T * r, 0)
            start = float(np.random.default_rng(seed).uniform(0, delta)) if delta > 0 else 0.0
            assert ours.tolist() == pyslowfast_reference(F, T, r, -1, 1, random_start=start), (F, T, r, seed)


def test_mmaction2_and_gluoncv_training_clips():
    for F, T, r in CASES:
        for seed in range(5):
            ours = sample_train_indices(F, num_frames=T, sampling_rate=r, sampling="mmaction2", rng=seed)
            avg = F - T * r + 1
            offset = int(np.random.default_rng(seed).integers(avg)) if avg > 0 else 0
            assert ours.tolist() == mmaction2_train_reference(F, T, r, offset), (F, T, r)
            ours = sample_train_indices(F, num_frames=T, sampling_rate=r, sampling="gluoncv", rng=seed)
            end = int(np.random.default_rng(seed).integers(T * r, F)) if F > T * r else None
            assert ours.tolist() == gluoncv_train_reference(F, T, r, end), (F, T, r)


def test_sampling_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"Received: num_video_frames=0"):
        sample_test_indices(0, num_frames=8, sampling_rate=8)
    with pytest.raises(ValueError, match=r"Received: sampling='tsn'"):
        sample_train_indices(10, num_frames=8, sampling_rate=8, sampling="tsn")
    with pytest.raises(ValueError, match=r"Received: num_clips=0"):
        sample_test_indices(10, num_frames=8, sampling_rate=8, num_clips=0)


# ---------------------------------------------------------------- on decoded videos


@pytest.mark.parametrize("ext,fourcc", [("mp4", "mp4v"), ("avi", "MJPG")])
@pytest.mark.parametrize("sampling", ["official", "pyslowfast", "mmaction2"])
def test_multiview_clips_hold_the_reference_frames(tmp_path, ext, fourcc, sampling):
    path = tmp_path / f"clip.{ext}"
    F, T, r, n = 53, 8, 3, 10
    write_index_video(path, F)
    views = multiview_clips(path, normalize=False, num_clips=n, num_crops=1, num_frames=T, sampling_rate=r,
                            test_short_side=64, test_crop=64, sampling=sampling)
    assert views.shape == (n, T, 64, 64, 3) and views.dtype == (np.float32 if sampling == "pyslowfast" else np.uint8)
    decoded = [[decode_index(f) for f in view] for view in views]
    if sampling == "official":
        ref = [official_reference(F, T, r, k, n) for k in range(n)]
    elif sampling == "pyslowfast":
        ref = [pyslowfast_reference(F, T, r, k, n) for k in range(n)]
    else:
        ref = mmaction2_test_reference(F, T, r, n)
    assert decoded == ref


def test_gluoncv_views_on_a_decoded_video(tmp_path):
    path = tmp_path / "clip.mp4"
    write_index_video(path, 70, height=256, width=340)  # gluon-cv decodes to 340x256
    views = multiview_clips(path, normalize=False, num_clips=3, num_crops=1, num_frames=8, sampling_rate=2,
                            sampling="gluoncv", test_short_side=256, test_crop=256)
    # the index code is laid out over the full 340 px width; read it from the uncropped frames instead
    full = multiview_clips(path, normalize=False, num_clips=3, num_crops=1, num_frames=8, sampling_rate=2,
                           sampling="gluoncv", test_short_side=256, test_crop=256, decode_size=(256, 256))
    assert views.shape == full.shape == (3, 8, 256, 256, 3)
    assert [[decode_index(f) for f in v] for v in full] == gluoncv_test_reference(70, 8, 2, 3)


def test_training_clip_from_a_decoded_video(tmp_path):
    from nonlocal_zoo.data import train_clip

    path = tmp_path / "clip.avi"
    write_index_video(path, 90, fourcc="MJPG")
    flips = set()
    for seed in range(6):
        clip = train_clip(path, rng=seed, normalize=False, num_frames=8, sampling_rate=8, train_crop=64,
                          train_short_side_range=(64, 64))
        assert clip.shape == (8, 64, 64, 3)
        plain = [decode_index(f) for f in clip]
        unflipped = [decode_index(f[:, ::-1]) for f in clip]
        ok = [c == official_reference(90, 8, 8, -1, 10, jitter_start=c[0]) and 0 <= c[0] <= 90 - 64
              for c in (plain, unflipped)]
        assert any(ok), (plain, unflipped)
        flips.add(ok.index(True))
    assert flips == {0, 1}  # random flips happen both ways
