"""evaluate: multi-view testing of a tiny Keras model on tiny clips, against a hand computation in numpy."""
import numpy as np
import pytest

from nonlocal_zoo.data import read_video
from nonlocal_zoo.evaluation import evaluate
from tests.conftest import write_index_video

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

T, R, H, W, NUM_CLASSES = 4, 3, 40, 56, 8
PROTOCOL = dict(num_frames=T, sampling_rate=R, test_short_side=H, test_crop=H)


def tiny_model(activation="softmax"):
    inputs = keras.Input((T, H, H, 3))
    x = keras.layers.GlobalAveragePooling3D()(inputs)
    outputs = keras.layers.Dense(NUM_CLASSES, activation=activation, name="pred")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.get_layer("pred").set_weights([rng.normal(0, 3, (3, NUM_CLASSES)).astype("float32"),
                                         rng.normal(0, 0.5, (NUM_CLASSES,)).astype("float32")])
    return model


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    videos = []
    for label, cls in enumerate(["c0", "c1", "c2"]):
        (root / cls).mkdir()
        for k in range(2):
            n = 20 + 7 * (2 * label + k)
            path = root / cls / f"v{k}.{'avi' if k else 'mp4'}"
            write_index_video(path, n, height=H, width=W, offset=11 * (2 * label + k),
                              fourcc="MJPG" if k else "mp4v")
            videos.append((str(path), label))
    (root / "c1" / "broken.mp4").write_bytes(b"\x00\x01" * 300)
    return root, videos


def hand_views(path, num_clips, num_crops):
    """Views by the official protocol, written out directly: starts int(F / n * k) % F, stride R wrapping,
    crops at 0, (W - H) // 2, 2 * ((W - H) // 2) along the width, (x - 114.75) / 57.375."""
    frames = read_video(path).astype(np.float64)
    F = len(frames)
    views = []
    for k in range(num_clips):
        start = int(np.float32(np.float32(F) / np.float32(num_clips)) * np.float32(k)) % F
        clip = frames[[(start + i * R) % F for i in range(T)]]
        off = (W - H) // 2
        lefts = [0, off, 2 * off] if num_crops == 3 else [off]
        for left in lefts:
            views.append((clip[:, :, left:left + H] - 114.75) / 57.375)
    return np.stack(views)


def hand_scores(model, views, softmax):
    kernel, bias = (w.astype(np.float64) for w in model.get_layer("pred").get_weights())
    logits = views.mean(axis=(1, 2, 3)) @ kernel + bias  # (V, C)
    if not softmax:
        return logits
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def hand_topk(scores, label, k):
    return label in np.argsort(-scores, kind="stable")[:k]


class CountingModel:
    def __init__(self, model):
        self.model, self.batches = model, []

    def predict_on_batch(self, x):
        self.batches.append(x.shape[0])
        return self.model.predict_on_batch(x)


@pytest.mark.parametrize("num_crops", [3, 1])
def test_multi_view_evaluation_matches_a_hand_computation(clip_folder, num_crops):
    root, videos = clip_folder
    model = tiny_model()
    counting = CountingModel(model)
    view_bytes = 4 * T * H * H * 3
    result = evaluate(counting, root, num_clips=10, num_crops=num_crops, max_batch_bytes=7 * view_bytes,
                      return_predictions=True, num_workers=2, **PROTOCOL)
    V = 10 * num_crops
    assert (result["num_videos"], result["num_views"], result["views_per_video"]) == (6, 6 * V, V)
    assert result["num_skipped"] == 1 and result["skipped"][0][0].endswith("broken.mp4")
    assert max(counting.batches) <= 7 and sum(counting.batches) == 6 * V  # views batched under the memory cap

    per_view = [hand_scores(model, hand_views(p, 10, num_crops), softmax=True) for p, _ in videos]
    labels = [lab for _, lab in videos]
    np.testing.assert_allclose(result["view_scores"], np.stack(per_view), rtol=1e-4, atol=1e-6)
    video_scores = np.stack([s.mean(axis=0) for s in per_view])
    np.testing.assert_allclose(result["video_scores"], video_scores, rtol=1e-4, atol=1e-6)
    assert result["labels"].tolist() == labels
    for k in (1, 5):
        video_acc = np.mean([hand_topk(s, lab, k) for s, lab in zip(video_scores, labels)])
        clip_acc = np.mean([hand_topk(v, lab, k) for s, lab in zip(per_view, labels) for v in s])
        assert result[f"video_top{k}"] == pytest.approx(video_acc)
        assert result[f"clip_top{k}"] == pytest.approx(clip_acc)
    assert 0 < result["clip_top5"] < 1  # the tiny model is neither always right nor always wrong


def test_logit_models_and_in_memory_sources(clip_folder):
    root, videos = clip_folder
    model = tiny_model(activation=None)
    files = evaluate(model, videos, num_clips=3, num_crops=3, apply_softmax=True, return_predictions=True,
                     top_k=(1, 2), **PROTOCOL)
    per_view = [hand_scores(model, hand_views(p, 3, 3), softmax=True) for p, _ in videos]
    np.testing.assert_allclose(files["video_scores"], np.stack([s.mean(0) for s in per_view]), rtol=1e-4, atol=1e-6)
    assert set(files) >= {"video_top1", "video_top2", "clip_top1", "clip_top2"}

    def generate():  # a tf.data source of decoded videos, as TFDS gives them
        for path, label in videos:
            yield {"video": read_video(path), "label": label}

    ds = tf.data.Dataset.from_generator(generate, output_signature={
        "video": tf.TensorSpec((None, H, W, 3), tf.uint8), "label": tf.TensorSpec((), tf.int64)})
    memory = evaluate(model, ds, num_clips=3, num_crops=3, apply_softmax=True, return_predictions=True,
                      top_k=(1, 2), **PROTOCOL)
    np.testing.assert_allclose(memory["video_scores"], files["video_scores"], rtol=1e-6)
    assert memory["video_top1"] == files["video_top1"]


def test_evaluation_errors(clip_folder, tmp_path):
    root, videos = clip_folder
    model = tiny_model()
    with pytest.raises(ValueError, match=r"Received: num_crops=2"):
        evaluate(model, root, num_crops=2, **PROTOCOL)
    with pytest.raises(Exception, match="Cannot decode video"):
        evaluate(model, root, on_error="raise", **PROTOCOL)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "bad.mp4").write_bytes(b"nope")
    with pytest.raises(ValueError, match="No video could be evaluated"):
        evaluate(model, tmp_path, **PROTOCOL)
