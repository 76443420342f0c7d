"""make_dataset: folder / CSV / pair sources, skipping bad clips with a report, determinism."""
import logging

import numpy as np
import pytest

from nonlocal_zoo.data import DecodeReport, list_video_folder, make_dataset, read_clip_list
from tests.conftest import decode_index, write_index_video

tf = pytest.importorskip("tensorflow")

SMALL = dict(num_frames=4, sampling_rate=1, test_short_side=64, test_crop=64, train_crop=48,
             train_short_side_range=(64, 72))


@pytest.fixture
def mixed_folder(tmp_path):
    """root/<class>/<clip>: 3 good clips (first frame index = 10, 40, 70) and 4 bad ones, plus a non-video file."""
    root = tmp_path / "clips"
    (root / "archery").mkdir(parents=True)
    (root / "bowling").mkdir()
    write_index_video(root / "archery" / "g0.mp4", 12, offset=10)
    write_index_video(root / "archery" / "g1.avi", 12, offset=40, fourcc="MJPG")
    write_index_video(root / "bowling" / "g2.mp4", 12, offset=70)
    write_index_video(tmp_path / "tmp.mp4", 12)
    raw = (tmp_path / "tmp.mp4").read_bytes()
    bad = {
        root / "archery" / "random.mp4": np.random.default_rng(0).bytes(2048),
        root / "archery" / "empty.avi": b"",
        root / "bowling" / "truncated.mp4": raw[: len(raw) // 2],
        root / "bowling" / "text.mkv": b"hello" * 50,
    }
    for path, content in bad.items():
        path.write_bytes(content)
    (root / "bowling" / "notes.txt").write_text("not listed")
    return root, sorted(str(p) for p in bad)


def _first_indices(ds):
    """(first-frame index, label) of every clip of an unbatched dataset of official-normalised clips."""
    out = []
    for clip, label in ds:
        frame = np.clip(np.round(clip.numpy()[0] * 57.375 + 114.75), 0, 255).astype(np.uint8)
        out.append((decode_index(frame), int(label)))
    return sorted(out)


def test_mixed_folder_yields_exactly_the_good_clips(mixed_folder, caplog):
    root, bad = mixed_folder
    report = DecodeReport()
    ds = make_dataset(root, training=False, batch_size=None, on_error="skip", report=report, **SMALL)
    assert ds.class_names == ["archery", "bowling"]
    with caplog.at_level(logging.WARNING, logger="nonlocal_zoo.data"):
        assert _first_indices(ds) == [(10, 0), (40, 0), (70, 1)]
    assert len(report.passes) == 1
    summary = report.passes[0]
    assert (summary["num_clips"], summary["num_skipped"]) == (7, 4)
    assert sorted(p for p, _ in summary["skipped"]) == bad
    assert "skipped 4 of 7 clips" in caplog.text and all(p in caplog.text for p in bad)
    assert ds.decode_report is report


def test_training_pass_survives_bad_clips_and_reports_each_pass(mixed_folder):
    root, bad = mixed_folder
    ds = make_dataset(root, training=True, batch_size=2, seed=0, **SMALL)
    for _ in range(2):  # two epochs
        batches = list(ds)
        assert [b[0].shape for b in batches] == [(2, 4, 48, 48, 3)]  # 3 good clips, last partial batch dropped
        assert all(b[0].dtype == tf.float32 and b[1].dtype == tf.int32 for b in batches)
    report = ds.decode_report
    assert [p["num_skipped"] for p in report.passes] == [4, 4]
    assert [p["pass"] for p in report.passes] == [0, 1]
    assert sorted(p for p, _ in report.skipped) == bad


def test_repeated_training_reports_per_pass(mixed_folder):
    root, _ = mixed_folder
    ds = make_dataset(root, training=True, batch_size=3, repeat=True, seed=1, **SMALL)
    it = iter(ds)
    for _ in range(4):  # 12 good clips = 4 passes over the 7 listed files
        clips, labels = next(it)
        assert clips.shape == (3, 4, 48, 48, 3)
        assert sorted(labels.numpy().tolist()) == [0, 0, 1]
    assert len(ds.decode_report.passes) >= 3
    assert all(p["num_skipped"] == 4 and p["num_clips"] == 7 for p in ds.decode_report.passes)


def test_on_error_raise_names_the_file(mixed_folder):
    root, bad = mixed_folder
    ds = make_dataset(root, training=False, batch_size=None, on_error="raise", shuffle=False, **SMALL)
    with pytest.raises(tf.errors.OpError, match="Cannot decode video"):
        for _ in ds:
            pass


def test_all_bad_repeating_dataset_stops_with_an_error(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.mp4").write_bytes(b"x" * 100)
    ds = make_dataset(tmp_path, training=True, batch_size=1, repeat=True, **SMALL)
    with pytest.raises(tf.errors.OpError, match="Every clip of the last pass failed"):
        next(iter(ds))


def test_csv_list_and_pair_sources(tmp_path):
    for i, name in enumerate(["a.mp4", "b.avi", "c.mp4"]):
        write_index_video(tmp_path / name, 8, offset=20 * i, fourcc="MJPG" if name.endswith("avi") else "mp4v")
    (tmp_path / "list.csv").write_text("path,label\na.mp4,dog\nb.avi,cat\nc.mp4,dog\n")
    (tmp_path / "list.txt").write_text("a.mp4 1\nb.avi 0\n# comment\nc.mp4 1\n")
    csv = read_clip_list(tmp_path / "list.csv")
    assert csv.class_names == ["cat", "dog"] and csv.labels == [1, 0, 1]
    expected = [(0, 1), (20, 0), (40, 1)]
    for source in (tmp_path / "list.csv", tmp_path / "list.txt",
                   [(tmp_path / "a.mp4", 1), (tmp_path / "b.avi", 0), (tmp_path / "c.mp4", 1)]):
        ds = make_dataset(source, training=False, batch_size=None, **SMALL)
        assert _first_indices(ds) == expected


def test_split_folders(tmp_path):
    (tmp_path / "train" / "x").mkdir(parents=True)
    (tmp_path / "val" / "y").mkdir(parents=True)
    write_index_video(tmp_path / "train" / "x" / "1.mp4", 6)
    write_index_video(tmp_path / "val" / "y" / "2.mp4", 6)
    with pytest.raises(ValueError, match="pass split="):
        list_video_folder(tmp_path)
    val = list_video_folder(tmp_path, split="val")
    assert val.class_names == ["x", "y"] and val.labels == [1]  # classes are the union over splits
    ds = make_dataset(tmp_path, split="train", training=False, batch_size=None, **SMALL)
    assert [int(label) for _, label in ds] == [0]


def test_deterministic_option(mixed_folder):
    root, _ = mixed_folder

    def batches(seed):
        ds = make_dataset(root, training=True, batch_size=1, seed=seed, deterministic=True, num_parallel_calls=2,
                          **SMALL)
        return [(c.numpy(), int(lab[0])) for c, lab in ds]

    a, b, c = batches(5), batches(5), batches(6)
    assert len(a) == 3
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_argument_errors(mixed_folder):
    root, _ = mixed_folder
    with pytest.raises(ValueError, match=r"Received: on_error='ignore'"):
        make_dataset(root, on_error="ignore")
    with pytest.raises(ValueError, match=r"Received: batch_size=0"):
        make_dataset(root, batch_size=0)
    with pytest.raises(ValueError, match=r"neither a folder nor a clip list"):
        make_dataset(root / "nope")


def test_process_pool_decoding_gives_the_same_clips(mixed_folder):
    root, bad = mixed_folder
    threads = make_dataset(root, training=False, batch_size=None, shuffle=False, **SMALL)
    processes = make_dataset(root, training=False, batch_size=None, shuffle=False, parallelism="processes",
                             num_parallel_calls=2, **SMALL)
    a, b = list(threads), list(processes)
    assert len(a) == len(b) == 3
    for (clip_a, label_a), (clip_b, label_b) in zip(a, b):
        np.testing.assert_array_equal(clip_a.numpy(), clip_b.numpy())
        assert int(label_a) == int(label_b)
    assert sorted(p for p, _ in processes.decode_report.skipped) == bad

    def training_run():
        ds = make_dataset(root, training=True, batch_size=3, seed=7, parallelism="processes", num_parallel_calls=2,
                          **SMALL)
        return [c.numpy() for c, _ in ds]

    first, second = training_run(), training_run()
    assert len(first) == 1 and np.array_equal(first[0], second[0])  # seeded: identical augmentations
    with pytest.raises(tf.errors.OpError, match="Cannot decode video"):
        list(make_dataset(root, training=False, on_error="raise", parallelism="processes", num_parallel_calls=1,
                          **SMALL))
    with pytest.raises(ValueError, match=r"Received: parallelism='fork'"):
        make_dataset(root, parallelism="fork")
