"""Trust on every user path (issue 15 items 1, 6, 7) and the task API after fine-tuning (issue 12): each test
reproduces the user-visible failure first described in the issue and checks the fixed behaviour.

- A fine-tuned model loads in a fresh process through every command and the Python API, with its preprocessing and
  class names (it failed with `Could not locate class 'MomentumSGD'`).
- The CLI checks cheap things before importing TensorFlow (FIFO, directory, missing file), refuses out-of-range
  `--num-clips`, and a malformed YAML recipe gives one `error:` line.
- Fine-tuning refuses an empty class folder, a single class and data where no clip decodes, up front, and a second
  run into the same output folder is refused by a lock.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from nonlocal_zoo import cli, demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_RECIPE = os.path.join(REPO, "configs", "finetune_tiny_test.yaml")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}


def cli_subprocess(*argv, timeout=180, code=None):
    """`python -m nonlocal_zoo.cli ...` in a fresh process; returns (exit code, stdout, stderr, seconds)."""
    prelude = code or "import sys; from nonlocal_zoo.cli import main; sys.exit(main(sys.argv[1:]))"
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", prelude, *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=REPO)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - start


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------------------ 15.1 + 12
@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A tiny fine-tuning run (demo clips of 12 classes, 1 epoch) through the CLI; returns (run dir, data, clip)."""
    root = tmp_path_factory.mktemp("finetuned")
    demo.write_sample_clips(root / "data", num_per_class=2, seed=3)
    run_dir = root / "run"
    code = cli.main(["finetune", str(root / "data"), "--config", TINY_RECIPE, "--epochs", "1", "--output",
                     str(run_dir), "--verbose", "0"])
    assert code == 0
    clip = demo.write_sample_clips(root / "one", num_per_class=1, seed=4)[0]
    return run_dir, root / "data", clip


def test_finetune_output_is_a_preset_directory(finetuned):
    from nonlocal_zoo.tasks import VideoClassifier, is_preset_dir

    run_dir, data, clip = finetuned
    assert is_preset_dir(run_dir)
    clf = VideoClassifier.from_preset(str(run_dir))
    class_names = sorted(os.listdir(data))
    assert list(clf.labels) == class_names == (run_dir / "class_names.txt").read_text().split()
    assert clf.preprocessor.num_frames == 4 and clf.preprocessor.config["sampling_rate"] == 2  # the recipe's clips
    best = VideoClassifier.from_preset(str(run_dir / "checkpoints" / "best.keras"))
    np.testing.assert_allclose(clf.predict(clip), best.predict(clip), rtol=0, atol=1e-6)  # the preset = best
    # save_to_preset -> from_preset after finetune: same outputs
    again = VideoClassifier.from_preset(str(clf.save_to_preset(run_dir.parent / "copy")))
    np.testing.assert_allclose(again.predict(clip), clf.predict(clip), rtol=0, atol=1e-6)


@pytest.mark.parametrize("which", ["checkpoints/best.keras", "checkpoints/last.keras", "."])
def test_finetuned_model_classifies_in_a_fresh_process(finetuned, which):
    from nonlocal_zoo.tasks import VideoClassifier

    run_dir, data, clip = finetuned
    model = run_dir / which
    code, out, err, _ = cli_subprocess("classify", clip, "--model", model, "--top-k", "3", "--json")
    assert code == 0 and "Traceback" not in err, err
    top = json.loads(out)[0]["top"]
    expected = VideoClassifier.from_preset(str(model)).predict(clip, num_clips=1, num_crops=1)[0]  # CLI defaults
    assert [t["label"] for t in top][0] in sorted(os.listdir(data))
    for item in top:
        assert abs(item["score"] - expected[item["index"]]) < 1e-5


def test_finetuned_checkpoint_through_evaluate_export_attention(finetuned, tmp_path):
    from nonlocal_zoo.export import load_export
    from nonlocal_zoo.tasks import VideoClassifier

    run_dir, data, clip = finetuned
    best = run_dir / "checkpoints" / "best.keras"
    code, out, err, _ = cli_subprocess("evaluate", data, "--model", best, "--num-clips", "1", "--num-crops", "1",
                                       "--json")
    assert code == 0 and "Traceback" not in err, err
    assert json.loads(out)["num_videos"] == 24
    code, out, err, _ = cli_subprocess("export", "--model", best, "--format", "saved_model", "--out",
                                       tmp_path / "sm")
    assert code == 0 and "Traceback" not in err, err
    clf = VideoClassifier.from_preset(str(best))
    views = clf.preprocessor.video_views(clip, num_clips=1, num_crops=1)  # uint8 (1, 4, 32, 32, 3)
    np.testing.assert_allclose(np.asarray(load_export(str(tmp_path / "sm"))(views)),
                               clf.predict_on_batch(clf.preprocessor.normalize(views)), rtol=1e-4, atol=1e-5)
    code, out, err, _ = cli_subprocess("attention", clip, "--model", best, "--out", tmp_path / "att")
    assert code == 0 and "Traceback" not in err, err
    assert (tmp_path / "att" / "attention.png").is_file()


# ------------------------------------------------------------------------------------------------------ 15.6
def test_cheap_mistakes_are_refused_before_tensorflow(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    probe = ("import sys; from nonlocal_zoo.cli import main; code = main(sys.argv[1:]); "
             "print('tensorflow imported:', 'tensorflow' in sys.modules); sys.exit(code)")
    cases = [(fifo, "is a FIFO (named pipe), not a video file"), (tmp_path, "is a directory, not a video file"),
             (tmp_path / "missing.mp4", "No such video file")]
    for path, message in cases:
        code, out, err, _ = cli_subprocess("classify", path, "--model", "demo", code=probe, timeout=60)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, (path, err)
        assert "tensorflow imported: False" in out
    clip = demo.write_sample_clips(tmp_path / "clips", num_per_class=1)[0]
    code, out, err, _ = cli_subprocess("classify", clip, "--model", "i3d_nl5_r50_8x8_kinetic400", code=probe,
                                       timeout=60)
    assert code == 2 and "Did you mean" in err and "tensorflow imported: False" in out


def test_num_clips_out_of_range_is_refused(capsys, tmp_path):
    clip = demo.write_sample_clips(tmp_path, num_per_class=1)[0]
    with pytest.raises(SystemExit) as e:
        cli.main(["classify", clip, "--model", "demo", "--num-clips", "100000"])
    assert e.value.code == 2
    assert "expected an integer from 1 to 100, got '100000'" in capsys.readouterr().err


def test_malformed_yaml_recipe_gives_one_error_line(tmp_path):
    demo.write_sample_clips(tmp_path / "data", num_per_class=1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: i3d_nl5_r50_8x8_kinetics400\nepochs: [1, 2\nlr: 0.1\n")
    code, out, err, _ = cli_subprocess("finetune", tmp_path / "data", "--config", bad, "--output", tmp_path / "r",
                                       timeout=60)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "not valid YAML (line 3" in err and str(bad) in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------------ 15.7
def _finetune_cli(data, out, timeout=90):
    return cli_subprocess("finetune", data, "--config", TINY_RECIPE, "--epochs", "1", "--output", out,
                          "--verbose", "0", timeout=timeout)


def test_finetune_refuses_bad_datasets_up_front(tmp_path):
    good = demo.write_sample_clips(tmp_path / "one_class", num_per_class=2)  # 12 classes
    # a single class
    single = tmp_path / "single" / "moving_left"
    single.mkdir(parents=True)
    for i, path in enumerate(good[:2]):
        os.link(path, single / f"{i}.mp4")
    # an empty class folder next to a good one
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir(parents=True)
    os.link(good[0], empty / "a" / "0.mp4")
    # no clip decodes
    broken = tmp_path / "broken"
    for name in ("a", "b"):
        (broken / name).mkdir(parents=True)
        for i in range(2):
            (broken / name / f"{i}.mp4").write_bytes(b"\x00" * 4096)
    cases = [(single.parent, "at least 2 classes"), (empty, "without any video file: ['b']"),
             (broken, "None of the 4 clips")]
    for data, message in cases:
        code, out, err, seconds = _finetune_cli(data, tmp_path / f"run_{data.name}")
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, (data, err)
        assert "Epoch" not in out and not (tmp_path / f"run_{data.name}" / "checkpoints").exists()


def test_second_finetune_into_the_same_folder_is_refused(tmp_path):
    demo.write_sample_clips(tmp_path / "data", num_per_class=1)
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from nonlocal_zoo.training.run_folder import lock_run_folder\n"
         "with lock_run_folder(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err, _ = _finetune_cli(tmp_path / "data", out)
        assert code == 2 and "Another finetune run is writing to" in err and err.count("\n") == 1, err
        assert not (out / "training_log.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    # the lock goes with the process (kill -9 included): the folder can be used again
    code, _, err, _ = _finetune_cli(tmp_path / "data", out, timeout=180)
    assert code == 0, err
