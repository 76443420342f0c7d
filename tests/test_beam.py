"""`nonlocal_zoo.beam` / `nonlocal-zoo classify|features --runner` (issue 14): the Beam pipeline gives the results of
the single-machine commands.

The two pipelines run once each (module fixtures) on the DirectRunner in multi-processing mode with 2 workers, over
a folder of generated clips (PyAV B-frames, VFR, cv2 mp4v, in a sub-folder too) with two broken files (garbage
bytes, a truncated mp4); the reference is the single-machine command on the same files, run in this process.
"""
import contextlib
import glob
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nonlocal_zoo.cli import main
from nonlocal_zoo.features import load_features
from tests.conftest import write_index_video
from tests.long_videos import write_coded_video

pytest.importorskip("apache_beam")  # the `beam` extra (part of the `test` extra, so CI runs these)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEAM = ["--runner", "DirectRunner", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
GOOD = ("a.mp4", "b.avi", os.path.join("sub", "c.mkv"), os.path.join("sub", "d.mp4"))
BROKEN = ("broken.mp4", os.path.join("sub", "truncated.mp4"))
VIEWS = ["--num-clips", "2", "--num-crops", "3", "--top-k", "12"]  # demo: 12 classes, so every score is compared


def _run(argv):
    """`nonlocal-zoo ARGV` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("beam_videos")
    (root / "sub").mkdir()
    write_coded_video(root / "a.mp4", 40, bframes=2, gop=10)
    write_index_video(root / "b.avi", 30)
    write_coded_video(root / "sub" / "c.mkv", 23, bframes=0, gop=5, vfr=True)
    write_index_video(root / "sub" / "d.mp4", 12)
    (root / "broken.mp4").write_bytes(b"not a video" * 100)
    data = (root / "a.mp4").read_bytes()
    (root / "sub" / "truncated.mp4").write_bytes(data[:len(data) // 3])  # no moov atom
    return root


def _beam_run(tmp_path_factory, monkeypatch_env, argv):
    work = tmp_path_factory.mktemp("beam_out")
    log = work / "loads.txt"
    monkeypatch_env.setenv("NONLOCAL_ZOO_BEAM_LOAD_LOG", str(log))
    out = work / "out"
    code, stdout, stderr = _run([*argv, "--out", str(out), "--json", *BEAM])
    pids = log.read_text().split() if log.exists() else []
    return {"code": code, "stdout": stdout, "stderr": stderr, "out": out, "pids": pids}


@pytest.fixture(scope="module")
def env():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def classified(clips, tmp_path_factory, env):
    return _beam_run(tmp_path_factory, env, ["classify", str(clips), "--model", "demo", *VIEWS])


@pytest.fixture(scope="module")
def featured(clips, tmp_path_factory, env):
    return _beam_run(tmp_path_factory, env, ["features", str(clips), "--model", "demo", "--stride", "4"])


def _dead_letter(out, clips):
    return {os.path.relpath(r["video"], clips): r["error"]
            for r in map(json.loads, (out / "dead_letter.jsonl").read_text().splitlines())}


def _loaded_once_per_worker(run):
    # every model load is logged by the worker process that made it: 2 worker processes, one load each, none here
    assert len(run["pids"]) == 2 and len(set(run["pids"])) == 2, run["pids"]
    assert str(os.getpid()) not in run["pids"]


# ------------------------------------------------------------------------------------------------ classify
def test_classify_rows_equal_the_single_machine_command(clips, classified):
    videos = [str(clips / v) for v in GOOD + BROKEN]
    code, stdout, _ = _run(["classify", *videos, "--model", "demo", *VIEWS, "--json"])
    assert code == 1  # the broken files
    single = {os.path.relpath(r["video"], clips): r for r in json.loads(stdout)}
    assert classified["code"] == 1, classified["stderr"][-2000:]
    rows = {}
    for path in glob.glob(str(classified["out"] / "predictions-*.jsonl")):
        for line in open(path, encoding="utf-8"):
            row = json.loads(line)
            assert os.path.relpath(row["video"], clips) not in rows  # one row per video
            rows[os.path.relpath(row["video"], clips)] = row
    assert sorted(rows) == sorted(GOOD)
    for name in GOOD:
        ours, ref = rows[name], single[name]
        assert ours["views"] == ref["views"] == 6
        assert [t["label"] for t in ours["top"]] == [t["label"] for t in ref["top"]]
        np.testing.assert_allclose([t["score"] for t in ours["top"]], [t["score"] for t in ref["top"]], rtol=0,
                                   atol=1e-6)
        scores = np.asarray(ours["scores"])  # the aggregated row: its top-k are the listed scores
        assert scores.shape == (12,) and abs(scores.sum() - 1) < 1e-6  # float32 softmax per view
        assert [scores[t["index"]] for t in ours["top"]] == [t["score"] for t in ours["top"]]
    # the broken files: in the dead letter with the single-machine command's error, nowhere else
    assert _dead_letter(classified["out"], clips) == {name: single[name]["error"] for name in BROKEN}
    assert all("Cannot decode video" in single[name]["error"] for name in BROKEN)
    stderr_errors = [line for line in classified["stderr"].splitlines() if line.startswith("error: ")]
    assert len(stderr_errors) == 2


def test_classify_writes_nothing_else(classified):
    names = sorted(os.listdir(classified["out"]))
    predictions = [n for n in names if n.startswith("predictions-") and n.endswith(".jsonl")]
    assert predictions and sorted(predictions + ["dead_letter.jsonl"]) == names, names
    shards = {n.rsplit("-of-", 1)[1] for n in predictions}  # complete set of shards, no temporary folder left
    assert len(shards) == 1 and len(predictions) == int(shards.pop().split(".")[0])


def test_classify_loads_the_model_once_per_worker(classified):
    _loaded_once_per_worker(classified)


# ------------------------------------------------------------------------------------------------ features
def test_features_files_equal_the_single_machine_command(clips, featured, tmp_path):
    ref_out = tmp_path / "single"
    code, _, _ = _run(["features", str(clips), "--model", "demo", "--stride", "4", "--out", str(ref_out)])
    assert code == 1
    assert featured["code"] == 1, featured["stderr"][-2000:]
    out = featured["out"]
    stems = sorted(os.path.splitext(os.path.basename(v))[0] for v in GOOD)
    # nothing else is written: the files of the good videos, the manifest and the dead letter (no temporaries)
    assert sorted(os.listdir(out)) == sorted([f"{s}.npz" for s in stems] + ["manifest.jsonl", "dead_letter.jsonl"])
    for stem in stems:
        ours, ref = load_features(out / f"{stem}.npz"), load_features(ref_out / f"{stem}.npz")
        for key in ("features", "frame_indices", "timestamps", "padded", "window_frames"):
            assert ours[key].dtype == ref[key].dtype and ours[key].shape == ref[key].shape, (stem, key)
            assert ours[key].tobytes() == ref[key].tobytes(), (stem, key)  # byte for byte
        assert ours["features"].shape[0] > 1 and ours["metadata"] == ref["metadata"]

    def records(path):
        lines = [json.loads(line) for line in (path / "manifest.jsonl").read_text().splitlines()]
        return sorted((json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True) for r in lines))

    assert records(out) == records(ref_out)  # the same lines but the timings (6: 4 ok, 2 errors)
    ref_errors = {os.path.relpath(r["video"], clips): r["error"]
                  for r in map(json.loads, (ref_out / "manifest.jsonl").read_text().splitlines())
                  if r["status"] == "error"}
    assert sorted(ref_errors) == sorted(BROKEN)
    assert _dead_letter(out, clips) == ref_errors


def test_features_load_the_model_once_per_worker(featured):
    _loaded_once_per_worker(featured)


# ------------------------------------------------------------------------------------------------ CLI
def test_without_beam_runner_is_one_error_line_and_plain_commands_do_not_import_it(clips, tmp_path):
    video = str(clips / "sub" / "d.mp4")
    script = ("import sys; sys.modules['apache_beam'] = None  # hides the installed package\n"
              "from nonlocal_zoo.cli import main\n"
              "code = main(sys.argv[1:])\n"
              "assert 'apache_beam' not in sys.modules or sys.modules['apache_beam'] is None\n"
              "sys.exit(code)\n")
    environ = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "out"
    for job in (["classify", video], ["features", video, "--stride", "4"]):
        proc = subprocess.run([sys.executable, "-c", script, *job, "--model", "demo", "--out", str(out), *BEAM],
                              capture_output=True, text=True, cwd=ROOT, env=environ, timeout=300)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: ") and "pip install 'nonlocal_zoo[beam]'" in lines[0]
        assert not out.exists()
    # without --runner nothing changes (and Beam is not needed)
    proc = subprocess.run([sys.executable, "-c", script, "classify", video, "--model", "demo", "--json"],
                          capture_output=True, text=True, cwd=ROOT, env=environ, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["views"] == 1


def test_runner_usage_errors(clips, tmp_path, capsys):
    video = str(clips / "a.mp4")
    assert main(["classify", video, "--model", "demo", "--runner", "DirectRunner"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["features", str(tmp_path / "missing"), "--model", "demo", "--out", str(tmp_path / "o"),
                 "--runner", "DirectRunner"]) == 2
    assert "No such video, folder or list file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["classify", video, "--model", "demo", "--out", str(tmp_path / "o"), "--runner", "LocalRunner"])
    assert "invalid choice: 'LocalRunner'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # without --runner, unknown flags are still mistakes
        main(["classify", video, "--model", "demo", "--direct_num_workers", "2"])
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ sources
def test_sources_globs_folders_and_lists(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from nonlocal_zoo.beam import read_videos

    for rel in ("x.mp4", "sub/y.avi", "sub/deep/z.MKV", "sub/.hidden.mp4", "sub/notes.md"):
        (tmp_path / "v" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "v" / rel).write_bytes(b"")
    v = tmp_path / "v"
    (tmp_path / "list.txt").write_text(f"# clips\nv/x.mp4\n\n{v / 'sub' / 'y.avi'}\nv/x.mp4\n")
    (tmp_path / "list.csv").write_text('path,label\nv/sub/deep/z.MKV,3\n"v/x.mp4",1\n')
    expected = {
        "folder": [str(v / "x.mp4"), str(v / "sub" / "y.avi"), str(v / "sub" / "deep" / "z.MKV")],
        "glob": [str(v / "sub" / "y.avi")],
        "lists": [str(v / "x.mp4"), str(v / "sub" / "y.avi"), str(v / "sub" / "deep" / "z.MKV")],
    }
    with beam.Pipeline() as p:
        assert_that(read_videos(p, str(v), label="folder"), equal_to(expected["folder"]), label="check folder")
        assert_that(read_videos(p, str(v / "sub" / "*.*"), label="glob"), equal_to(expected["glob"]),
                    label="check glob")
        assert_that(read_videos(p, [str(tmp_path / "list.txt"), str(tmp_path / "list.csv")], label="lists"),
                    equal_to(expected["lists"]), label="check lists")
    with pytest.raises(ValueError, match="No such video, folder or list file: .*missing"):
        read_videos(beam.Pipeline(), str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="Not a glob, a folder, a video"):
        read_videos(beam.Pipeline(), str(v / "sub" / "notes.md"))


# ------------------------------------------------------------------------------------------------ other models
@pytest.mark.slow
def test_preset_directory_and_saved_model_give_the_keras_results(clips, tmp_path):
    """A saved preset directory (features, byte for byte) and an exported SavedModel (classify, 1e-6) as the model."""
    from nonlocal_zoo.beam import run_pipeline
    from nonlocal_zoo.export import export_model
    from nonlocal_zoo.features import extract_features
    from nonlocal_zoo.inference import classify, load_model

    clf = load_model("demo")
    clf.save_to_preset(tmp_path / "preset")
    export_model(clf, "saved_model", str(tmp_path / "sm"))
    videos = [str(clips / "sub" / "c.mkv"), str(clips / "sub" / "d.mp4")]
    source = tmp_path / "list.txt"
    source.write_text("\n".join(videos) + "\n")
    summary = run_pipeline("features", str(source), tmp_path / "feats", model=str(tmp_path / "preset"), stride=4)
    assert summary["videos_ok"] == 2 and summary["dead_letter"] == []
    ref = extract_features(videos, clf, stride=4, progress=False)
    for video in videos:
        ours = load_features(tmp_path / "feats" / (os.path.splitext(os.path.basename(video))[0] + ".npz"))
        assert ours["features"].tobytes() == ref[video]["features"].tobytes()
    summary = run_pipeline("classify", str(source), tmp_path / "cls", model=str(tmp_path / "sm"), top_k=12,
                           num_clips=2, num_crops=3)
    assert summary["videos_ok"] == 2
    rows = {json.loads(line)["video"]: json.loads(line)
            for path in glob.glob(str(tmp_path / "cls" / "predictions-*.jsonl")) for line in open(path)}
    for ref_row in classify(clf, videos, top_k=12, num_clips=2, num_crops=3):
        got = {t["label"]: t["score"] for t in rows[ref_row["video"]]["top"]}
        np.testing.assert_allclose([got[t["label"]] for t in ref_row["top"]], [t["score"] for t in ref_row["top"]],
                                   rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ helper F's fixes
class _OptionNames:
    """Records the option strings a Beam `PipelineOptions` class adds (its `_add_argparse_args` hook)."""

    def __init__(self):
        self.names = set()

    def add_argument(self, *names, **_):
        self.names.update(n for n in names if n.startswith("-"))

    add_value_provider_argument = add_argument

    def add_argument_group(self, *_, **__):
        return self

    add_mutually_exclusive_group = add_argument_group


def _beam_option_strings():
    from apache_beam.options.pipeline_options import PipelineOptions

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    recorder = _OptionNames()
    for cls in set(subclasses(PipelineOptions)):
        cls._add_argparse_args(recorder)
    assert {"--project", "--labels", "--label", "--direct_num_workers", "--runner"} <= recorder.names  # sanity
    return recorder.names


def _command_options(command):
    import argparse

    from nonlocal_zoo.cli import build_parser

    sub = next(a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction))
    return {s for action in sub.choices[command]._actions for s in action.option_strings}


def _fake_run_pipeline(monkeypatch):
    import nonlocal_zoo.beam.pipeline as beam_pipeline

    calls = []

    def fake(job, sources, output_dir, *, options=None, **kwargs):
        calls.append({"job": job, "options": list(options), **kwargs})
        return {"job": job, "output_dir": output_dir, "state": "DONE", "videos_ok": 0, "videos_failed": 0,
                "dead_letter": []}

    monkeypatch.setattr(beam_pipeline, "run_pipeline", fake)
    return calls


def test_beam_options_named_like_ours_go_after_a_bare_double_dash(clips, tmp_path, monkeypatch, capsys):
    """Dataflow's `--labels key=value` (alias `--label`) reach Beam, not the command's labels file."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

    calls = _fake_run_pipeline(monkeypatch)
    video, out = str(clips / "a.mp4"), str(tmp_path / "o")
    for job in (["classify", video], ["features", video, "--stride", "4"]):
        assert main([*job, "--model", "demo", "--out", out, "--runner", "DataflowRunner", "--label", "a=b",
                     "--project", "p", "--", "--labels", "team=video", "--runner", "x"]) == 0
        call = calls.pop()
        assert call["labels"] is None  # no abbreviation: `--label` is not our `--labels`
        options = PipelineOptions(call["options"])
        assert options.view_as(GoogleCloudOptions).labels == ["a=b", "team=video"]
        assert options.view_as(GoogleCloudOptions).project == "p"
        assert call["options"][:2] == ["--runner", "DataflowRunner"] and "x" in call["options"]  # verbatim tail
    # before `--`, --labels is ours: a KEY=VALUE that is no file says where Beam's goes
    assert main(["classify", video, "--model", "demo", "--out", out, "--runner", "DataflowRunner",
                 "--labels", "team=video"]) == 2
    err = capsys.readouterr().err
    assert "No such labels file" in err and "'team=video'" in err and "-- --labels KEY=VALUE" in err
    with pytest.raises(SystemExit):
        main(["classify", video, "--model", "demo", "--out", out, "--", "--runner", "DataflowRunner"])
    assert "--runner goes before the bare `--`" in capsys.readouterr().err
    assert not calls


def test_our_options_that_beam_also_defines_are_listed_and_documented(clips, tmp_path, monkeypatch):
    from nonlocal_zoo.cli import BEAM_NAMESAKES

    beam_names = _beam_option_strings()
    doc = open(os.path.join(ROOT, "docs", "scale_out.md"), encoding="utf-8").read()
    calls = _fake_run_pipeline(monkeypatch)
    for command in ("classify", "features"):
        ours = _command_options(command)
        assert ours & beam_names == set(BEAM_NAMESAKES), command
        # a Beam option that is a prefix of one of ours (`--label` of `--labels`) is not abbreviated into ours
        prefixes = sorted(b for b in beam_names for o in ours if o != b and o.startswith(b) and b.startswith("--"))
        assert "--label" in prefixes
        for name in prefixes:
            job = ["features", str(clips / "a.mp4")] if command == "features" else ["classify", str(clips / "a.mp4")]
            assert main([*job, "--model", "demo", "--out", str(tmp_path / "o"), "--runner", "DirectRunner", name,
                         "v"]) == 0
            assert calls.pop()["options"][2:4] == [name, "v"]
    for name in BEAM_NAMESAKES:
        assert f"`{name}`" in doc.split("## 3.")[1].split("## 4.")[0], name  # listed in section 3 (Dataflow)


def test_model_handler_reports_model_sharing_to_beam():
    from apache_beam.ml.inference.base import KeyedModelHandler

    from nonlocal_zoo.beam import ZooModelHandler

    default = KeyedModelHandler(ZooModelHandler("demo", job="classify"))
    assert default.share_model_across_processes() is False and default.model_copies() == 1
    large = KeyedModelHandler(ZooModelHandler("demo", job="features", large_model=True))
    assert large.share_model_across_processes() is True and large.model_copies() == 1
    copies = KeyedModelHandler(ZooModelHandler("demo", job="classify", model_copies=3))
    assert copies.share_model_across_processes() is True and copies.model_copies() == 3
    for bad in ({"model_copies": 0}, {"model_copies": 1.5}, {"model_copies": True}, {"large_model": "yes"}):
        with pytest.raises(ValueError, match=list(bad)[0]):
            ZooModelHandler("demo", job="classify", **bad)


def test_classify_forward_passes_have_one_shape(monkeypatch):
    """RunInference batches of 3, 4, 1 and 6 views: every forward pass has batch_size views, traced once."""
    import keras

    from nonlocal_zoo.beam import ZooModelHandler

    handler = ZooModelHandler("demo", job="classify", batch_size=4)
    runner = handler.load_model()
    clf = runner.clf
    shapes = []
    original = keras.Model.predict_on_batch

    def recording(self, x):
        shapes.append(tuple(np.shape(x)))
        return original(self, x)

    monkeypatch.setattr(keras.Model, "predict_on_batch", recording)
    rng = np.random.default_rng(0)
    views = rng.integers(0, 256, (14, 8, 64, 64, 3), dtype=np.uint8)  # the demo's 8 x 64 x 64 views
    got = []
    for start, size in ((0, 3), (3, 4), (7, 1), (8, 6)):
        got.extend(handler.run_inference(list(views[start:start + size]), runner))
    assert len(shapes) == 5 and set(shapes) == {(4, 8, 64, 64, 3)}, shapes
    traced = [m.predict_function for m in (clf, clf.logits_model()) if getattr(m, "predict_function", None)]
    assert [f.experimental_get_tracing_count() for f in traced] == [1]
    monkeypatch.setattr(keras.Model, "predict_on_batch", original)
    one_by_one = np.concatenate([clf.view_scores(clf.preprocessor.normalize(v[None]), batch_size=1) for v in views])
    np.testing.assert_allclose(np.stack(got), one_by_one, rtol=0, atol=1e-6)  # padding changes no view's scores


def test_in_process_run_counts_are_integers_and_a_shared_model_gives_the_same_rows(clips, tmp_path, monkeypatch):
    """The in-process DirectRunner with `large_model=True` (the model served to the workers through Beam's
    cross-process proxy) on one clip: integer counts (0 failed, not None), the rows of the single-machine classify."""
    from apache_beam.utils import multi_process_shared

    from nonlocal_zoo.beam import run_pipeline
    from nonlocal_zoo.inference import classify, load_model

    shared = []
    acquire = multi_process_shared.MultiProcessShared.acquire

    def spy(self):
        proxy = acquire(self)
        shared.append(self._tag)
        return proxy

    monkeypatch.setattr(multi_process_shared.MultiProcessShared, "acquire", spy)
    video = str(clips / "sub" / "d.mp4")
    log = tmp_path / "loads.txt"
    summary = run_pipeline("classify", video, tmp_path / "cls", model="demo", top_k=12, num_clips=2, num_crops=3,
                           large_model=True, load_log=str(log), options=["--runner", "DirectRunner"])
    assert shared, "RunInference did not serve the model through multi_process_shared"
    monkeypatch.undo()
    assert summary["videos_ok"] == 1 and summary["videos_failed"] == 0 and summary["dead_letter"] == []
    assert type(summary["videos_ok"]) is int and type(summary["videos_failed"]) is int
    assert log.read_text().split() == [str(os.getpid())]  # one load
    rows = [json.loads(line) for path in glob.glob(str(tmp_path / "cls" / "predictions-*.jsonl"))
            for line in open(path)]
    (ref,) = classify(load_model("demo"), [video], top_k=12, num_clips=2, num_crops=3)
    assert len(rows) == 1 and rows[0]["views"] == 6
    np.testing.assert_allclose([rows[0]["scores"][t["index"]] for t in ref["top"]], [t["score"] for t in ref["top"]],
                               rtol=0, atol=1e-6)
    # nothing decodes: no counter is ever incremented, both counts come from the outputs
    summary = run_pipeline("features", str(clips / "broken.mp4"), tmp_path / "feats", model="demo",
                           options=["--runner", "DirectRunner"])
    assert (summary["videos_ok"], summary["videos_failed"], len(summary["dead_letter"])) == (0, 1, 1)
