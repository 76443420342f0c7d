"""`timeline` / `nonlocal-zoo timeline`: window scores equal the classifier on the same clip; files open."""
import csv
import json

import numpy as np
import pytest

from nonlocal_zoo.cli import main
from nonlocal_zoo.data import read_video
from nonlocal_zoo.timeline import current_windows, timeline
from tests.long_videos import decode_code, sequential_frames, write_coded_video


@pytest.fixture(scope="module")
def tiny():
    from nonlocal_zoo.tasks import resolve

    return resolve("tiny_nl_i3d", weights=None)  # 4 x 2 frames, 3 test crops, softmax averaging


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("timeline") / "match.mp4"
    write_coded_video(path, 50, bframes=3, gop=12, vfr=True)
    return str(path)


@pytest.mark.parametrize("num_crops", [None, 1])
def test_window_scores_equal_the_classifier_on_the_same_clip(tiny, video, tmp_path, num_crops):
    result = timeline(video, tiny, stride=5, top_k=3, num_crops=num_crops, out_dir=tmp_path, annotate=True)
    crops = 3 if num_crops is None else num_crops  # default: the preset's test crops, as evaluate uses them
    n = len(read_video(video))
    span = 8
    assert result["num_crops"] == crops and result["window"] == span
    assert len(result["windows"]) == 1 + -(-(n - span) // 5)
    for w, window in enumerate(result["windows"]):
        s = window["start_frame"]
        frames = read_video(video, frame_indices=np.minimum(np.arange(s, s + span), n - 1))  # padded at the end
        expected = tiny.predict(frames, num_clips=1, num_crops=crops)[0]  # the classifier on this window's clip
        np.testing.assert_allclose(result["scores"][w], expected, atol=1e-6, rtol=0)
        assert [item["index"] for item in window["top"]] == np.argsort(-expected, kind="stable")[:3].tolist()
        assert window["padded"] == (s + span > n)
    _, times = sequential_frames(video)
    np.testing.assert_allclose(result["timestamps"][:, 0], times[result["frame_indices"][:, 0]], atol=1e-9)

    # files: JSON and CSV hold the same top-k, the PNG and the MP4 open
    saved = json.loads((tmp_path / "timeline.json").read_text())
    assert saved["windows"] == result["windows"]
    with open(tmp_path / "timeline.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(result["windows"])
    assert [r["label"] for r in rows if r["rank"] == "1"] == [w["top"][0]["label"] for w in result["windows"]]
    from PIL import Image

    with Image.open(tmp_path / "timeline.png") as image:
        image.load()
        assert image.format == "PNG" and image.size == (960, 360)
        colours = np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) >= 5  # axes and at least three class curves drawn, not a blank image
    annotated = read_video(tmp_path / "annotated.mp4", backend="pyav")
    assert annotated.shape[0] == n and annotated.shape[1:3] == (96, 128)
    original = read_video(video)
    assert np.abs(annotated[:, :24].astype(int) - original[:, :24]).mean() > 5  # the label is drawn at the top
    assert [decode_code(f) for f in annotated[::7]] == list(range(0, n, 7))  # the frames, in order


def test_current_window_of_each_frame(tiny, video):
    result = timeline(video, tiny, stride=3, top_k=1)
    windows = current_windows(result, result["num_video_frames"])
    starts = result["window_frames"][:, 0]
    for k, w in enumerate(windows.tolist()):
        assert starts[w] <= k and (w + 1 == len(starts) or starts[w + 1] > k)


def test_cli_timeline_writes_files_and_reports_bad_input(video, tmp_path, capsys):
    out = tmp_path / "tl"
    assert main(["timeline", video, "--model", "demo", "--stride", "8", "--top-k", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and (out / "timeline.json").exists() and (out / "timeline.png").exists()
    assert not (out / "annotated.mp4").exists()
    assert main(["timeline", str(tmp_path / "missing.mp4"), "--model", "demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: No such video file") and "missing.mp4" in err[0]
    assert main(["timeline", video, "--model", "demo", "--window", "12", "--out", str(out)]) == 2
    assert "multiple of the clip's 8 frames" in capsys.readouterr().err
