"""Models by name and video classification: what `nonlocal-zoo classify` and `attention` run.

A model is named the way users name it on the command line: `"demo"` (the embedded motion model), a preset name
(built with `create_model`, with its published weights by default), or the path of a saved `.keras` model. Each
comes with its preprocessing (clip length, stride, test resize and crop, mean/std) and class names, so a video goes
file -> `data.multiview_clips` -> model -> labels without further settings.
"""
import dataclasses
import os

import numpy as np


@dataclasses.dataclass
class LoadedModel:
    """A model with what it needs to read videos and name its outputs.

    Attributes:
        model: the Keras model, `(B, T, H, W, 3)` normalised clips -> `(B, num_classes)` scores.
        preprocessing: a preprocessing dict (see `nonlocal_zoo.data.resolve_preprocessing`).
        labels: class names in output order.
        name: how the model was named (`"demo"`, a preset or a path).
    """

    model: object
    preprocessing: dict
    labels: list
    name: str

    @property
    def class_names(self):
        """The labels when they are real names (to map a clip folder's class folders to outputs), else None."""
        generic = [f"class_{i}" for i in range(len(self.labels))]
        return None if list(self.labels) == generic else list(self.labels)

    def clips(self, video, *, num_clips=1, num_crops=1):
        """The uint8 test views of a video (path or frames), `(num_clips * num_crops, T, S, S, 3)`."""
        from nonlocal_zoo.data import multiview_clips

        return multiview_clips(video, preset=self.preprocessing, num_clips=num_clips, num_crops=num_crops,
                               normalize=False)

    def normalize(self, clips):
        """uint8 RGB clips -> the model's float32 input (the preprocessing's mean/std and channel order)."""
        from nonlocal_zoo.data import normalize

        p = self.preprocessing
        return normalize(np.asarray(clips), mean=p["mean"], std=p["std"], scale=p["scale"],
                         channel_order=p["channel_order"])


def _labels_for(num_classes, labels):
    if labels is not None:
        if isinstance(labels, (str, os.PathLike)):
            with open(labels, encoding="utf-8") as f:
                labels = [line.strip() for line in f if line.strip()]
        labels = list(labels)
        if len(labels) != num_classes:
            raise ValueError(f"The model has {num_classes} classes but {len(labels)} labels were given. "
                             f"Received: labels={labels[:3]}...")
        return labels
    if num_classes == 400:
        from nonlocal_zoo.pretrained.labels import kinetics400_labels

        return kinetics400_labels()
    return [f"class_{i}" for i in range(num_classes)]


def _run_folder(checkpoint):
    """For a checkpoint of a `nonlocal-zoo finetune` run (`RUN/checkpoints/best.keras`): its preprocessing and
    class-names file, else None."""
    from nonlocal_zoo import training

    folder = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
    config = os.path.join(folder, training.RUN_CONFIG)
    if not os.path.isfile(config):
        return None
    from nonlocal_zoo.data import resolve_preprocessing

    cfg = training.resolve_config(training.load_config(config))
    return {"preprocessing": resolve_preprocessing(cfg["model"], **training.preprocessing_overrides(cfg)),
            "class_names": os.path.join(folder, training.CLASS_NAMES)}


def load_model(spec, *, weights="auto", preset=None, labels=None):
    """Resolves a model name into a `LoadedModel`.

    Args:
        spec: `"demo"`, a preset name (see `nonlocal_zoo.list_models()`) or the path of a `.keras` model.
        weights: for a preset: `"auto"` (its published Kinetics-400 weights, converted and cached on first use;
            random initialisation for architecture-only presets is refused), `None`/`"none"` (random
            initialisation, for smoke tests), `"kinetics400"`, a weights file or an `hf://` handle.
        preset: for a `.keras` file: the preset (name or dict) whose preprocessing to use. Defaults to the
            protocol of the fine-tuning run the file comes from (`RUN/run_config.yaml` beside `RUN/checkpoints/`),
            else the model's own preset, else the official 8x8 protocol.
        labels: class names (a list or a text file, one per line). Defaults to the demo classes for the demo
            model, a fine-tuning run's `class_names.txt`, the Kinetics-400 names for 400 classes, else `class_0`,
            `class_1`, ...

    Returns:
        A `LoadedModel`.

    Example:
        >>> loaded = load_model("demo")
        >>> classify(loaded, ["clip.mp4"], top_k=3)
    """
    if not isinstance(spec, (str, os.PathLike)) or not str(spec):
        raise ValueError(f"`model` must be 'demo', a preset name or a .keras file. Received: model={spec!r}")
    spec = os.fspath(spec)
    if spec == "demo":
        from nonlocal_zoo import demo

        return LoadedModel(demo.load_demo_model(), dict(demo.DEMO_PREPROCESSING),
                           _labels_for(len(demo.CLASSES), labels or list(demo.CLASSES)), "demo")
    from nonlocal_zoo.data import resolve_preprocessing
    from nonlocal_zoo.presets import PRESETS, get_preset

    if spec in PRESETS:
        from nonlocal_zoo.models import create_model

        config = get_preset(spec)
        prep = config["preprocessing"]
        if weights == "auto":
            if config["weights"] is None:
                raise ValueError(
                    f"Preset {spec!r} has no published weights; pass `--weights PATH` (or `--weights none` for a "
                    f"randomly initialised model). Received: model={spec!r}"
                )
            weights = "kinetics400"
        if weights in ("none", "None"):
            weights = None
        fully_conv = bool(prep.get("test_fully_convolutional"))
        shape = (prep["num_frames"], None, None, 3) if fully_conv else (prep["num_frames"], prep["test_crop"],
                                                                          prep["test_crop"], 3)
        model = create_model(spec, weights=weights, fully_convolutional=fully_conv, input_shape=shape)
        return LoadedModel(model, resolve_preprocessing(spec), _labels_for(model.output_shape[-1], labels), spec)
    if os.path.isfile(spec):
        if not spec.endswith(".keras"):
            raise ValueError(
                "A model file must be a saved `.keras` model; for a weights file use `--model PRESET --weights "
                f"FILE`. Received: model={spec!r}"
            )
        import keras

        import nonlocal_zoo.layers  # noqa: F401  (registers the zoo's layers for deserialisation)

        model = keras.saving.load_model(spec)
        run = _run_folder(spec)
        if run is not None and preset is None:  # a fine-tuning checkpoint: its run's protocol and class names
            prep = run["preprocessing"]
            if labels is None and os.path.isfile(run["class_names"]):
                labels = run["class_names"]
        else:
            if preset is None and model.name in PRESETS:
                preset = model.name
            prep = resolve_preprocessing(preset)
        return LoadedModel(model, prep, _labels_for(model.output_shape[-1], labels), spec)
    import difflib

    close = difflib.get_close_matches(spec, ["demo", *PRESETS], n=3, cutoff=0.5)
    hint = f" Did you mean {close}?" if close else " See `nonlocal-zoo list`."
    raise ValueError(
        f"Unknown model: not 'demo', a preset name or an existing .keras file.{hint} Received: model={spec!r}"
    )


def predict_views(loaded, views, *, batch_size=8):
    """Scores of uint8 views `(V, T, S, S, 3)`, averaged over the views -> `(num_classes,)`."""
    scores = []
    for start in range(0, len(views), batch_size):
        batch = loaded.normalize(views[start:start + batch_size])
        scores.append(np.asarray(loaded.model.predict_on_batch(batch), np.float64))
    return np.concatenate(scores).mean(axis=0)


def classify(loaded, videos, *, top_k=5, num_clips=1, num_crops=1):
    """Classifies videos: the top-k labels of each, with scores averaged over `num_clips x num_crops` views.

    Args:
        loaded: a `LoadedModel` (see `load_model`).
        videos: paths (or decoded uint8 `(F, H, W, 3)` frames).
        top_k: labels to return per video. Defaults to `5`.
        num_clips: temporal views per video (uniformly spread, as in multi-view testing). Defaults to `1`.
        num_crops: spatial crops per clip, 1 (centre) or 3. Defaults to `1`.

    Returns:
        One dict per video: `{"video": path, "top": [{"label", "index", "score"}, ...], "views": V}`.

    Example:
        >>> for result in classify(load_model("demo"), ["a.mp4"], top_k=3):
        ...     print(result["top"][0]["label"])
    """
    from nonlocal_zoo.pretrained.labels import decode_predictions

    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(loaded.labels):
        raise ValueError(f"`top_k` must be an integer in [1, {len(loaded.labels)}]. Received: top_k={top_k!r}")
    results = []
    for video in videos:
        views = loaded.clips(video, num_clips=num_clips, num_crops=num_crops)
        scores = predict_views(loaded, views)
        top = decode_predictions(scores[None], top=top_k, labels=loaded.labels)[0]
        name = video if isinstance(video, (str, os.PathLike)) else "<array>"
        results.append({"video": os.fspath(name), "views": int(len(views)),
                        "top": [{"label": label, "index": index, "score": score} for index, label, score in top]})
    return results
