"""Pretrained weights: downloads, checkpoint readers, the converted cache, Hub plumbing, labels and preprocessing.

This floor never builds a model. Loading weights into one (`load_weights`), `convert_checkpoint` and the
preset-aware `push_to_hub` live in `nonlocal_zoo.models.weights` and `nonlocal_zoo.models.conversion`; their old names here still work, forwarded on
first use (module `__getattr__`), so that nothing here imports `nonlocal_zoo.models`.
"""
import importlib

from nonlocal_zoo.pretrained.convert import (
    CheckpointFlavourError,
    CheckpointMismatchError,
    KerasFileError,
    list_formats,
    register_format,
)
from nonlocal_zoo.pretrained.download import cache_dir, fetch
from nonlocal_zoo.pretrained.hub import resolve_hf, upload_folder_to_hub
from nonlocal_zoo.pretrained.labels import decode_predictions, kinetics400_labels, preprocess_input
from nonlocal_zoo.pretrained.loading import converted_weights, download_preset
from nonlocal_zoo.pretrained.pickle_io import (
    CheckpointLimitError,
    UnsafePickleError,
    load_caffe2_pickle,
    load_torch_state_dict,
)

# Names that moved one floor up (backward compatibility): resolved lazily, never imported here at load time.
_MOVED = {
    "load_weights": "nonlocal_zoo.models.weights",
    "convert_checkpoint": "nonlocal_zoo.models.conversion",
    "push_to_hub": "nonlocal_zoo.models.conversion",
}


def __getattr__(name):
    if name not in _MOVED:
        raise AttributeError(f"module 'nonlocal_zoo.pretrained' has no attribute {name!r}")
    return getattr(importlib.import_module(_MOVED[name]), name)
