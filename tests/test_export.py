"""Export round trips: SavedModel (TF Serving signature), TFLite (fp32 and quantized) and ONNX, each re-loaded with
its own runtime (tf.saved_model.load, the TFLite interpreter, onnxruntime) and compared with the Keras model.

The reference is computed independently of the export code: numpy normalisation `(clip - mean) / std`, the Keras
model's logits, numpy softmax. Tolerances (max |difference| of the probabilities, or top-1 agreement):

    SavedModel, ONNX, TFLite fp32   5e-5 absolute (measured 1.3e-5)
    TFLite float16                  0.05 absolute (measured 0.01), every top-1 equal
    TFLite dynamic_int8             top-1 agreement >= 85 % (measured 94 %), logit correlation >= 0.98 (0.993)
    TFLite int8 (static)            runs, outputs distributions, agreement above chance (measured 56 %)

on 16 generated clips that int8 calibration did not see, with a network whose 5-class logits spread over the clips.

The TFLite lowerings (3-D pools and convolutions as 2-D ops) are also checked op by op against TensorFlow's own
`max_pool3d`, `avg_pool3d` and `conv3d`.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

import keras
import tensorflow as tf

from nonlocal_zoo import export
from nonlocal_zoo.models import create_model

PRESET = "i3d_nl5_r50_32x2_kinetics400"  # paper geometry: conv1 5x7x7 /2, pool1 2x3x3 /2, pool2 2x1x1, NL 1x2x2
CLIP = (16, 64, 64, 3)
CLASSES = 5
TINY = dict(stem_width=8, stage_depths=[1, 2, 1, 1], stage_widths=[8, 16, 16, 16],
            temporal_kernels=[[3], [3, 1], [3], [1]], nonlocal_blocks=[[], [1], [0], []])
MEAN, STD = 114.75, 57.375
# float32 artifacts: the graph normalises as x * (1/std) + (-mean/std) (one multiply-add), the reference as
# (x - mean) / std; the rounding difference (~1e-7) grows through the network to ~1.3e-5 on the probabilities.
FP32_ATOL = 5e-5


def _batch_norms(model):
    for layer in model.layers:
        for bn in (layer, getattr(layer, "bn", None)):  # NonLocalBlock keeps its BN as `bn`
            if isinstance(bn, keras.layers.BatchNormalization):
                yield bn


def randomize(model, clips, seed=0):
    """Random non-trivial weights (He-scaled kernels, gamma in [0.5, 1.5], non-zero NL BN gamma, small biases), and
    BN statistics set to the batch statistics of `clips` (data-dependent init), so that features depend on the clip
    as in a trained network instead of being dominated by biases."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        if "gamma" in v.path:
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) > 1:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        else:
            value = rng.standard_normal(shape) * 0.1
        v.assign(value.astype("float32"))
    norms = list(_batch_norms(model))
    assert norms
    for bn in norms:
        bn.momentum = 0.0  # one training-mode pass stores the batch statistics
    model(normalize(clips), training=True)
    for bn in norms:
        bn.momentum = 0.9


def spread_head(model, clips, seed=0):
    """Set `pred` so that the logits of `clips` spread over the classes (std ~2), making top-1 checks meaningful."""
    features = keras.Model(model.input, model.get_layer("pool5").output)(normalize(clips))
    features = np.asarray(features, np.float64)
    mu = features.mean(0)
    kernel = np.random.default_rng(seed).standard_normal((features.shape[1], CLASSES))
    kernel *= 2.0 / ((features - mu) @ kernel).std()
    model.get_layer("pred").set_weights([kernel.astype("float32"), (-mu @ kernel).astype("float32")])


def normalize(clips):
    return (np.asarray(clips, np.float32) - MEAN) / STD


def softmax(logits):
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def tiny():
    """(Keras logits model, test clips, reference probabilities)."""
    model = create_model(PRESET, input_shape=CLIP, classes=CLASSES, classifier_activation=None, **TINY)
    randomize(model, export.generated_clips(16, CLIP, seed=7))
    clips = export.generated_clips(16, CLIP, seed=123)  # calibration uses seed 0
    spread_head(model, clips)
    reference = softmax(np.asarray(model(normalize(clips), training=False), np.float64))
    assert len(set(reference.argmax(-1))) >= 3, "the reference predictions must not all be one class"
    return model, clips, reference


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


def exported(tiny, out_dir, fmt, quantization=None):
    model = tiny[0]
    suffix = {"saved_model": "", "tflite": ".tflite", "onnx": ".onnx"}[fmt]
    path = out_dir / f"tiny_{fmt}_{quantization}{suffix}"
    if not path.exists():
        export.export_model(model, fmt, path, quantization=quantization, labels=list("abcde"), preset=PRESET)
    return path


def check_metadata(meta, fmt):
    assert meta["format"] == fmt
    assert meta["preset"] == PRESET
    assert meta["labels"] == list("abcde")
    assert meta["input"]["name"] == "clips" and meta["input"]["dtype"] == "uint8"
    assert meta["input"]["shape"] == [None, *CLIP]
    pre = meta["preprocessing"]
    assert (pre["num_frames"], pre["sampling_rate"], pre["sampling"]) == (16, 2, "official")
    assert pre["mean"] == [MEAN] * 3 and pre["std"] == [STD] * 3
    assert pre["crop"] == [64, 64] and pre["short_side"] == 256


def test_saved_model_serving_signature(tiny, out_dir):
    model, clips, reference = tiny
    path = exported(tiny, out_dir, "saved_model")
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]
    spec = signature.structured_input_signature[1]["clips"]
    assert spec.dtype == tf.uint8 and tuple(spec.shape) == (None, *CLIP)
    outputs = signature(clips=tf.constant(clips))
    assert set(outputs) == {"probabilities"}
    probabilities = outputs["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, reference, atol=FP32_ATOL)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    meta = json.loads((path / "assets.extra" / "nonlocal_zoo.json").read_text())
    check_metadata(meta, "saved_model")
    assert export.read_export_metadata(path) == meta


def test_onnx_round_trip(tiny, out_dir):
    import onnx
    import onnxruntime

    model, clips, reference = tiny
    path = exported(tiny, out_dir, "onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("clips", "tensor(uint8)", list(CLIP))
    assert out.name == "probabilities"
    probabilities = session.run(None, {"clips": clips})[0]
    np.testing.assert_allclose(probabilities, reference, atol=FP32_ATOL)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"Conv", "MaxPool"} <= ops  # 5-D Conv and MaxPool are native ONNX ops
    check_metadata(export.read_export_metadata(path), "onnx")


def _tflite_ops(path):
    interpreter = export.tflite_interpreter(path)
    return [op["op_name"] for op in interpreter._get_ops_details()]


def test_tflite_fp32_builtins_only(tiny, out_dir):
    model, clips, reference = tiny
    path = exported(tiny, out_dir, "tflite")
    ops = _tflite_ops(path)
    assert not [op for op in ops if "Flex" in op or op == "CUSTOM"], ops
    assert ops.count("CONV_3D") == 1  # only the I3D stem conv1 (5x7x7) stays 3-D
    assert "MAX_POOL_2D" in ops
    loaded = export.load_export(path)
    probabilities = np.concatenate([loaded(clips[:7]), loaded(clips[7:])])  # two batch sizes
    np.testing.assert_allclose(probabilities, reference, atol=FP32_ATOL)
    check_metadata(loaded.metadata, "tflite")
    assert loaded.metadata["quantization"] is None


@pytest.mark.parametrize("quantization", [
    "dynamic_int8",
    pytest.param("float16", marks=pytest.mark.slow),
    pytest.param("int8", marks=pytest.mark.slow),
])
def test_tflite_quantized(tiny, out_dir, quantization):
    model, clips, reference = tiny
    path = exported(tiny, out_dir, "tflite", quantization)
    probabilities = export.load_export(path)(clips)
    agreement = np.mean(probabilities.argmax(-1) == reference.argmax(-1))
    # log-probabilities minus their row mean = logits minus their row mean (softmax is shift-invariant)
    centred = np.log(np.maximum(probabilities, 1e-30))
    centred -= centred.mean(-1, keepdims=True)
    expected = np.log(reference) - np.log(reference).mean(-1, keepdims=True)
    correlation = np.corrcoef(centred.ravel(), expected.ravel())[0, 1]
    print(f"{quantization}: top-1 agreement {agreement:.3f}, max |dp| {np.abs(probabilities - reference).max():.3g}, "
          f"logit correlation {correlation:.4f}")
    if quantization == "float16":
        np.testing.assert_allclose(probabilities, reference, atol=0.05)
        assert agreement == 1.0
    elif quantization == "dynamic_int8":
        assert agreement >= 0.85 and correlation >= 0.98
    else:
        # Static int8 loses much more on this random 8-16-channel network (measured: 56 % top-1 agreement, logit
        # correlation 0.47; the error grows ~2x per stage with per-tensor activation scales). Checked here: it runs,
        # it is a distribution, and it is better than chance; docs/export.md says to validate it on real data.
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-2)
        assert agreement > 1.0 / CLASSES
    meta = export.read_export_metadata(path)
    assert meta["quantization"] == quantization
    fp32_size = os.path.getsize(exported(tiny, out_dir, "tflite"))
    if quantization != "int8":
        assert os.path.getsize(path) < 0.8 * fp32_size  # weights stored in 8/16 bits
    ops = _tflite_ops(path)
    if quantization == "int8":
        assert "QUANTIZE" in ops and "DEQUANTIZE" in ops  # int8 activations around the float CONV_3D stem
        assert meta["calibration_clips"] == 16


# ----------------------------------------------------------------------------------------------------------------------
# The lowerings, op by op, against TensorFlow's 3-D ops
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, strides", [((1, 2, 2), (1, 2, 2)), ((2, 3, 3), (2, 2, 2)), ((1, 3, 3), (1, 2, 2)),
                                           ((2, 1, 1), (2, 1, 1)), ((3, 2, 2), (1, 1, 1))])
def test_pool_lowering_matches_tf_3d_pools(size, strides):
    x = tf.constant(np.random.default_rng(0).standard_normal((2, 7, 9, 11, 3)), tf.float32)
    for pool, reference in (("max", tf.nn.max_pool3d), ("avg", tf.nn.avg_pool3d)):
        expected = reference(x, size, strides, "VALID").numpy()
        actual = export.pool3d_as_2d(x, size, strides, pool).numpy()
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel, strides", [((1, 3, 3), (1, 2, 2)), ((1, 3, 3), (1, 1, 1)), ((3, 1, 1), (1, 1, 1)),
                                             ((1, 1, 1), (1, 2, 2)), ((1, 7, 7), (2, 2, 2)), ((3, 1, 1), (2, 2, 2))])
def test_conv_lowering_matches_tf_conv3d(kernel, strides):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((2, 7, 13, 11, 4)), tf.float32)
    w = tf.constant(rng.standard_normal((*kernel, 4, 5)), tf.float32)
    expected = tf.nn.conv3d(x, w, (1, *strides, 1), "VALID").numpy()
    actual = export.conv3d_as_2d(x, w, strides).numpy()
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_conv_lowering_leaves_full_3d_kernels():
    x = tf.zeros((1, 8, 16, 16, 3))
    assert export.conv3d_as_2d(x, tf.zeros((5, 7, 7, 3, 4)), (1, 2, 2)) is None


def test_lower_for_tflite_clone_computes_the_same_model():
    """The public-API lowering (clone_model) replaces the 3-D layers, also inside a nested model, keeps every other
    layer shared, and gives the model's outputs."""
    from nonlocal_zoo.layers import NonLocalBlock

    inner_in = keras.Input((5, 7, 7, 8))
    inner = keras.Model(inner_in, keras.layers.Conv3D(8, (3, 1, 1), name="inner_conv")(inner_in), name="inner")
    inputs = keras.Input((12, 36, 36, 3))
    x = keras.layers.Conv3D(8, (3, 5, 5), strides=(2, 2, 2), name="stem")(inputs)  # stays 3-D: (5, 16, 16)
    x = keras.layers.Conv3D(8, (1, 3, 3), strides=(1, 1, 1), name="spatial")(x)
    x = keras.layers.MaxPooling3D((1, 2, 2), name="pool")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = inner(x)
    x = NonLocalBlock(name="nl")(x)
    x = keras.layers.AveragePooling3D((2, 2, 2), strides=1, name="head_pool")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling3D()(x), name="lowering_check")
    clips = np.random.default_rng(5).normal(size=(2, 12, 36, 36, 3)).astype("float32")
    randomize(model, clips * STD + MEAN)
    lowered = export.lower_for_tflite(model)
    assert lowered.name == model.name and lowered.get_layer("bn") is model.get_layer("bn")
    for name in ("stem", "spatial", "pool", "nl", "head_pool"):
        assert type(lowered.get_layer(name)).__name__.startswith("Lowered"), name
    assert type(lowered.get_layer("inner").get_layer("inner_conv")).__name__ == "LoweredConv3D"
    assert type(model.get_layer("pool")) is keras.layers.MaxPooling3D  # the original is left as it was
    np.testing.assert_allclose(np.asarray(lowered(clips, training=False)), np.asarray(model(clips, training=False)),
                               rtol=1e-5, atol=1e-5)
    graph = tf.function(lambda a: lowered(a, training=False)).get_concrete_function(tf.TensorSpec(clips.shape))
    ops = [op.type for op in graph.graph.get_operations()]
    assert "MaxPool3D" not in ops and "AvgPool3D" not in ops and ops.count("Conv3D") == 1  # only the 3x5x5 stem


def test_without_lowering_tflite_names_maxpool3d(tmp_path):
    inputs = keras.Input((4, 8, 8, 3), name="clip")
    x = keras.layers.MaxPooling3D((1, 2, 2), name="pool1")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling3D()(x))
    model = keras.Model(inputs, outputs, name="pool_only")
    with pytest.raises(ValueError, match=r"tf\.MaxPool3D.*select_tf_ops=True"):
        export.export_model(model, "tflite", tmp_path / "raw.tflite", preset={"mean": 0, "std": 1},
                            lower_3d_ops=False)
    path = export.export_model(model, "tflite", tmp_path / "lowered.tflite", preset={"mean": 0, "std": 1})
    assert "MAX_POOL_2D" in _tflite_ops(path)


# ----------------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------------
def test_bad_arguments(tiny, tmp_path):
    model = tiny[0]
    with pytest.raises(ValueError, match="format='tensorrt'"):
        export.export_model(model, "tensorrt", tmp_path / "m", preset=PRESET)
    with pytest.raises(ValueError, match="quantization='int4'"):
        export.export_model(model, "tflite", tmp_path / "m.tflite", quantization="int4", preset=PRESET)
    with pytest.raises(ValueError, match="format='onnx', quantization='int8'"):
        export.export_model(model, "onnx", tmp_path / "m.onnx", quantization="int8", preset=PRESET)
    with pytest.raises(ValueError, match=r"\*\.onnx. Received: out="):
        export.export_model(model, "onnx", tmp_path / "m.tflite", preset=PRESET)
    (tmp_path / "exists.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="overwrite=True"):
        export.export_model(model, "onnx", tmp_path / "exists.onnx", preset=PRESET)
    with pytest.raises(ValueError, match="the 5 classes of the model. Received: 2 labels"):
        export.export_model(model, "saved_model", tmp_path / "sm", labels=["a", "b"], preset=PRESET)
    with pytest.raises(ValueError, match="Unknown preset"):
        export.export_model("i3d_nl5_r50_kinetics", "onnx", tmp_path / "m.onnx")
    anonymous = keras.Model(model.inputs, model.outputs, name="my_model")
    with pytest.raises(ValueError, match="model.name='my_model', preset=None"):
        export.export_model(anonymous, "onnx", tmp_path / "m.onnx")
    headless = keras.Model(model.inputs, model.get_layer("res5").output, name=PRESET)
    with pytest.raises(ValueError, match=r"\(B, classes\) output"):
        export.export_model(headless, "onnx", tmp_path / "m.onnx", preset=PRESET)
    with pytest.raises(ValueError, match="Not an exported model"):
        export.load_export(tmp_path)
    with pytest.raises(ValueError, match="representative_clips"):
        export.export_model(model, "tflite", tmp_path / "q.tflite", quantization="int8", preset=PRESET,
                            representative_clips=np.zeros((2, *CLIP), np.float32))


def test_exported_model_rejects_wrong_clips(tiny, out_dir):
    loaded = export.load_export(exported(tiny, out_dir, "onnx"))
    with pytest.raises(ValueError, match=r"uint8 clips of shape \(B, 16, 64, 64, 3\).*float32"):
        loaded(np.zeros((1, *CLIP), np.float32))
    with pytest.raises(ValueError, match=r"shape \(1, 8, 64, 64, 3\)"):
        loaded(np.zeros((1, 8, 64, 64, 3), np.uint8))


# ----------------------------------------------------------------------------------------------------------------------
# Full size (slow): one published preset, every format
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_full_size_preset_round_trips(tmp_path):
    name = "i3d_nl5_r50_8x8_kinetics400"
    model = create_model(name, weights=None)  # (8, 224, 224, 3), softmax head, 400 classes
    clips = export.generated_clips(2, (8, 224, 224, 3), seed=9)
    randomize(model, clips, seed=3)
    pred = model.get_layer("pred")
    kernel, bias = pred.get_weights()
    pred.set_weights([kernel * 0.05, bias])  # keep the 400-way softmax away from saturation
    reference = np.asarray(model(normalize(clips), training=False), np.float64)
    for fmt, quantization, suffix in (("saved_model", None, ""), ("onnx", None, ".onnx"),
                                      ("tflite", None, ".tflite"), ("tflite", "float16", ".tflite")):
        path = export.export_model(model, fmt, tmp_path / f"{fmt}_{quantization}{suffix}", quantization=quantization,
                                   preset=name)
        loaded = export.load_export(path)
        probabilities = np.concatenate([loaded(clips[:1]), loaded(clips[1:])])
        size = sum(f.stat().st_size for f in Path(path).rglob("*")) if Path(path).is_dir() else path.stat().st_size
        print(f"{fmt} {quantization}: max |dp| {np.abs(probabilities - reference).max():.3g}, {size:,} bytes")
        tolerance = 1e-2 if quantization else FP32_ATOL
        np.testing.assert_allclose(probabilities, reference, atol=tolerance)
        assert np.array_equal(probabilities.argmax(-1), reference.argmax(-1))
        meta = loaded.metadata
        assert meta["preset"] == name and len(meta["labels"]) == 400 and meta["labels"][0] == "abseiling"
        assert meta["preprocessing"]["num_frames"] == 8 and meta["preprocessing"]["sampling_rate"] == 8
