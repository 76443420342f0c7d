"""`extract_features` / `nonlocal-zoo features`: windows, exact frames, features vs the model, resume, shards."""
import collections
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nonlocal_zoo import features as feats
from nonlocal_zoo.data import SeekReader, read_video
from nonlocal_zoo.features import expand_videos, extract_features, iter_windows, load_features, window_plan
from tests.long_videos import decode_code, sequential_frames, write_coded_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny():
    from nonlocal_zoo.tasks import resolve

    return resolve("tiny_nl_i3d", weights=None)  # 4 x 2 frames (span 8), 32 px crops, official sampling


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("feature_videos")
    paths = {
        "bframes": root / "bframes.mp4", "vfr": root / "vfr.mkv", "short": root / "short.avi",
    }
    write_coded_video(paths["bframes"], 61, bframes=3, gop=12)
    write_coded_video(paths["vfr"], 45, bframes=2, gop=10, vfr=True)
    write_coded_video(paths["short"], 5, codec="mpeg4", bframes=0, gop=5)
    return {k: str(v) for k, v in paths.items()}


# ------------------------------------------------------------------------------------------------ windows
@pytest.mark.parametrize("n, span, stride", [(100, 16, 16), (100, 16, 5), (16, 16, 4), (5, 16, 8), (17, 16, 16),
                                             (64, 8, 3), (1, 4, 1)])
def test_rows_follow_the_documented_formula(n, span, stride):
    plan = window_plan(n, num_frames=4, sampling_rate=span // 4, stride=stride)
    # brute force: windows start every `stride` frames until one reaches the last frame
    starts = [0]
    while starts[-1] + span < n:
        starts.append(starts[-1] + stride)
    assert plan.starts.tolist() == starts
    assert len(plan.starts) == 1 + math.ceil(max(n - span, 0) / stride)
    r = span // 4
    expected = np.minimum(np.array(starts)[:, None] + np.arange(4) * r, n - 1)  # official: s + i r, last frame
    assert np.array_equal(plan.frame_indices, expected)
    assert plan.padded.tolist() == [s + span > n for s in starts]
    assert plan.window_frames.tolist() == [[s, min(s + span, n)] for s in starts]


def test_window_overrides_the_sampling_rate_and_is_checked():
    plan = window_plan(40, num_frames=4, sampling_rate=2, window=16)
    assert plan.span == 16 and plan.sampling_rate == 4 and plan.frame_indices[0].tolist() == [0, 4, 8, 12]
    with pytest.raises(ValueError, match="multiple of the clip's 4 frames.*window=10"):
        window_plan(40, num_frames=4, sampling_rate=2, window=10)
    with pytest.raises(ValueError, match="stride=0"):
        window_plan(40, num_frames=4, sampling_rate=2, stride=0)


@pytest.mark.parametrize("name", ["bframes", "vfr"])
def test_window_frames_are_the_decoded_frames_they_claim(videos, name):
    path = videos[name]
    with SeekReader(path) as reader:
        plan = window_plan(reader.num_frames, num_frames=4, sampling_rate=3, stride=5)
        seen = 0
        for w, frames in iter_windows(reader, plan, chunk=7):
            assert [decode_code(f) for f in frames] == plan.frame_indices[w].tolist()
            seen += 1
        assert seen == len(plan.starts)
        assert reader.seeks == 1  # one forward pass for every window


# ------------------------------------------------------------------------------------------------ features
def _independent_rows(clf, path, plan, layer="pool5"):
    """Each row recomputed independently: sequential decoding of the window's `span` frames (padded with the last
    frame), the classifier's own test view (1 clip, centre crop), and the layer's output through Keras."""
    import keras

    n = len(read_video(path, backend="pyav"))
    out = keras.Model(clf.input, clf.get_layer(layer).output)
    rows = []
    for s in plan.starts.tolist():
        segment = read_video(path, frame_indices=np.minimum(np.arange(s, s + plan.span), n - 1))
        view = clf.preprocessor.video_views(segment, num_clips=1, num_crops=1)  # (1, T, S, S, 3) centre crop
        y = np.asarray(out.predict_on_batch(clf.preprocessor.normalize(view)))
        rows.append(y.reshape(1, -1, y.shape[-1]).mean(axis=1)[0] if y.ndim == 5 else y[0])
    return np.stack(rows)


@pytest.mark.parametrize("layer", ["pool5", "res4"])
def test_features_equal_the_model_on_the_frames_of_each_row(videos, tiny, monkeypatch, layer):
    seen = []
    original = feats.WindowViews.__call__

    def spy(self, frames):
        seen.append(tuple(decode_code(f) for f in frames))
        return original(self, frames)

    monkeypatch.setattr(feats.WindowViews, "__call__", spy)
    paths = [videos["bframes"], videos["vfr"], videos["short"]]
    results = extract_features(paths, tiny, layer=layer, stride=3, batch_size=4, progress=False)
    # the frames each row saw (decoded index codes) are exactly its frame_indices
    claimed = collections.Counter(tuple(row) for p in paths for row in results[p]["frame_indices"].tolist())
    assert collections.Counter(seen) == claimed
    for path in paths:
        r = results[path]
        n = len(sequential_frames(path)[0])
        plan = window_plan(n, num_frames=4, sampling_rate=2, stride=3)
        assert r["features"].dtype == np.float32 and r["features"].shape[0] == 1 + math.ceil(max(n - 8, 0) / 3)
        assert np.array_equal(r["frame_indices"], plan.frame_indices)
        assert np.array_equal(r["padded"], plan.padded)
        np.testing.assert_allclose(r["features"], _independent_rows(tiny, path, plan, layer), atol=1e-5, rtol=0)
        _, times = sequential_frames(path)
        ends = np.append(times[1:], np.nan)
        np.testing.assert_allclose(r["timestamps"][:, 0], times[r["frame_indices"][:, 0]], atol=1e-9)
        last = r["frame_indices"][:, -1]
        inner = last < n - 1
        np.testing.assert_allclose(r["timestamps"][inner, 1], ends[last[inner]], atol=1e-9)
        assert np.all(r["timestamps"][:, 1] > r["timestamps"][:, 0])
        assert r["metadata"]["layer"] == layer and r["metadata"]["stride"] == 3 and r["metadata"]["window"] == 8
    short = results[videos["short"]]
    assert short["padded"].tolist() == [True] and short["frame_indices"].tolist() == [[0, 2, 4, 4]]


def test_windows_of_several_videos_share_batches(videos, tiny, monkeypatch):
    batches = []
    original = feats._Batcher.run

    def spy(self):
        batches.append({key[0] for key in self.keys})
        return original(self)

    monkeypatch.setattr(feats._Batcher, "run", spy)
    extract_features([videos["bframes"], videos["vfr"]], tiny, stride=8, batch_size=16, progress=False)
    assert any(len(b) > 1 for b in batches), batches


def test_output_files_resume_and_bad_videos(videos, tiny, tmp_path):
    bad = tmp_path / "in" / "broken.mp4"
    bad.parent.mkdir()
    bad.write_bytes(b"not a video" * 100)
    listing = tmp_path / "in" / "list.txt"
    listing.write_text(f"# videos\n{videos['bframes']}\nbroken.mp4\n{videos['short']}\n")
    out = tmp_path / "out"
    records = extract_features(str(listing), tiny, stride=4, output_dir=str(out), progress=False)
    status = {os.path.basename(r["video"]): r["status"] for r in records}
    assert status == {"bframes.mp4": "ok", "broken.mp4": "error", "short.avi": "ok"}
    error = next(r for r in records if r["status"] == "error")["error"]
    assert "broken.mp4" in error
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(line["status"] for line in lines) == ["error", "ok", "ok"]
    z = load_features(out / "bframes.npz")
    assert set(z) == {"features", "frame_indices", "timestamps", "padded", "window_frames", "metadata"}
    assert z["features"].shape == (1 + math.ceil((61 - 8) / 4), 64) and z["frame_indices"].dtype == np.int64
    assert z["metadata"]["model"] == "tiny_nl_i3d" and z["metadata"]["padding"].startswith("windows past")
    before = (out / "bframes.npz").read_bytes()
    again = extract_features(str(listing), tiny, stride=4, output_dir=str(out), progress=False)
    assert [os.path.basename(r["video"]) for r in again] == ["broken.mp4"]  # finished ones are skipped
    assert (out / "bframes.npz").read_bytes() == before
    # A run killed after renaming bframes.npz into place but before appending its manifest line: the next run
    # recovers the line from the file's own metadata (no second extraction, no manifest short of one video).
    manifest = out / "manifest.jsonl"
    kept = [line for line in manifest.read_text().splitlines() if json.loads(line).get("output") != "bframes.npz"]
    manifest.write_text("\n".join(kept) + "\n")
    extract_features(str(listing), tiny, stride=4, output_dir=str(out), progress=False)
    recovered = [json.loads(line) for line in manifest.read_text().splitlines()
                 if json.loads(line).get("output") == "bframes.npz"]
    assert len(recovered) == 1 and recovered[0]["seconds"] is None and recovered[0]["status"] == "ok"
    assert recovered[0]["windows"] == z["features"].shape[0] and recovered[0]["video"] == str(videos["bframes"])
    assert (out / "bframes.npz").read_bytes() == before
    with pytest.raises(ValueError, match="other settings.*stride"):
        extract_features(str(listing), tiny, stride=5, output_dir=str(out), progress=False)
    assert not [p for p in os.listdir(out) if ".tmp-" in p]


def test_bad_arguments_are_named(videos, tiny, tmp_path):
    with pytest.raises(ValueError, match="Unknown layer 'res9'"):
        extract_features(videos["short"], tiny, layer="res9")
    with pytest.raises(ValueError, match="crop"):
        extract_features(videos["short"], tiny, crop="corner")
    with pytest.raises(ValueError, match="shard"):
        extract_features(videos["short"], tiny, shard="3/2")
    with pytest.raises(ValueError, match="No such video"):
        expand_videos([str(tmp_path / "nothing")])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_coded_video(tmp_path / "a" / "x.mp4", 3)
    write_coded_video(tmp_path / "b" / "x.mp4", 3)
    with pytest.raises(ValueError, match="occur more than once.*'x'"):
        expand_videos([str(tmp_path)])


# ------------------------------------------------------------------------------------------------ CLI processes
def _cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="")
    return [sys.executable, "-m", "nonlocal_zoo.cli", "features", *map(str, args)], env


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for i in range(6):
        write_coded_video(root / f"clip{i}.mp4", 90 + 7 * i, bframes=2 if i % 2 else 0, gop=15, vfr=i == 3)
    return root


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_run_resumes_without_damage(clip_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f".clip0.npz.tmp-{dead.pid}").write_bytes(b"half")  # left by an earlier killed run
    cmd, env = _cli(clip_folder, "--model", "demo", "--stride", "1", "--out", out, "--workers", "1",
                    "--batch-size", "4")
    process = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(out.glob("*.npz")) and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: _sha(p) for p in out.glob("*.npz")}
    assert 1 <= len(finished) < 6, f"the run was not killed mid-way: {sorted(finished)}"
    lines_before = (out / "manifest.jsonl").read_text().splitlines()
    cmd, env = _cli(clip_folder, "--model", "demo", "--stride", "1", "--out", out)
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.glob("*.npz")) == [f"clip{i}.npz" for i in range(6)]
    for name, digest in finished.items():
        assert _sha(out / name) == digest, f"{name} was rewritten"
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and lines[:len(lines_before)] == [json.loads(x) for x in lines_before]
    assert {os.path.basename(line["video"]) for line in lines} == {f"clip{i}.mp4" for i in range(6)}
    for i in range(6):  # every file complete and consistent
        z = load_features(out / f"clip{i}.npz")
        n = 90 + 7 * i
        assert z["features"].shape == (n - 8 + 1, 128)
        assert z["frame_indices"][-1].tolist() == list(range(n - 8, n))


def test_two_shards_equal_one_full_run(clip_folder, tmp_path):
    full, sharded = tmp_path / "full", tmp_path / "sharded"
    runs = []
    for args in ([full], [sharded, "--shard", "0/2"], [sharded, "--shard", "1/2"]):
        cmd, env = _cli(clip_folder, "--model", "demo", "--stride", "6", "--batch-size", "8", "--out", *args)
        runs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True))
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    names = sorted(p.name for p in full.glob("*.npz"))
    assert names == [f"clip{i}.npz" for i in range(6)] == sorted(p.name for p in sharded.glob("*.npz"))
    for name in names:
        a, b = load_features(full / name), load_features(sharded / name)
        assert a["features"].tobytes() == b["features"].tobytes(), name  # byte for byte
        for key in ("frame_indices", "timestamps", "padded", "window_frames"):
            assert np.array_equal(a[key], b[key]), (name, key)
    shard_lines = (sharded / "manifest.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["output"] for x in shard_lines) == names  # both shards appended whole lines


def test_a_bug_in_a_decoding_thread_stops_the_run_instead_of_hanging(videos, tiny, monkeypatch):
    def broken(self, frames):
        raise TypeError("boom")

    monkeypatch.setattr(feats.WindowViews, "__call__", broken)
    with pytest.raises(TypeError, match="boom"):
        extract_features([videos["short"], videos["vfr"]], tiny, progress=False)


def test_progress_bars_show_videos_and_windows(videos, tiny, capsys):
    extract_features([videos["short"], videos["vfr"]], tiny, stride=8, progress=True)
    err = capsys.readouterr().err
    assert "videos: 100%" in err and "2/2" in err and "windows: 100%" in err


def test_cli_bad_input_is_one_error_line(tmp_path, capsys):
    from nonlocal_zoo.cli import main

    assert main(["features", str(tmp_path / "nope"), "--model", "demo", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: No such video, folder or list file: {str(tmp_path / 'nope')!r}"]
    assert main(["features", str(tmp_path), "--model", "no_such_model", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: Unknown") and "no_such_model" in err[0]
