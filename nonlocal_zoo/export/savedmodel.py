"""SavedModel export (TF Serving): the serving model as a SavedModel with signature `serving_default` and the
metadata in `assets.extra/nonlocal_zoo.json`.

Example:
    >>> write_saved_model(serving_model(model, pre), "exports/i3d", metadata)
"""
import json
from pathlib import Path

from nonlocal_zoo.export.metadata import OUTPUT_NAME, SAVED_MODEL_METADATA, SIGNATURE
from nonlocal_zoo.export.serving import input_spec


def write_saved_model(serving, path, metadata):
    """Write `serving` (uint8 clips -> probabilities) as a SavedModel directory `path`, with `metadata`.

    Example:
        >>> write_saved_model(serving, "exports/i3d", {"preset": "demo"})
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(serving)
    archive.add_endpoint(
        SIGNATURE, lambda clips: {OUTPUT_NAME: serving(clips, training=False)}, input_signature=[input_spec(serving)]
    )
    archive.write_out(str(path), verbose=False)
    meta_path = Path(path) / SAVED_MODEL_METADATA
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(metadata, indent=1), encoding="utf-8")
