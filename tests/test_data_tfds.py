"""The TFDS VideoFolder builder builds and loads a tiny dataset offline."""
import os

import numpy as np
import pytest

from nonlocal_zoo.data import make_dataset, read_video
from tests.conftest import decode_index, write_index_video

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture
def split_folder(tmp_path):
    root = tmp_path / "clips"
    for split, cls, name, offset in [("train", "archery", "a0.mp4", 0), ("train", "archery", "a1.avi", 30),
                                     ("train", "bowling", "b0.mp4", 60), ("val", "bowling", "b1.mp4", 90)]:
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        write_index_video(root / split / cls / name, 7, height=32, width=32, offset=offset,
                          fourcc="MJPG" if name.endswith("avi") else "mp4v")
    (root / "train" / "bowling" / "broken.mp4").write_bytes(b"\x00" * 500)
    return root


def test_video_folder_builds_and_loads(split_folder, tmp_path):
    from nonlocal_zoo.data import prepare_tfds

    data_dir = tmp_path / "tfds"
    builder = prepare_tfds(split_folder, data_dir, name="tiny_clips", encoding_format="png")
    assert builder.name == "tiny_clips"
    assert builder.info.features["label"].names == ["archery", "bowling"]
    assert {s: builder.info.splits[s].num_examples for s in ("train", "val")} == {"train": 3, "val": 1}
    assert str(builder.data_dir).startswith(str(data_dir / "tiny_clips" / "png"))

    examples = list(tfds.as_numpy(builder.as_dataset(split="train")))
    assert sorted(e["path"].decode() for e in examples) == [
        os.path.join("train", "archery", "a0.mp4"), os.path.join("train", "archery", "a1.avi"),
        os.path.join("train", "bowling", "b0.mp4")]
    for e in examples:
        frames = read_video(split_folder / e["path"].decode())
        np.testing.assert_array_equal(e["video"], frames)  # PNG frames: lossless
        assert e["num_frames"] == 7
        expected_label = 0 if "archery" in e["path"].decode() else 1
        assert e["label"] == expected_label

    # The prepared dataset loads without our builder class, and feeds make_dataset.
    restored = tfds.builder_from_directory(builder.data_dir)
    assert restored.info.splits["val"].num_examples == 1
    ds = make_dataset(f"tfds:{builder.data_dir}", split="train", training=False, batch_size=None, num_frames=4,
                      sampling_rate=1, test_short_side=32, test_crop=32)
    assert ds.class_names == ["archery", "bowling"]
    got = []
    for clip, label in ds:
        frame = np.clip(np.round(clip.numpy()[0] * 57.375 + 114.75), 0, 255).astype(np.uint8)
        got.append((decode_index(frame), int(label)))
    assert sorted(got) == [(0, 0), (30, 0), (60, 1)]
    ds = make_dataset(builder, split="val", training=True, batch_size=1, num_frames=4, sampling_rate=1,
                      train_crop=24, train_short_side_range=(32, 40))
    assert [tuple(c.shape) for c, _ in ds] == [(1, 4, 24, 24, 3)]


def test_video_folder_is_cached_and_rebuilt_when_the_folder_changes(split_folder, tmp_path):
    from nonlocal_zoo.data import prepare_tfds

    data_dir = tmp_path / "tfds"
    builder = prepare_tfds(split_folder, data_dir, name="tiny_clips", short_side=16, max_frames=5)
    assert builder.builder_config.name == "jpeg_short16_max5"
    first = next(iter(tfds.as_numpy(builder.as_dataset(split="val"))))
    assert first["video"].shape == (5, 16, 16, 3)
    record_files = sorted(p for p in os.listdir(builder.data_dir) if ".tfrecord" in p)
    stamps = [os.stat(os.path.join(builder.data_dir, p)).st_mtime_ns for p in record_files]
    again = prepare_tfds(split_folder, data_dir, name="tiny_clips", short_side=16, max_frames=5)
    assert [os.stat(os.path.join(again.data_dir, p)).st_mtime_ns for p in record_files] == stamps  # reused

    (split_folder / "val" / "archery").mkdir()
    write_index_video(split_folder / "val" / "archery" / "new.mp4", 6, height=32, width=32)
    rebuilt = prepare_tfds(split_folder, data_dir, name="tiny_clips", short_side=16, max_frames=5)
    assert rebuilt.info.splits["val"].num_examples == 2


def test_builder_arguments_are_checked(tmp_path):
    from nonlocal_zoo.data import prepare_tfds

    with pytest.raises(ValueError, match=r"Received: name='Bad Name'"):
        prepare_tfds(tmp_path, tmp_path / "tfds", name="Bad Name")
    with pytest.raises(ValueError, match=r"Received: encoding_format='gif'"):
        prepare_tfds(tmp_path, tmp_path / "tfds", encoding_format="gif")
    with pytest.raises(ValueError, match=r"Received: root_dir="):
        prepare_tfds(tmp_path / "missing", tmp_path / "tfds")


def test_default_config_and_loading_by_name(tmp_path):
    from nonlocal_zoo.data import prepare_tfds

    (tmp_path / "clips" / "walk").mkdir(parents=True)
    write_index_video(tmp_path / "clips" / "walk" / "a.mp4", 5, offset=3)
    builder = prepare_tfds(tmp_path / "clips", tmp_path / "tfds", name="my_clips")  # jpeg, one train split
    assert builder.builder_config.name == "jpeg" and builder.info.splits["train"].num_examples == 1
    ds = make_dataset("tfds:my_clips", data_dir=tmp_path / "tfds", training=False, batch_size=None, num_frames=2,
                      sampling_rate=1, test_short_side=64, test_crop=64)
    (clip, label), = list(ds)
    frame = np.clip(np.round(clip.numpy()[0] * 57.375 + 114.75), 0, 255).astype(np.uint8)
    assert (decode_index(frame), int(label)) == (3, 0)
