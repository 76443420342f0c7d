"""mmaction2 checkpoints (`.pth`, `{"state_dict": ..., "meta": ...}`) of `Recognizer3D(ResNet3d, I3DHead)`.

Key scheme (`mmaction/models/backbones/resnet3d.py`, mmcv `ConvModule` (`conv` + `bn`) and
`mmcv/cnn/bricks/non_local.py: NonLocal3d`; `research/architecture.md` §3.3):

    backbone.conv1.conv.weight / backbone.conv1.bn.*             -> conv1_w / res_conv1_bn_*
    backbone.layer{L}.{i}.conv{1,2,3}.conv.weight / .bn.*        -> res{L+1}_{i}_branch2{a,b,c}_w / _bn_*
    backbone.layer{L}.{i}.downsample.conv.weight / .bn.*         -> res{L+1}_{i}_branch1_w / _bn_*
    backbone.layer{L}.{i}.non_local_block.theta.conv.{weight,bias}  -> nonlocal_conv{L+1}_{i}_theta_{w,b}
    ...non_local_block.{phi,g}[.0].conv.{weight,bias}            -> ..._{phi,g}_{w,b}  (".0": sub_sample wraps the
                                                                    conv in Sequential(conv, max-pool))
    ...non_local_block.conv_out.conv.weight / conv_out.bn.*      -> ..._out_w / ..._bn_*  (no out bias: BN follows)
    ...non_local_block.concat_project.conv.weight                -> ..._concat_project_w (concatenation mode)
    cls_head.fc_cls.{weight,bias}                                -> pred_{w,b}

In the gaussian mode there are no theta/phi tensors (`phi` is only the max-pool). `*.num_batches_tracked` and
the (non-persistent in 1.x) `data_preprocessor.*` buffers are dropped.

The embedded-Gaussian, dot-product and Gaussian files have the same tensors; which one a file is, only its
metadata says. mmengine's `Runner.save_checkpoint` writes the training config into `meta["cfg"]` (its
`pretty_text`, python source: `non_local_cfg=dict(..., mode='embedded_gaussian')`); mmcv 1.x runners wrote it as
`meta["config"]`. `describe` reads the non-local mode from there, and the loader refuses a file whose mode is not
the model's.
"""
import re

from nonlocal_zoo.pretrained.convert import (
    TORCH_BN,
    TORCH_BN_BOOKKEEPING,
    TORCH_PARAM,
    CheckpointFormat,
    regex_mapper,
    register_format,
)
from nonlocal_zoo.pretrained.pickle_io import load_torch_state_dict

_BN = r"(weight|bias|running_mean|running_var)"
_LAYER = r"backbone\.layer(\d+)\.(\d+)\."
_BRANCH = {"1": "a", "2": "b", "3": "c"}


def _res(m):
    return f"res{int(m[1]) + 1}_{m[2]}"


def _nl(m):
    return f"nonlocal_conv{int(m[1]) + 1}_{m[2]}"


map_names = regex_mapper(
    [
        (r"backbone\.conv1\.conv\.weight", lambda m: "conv1_w"),
        (r"backbone\.conv1\.bn\." + _BN, lambda m: f"res_conv1_bn_{TORCH_BN[m[1]]}"),
        (_LAYER + r"conv([123])\.conv\.weight", lambda m: f"{_res(m)}_branch2{_BRANCH[m[3]]}_w"),
        (_LAYER + r"conv([123])\.bn\." + _BN, lambda m: f"{_res(m)}_branch2{_BRANCH[m[3]]}_bn_{TORCH_BN[m[4]]}"),
        (_LAYER + r"downsample\.conv\.weight", lambda m: f"{_res(m)}_branch1_w"),
        (_LAYER + r"downsample\.bn\." + _BN, lambda m: f"{_res(m)}_branch1_bn_{TORCH_BN[m[3]]}"),
        (_LAYER + r"non_local_block\.theta\.conv\.(weight|bias)", lambda m: f"{_nl(m)}_theta_{TORCH_PARAM[m[3]]}"),
        (
            _LAYER + r"non_local_block\.(phi|g)(?:\.0)?\.conv\.(weight|bias)",
            lambda m: f"{_nl(m)}_{m[3]}_{TORCH_PARAM[m[4]]}",
        ),
        (_LAYER + r"non_local_block\.conv_out\.conv\.(weight|bias)", lambda m: f"{_nl(m)}_out_{TORCH_PARAM[m[3]]}"),
        (_LAYER + r"non_local_block\.conv_out\.bn\." + _BN, lambda m: f"{_nl(m)}_bn_{TORCH_BN[m[3]]}"),
        (_LAYER + r"non_local_block\.concat_project\.conv\.weight", lambda m: f"{_nl(m)}_concat_project_w"),
        (r"cls_head\.fc_cls\.(weight|bias)", lambda m: f"pred_{TORCH_PARAM[m[1]]}"),
    ],
    ignore=[rf"\.{TORCH_BN_BOOKKEEPING}$", r"^data_preprocessor\."],
)


def detect(keys):
    return any(k.removeprefix("module.").startswith("backbone.conv1.") for k in keys)


# mmcv's NonLocal3d modes -> NonLocalBlock modes
NONLOCAL_MODES = {"embedded_gaussian": "embedded", "dot_product": "dot", "gaussian": "gaussian",
                  "concatenation": "concatenate"}
_NL_CFG = re.compile(r"non_local_cfg\s*=\s*dict\(")
_MODE = re.compile(r"\bmode\s*=\s*['\"](\w+)['\"]")


def _dict_text(text, start):
    """The text of the `dict(...)` call that opens just before `start` (balanced parentheses)."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return text[start:]


def _find_in_dict(cfg, key):
    if isinstance(cfg, dict):
        if key in cfg:
            return cfg[key]
        for value in cfg.values():
            found = _find_in_dict(value, key)
            if found is not None:
                return found
    return None


def nonlocal_mode(metadata):
    """The non-local mode (`"embedded"`, `"dot"`, `"gaussian"`, `"concatenate"`) an mmaction2 checkpoint was
    trained with, from the config in its `meta`; None when the file does not say.

    Args:
        metadata: the checkpoint's top-level non-tensor records (`CheckpointState.metadata`).

    Example:
        >>> nonlocal_mode({"meta": {"cfg": "model = dict(backbone=dict(non_local_cfg=dict(mode='dot_product')))"}})
        'dot'
    """
    meta = (metadata or {}).get("meta")
    if not isinstance(meta, dict):
        return None
    cfg = meta.get("cfg", meta.get("config"))
    if isinstance(cfg, dict):
        found = _find_in_dict(cfg, "non_local_cfg")
        mode = found.get("mode") if isinstance(found, dict) else None
    elif isinstance(cfg, str):
        match = _NL_CFG.search(cfg)
        found = _MODE.search(_dict_text(cfg, match.end())) if match else None
        mode = found.group(1) if found else None
    else:
        mode = None
    return NONLOCAL_MODES.get(mode, mode)


def describe(state):
    """What an mmaction2 file says about its network: `{"nonlocal_mode": ...}` from its metadata."""
    return {"nonlocal_mode": nonlocal_mode(getattr(state, "metadata", None))}


register_format(
    CheckpointFormat(
        name="mmaction2_pth",
        reader=load_torch_state_dict,
        map_names=map_names,
        detect=detect,
        suffixes=(".pth",),
        description="mmaction2 Recognizer3D checkpoint (state_dict; backbone.*, cls_head.fc_cls)",
        flavours=("mmaction2",),
        describe=describe,
    )
)
