"""ONNX export, via `keras.Model.export(format="onnx")` (tf2onnx): `Conv3D` and `MaxPool3D` map to ONNX `Conv` and
`MaxPool` on 5-D tensors, so every op of the zoo's models is expressed; the output is renamed `probabilities` and the
metadata stored in `metadata_props["nonlocal_zoo"]`.

Example:
    >>> write_onnx(serving_model(model, pre), "i3d.onnx", metadata, opset=17)
"""
import json
import os
import tempfile
import warnings

from nonlocal_zoo.export.metadata import METADATA_KEY, OUTPUT_NAME
from nonlocal_zoo.export.serving import input_spec


def write_onnx(serving, path, metadata, *, opset):
    """Write `serving` (uint8 clips -> probabilities) as an ONNX file `path` (checked with `onnx.checker`).

    Example:
        >>> write_onnx(serving, "model.onnx", {"preset": "demo", "model_name": "demo"}, opset=17)
    """
    import onnx

    with tempfile.TemporaryDirectory(prefix="nonlocal_zoo_onnx_") as tmp:
        raw = os.path.join(tmp, "model.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx's numpy 2 shims
            serving.export(raw, format="onnx", verbose=False, input_signature=[input_spec(serving)],
                           opset_version=opset)
        proto = onnx.load(raw)
    graph = proto.graph
    if len(graph.output) != 1:
        raise RuntimeError(f"Expected one ONNX output. Received: {[o.name for o in graph.output]}")
    old = graph.output[0].name
    for node in graph.node:  # rename the output tensor (tf2onnx calls it after the TF op, e.g. "Identity:0")
        node.output[:] = [OUTPUT_NAME if name == old else name for name in node.output]
        node.input[:] = [OUTPUT_NAME if name == old else name for name in node.input]
    graph.output[0].name = OUTPUT_NAME
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    proto.doc_string = f"nonlocal_zoo export of {metadata['preset'] or metadata['model_name']}"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
