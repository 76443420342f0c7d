"""gluon-cv PyTorch state dicts of `I3D_ResNetV1` (`i3d_nl{5,10}_resnet{50,101}_v1_kinetics400-<sha1[:8]>.pth`).

The published files are raw, unwrapped state dicts (`research/gluoncv.md` §3). Key scheme
(`gluoncv/torch/model_zoo/action_recognition/i3d_resnet.py`, `non_local.py`; stage index s = 0..3 is res2..res5):

    first_stage.0.weight                                -> conv1_w
    first_stage.1.{weight,bias,running_mean,running_var} -> res_conv1_bn_{s,b,rm,riv}
    res_layers.{s}.{i}.conv{1,2,3}.weight               -> res{s+2}_{i}_branch2{a,b,c}_w
    res_layers.{s}.{i}.bn{1,2,3}.*                      -> res{s+2}_{i}_branch2{a,b,c}_bn_*
    res_layers.{s}.{i}.downsample.0.weight / .1.*       -> res{s+2}_{i}_branch1_w / _bn_*
    res_layers.{s}.{i}.nonlocal_block.{theta,phi,g}.{weight,bias} -> nonlocal_conv{s+2}_{i}_{theta,phi,g}_{w,b}
    res_layers.{s}.{i}.nonlocal_block.W.{weight,bias}   -> nonlocal_conv{s+2}_{i}_out_{w,b}
    res_layers.{s}.{i}.nonlocal_block.bn.*              -> nonlocal_conv{s+2}_{i}_bn_*
    fc.{weight,bias}                                    -> pred_{w,b}

Aliases: gluon-cv registers `W` and `bn` a second time as `nonlocal_block.W_bn.{0,1}` and `fc` as `head.1`, so
every such tensor is stored twice. The alias is dropped when its original is in the file (and used in its place
when it is not), so each variable is still filled from exactly one tensor. `*.num_batches_tracked` is dropped.
A `module.` prefix (training checkpoints wrapped in `{"state_dict": ...}`) is stripped.
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
_BLOCK = r"res_layers\.(\d+)\.(\d+)\."
_BRANCH2 = {"1": "a", "2": "b", "3": "c"}


def _res(m):
    return f"res{int(m[1]) + 2}_{m[2]}"


_map_primary = regex_mapper(
    [
        (r"first_stage\.0\.weight", lambda m: "conv1_w"),
        (r"first_stage\.1\." + _BN, lambda m: f"res_conv1_bn_{TORCH_BN[m[1]]}"),
        (_BLOCK + r"conv([123])\.weight", lambda m: f"{_res(m)}_branch2{_BRANCH2[m[3]]}_w"),
        (_BLOCK + r"bn([123])\." + _BN, lambda m: f"{_res(m)}_branch2{_BRANCH2[m[3]]}_bn_{TORCH_BN[m[4]]}"),
        (_BLOCK + r"downsample\.0\.weight", lambda m: f"{_res(m)}_branch1_w"),
        (_BLOCK + r"downsample\.1\." + _BN, lambda m: f"{_res(m)}_branch1_bn_{TORCH_BN[m[3]]}"),
        (
            _BLOCK + r"nonlocal_block\.(theta|phi|g)\.(weight|bias)",
            lambda m: f"nonlocal_conv{int(m[1]) + 2}_{m[2]}_{m[3]}_{TORCH_PARAM[m[4]]}",
        ),
        (
            _BLOCK + r"nonlocal_block\.W\.(weight|bias)",
            lambda m: f"nonlocal_conv{int(m[1]) + 2}_{m[2]}_out_{TORCH_PARAM[m[3]]}",
        ),
        (
            _BLOCK + r"nonlocal_block\.bn\." + _BN,
            lambda m: f"nonlocal_conv{int(m[1]) + 2}_{m[2]}_bn_{TORCH_BN[m[3]]}",
        ),
        (r"fc\.(weight|bias)", lambda m: f"pred_{TORCH_PARAM[m[1]]}"),
    ],
    ignore=[rf"\.{TORCH_BN_BOOKKEEPING}$"],
    strip_prefixes=(),
)

# (alias pattern, the key of the tensor it duplicates)
_ALIASES = (
    (re.compile(r"(.*\.nonlocal_block\.)W_bn\.0\.(.*)"), r"\1W.\2"),
    (re.compile(r"(.*\.nonlocal_block\.)W_bn\.1\.(.*)"), r"\1bn.\2"),
    (re.compile(r"head\.1\.(.*)"), r"fc.\1"),
)
_WRAPPER_PREFIX = "module."


def _strip(key):
    return key[len(_WRAPPER_PREFIX):] if key.startswith(_WRAPPER_PREFIX) else key


def _original(name):
    """The key an alias duplicates (`...W_bn.0.weight` -> `...W.weight`, `head.1.bias` -> `fc.bias`), else None."""
    for pattern, replacement in _ALIASES:
        match = pattern.fullmatch(name)
        if match:
            return match.expand(replacement)
    return None


def map_names(keys):
    """gluon-cv keys -> canonical names; aliases whose original is present map to None (dropped).

    Args:
        keys: the state dict's keys.

    Returns:
        `{key: canonical name or None}`; keys that are not part of an `I3D_ResNetV1` are left out (unexpected).

    Example:
        >>> map_names(["fc.weight", "head.1.weight", "head.1.bias"])  # head.1.bias stands in for the absent fc.bias
        {'fc.weight': 'pred_w', 'head.1.weight': None, 'head.1.bias': 'pred_b'}
    """
    names = {key: _strip(key) for key in keys}
    present = set(names.values())
    source = {}  # key -> the gluon-cv name it is mapped as (None: a duplicate of a tensor that is in the file)
    for key, name in names.items():
        original = _original(name)
        source[key] = name if original is None else (None if original in present else original)
    primary = _map_primary([name for name in source.values() if name is not None])
    mapping = {}
    for key, name in source.items():
        if name is None:
            mapping[key] = None
        elif name in primary:
            mapping[key] = primary[name]
    return mapping


def detect(keys):
    names = [_strip(k) for k in keys]
    return any(n.startswith("first_stage.0.") for n in names) and any(n.startswith("res_layers.") for n in names)


register_format(
    CheckpointFormat(
        name="gluoncv_pth",
        reader=load_torch_state_dict,
        map_names=map_names,
        detect=detect,
        suffixes=(".pth",),
        description="gluon-cv PyTorch I3D(-NL) ResNet state dict (first_stage, res_layers, W_bn/head.1 aliases)",
        flavours=("gluon-cv",),
    )
)
