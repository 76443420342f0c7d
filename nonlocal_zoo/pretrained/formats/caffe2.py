"""Official Caffe2 `.pkl` checkpoints (video-nonlocal-net) and PySlowFast's Caffe2-format `.pkl` files.

The blob names are the canonical names already (`research/architecture.md` §3.1): `conv1_w`,
`res_conv1_bn_{s,b,rm,riv}`, `res{2..5}_{i}_branch2{a,b,c}_w` (+ `_bn_*`), `res{s}_0_branch1_w` (+ `_bn_*`),
`nonlocal_conv{s}_{i}_{theta,phi,g,out}_{w,b}`, `nonlocal_conv{s}_{i}_bn_*`, `pred_{w,b}`. Frozen-BN ("affine")
models have only `_bn_s`/`_bn_b`. `load_caffe2_pickle` already drops the solver blobs (`lr`, `model_iter`,
`*_momentum`). The geometry (official "paper"/"repo" or PySlowFast's padded pool1) is the model's business, so
both release families share one mapping.
"""
import re

from nonlocal_zoo.pretrained.convert import CheckpointFormat, register_format
from nonlocal_zoo.pretrained.pickle_io import load_caffe2_pickle

_BN = r"_bn_(?:s|b|rm|riv)"
_BLOB = re.compile(
    r"conv1_w|res_conv1" + _BN
    + r"|res\d+_\d+_branch(?:1|2[abc])(?:_w|" + _BN + r")"
    + r"|nonlocal_conv\d+_\d+_(?:(?:theta|phi|g|out)_[wb]|concat_project_w|bn_(?:s|b|rm|riv))"
    + r"|pred_[wb]"
)


def map_names(keys):
    """Caffe2 blobs are canonical names: keep the ones that look like network blobs, leave the rest unexpected."""
    return {key: key for key in keys if _BLOB.fullmatch(key)}


def detect(keys):
    return "conv1_w" in keys or any(k.startswith("res_conv1_bn_") for k in keys)


register_format(
    CheckpointFormat(
        name="caffe2_pkl",
        reader=load_caffe2_pickle,
        map_names=map_names,
        detect=detect,
        suffixes=(".pkl",),
        description="official Caffe2 video-nonlocal-net .pkl (dict(blobs=...)); also PySlowFast's Caffe2 .pkl",
        # the same writer (a Caffe2 blob dump) made both releases' files: their structure cannot tell them apart
        flavours=("official Caffe2", "PySlowFast"),
    ),
    aliases=("pyslowfast_pkl",),
)
