"""`VideoClassifier`: a non-local video network that carries its own preprocessing, labels and aggregation rule.

The task object of nonlocal_zoo, shaped like keras-hub's `ImageClassifier` (keras-hub issue #1764 asks for a video
classifier task): a functional `keras.Model` subclass built from a `NonLocalResNetBackbone` and a head, holding a
`VideoClassifierPreprocessor` and the class names. Its config holds everything (architecture, head, preprocessing,
labels, preset), so a saved model, a renamed model and a fine-tuned model all keep their road
video -> preprocessor -> network -> labels.

Layers are flat (`conv1`, `res3_1_branch2a`, `nonlocal_conv3_1`, `pool5`, `pred`): the same names and variable paths
as `create_model` gives, so converters, weight files and attention maps work on both.

Example:
    >>> clf = VideoClassifier.from_preset("demo")
    >>> clf.predict(["a.mp4", "b.mp4"]).shape          # one aggregated probability row per video
    (2, 12)
    >>> clf.decode_predictions(clf.predict("a.mp4"), top=3)
    >>> clf.save_to_preset("my_model/")                  # VideoClassifier.from_preset("my_model/") reloads it
"""
import difflib
import json
import os

import keras
import numpy as np

from nonlocal_zoo import _compat
from nonlocal_zoo.models.arch import feature_shapes
from nonlocal_zoo.models.classifier import apply_head
from nonlocal_zoo.presets import PRESETS, get_preset
from nonlocal_zoo.pretrained.convert import load_keras_model
from nonlocal_zoo.tasks import precision
from nonlocal_zoo.tasks import presets as preset_io
from nonlocal_zoo.tasks.backbone import NonLocalResNetBackbone
from nonlocal_zoo.tasks.preprocessor import VideoClassifierPreprocessor, softmax

DEFAULT_BATCH_SIZE = 8


def view_batches(num_views, batch_size):
    """`(size, padded)`: `num_views` views go in forward passes of `size` views each (at most `batch_size`),
    `padded - num_views` of them repeats; batches as even as possible, so at most one repeat per pass.

    Example:
        >>> view_batches(10, 8), view_batches(30, 8), view_batches(3, 8)
        ((5, 10), (8, 32), (3, 3))
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if num_views <= batch_size:
        return num_views, num_views
    passes = -(-num_views // batch_size)
    size = -(-num_views // passes)
    return size, passes * size


def _is_network_input(x):
    """True for what Keras' own `predict` takes: float clips `(B, T, H, W, 3)`, tensors and datasets.

    Raises:
        ValueError: an array that is neither raw video (uint8) nor normalised clips (float, rank 5).
    """
    if isinstance(x, (str, os.PathLike, list, tuple)):
        return False
    if isinstance(x, np.ndarray):
        if x.dtype == np.uint8:
            return False
        if np.issubdtype(x.dtype, np.floating) and x.ndim == 5:
            return True
        raise ValueError("`predict` takes raw videos (paths, uint8 (F, H, W, 3) or (N, F, H, W, 3) arrays) or "
                         f"normalised float clips (B, T, H, W, 3). Received: array of dtype {x.dtype}, shape {x.shape}")
    return hasattr(x, "shape") or hasattr(x, "__iter__")  # tf.Tensor, tf.data.Dataset, generators, PyDataset


@keras.saving.register_keras_serializable(package="nonlocal_zoo")
class VideoClassifier(keras.Model):
    """A video classifier: backbone + head (+ preprocessor, labels, aggregation rule).

    Args:
        backbone: a `NonLocalResNetBackbone`.
        num_classes: outputs of `pred`. Defaults to the number of `labels`.
        preprocessor: a `VideoClassifierPreprocessor` (None: the backbone's preset's, else the default protocol).
        labels: class names in output order. Defaults to `class_0`, `class_1`, ...
        activation: `"softmax"` (probabilities, default) or None (logits).
        dropout: dropout rate before `pred` (training only). Defaults to 0.5.
        sync_batchnorm: BatchNormalization statistics over all replicas (see `synchronize_batchnorm`).
        fully_convolutional: the official per-location test head. Defaults to the preprocessor's
            `test_fully_convolutional`.
        preset: the registry name this model comes from (kept in its config), or None.
        name: the Keras model name. Defaults to the preset name, else `"video_classifier"`.
        **kwargs: `keras.Model` arguments (`dtype`, `trainable`).

    Example:
        >>> backbone = NonLocalResNetBackbone.from_preset("tiny_nl_i3d")
        >>> clf = VideoClassifier(backbone, labels=["a", "b"], preprocessor=VideoClassifierPreprocessor.from_preset(
        ...     "tiny_nl_i3d"))
        >>> clf.predict(np.zeros((1, 16, 40, 40, 3), np.uint8)).shape
        (1, 2)
    """

    def __init__(self, backbone, num_classes=None, *, preprocessor=None, labels=None, activation="softmax",
                 dropout=0.5, fully_convolutional=None, preset=None, sync_batchnorm=False, name=None, **kwargs):
        if not isinstance(backbone, NonLocalResNetBackbone):
            raise ValueError(f"`backbone` must be a NonLocalResNetBackbone. Received: {type(backbone).__name__}")
        if preprocessor is None:
            preprocessor = (VideoClassifierPreprocessor.from_preset(backbone.preset) if backbone.preset
                            else VideoClassifierPreprocessor())
        if not isinstance(preprocessor, VideoClassifierPreprocessor):
            raise ValueError("`preprocessor` must be a VideoClassifierPreprocessor or None. "
                             f"Received: {type(preprocessor).__name__}")
        labels = _check_labels(labels, num_classes)
        if fully_convolutional is None:
            fully_convolutional = bool(preprocessor.config["test_fully_convolutional"])
        if activation not in ("softmax", None):
            raise ValueError(f"`activation` must be 'softmax' or None. Received: activation={activation!r}")
        # the fully-convolutional head's pool5 window is the res5 size of a training clip
        train = preprocessor.config
        train_res5 = feature_shapes(backbone.arch, (train["num_frames"], train["train_crop"], train["train_crop"], 3))
        bf16 = precision.is_bfloat16(backbone.dtype_policy)
        # Under bfloat16 the head (pool5 mean, pred, softmax) runs in float32: its cost is negligible and the scores
        # are accumulated and normalised in float32.
        with precision.policy_scope("float32" if bf16 else None):
            outputs = apply_head(backbone.output, classes=len(labels), dropout_rate=dropout,
                                 classifier_activation=activation, fully_convolutional=fully_convolutional,
                                 pool_size=train_res5[backbone.stage_names[-1]][:3])  # (B, num_classes)
        with precision.policy_scope(backbone.dtype_policy.name if bf16 else None):
            super().__init__(backbone.input, outputs, name=name or preset or "video_classifier", **kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.labels = tuple(labels)
        self.num_classes = len(labels)
        self.activation = activation
        self.dropout = dropout
        self.fully_convolutional = bool(fully_convolutional)
        self.preset = preset
        self._logits_model = None
        self.sync_batchnorm = False
        if sync_batchnorm:
            self.synchronize_batchnorm()

    def synchronize_batchnorm(self):
        """Every BatchNormalization layer (those inside non-local blocks too) computes its batch statistics over
        all replicas of a `tf.distribute` strategy (`synchronized=True`, read at call time); kept in the config."""
        for layer in _compat.flatten_layers(self):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
        self.sync_batchnorm = True
        return self

    # ------------------------------------------------------------------------------------------- config
    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "preprocessor": keras.saving.serialize_keras_object(self.preprocessor),
            "labels": list(self.labels),
            "activation": self.activation,
            "dropout": self.dropout,
            "fully_convolutional": self.fully_convolutional,
            "preset": self.preset,
            "sync_batchnorm": self.sync_batchnorm,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "preprocessor"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    # ------------------------------------------------------------------------------------------- presets
    @classmethod
    def from_preset(cls, preset, *, weights="auto", **kwargs):
        """A classifier from a registry name, a preset directory, a `.keras` file or an `hf://` repository.

        Args:
            preset: `"demo"`, a preset name (`nonlocal_zoo.list_models()`), a directory written by
                `save_to_preset` (a fine-tuning run's output is one), a `.keras` file, or `hf://org/repo`.
            weights: `"auto"` (published weights of a pretrained preset, the embedded weights of `"demo"`, the
                saved weights of a directory; random for an architecture-only preset), None (random),
                `"kinetics400"`, or a weights file / `hf://` handle to load into the preset's architecture.
            **kwargs: see `resolve` (`num_classes`, `labels`, `format`, `clip_shape`, `preprocessing`,
                `dtype="bfloat16"` for bfloat16 inference, ...).

        Example:
            >>> clf = VideoClassifier.from_preset("i3d_nl5_r50_32x2_kinetics400")   # downloads and converts once
            >>> fast = VideoClassifier.from_preset("demo", dtype="bfloat16")  # CPUs with avx512_bf16 / amx_bf16
        """
        return resolve(preset, weights=weights, **kwargs)

    def save_to_preset(self, preset_dir):
        """Writes a preset directory: `config.json`, `model.weights.h5`, `preprocessor.json`, `labels.txt`,
        `metadata.json` and a `README.md` model card. `VideoClassifier.from_preset(preset_dir)` reloads it.

        Files are written into a temporary folder beside the target and moved in; `config.json` comes last, so a
        directory with a `config.json` is complete.

        Example:
            >>> clf.save_to_preset("runs/my_model")
        """
        return preset_io.save_to_preset(self, preset_dir)

    @property
    def inference_dtype(self):
        """`"bfloat16"` for a classifier that computes in bfloat16 (`dtype="bfloat16"`), else `"float32"`."""
        return "bfloat16" if precision.is_bfloat16(self.backbone.dtype_policy) else "float32"

    def with_dtype(self, dtype):
        """This classifier computing in `dtype` (`"float32"` or `"bfloat16"`) with the same weights, preprocessing and
        labels; `self` when it already does. bfloat16 is refused on hardware without it (`ValueError`).

        Example:
            >>> fast = VideoClassifier.from_preset("demo").with_dtype("bfloat16")
        """
        policy = precision.policy_name(dtype)
        if policy is None or precision.is_bfloat16(policy) == (self.inference_dtype == "bfloat16"):
            return self
        return _adapt(self, weights=None, num_classes=None, labels=None, format=None, preprocessing=None,
                      dtype=policy)

    def with_clip_shape(self, clip_shape):
        """This classifier rebuilt for another input size `(T, H, W, 3)` (e.g. a fixed size for TFLite), with the
        same weights, preprocessing and labels; `self` when the size is already that."""
        return _adapt(self, weights=None, num_classes=None, labels=None, format=None, preprocessing=None,
                      clip_shape=tuple(clip_shape))

    # ------------------------------------------------------------------------------------------- inference
    def view_scores(self, clips, *, batch_size=DEFAULT_BATCH_SIZE):
        """Per-view scores in the domain the aggregation rule averages: probabilities (`"softmax"`) or logits.

        The views go in forward passes of one size (`view_batches`), so a video's views trace the network once
        (a smaller last batch would trace it a second time: about a second for a full-size network).

        Args:
            clips: normalised float32 clips `(V, T, S, S, 3)`.
            batch_size: views per forward pass, at most.

        Returns:
            float64 `(V, num_classes)`.
        """
        rule = self.preprocessor.aggregation
        use_logits = rule == "logits" or self.activation is None
        network = self.logits_model() if use_logits and self.activation is not None else self
        clips = np.asarray(clips)
        num_views = len(clips)
        size, padded = view_batches(num_views, batch_size)
        if padded > num_views:  # repeat the last view; the extra rows are dropped (inference is per clip)
            clips = np.concatenate([clips, np.repeat(clips[-1:], padded - len(clips), axis=0)])
        out = []
        for start in range(0, len(clips), size):
            out.append(np.asarray(network.predict_on_batch(clips[start:start + size]), np.float64))
        scores = np.concatenate(out)[:num_views]  # (V, C)
        if rule == "softmax" and self.activation is None:
            scores = softmax(scores)
        return scores

    def logits_model(self):
        """A model sharing this one's layers that outputs the logits of `pred` (per location, averaged); built once."""
        if self._logits_model is None:
            self._logits_model = pred_logits_model(self)
        return self._logits_model

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None, *, num_clips=None,
                num_crops=None):
        """Class probabilities of raw videos: one aggregated row per video.

        Raw videos (a path, a list of paths, uint8 `(F, H, W, 3)` or `(N, F, H, W, 3)` arrays) go through the
        preprocessor's test views and aggregation rule. Float network inputs (normalised clips, tensors,
        datasets) go to `keras.Model.predict` unchanged.

        Args:
            x: the videos (or network inputs).
            batch_size: views per forward pass. Defaults to 8.
            num_clips, num_crops: views per video (defaults: the preprocessor's test protocol).

        Returns:
            float64 `(N, num_classes)` probabilities (float32 per clip for network inputs).
        """
        if _is_network_input(x):
            if num_clips is not None or num_crops is not None:
                raise ValueError("`num_clips`/`num_crops` apply to raw videos only (paths or uint8 arrays). "
                                 f"Received: x of type {type(x).__name__}")
            return super().predict(x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks)
        return self.predict_videos(x, batch_size=batch_size, num_clips=num_clips, num_crops=num_crops)

    def predict_videos(self, videos, *, batch_size=None, num_clips=None, num_crops=None, return_views=False):
        """`predict` for raw videos; with `return_views` also the per-view scores of each video."""
        pre = self.preprocessor
        videos = pre.standardize(videos)
        batch_size = batch_size or DEFAULT_BATCH_SIZE
        rows, per_view = [], []
        for video in videos:
            views = pre.video_views(video, num_clips=num_clips, num_crops=num_crops)  # uint8 (V, T, S, S, 3)
            scores = self.view_scores(pre.normalize(views), batch_size=batch_size)  # (V, C)
            per_view.append(scores)
            rows.append(pre.aggregate(scores)[0])
        rows = np.stack(rows)  # (N, C)
        return (rows, per_view) if return_views else rows

    def decode_predictions(self, preds, top=5):
        """`[(index, label, score), ...]` per row of `preds`, best first, with this model's labels."""
        from nonlocal_zoo.pretrained.labels import decode_predictions

        return decode_predictions(np.asarray(preds), top=top, labels=list(self.labels))


def pred_logits_model(model):
    """A model sharing `model`'s layers that outputs the logits of its `pred` layer (averaged over the locations of
    the fully-convolutional head): what the `"logits"` aggregation rule averages, for any zoo classifier.

    Raises:
        ValueError: the model has no `pred` layer.
    """
    try:
        logits = model.get_layer("pred").output  # (B, C) or (B, T', H', W', C) when fully convolutional
    except (AttributeError, ValueError):
        raise ValueError("aggregation='logits' needs the model's logits: pass a model whose outputs are logits "
                         "(classifier_activation=None) with apply_softmax=False, or a model with a `pred` layer. "
                         f"Received: {type(model).__name__}") from None
    if len(logits.shape) == 5:
        logits = keras.layers.GlobalAveragePooling3D(name="pred_logits_mean")(logits)
    return keras.Model(model.inputs, logits, name=f"{model.name}_logits")


def _check_labels(labels, num_classes):
    if labels is None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive integer when no `labels` are given. "
                             f"Received: num_classes={num_classes!r}")
        return [f"class_{i}" for i in range(int(num_classes))]
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("`labels` must not be empty. Received: labels=[]")
    if num_classes is not None and num_classes != len(labels):
        raise ValueError(f"`num_classes` ({num_classes}) differs from the number of labels ({len(labels)}). "
                         f"Received: num_classes={num_classes!r}, labels={labels[:3]}...")
    return labels


# ----------------------------------------------------------------------------------------------------------- resolve
def resolve(spec, *, weights="auto", num_classes=None, labels=None, format=None, preset=None, clip_shape=None,
            preprocessing=None, require_weights=False, dropout=None, dtype=None, **arch_overrides):
    """The `VideoClassifier` a user names: a registry preset, a preset directory, a `.keras` file or `hf://`.

    Args:
        spec: `"demo"`, a preset name, a preset directory (`save_to_preset`, `finetune` output), a `.keras` file,
            or `hf://org/repo[@revision]` (a preset directory on the Hub).
        weights: `"auto"`: the published weights of a pretrained preset, the packaged weights of `"demo"`, the
            saved weights of a directory or file; random for an architecture-only preset (refused when
            `require_weights`). None or `"none"`: random. `"kinetics400"`, a weights file (`.pkl`, `.pth`,
            `.pyth`, `.weights.h5`, `.keras`) or an `hf://` handle: loaded into the preset's architecture.
        num_classes: a new head of this many classes (fresh `pred`; the backbone keeps its weights).
        labels: class names (list or text file); with a new count they define the new head.
        format: checkpoint format of an upstream weights file (detected when None).
        preset: for a plain `.keras` model that is not a `VideoClassifier`: the preset whose architecture and
            protocol it has.
        clip_shape: `(T, H, W, 3)` of the network input. Defaults to `(num_frames, None, None, 3)`.
        preprocessing: dict of preprocessing keys overriding the preset's (e.g. `{"test_num_clips": 1}`).
        require_weights: refuse `weights="auto"` for a preset without weights (what the CLI wants).
        dropout: dropout rate before `pred` of a registry preset's model (default: the preset's, else 0.5).
        dtype: the compute dtype, `"float32"` or `"bfloat16"` (None: float32). bfloat16 computes the network in
            bfloat16 with float32 weights, attention and head (`nonlocal_zoo.tasks.precision`); it is
            refused with a `ValueError` naming the CPU flags found where the hardware has no bfloat16. The dtype is
            a runtime choice, not saved: `save_to_preset` and `.keras` files describe the float32 model, which
            loads on any machine; ask for bfloat16 again when loading.
        **arch_overrides: architecture keys replacing the preset's (e.g. `nonlocal_chunk_size=1024`).

    Returns:
        A `VideoClassifier`.

    Raises:
        ValueError: unknown names, bad arguments, files that are not models (quoting what was received).

    Example:
        >>> clf = resolve("i3d_nl5_r50_8x8_kinetics400")
    """
    policy = precision.policy_name(dtype)  # refused here, before any work, where bfloat16 is not supported
    if not isinstance(spec, (str, os.PathLike)) or not os.fspath(spec):
        raise ValueError("`model` must be 'demo', a preset name, a preset directory, a .keras file or hf://org/repo. "
                         f"Received: model={spec!r}")
    spec = os.fspath(spec)
    weights = None if weights in (None, "none", "None") else weights
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"`weights` must be 'auto', None, 'kinetics400', a path or an hf:// handle. "
                         f"Received: weights={weights!r}")
    weights = None if weights is None else os.fspath(weights)
    labels = preset_io.read_labels(labels)
    common = dict(weights=weights, num_classes=num_classes, labels=labels, format=format)
    if spec.startswith("hf://"):
        from nonlocal_zoo.pretrained.hub import resolve_hf

        spec = os.fspath(resolve_hf(spec))
    if spec in preset_io.registry_names() and not os.path.exists(spec):
        return _from_registry(spec, clip_shape=clip_shape, preprocessing=preprocessing, dropout=dropout,
                              require_weights=require_weights, arch_overrides=arch_overrides, dtype=policy, **common)
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, preset_io.CONFIG_FILE)):
            raise ValueError(f"{spec!r} is a folder but not a preset directory (no {preset_io.CONFIG_FILE}; write one "
                             f"with VideoClassifier.save_to_preset). Received: model={spec!r}")
        clf = _from_directory(spec, weights=weights)
        return _adapt(clf, preprocessing=preprocessing, clip_shape=clip_shape, dtype=policy, **common)
    if os.path.isfile(spec):
        if not spec.endswith(".keras"):
            raise ValueError("A model file must be a saved `.keras` model or a preset directory; for a weights file "
                             f"use `--model PRESET --weights FILE`. Received: model={spec!r}")
        clf = _from_keras_file(spec, preset=preset, weights=weights)
        return _adapt(clf, preprocessing=preprocessing, clip_shape=clip_shape, dtype=policy, **common)
    close = difflib.get_close_matches(spec, ["demo", *sorted(PRESETS)], n=3, cutoff=0.5)
    hint = f" Did you mean {close}?" if close else " See `nonlocal-zoo list`."
    raise ValueError(f"Unknown preset: not a preset name, a preset directory or an existing .keras file.{hint} "
                     f"Received: model={spec!r}")


def _from_registry(name, *, weights, num_classes, labels, format, clip_shape, preprocessing, require_weights,
                   arch_overrides, dropout=None, dtype=None):
    entry = get_preset(name)
    published = entry["weights"]
    if weights == "auto":
        if published is None:
            if require_weights:
                raise ValueError(f"Preset {name!r} has no published weights; pass `--weights PATH` (or `--weights "
                                 f"none` for a randomly initialised model). Received: model={name!r}")
            weights = None
        else:
            weights = "package" if published.get("package_file") else preset_io.PRETRAINED
    base_labels = preset_io.preset_labels(entry)
    if labels is None and num_classes is None:
        labels = base_labels
    if labels is None:
        labels = [f"class_{i}" for i in range(num_classes or 400)]
    if num_classes is not None and num_classes != len(labels):
        raise ValueError(f"`num_classes` ({num_classes}) differs from the number of labels ({len(labels)}).")
    pre = VideoClassifierPreprocessor(entry["preprocessing"], **(preprocessing or {}))
    if clip_shape is None:
        clip_shape = (pre.num_frames, None, None, 3)
    backbone = NonLocalResNetBackbone({**entry["arch"], **arch_overrides}, clip_shape=clip_shape, preset=name,
                                      dtype=dtype)
    head = entry.get("head") or {}
    clf = VideoClassifier(backbone, preprocessor=pre, labels=labels, preset=name, name=name,
                          dropout=head.get("dropout", 0.5) if dropout is None else dropout)
    same_head = base_labels is not None and len(base_labels) == len(labels)
    if weights == "package":
        if not same_head:
            raise ValueError(f"The packaged weights of {name!r} have {len(base_labels)} classes; a new head needs "
                             f"fine-tuning. Received: labels of {len(labels)} classes")
        preset_io.load_h5_strict(clf, preset_io.package_weights(name, published))
    elif weights is not None:
        preset_io.load_weights(clf, weights, preset=name, include_top=True, classes=len(labels), format=format)
    return clf


def _from_directory(folder, *, weights):
    with open(os.path.join(folder, preset_io.CONFIG_FILE), encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{os.path.join(folder, preset_io.CONFIG_FILE)} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("class_name") != "VideoClassifier":
        raise ValueError(f"{os.path.join(folder, preset_io.CONFIG_FILE)} does not describe a nonlocal_zoo "
                         f"VideoClassifier. Received: {str(config)[:80]}")
    clf = keras.saving.deserialize_keras_object(config)
    if weights == "auto":
        path = os.path.join(folder, preset_io.WEIGHTS_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"The preset directory {folder!r} has no {preset_io.WEIGHTS_FILE}.")
        preset_io.load_h5_strict(clf, path)
    elif weights is not None:
        preset_io.load_weights(clf, weights, preset=clf.preset, include_top=True, classes=clf.num_classes)
    return clf


def _from_keras_file(path, *, preset, weights):
    # safe mode, one KerasFileError naming the file for a damaged file or an injected config (Lambda, unknown class);
    # training objects (optimizer, loss) are not needed
    model = load_keras_model(path, compile=False)
    if not isinstance(model, VideoClassifier):
        if preset is None:
            raise ValueError(f"{path!r} holds a plain Keras model ({type(model).__name__} {model.name!r}), which does "
                             "not carry its preprocessing: pass the preset whose architecture and protocol it has "
                             f"(`--preset NAME` / preset=). Received: preset=None")
        units = int(model.output_shape[-1])
        clf = _from_registry(preset, weights=None, num_classes=units, labels=None, format=None, clip_shape=None,
                             preprocessing=None, require_weights=False, arch_overrides={})
        from nonlocal_zoo.pretrained.convert import transfer_weights

        transfer_weights(model, clf, include_top=True, what=f"Keras model '{path}'")
        model = clf
    if weights not in ("auto", None):
        preset_io.load_weights(model, weights, preset=model.preset, include_top=True, classes=model.num_classes)
    return model


def _adapt(clf, *, weights, num_classes, labels, format, preprocessing, clip_shape=None, dtype=None):
    """A loaded classifier with another head (`num_classes`/`labels`), input size, preprocessing overrides or compute
    dtype (a policy name from `precision.policy_name`; None keeps the classifier's)."""
    del weights, format
    new_labels = labels if labels is not None else (
        [f"class_{i}" for i in range(num_classes)] if num_classes not in (None, clf.num_classes) else None)
    clip_shape = None if clip_shape is None or tuple(clip_shape) == tuple(clf.backbone.clip_shape) else clip_shape
    was_bf16 = clf.inference_dtype == "bfloat16"
    same_dtype = dtype is None or precision.is_bfloat16(dtype) == was_bf16
    if new_labels is None and not preprocessing and clip_shape is None and same_dtype:
        return clf
    if new_labels is not None and len(new_labels) == clf.num_classes and not preprocessing and clip_shape is None \
            and same_dtype:
        clf.labels = tuple(new_labels)  # renamed classes, same head
        return clf
    config = clf.get_config()
    if preprocessing:
        pre = dict(clf.preprocessor.get_config())
        pre["preprocessing"] = {**pre["preprocessing"], **preprocessing}
        config["preprocessor"] = VideoClassifierPreprocessor.from_config(pre)
    else:
        config["preprocessor"] = clf.preprocessor
    backbone_config = clf.backbone.get_config()
    if clip_shape is not None:
        backbone_config["clip_shape"] = list(clip_shape)
    backbone_config["dtype"] = dtype if dtype is not None else ("mixed_bfloat16" if was_bf16 else None)
    config["backbone"] = NonLocalResNetBackbone.from_config(backbone_config)
    same_head = new_labels is None or len(new_labels) == clf.num_classes
    config["labels"] = list(new_labels) if new_labels is not None else list(clf.labels)
    new = VideoClassifier.from_config(config)
    from nonlocal_zoo.pretrained.convert import transfer_weights

    transfer_weights(clf, new, include_top=same_head, what=f"model {clf.name!r}")
    return new
