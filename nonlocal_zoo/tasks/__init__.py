"""The task layer (keras-hub style): the objects a user holds, carrying everything a model needs.

- `NonLocalResNetBackbone`: the C2D/I3D ResNet trunk of a preset (a serializable `keras.Model`).
- `VideoClassifierPreprocessor`: decoding, sampling, resize/crop, normalisation, views and their aggregation rule.
- `VideoClassifier`: backbone + head + preprocessor + labels; `from_preset`, `predict(videos)`, `save_to_preset`.
- `resolve`: the one resolver from a name, a preset directory, a `.keras` file or `hf://` to a `VideoClassifier`.

Example:
    >>> from nonlocal_zoo.tasks import VideoClassifier
    >>> clf = VideoClassifier.from_preset("demo")
    >>> clf.decode_predictions(clf.predict("clip.mp4"), top=3)
"""
from nonlocal_zoo.tasks.backbone import NonLocalResNetBackbone
from nonlocal_zoo.tasks.classifier import VideoClassifier, resolve
from nonlocal_zoo.tasks.preprocessor import AGGREGATIONS, VideoClassifierPreprocessor
from nonlocal_zoo.tasks.presets import is_preset_dir, preset_labels, save_to_preset

__all__ = ["AGGREGATIONS", "NonLocalResNetBackbone", "VideoClassifier", "VideoClassifierPreprocessor",
           "is_preset_dir", "preset_labels", "resolve", "save_to_preset"]
