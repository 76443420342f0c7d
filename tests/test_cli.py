"""`nonlocal-zoo`: every subcommand end to end on tiny inputs, checked against the library computed independently
(OpenCV decoding + the demo model + numpy), plus help, exit codes and one-line errors."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from nonlocal_zoo import cli, demo
from nonlocal_zoo.synthetic import CLASSES, write_clip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("list", "info", "classify", "evaluate", "finetune", "convert", "download", "export", "attention", "demo",
            "benchmark", "prepare")


def run(capsys, *argv):
    """Runs the CLI in-process; returns (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def model():
    return demo.load_demo_model()


def _decode(path):
    """All frames of a video as uint8 RGB, with OpenCV directly."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def _expected_scores(model, path):
    x = (_decode(path).astype(np.float32) - 114.75) / 57.375  # the official mean/std, 8 frames of 64x64
    return np.asarray(model.predict_on_batch(x[None]))[0]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    paths = []
    for i, name in enumerate(("moving_left", "meeting", "rotating_clockwise")):
        paths.append(write_clip(folder / f"{name}.mp4", demo.demo_clip(name, seed=[7, i]), fps=4))
    return paths


def test_help_for_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out
        with pytest.raises(SystemExit) as e:
            cli.main([command, "--help"])
        assert e.value.code == 0, command
        assert "usage:" in capsys.readouterr().out
    assert cli.main([]) == cli.EXIT_USAGE  # no command: help, exit 2
    capsys.readouterr()


def test_parser_and_help_do_not_import_tensorflow():
    code = ("import sys, nonlocal_zoo.cli as c; c.build_parser(); "
            "print(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "False"


def test_list_and_info(capsys):
    from nonlocal_zoo.models.flops import format_info
    from nonlocal_zoo.presets import list_models

    code, out, _ = run(capsys, "list", "--json")
    assert code == 0 and json.loads(out) == list_models()
    code, out, _ = run(capsys, "list", "--pretrained", "--json")
    assert code == 0 and json.loads(out) == list_models(pretrained=True)
    code, out, _ = run(capsys, "list")
    assert code == 0 and all(name in out for name in list_models()) and "demo" in out
    code, out, _ = run(capsys, "info", "i3d_nl5_r50_8x8_kinetics400")
    assert code == 0 and out == format_info("i3d_nl5_r50_8x8_kinetics400") + "\n"
    code, out, _ = run(capsys, "info", "demo")
    assert code == 0 and demo.provenance()["sha256"] in out
    code, _, err = run(capsys, "info", "i3d_nl5_r50_8x8_kinetic400")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Did you mean" in err


def test_classify_matches_the_model_on_decoded_frames(capsys, clips, model):
    code, out, _ = run(capsys, "classify", *clips, "--model", "demo", "--top-k", "3", "--json")
    assert code == 0
    results = json.loads(out)
    assert [r["video"] for r in results] == [str(p) for p in clips]
    for path, result in zip(clips, results):
        scores = _expected_scores(model, path)
        order = np.argsort(-scores)[:3]
        assert [item["label"] for item in result["top"]] == [CLASSES[i] for i in order]
        np.testing.assert_allclose([item["score"] for item in result["top"]], scores[order], rtol=1e-4, atol=1e-6)
    # the demo model gets these clear clips right
    assert [r["top"][0]["label"] for r in results] == [os.path.basename(p)[:-4] for p in clips]
    code, out, _ = run(capsys, "classify", clips[0], "--model", "demo", "-k", "2")
    assert code == 0 and out.count("\n") == 3 and "1. moving_left" in out


def test_classify_multiview_averages_views(capsys, clips, model):
    code, out, _ = run(capsys, "classify", clips[1], "--model", "demo", "--num-clips", "2", "--num-crops", "3",
                       "--json")
    assert code == 0
    result = json.loads(out)[0]
    assert result["views"] == 6  # an 8-frame video: both clips are its 8 frames; 64x64: the 3 crops coincide
    scores = _expected_scores(model, clips[1])
    np.testing.assert_allclose(result["top"][0]["score"], scores.max(), rtol=1e-4)


def test_user_mistakes_exit_2_with_one_line(capsys, clips, tmp_path):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("hello")
    cases = [
        (("classify", tmp_path / "missing.mp4", "--model", "demo"), "No such video file"),
        (("classify", clips[0], "--model", "i3d_nl5_r50_8x8_kinetic400"), "Did you mean"),
        (("classify", clips[0], "--model", "i3d_nl5_r50"), "no published weights"),
        (("classify", clips[0], "--model", "demo", "--top-k", "20"), "top_k"),
        (("attention", clips[0], "--model", "demo", "--query", "8,0,0"), "query"),
        (("attention", clips[0], "--model", "demo", "--query", "1,2"), "query"),
        (("attention", clips[0], "--model", "demo", "--block", "nonlocal_conv9_0"), "nonlocal_conv3_0"),
        (("evaluate", tmp_path / "nowhere", "--model", "demo"), "nowhere"),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2, argv
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (argv, err)
        assert "Traceback" not in err + out
    with pytest.raises(SystemExit) as e:  # argparse's own errors also exit 2
        cli.main(["classify", str(clips[0]), "--model", "demo", "--num-crops", "2"])
    assert e.value.code == 2
    capsys.readouterr()
    # a file that is not a video fails on its own (exit 1, one error line for it), the others are still reported
    code, out, err = run(capsys, "classify", not_video, clips[0], "--model", "demo", "--json")
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Cannot decode video" in err
    results = json.loads(out)
    assert "error" in results[0] and results[1]["top"][0]["label"] == "moving_left"


def test_evaluate_folder_matches_per_video_predictions(capsys, tmp_path, model):
    paths = demo.write_sample_clips(tmp_path / "data", num_per_class=1, seed=11)
    code, out, _ = run(capsys, "evaluate", tmp_path / "data", "--model", "demo", "--num-clips", "1",
                       "--num-crops", "1", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["num_videos"] == len(CLASSES) and result["num_skipped"] == 0
    hits = [CLASSES[int(np.argmax(_expected_scores(model, p)))] == os.path.basename(os.path.dirname(p))
            for p in paths]
    assert result["video_top1"] == pytest.approx(np.mean(hits))
    code, out, _ = run(capsys, "evaluate", tmp_path / "data", "--model", "demo", "--num-clips", "1",
                       "--num-crops", "1")
    assert code == 0 and "video_top1" in out


def test_attention_writes_png_and_gif(capsys, clips, tmp_path):
    out_dir = tmp_path / "att"
    code, out, _ = run(capsys, "attention", clips[0], "--model", "demo", "--query", "4,20,30", "--out", out_dir,
                       "--json")
    assert code == 0
    result = json.loads(out)
    assert result["block"] == "nonlocal_conv4_0" and result["query"] == [4, 20, 30]
    with Image.open(result["png"]) as png:
        assert png.size == (8 * 192 + 7 * 2, 192)  # 8 frames of 64 px shown at 3x, 2 px gaps
    with Image.open(result["gif"]) as gif:
        assert gif.n_frames == 8
    code, out, _ = run(capsys, "attention", clips[0], "--model", "demo", "--block", "nonlocal_conv3_0", "--out",
                       out_dir)
    assert code == 0 and "nonlocal_conv3_0" in out and str(out_dir / "attention.png") in out


def test_demo_command(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--out", tmp_path, "--num-clips", "2")
    assert code == 0
    assert os.path.isfile(tmp_path / "attention.png") and os.path.isfile(tmp_path / "attention.gif")
    assert len(os.listdir(tmp_path / "clips")) == 2 and str(tmp_path / "attention.png") in out


def test_export_saved_model_matches_keras(capsys, tmp_path, clips, model):
    from nonlocal_zoo.export import load_export

    code, out, _ = run(capsys, "export", "--model", "demo", "--format", "saved_model", "--out", tmp_path / "sm")
    assert code == 0 and "wrote" in out
    frames = _decode(clips[0])[None]
    np.testing.assert_allclose(np.asarray(load_export(str(tmp_path / "sm"))(frames)),
                               model.predict_on_batch((frames.astype(np.float32) - 114.75) / 57.375),
                               rtol=1e-4, atol=1e-5)


def test_finetune_then_classify_with_the_checkpoint(capsys, tmp_path):
    demo.write_sample_clips(tmp_path / "data", num_per_class=2, seed=3)
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "finetune", tmp_path / "data", "--config", os.path.join(REPO, "configs",
                       "finetune_tiny_test.yaml"), "--epochs", "1", "--output", run_dir, "--verbose", "0")
    assert code == 0, err
    checkpoint = run_dir / "checkpoints" / "last.keras"
    assert checkpoint.is_file()
    clip = demo.write_sample_clips(tmp_path / "one", num_per_class=1, seed=4)[0]
    code, out, _ = run(capsys, "classify", clip, "--model", checkpoint, "--top-k", "3", "--json")
    assert code == 0
    top = json.loads(out)[0]["top"]
    assert len(top) == 3 and all(item["label"] in CLASSES for item in top)  # names from the run's class_names.txt
    code, _, err = run(capsys, "finetune", tmp_path / "missing", "--config", "finetune_tiny_test", "--output",
                       tmp_path / "run2")
    assert code == 2 and "Traceback" not in err


def test_download_offline_uses_the_cache(capsys, tmp_path, monkeypatch):
    from nonlocal_zoo.presets import get_preset

    monkeypatch.setenv("NONLOCAL_ZOO_HOME", str(tmp_path))
    name = "i3d_nl5_r50_8x8_kinetics400"
    code, out, err = run(capsys, "download", name, "--offline")
    assert code == 1 and err.startswith("error: Offline") and err.count("\n") == 1 and "Traceback" not in err
    weights = get_preset(name)["weights"]
    cached = tmp_path / "downloads" / weights["file_name"]
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"a checkpoint copied in by hand")  # not a checkpoint: refused, deleted, never served
    code, out, err = run(capsys, "download", name, "--offline")
    assert code == 1 and "failed verification" in err and err.count("\n") == 1 and not cached.exists()
    # A real checkpoint of the preset (architecture reduced for the test) copied in by hand is used.
    pytest.importorskip("torch")
    from nonlocal_zoo.presets import PRESETS
    from tests.torch_references import i3d_temporal_kernels, official_blobs, official_config, save_caffe2_pickle

    depths, blocks = [1, 1, 1, 1], [[], [0], [0], []]
    arch = {**PRESETS[name]["arch"], "stem_width": 4, "stage_depths": depths, "stage_widths": [4, 8, 16, 32],
            "temporal_kernels": i3d_temporal_kernels(depths), "nonlocal_blocks": blocks}
    monkeypatch.setitem(PRESETS[name], "arch", arch)
    cfg = official_config(stem_width=4, depths=depths, widths=[4, 8, 16, 32],
                          temporal_kernels=i3d_temporal_kernels(depths), nonlocal_blocks=blocks)
    save_caffe2_pickle(cached, official_blobs(cfg, seed=0))
    code, out, _ = run(capsys, "download", name, "--offline")
    assert code == 0 and out.strip() == str(cached)


def test_prepare_builds_a_tfds_dataset(capsys, tmp_path):
    demo.write_sample_clips(tmp_path / "data", num_per_class=1, seed=5)
    code, out, err = run(capsys, "prepare", tmp_path / "data", "--data-dir", tmp_path / "tfds", "--name", "tiny")
    assert code == 0, err
    assert "tiny" in out and any((tmp_path / "tfds").rglob("dataset_info.json"))


def test_benchmark_passes_arguments_on(capsys, tmp_path):
    report = tmp_path / "bench.md"
    code, out, err = run(capsys, "benchmark", "--quick", "--sections", "machine", "--output", report)
    assert code == 0, err
    assert report.is_file() and str(report) in out


@pytest.mark.slow
def test_convert_full_r50_checkpoint(capsys, tmp_path):
    """An official-layout Caffe2 pickle with random blobs -> .weights.h5, loaded back by `create_model`."""
    from tests.torch_references import official_blobs, official_config, save_caffe2_pickle

    from nonlocal_zoo.models import create_model

    blobs = official_blobs(official_config(), seed=1)
    source = save_caffe2_pickle(tmp_path / "i3d_nonlocal_32x2_IN_pretrain_400k.pkl", blobs)
    out_file = tmp_path / "converted.weights.h5"
    code, out, err = run(capsys, "convert", source, "--model", "i3d_nl5_r50_32x2_kinetics400", "--out", out_file)
    assert code == 0, err
    model = create_model("i3d_nl5_r50_32x2_kinetics400", weights=str(out_file), input_shape=(32, 112, 112, 3))
    conv1 = np.asarray(blobs["conv1_w"])  # Caffe2 (O, I, T, H, W) -> Keras (T, H, W, I, O)
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(), conv1.transpose(2, 3, 4, 1, 0))
    code, _, err = run(capsys, "convert", tmp_path / "nothing.pkl", "--model", "i3d_nl5_r50_32x2_kinetics400",
                       "--out", out_file)
    assert code == 2 and "Traceback" not in err
