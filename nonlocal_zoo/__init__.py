"""nonlocal_zoo: Non-local Neural Networks (Wang et al., CVPR 2018) for video classification in Keras 3.

Example:
    >>> from nonlocal_zoo import nl_resnet50_3d
    >>> model = nl_resnet50_3d(weights=None, input_shape=(8, 224, 224, 3))

Public names are imported lazily so that `import nonlocal_zoo` stays cheap (no TensorFlow import until a
model or layer is used).
"""
import importlib

from nonlocal_zoo.version import __version__

# public name -> module that defines it
_LAZY = {
    "NonLocalBlock": "nonlocal_zoo.layers",
    "layers": "nonlocal_zoo.layers",
    "models": "nonlocal_zoo.models",
    "data": "nonlocal_zoo.data",
    "pretrained": "nonlocal_zoo.pretrained",
    "presets": "nonlocal_zoo.presets",
    "list_models": "nonlocal_zoo.presets",
    "get_preset": "nonlocal_zoo.presets",
    "create_model": "nonlocal_zoo.models",
    "nl_resnet50_3d": "nonlocal_zoo.models",
    "nl_resnet101_3d": "nonlocal_zoo.models",
    "nl_c2d_resnet50": "nonlocal_zoo.models",
    "nl_c2d_resnet101": "nonlocal_zoo.models",
    "i3d_resnet50": "nonlocal_zoo.models",
    "i3d_resnet101": "nonlocal_zoo.models",
    "c2d_resnet50": "nonlocal_zoo.models",
    "c2d_resnet101": "nonlocal_zoo.models",
    "preprocess_input": "nonlocal_zoo.pretrained",
    "decode_predictions": "nonlocal_zoo.pretrained",
    "push_to_hub": "nonlocal_zoo.hub",
    "evaluate": "nonlocal_zoo.evaluation",
    "extract_features": "nonlocal_zoo.features",
    "tasks": "nonlocal_zoo.tasks",
    "VideoClassifier": "nonlocal_zoo.tasks",
    "VideoClassifierPreprocessor": "nonlocal_zoo.tasks",
    "NonLocalResNetBackbone": "nonlocal_zoo.tasks",
    "finetune": "nonlocal_zoo.training",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'nonlocal_zoo' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__ == f"nonlocal_zoo.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
