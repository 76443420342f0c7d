"""Cold start of `classify`: the views of a video trace the network once (even batches, the last one padded) with
unchanged scores, and the program ends without the interpreter's teardown after `classify` with the same output and
exit code as `cli.main`."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from nonlocal_zoo import cli, demo
from nonlocal_zoo.synthetic import write_clip
from nonlocal_zoo.tasks import resolve
from nonlocal_zoo.tasks.classifier import view_batches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("coldstart") / "clip.mp4", demo.demo_clip("moving_left", seed=[7, 0]),
                      fps=4)


def test_view_batches_are_even_and_pad_at_most_one_view_per_pass():
    for views in range(1, 50):
        for batch in (1, 3, 8):
            size, padded = view_batches(views, batch)
            assert size <= batch and padded % size == 0 and padded >= views
            passes = padded // size
            assert passes == -(-views // batch)  # no more forward passes than before
            assert padded - views < passes  # at most one repeated view per pass
    assert view_batches(10, 8) == (5, 10) and view_batches(30, 8) == (8, 32) and view_batches(3, 8) == (3, 3)
    with pytest.raises(ValueError, match="batch_size"):
        view_batches(4, 0)


def test_two_videos_with_different_view_counts_trace_once_with_unchanged_scores(clip):
    clf = resolve("demo")
    pre = clf.preprocessor
    rows = {}
    for num_clips in (10, 9):  # 10 views: 5 + 5; 9 views: 5 + 5 with one repeat (before: 8 + 2 and 8 + 1)
        views = pre.normalize(pre.video_views(os.fspath(clip), num_clips=num_clips, num_crops=1))
        scores = clf.view_scores(views)
        # independent: the network called directly on all views at once, no padding, no predict path
        direct = keras.ops.convert_to_numpy(clf(views, training=False)).astype(np.float64)
        assert scores.shape == (num_clips, clf.num_classes)
        np.testing.assert_allclose(scores, direct, rtol=1e-5, atol=1e-6)
        rows[num_clips] = clf.predict_videos([os.fspath(clip)], num_clips=num_clips, num_crops=1)[0]
        np.testing.assert_allclose(rows[num_clips], scores.mean(0), rtol=1e-6, atol=1e-7)  # softmax averaging
    assert clf.predict_function.experimental_get_tracing_count() == 1


def test_program_exits_fast_after_classify_with_main_s_output_and_exit_code(capsys, clip, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    argv = ["classify", str(clip), str(bad), "--model", "demo", "--top-k", "3", "--json"]
    code = cli.main(argv)
    expected = json.loads(capsys.readouterr().out)
    assert code == cli.EXIT_FAILURE  # one video failed
    proc = subprocess.run([sys.executable, "-m", "nonlocal_zoo.cli", *argv], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert proc.returncode == cli.EXIT_FAILURE, proc.stderr[-2000:]
    results = json.loads(proc.stdout)  # stdout was flushed before the process ended
    assert [r["video"] for r in results] == [r["video"] for r in expected]
    assert [t["label"] for t in results[0]["top"]] == [t["label"] for t in expected[0]["top"]]
    np.testing.assert_allclose([t["score"] for t in results[0]["top"]], [t["score"] for t in expected[0]["top"]],
                               rtol=1e-5)
    assert "error" in results[1] and proc.stderr.strip().splitlines()[-1].startswith(f"error: {bad}")


def test_console_main_returns_for_other_commands(capsys):
    assert "classify" in cli.FAST_EXIT_COMMANDS and "features" not in cli.FAST_EXIT_COMMANDS
    assert cli.console_main(["list", "--json"]) == cli.EXIT_OK  # returns (an in-process `list` must not exit)
    assert "demo" not in json.loads(capsys.readouterr().out)
