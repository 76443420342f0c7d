"""The task API: VideoClassifier / VideoClassifierPreprocessor / NonLocalResNetBackbone and the one resolver.

References are independent of the task layer: the plain functional demo network of `nonlocal_zoo.demo` (what
`classify` ran before the task API), `nonlocal_zoo.data.multiview_clips`, and numpy transcriptions of the two
view-aggregation rules computed from the network's `pool5` features and the `pred` weights.
"""
import json
import os

import keras
import numpy as np
import pytest

from nonlocal_zoo.data import multiview_clips, read_video
from nonlocal_zoo.presets import PRESETS, get_preset
from nonlocal_zoo.tasks import (
    NonLocalResNetBackbone,
    VideoClassifier,
    VideoClassifierPreprocessor,
    resolve,
)


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def demo_clips(tmp_path_factory):
    from nonlocal_zoo.demo import write_sample_clips

    folder = tmp_path_factory.mktemp("demo_clips")
    return write_sample_clips(str(folder), num_per_class=1, seed=7)[:4]


@pytest.fixture(scope="module")
def demo_clf():
    return VideoClassifier.from_preset("demo")


def _random_video(seed, frames=20, height=48, width=60):
    return (np.random.default_rng(seed).random((frames, height, width, 3)) * 255).astype(np.uint8)


def _tiny(aggregation="softmax", seed=0, **pre):
    keras.utils.set_random_seed(seed)
    entry = get_preset("tiny_nl_i3d")
    preprocessor = VideoClassifierPreprocessor(entry["preprocessing"], test_aggregation=aggregation, **pre)
    backbone = NonLocalResNetBackbone(entry["arch"], clip_shape=(preprocessor.num_frames, None, None, 3),
                                      preset="tiny_nl_i3d")
    clf = VideoClassifier(backbone, preprocessor=preprocessor, labels=[f"c{i}" for i in range(5)],
                          preset="tiny_nl_i3d")
    # a non-trivial head so that the two rules give different numbers
    pred = clf.get_layer("pred")
    rng = np.random.default_rng(seed)
    pred.kernel.assign(rng.normal(0, 3.0, pred.kernel.shape).astype("float32"))
    pred.bias.assign(rng.normal(0, 1.0, pred.bias.shape).astype("float32"))
    return clf


# ------------------------------------------------------------------------------------------------------ demo parity
def test_demo_predict_equals_the_plain_network_on_files(demo_clf, demo_clips):
    from nonlocal_zoo.demo import load_demo_model

    plain = load_demo_model()  # the network `classify` ran before the task API (a plain functional model)
    pre = get_preset("demo")["preprocessing"]
    scores = demo_clf.predict(demo_clips)
    assert scores.shape == (len(demo_clips), 12)
    for path, row in zip(demo_clips, scores):
        views = multiview_clips(path, preset=pre, num_clips=1, num_crops=1)  # normalised, independent path
        ref = np.asarray(plain.predict_on_batch(views), np.float64).mean(axis=0)
        np.testing.assert_allclose(row, ref, rtol=0, atol=1e-6)
    truths = [os.path.basename(os.path.dirname(p)) for p in demo_clips]
    top = [demo_clf.decode_predictions(scores, top=1)[i][0][1] for i in range(len(demo_clips))]
    assert top == truths  # the packaged weights classify rendered clips of their classes


def test_demo_cli_classify_scores_equal_predict(demo_clf, demo_clips, capsys):
    from nonlocal_zoo.cli import main

    assert main(["classify", demo_clips[0], "--model", "demo", "--top-k", "12", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    scores = demo_clf.predict(demo_clips[0])[0]
    for item in result["top"]:
        assert abs(item["score"] - scores[item["index"]]) < 1e-6
        assert item["label"] == demo_clf.labels[item["index"]]


def test_predict_on_arrays_equals_predict_on_paths(demo_clf, demo_clips):
    frames = read_video(demo_clips[1])
    by_path = demo_clf.predict(demo_clips[1])
    np.testing.assert_array_equal(demo_clf.predict(frames), by_path)  # (F, H, W, 3)
    np.testing.assert_array_equal(demo_clf.predict(frames[None])[0], by_path[0])  # (1, F, H, W, 3)
    both = demo_clf.predict([demo_clips[1], frames])
    np.testing.assert_array_equal(both[0], both[1])


def test_num_clips_and_num_crops_overrides(demo_clf, demo_clips):
    scores, per_view = demo_clf.predict_videos([demo_clips[0]], num_clips=3, num_crops=3, return_views=True)
    assert per_view[0].shape == (9, 12)
    np.testing.assert_allclose(scores[0], per_view[0].mean(axis=0), atol=1e-12)
    views = multiview_clips(demo_clips[0], preset=get_preset("demo")["preprocessing"], num_clips=3, num_crops=3)
    np.testing.assert_allclose(per_view[0], demo_clf.predict_on_batch(views), atol=1e-6)


# ------------------------------------------------------------------------------------------------------ preset dirs
def test_save_to_preset_round_trip_identical_outputs(demo_clf, demo_clips, tmp_path):
    folder = demo_clf.save_to_preset(tmp_path / "saved")
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "labels.txt", "metadata.json",
                                          "model.weights.h5", "preprocessor.json"]
    again = VideoClassifier.from_preset(str(folder))
    fresh = VideoClassifier.from_preset("demo")  # same call history as `again`: same traced graphs, same bits
    np.testing.assert_array_equal(again.predict(demo_clips), fresh.predict(demo_clips))
    np.testing.assert_allclose(again.predict(demo_clips), demo_clf.predict(demo_clips), rtol=0, atol=1e-6)
    assert again.labels == demo_clf.labels and again.preset == "demo"
    assert again.preprocessor.config == demo_clf.preprocessor.config
    assert (folder / "labels.txt").read_text().split() == list(demo_clf.labels)


def test_renamed_model_keeps_its_preprocessing_and_labels(demo_clf, demo_clips, tmp_path):
    # the old road looked preprocessing up by `model.name`; a renamed model lost it
    config = demo_clf.get_config()
    config["name"] = "my_renamed_model"
    renamed = VideoClassifier.from_config(config)
    renamed.set_weights(demo_clf.get_weights())
    folder = renamed.save_to_preset(tmp_path / "renamed")
    again = resolve(str(folder))
    assert again.name == "my_renamed_model"
    assert again.preprocessor.config == demo_clf.preprocessor.config
    fresh = VideoClassifier.from_preset("demo")
    np.testing.assert_array_equal(again.predict(demo_clips), fresh.predict(demo_clips))
    # and as a single .keras file
    renamed.save(tmp_path / "renamed.keras")
    from_file = resolve(str(tmp_path / "renamed.keras"))
    assert isinstance(from_file, VideoClassifier) and from_file.labels == demo_clf.labels
    np.testing.assert_array_equal(from_file.predict(demo_clips), VideoClassifier.from_preset("demo").predict(
        demo_clips))


def test_save_to_preset_is_atomic_per_directory(demo_clf, tmp_path, monkeypatch):
    folder = tmp_path / "p"
    real = keras.saving.serialize_keras_object

    def boom(obj):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(keras.saving, "serialize_keras_object", boom)
    with pytest.raises(RuntimeError):
        demo_clf.save_to_preset(folder)
    monkeypatch.setattr(keras.saving, "serialize_keras_object", real)
    assert not (folder / "config.json").exists()  # an incomplete folder is never taken for a preset
    assert [p.name for p in folder.iterdir()] == []  # nor does it keep the staging folder
    with pytest.raises(ValueError, match="not a preset directory"):
        resolve(str(folder))


def test_plain_keras_file_needs_a_preset(demo_clips, tmp_path):
    from nonlocal_zoo.demo import load_demo_model

    plain = load_demo_model()
    plain.save(tmp_path / "plain.keras")
    with pytest.raises(ValueError, match="preset"):
        resolve(str(tmp_path / "plain.keras"))
    clf = resolve(str(tmp_path / "plain.keras"), preset="demo")
    ref = np.asarray(plain.predict_on_batch(multiview_clips(demo_clips[0], preset=get_preset("demo")[
        "preprocessing"], num_clips=1, num_crops=1)), np.float64).mean(axis=0)
    np.testing.assert_allclose(clf.predict(demo_clips[0])[0], ref, atol=1e-6)


def test_new_head_keeps_the_backbone(demo_clf, tmp_path):
    folder = demo_clf.save_to_preset(tmp_path / "d")
    three = resolve(str(folder), labels=["a", "b", "c"])
    assert three.num_classes == 3 and three.labels == ("a", "b", "c")
    for layer in ("conv1", "nonlocal_conv4_0"):
        for a, b in zip(three.get_layer(layer).get_weights(), demo_clf.get_layer(layer).get_weights()):
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("bad, match", [
    (np.zeros((8, 32, 32), np.uint8), r"shape=\(8, 32, 32\)"),
    (np.zeros((8, 32, 32, 3), np.float64), "dtype float64"),
    (np.zeros((2, 2, 8, 32, 32, 3), np.uint8), r"shape=\(2, 2, 8, 32, 32, 3\)"),
    (np.zeros((8, 32, 32, 3), np.int16), "dtype int16"),
    (42, "Received: int 42"),
    ([], r"videos=\[\]"),
    ([np.zeros((8, 32, 32), np.uint8)], r"shape=\(8, 32, 32\)"),
])
def test_wrong_inputs_name_what_was_received(demo_clf, bad, match):
    with pytest.raises(ValueError, match=match):
        demo_clf.predict(bad)


def test_unknown_preset_and_bad_views(demo_clf):
    with pytest.raises(ValueError, match="i3d_nl5_r50_8x8_kinetics4000"):
        VideoClassifier.from_preset("i3d_nl5_r50_8x8_kinetics4000")
    with pytest.raises(ValueError, match="num_clips=0"):
        demo_clf.predict(np.zeros((8, 64, 64, 3), np.uint8), num_clips=0)
    with pytest.raises(ValueError, match="num_crops=2"):
        demo_clf.predict(np.zeros((8, 64, 64, 3), np.uint8), num_crops=2)
    with pytest.raises(ValueError, match="has no published weights"):
        resolve("i3d_nl5_r50", require_weights=True)


# ------------------------------------------------------------------------------------------------------ preprocessor
def test_preprocessor_config_round_trip():
    for name in ("i3d_nl5_r50_8x8_kinetics400", "i3d_nl5_r50_32x2_kinetics400_gluoncv", "demo"):
        pre = VideoClassifierPreprocessor.from_preset(name, decode_options={"backend": "opencv"})
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(pre)))  # JSON-able
        again = keras.saving.deserialize_keras_object(config)
        assert isinstance(again, VideoClassifierPreprocessor)
        assert again.config == pre.config and again.decode_options == pre.decode_options


PROTOCOL_PRESETS = {
    "official": "i3d_nl5_r50_32x2_kinetics400",
    "pyslowfast": "i3d_nl5_r50_8x8_kinetics400_pyslowfast",
    "mmaction2": "i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded",
    "gluoncv": "i3d_nl5_r50_32x2_kinetics400_gluoncv",
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOL_PRESETS))
def test_preprocessor_views_equal_multiview_clips(protocol, index_video):
    name = PROTOCOL_PRESETS[protocol]
    assert get_preset(name)["preprocessing"]["sampling"] == protocol
    path = str(index_video(f"{protocol}.mp4", 90, height=72, width=96))
    pre = VideoClassifierPreprocessor.from_preset(name, test_short_side=64, test_crop=64)
    pre = VideoClassifierPreprocessor.from_config(pre.get_config())
    views = pre.video_views(path, num_clips=3, num_crops=3)
    ref = multiview_clips(path, preset=name, num_clips=3, num_crops=3, normalize=False, test_short_side=64,
                          test_crop=64)
    np.testing.assert_array_equal(views, ref)
    np.testing.assert_array_equal(pre.normalize(views), multiview_clips(
        path, preset=name, num_clips=3, num_crops=3, test_short_side=64, test_crop=64))
    x, counts = pre([path, path], num_clips=3, num_crops=3)
    assert counts == [9, 9] and x.dtype == np.float32 and x.shape[0] == 18


# ------------------------------------------------------------------------------------------------------ aggregation
def test_registry_aggregation_rules():
    for name, preset in PRESETS.items():
        expected = "logits" if preset["preprocessing"]["sampling"] == "gluoncv" else "softmax"
        assert preset["preprocessing"]["test_aggregation"] == expected, name


def _numpy_view_logits(clf, clips):
    """Logits per view from the network's pool5 features and the `pred` weights, in numpy."""
    features = keras.Model(clf.input, clf.get_layer("pool5").output).predict_on_batch(clips)  # (V, C_feat)
    kernel, bias = clf.get_layer("pred").get_weights()
    return np.asarray(features, np.float64) @ kernel.astype(np.float64) + bias  # (V, classes)


@pytest.mark.parametrize("aggregation", ["softmax", "logits"])
def test_predict_and_evaluate_follow_the_rule(aggregation, tmp_path):
    from nonlocal_zoo.evaluation import evaluate

    from nonlocal_zoo.synthetic import write_clip

    clf = _tiny(aggregation)
    videos = [write_clip(str(tmp_path / f"v{s}.mp4"), _random_video(s), fps=10) for s in range(3)]
    scores, per_view = clf.predict_videos(videos, return_views=True)
    expected = []
    for video in videos:
        logits = _numpy_view_logits(clf, clf.preprocessor.normalize(clf.preprocessor.video_views(video)))  # (6, 5)
        if aggregation == "softmax":
            expected.append(_softmax(logits).mean(axis=0))
        else:
            expected.append(_softmax(logits.mean(axis=0)))
    expected = np.stack(expected)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    other = _softmax(np.stack([_numpy_view_logits(clf, clf.preprocessor.normalize(
        clf.preprocessor.video_views(v))).mean(axis=0) for v in videos])) if aggregation == "softmax" else np.stack(
        [_softmax(_numpy_view_logits(clf, clf.preprocessor.normalize(clf.preprocessor.video_views(v)))).mean(axis=0)
         for v in videos])
    assert np.abs(other - expected).max() > 1e-3  # the two rules really differ here, so the test can fail
    # evaluate: same video scores, from the classifier and from a plain model with the same weights
    pairs = [(v, i % 5) for i, v in enumerate(videos)]
    result = evaluate(clf, pairs, num_clips=2, num_crops=3, return_predictions=True, num_workers=1)
    assert result["aggregation"] == aggregation
    np.testing.assert_allclose(result["video_scores"], expected, rtol=1e-5, atol=1e-6)
    plain = keras.Model(clf.input, clf.output)
    result = evaluate(plain, pairs, preset=clf.preprocessor.config, num_clips=2, num_crops=3,
                      return_predictions=True, num_workers=1)
    np.testing.assert_allclose(result["video_scores"], expected, rtol=1e-5, atol=1e-6)


def test_classify_uses_the_rule(tmp_path):
    from nonlocal_zoo.inference import classify

    clf = _tiny("logits", seed=3)
    video = _random_video(9)
    logits = _numpy_view_logits(clf, clf.preprocessor.normalize(clf.preprocessor.video_views(video, num_clips=2,
                                                                                             num_crops=3)))
    expected = _softmax(logits.mean(axis=0))
    top = classify(clf, [video], top_k=5, num_clips=2, num_crops=3)[0]["top"]
    for item in top:
        assert abs(item["score"] - expected[item["index"]]) < 1e-5


# ------------------------------------------------------------------------------------------------------ hub
def test_push_to_hub_and_from_preset_hf(tmp_path, monkeypatch, demo_clips):
    import huggingface_hub

    import nonlocal_zoo
    from tests.test_loading import _LocalHub

    hf_home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(_LocalHub, "hf_home", hf_home)
    monkeypatch.setattr(_LocalHub, "uploads", [])
    monkeypatch.setattr(huggingface_hub, "HfApi", _LocalHub)
    assert nonlocal_zoo.push_to_hub("demo", "me/demo") == "commit-info"  # a name: through the resolver
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clf = VideoClassifier.from_preset("hf://me/demo")
    fresh = VideoClassifier.from_preset("demo")
    assert clf.labels == fresh.labels and clf.preprocessor.config == fresh.preprocessor.config
    np.testing.assert_array_equal(clf.predict(demo_clips), fresh.predict(demo_clips))
    readme = next((hf_home / "hub").glob("models--me--demo/snapshots/*/README.md")).read_text()
    assert "moving_left" in readme and "apache-2.0" in readme


def test_evaluate_plain_model_uses_the_preset_create_model_recorded(tmp_path):
    """A plain create_model model of a gluon-cv preset is evaluated with gluon-cv's protocol (32x2 clips, its mean/std,
    logit averaging), from the preset the factory recorded on it, not with the default protocol."""
    from nonlocal_zoo.evaluation import evaluate
    from nonlocal_zoo.models import create_model
    from nonlocal_zoo.synthetic import write_clip

    tiny = dict(stem_width=8, stage_depths=[1, 1, 1, 1], stage_widths=[4, 8, 8, 8],
                temporal_kernels=[[3], [1], [3], [1]], nonlocal_blocks=[[], [0], [0], []])
    name = "i3d_nl5_r50_32x2_kinetics400_gluoncv"
    model = create_model(name, input_shape=(32, None, None, 3), classes=3, **tiny)
    videos = [write_clip(str(tmp_path / f"v{i}.mp4"), _random_video(i, frames=70), fps=10) for i in range(2)]
    pairs = [(v, i) for i, v in enumerate(videos)]
    result = evaluate(model, pairs, num_clips=1, num_crops=1, return_predictions=True, num_workers=1,
                      test_short_side=48, test_crop=48)
    assert result["aggregation"] == "logits"
    explicit = evaluate(model, pairs, preset=name, num_clips=1, num_crops=1, return_predictions=True,
                        num_workers=1, test_short_side=48, test_crop=48)
    np.testing.assert_array_equal(result["video_scores"], explicit["video_scores"])


def test_preprocessor_train_mode(tmp_path):
    from nonlocal_zoo.synthetic import write_clip

    pre = VideoClassifierPreprocessor.from_preset("tiny_nl_i3d")
    path = write_clip(str(tmp_path / "t.mp4"), _random_video(5, frames=30, height=60, width=80), fps=10)
    a = pre([path, path], training=True, rng=3)
    b = pre([path, path], training=True, rng=3)
    c = pre([path, path], training=True, rng=4)
    c_cfg = pre.config
    assert a.shape == (2, c_cfg["num_frames"], c_cfg["train_crop"], c_cfg["train_crop"], 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # the same generator seed gives the same clips
    assert np.abs(a - c).max() > 0  # another seed another crop/offset/flip
    low = (0 - max(c_cfg["mean"])) / min(c_cfg["std"])
    high = (255 - min(c_cfg["mean"])) / min(c_cfg["std"])
    assert low - 1e-4 <= a.min() and a.max() <= high + 1e-4  # normalised pixels
