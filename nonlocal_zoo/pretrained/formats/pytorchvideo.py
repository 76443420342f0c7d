"""pytorchvideo hub checkpoints (`{C2D,I3D}_8x8_R50.pyth`, `{"model_state": state_dict}`) of `create_resnet` nets.

Key scheme (`pytorchvideo/models/{resnet,stem,head}.py`; `research/architecture.md` §3.3):

    blocks.0.conv.weight / blocks.0.norm.*                          -> conv1_w / res_conv1_bn_*
    blocks.{k}.res_blocks.{i}.branch1_conv.weight / branch1_norm.*  -> res{S}_{i}_branch1_w / _bn_*
    blocks.{k}.res_blocks.{i}.branch2.conv_{a,b,c}.weight           -> res{S}_{i}_branch2{a,b,c}_w
    blocks.{k}.res_blocks.{i}.branch2.norm_{a,b,c}.*                -> res{S}_{i}_branch2{a,b,c}_bn_*
    blocks.{h}.proj.{weight,bias}                                   -> pred_{w,b}

The block index `k` of a stage depends on whether the parameter-free `stage1_pool` sits between res2 and res3
(`blocks.2` in the hub models), so the stages are numbered res2, res3, ... in the order of the `k` that hold
`res_blocks`. pytorchvideo's `create_resnet` has no non-local blocks and the hub publishes none.
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
_STAGE = re.compile(r"(?:module\.)?blocks\.(\d+)\.res_blocks\.")


def map_names(keys):
    stage_blocks = sorted({int(m[1]) for m in map(_STAGE.match, keys) if m})
    stage = {str(k): s + 2 for s, k in enumerate(stage_blocks)}  # block index -> Caffe2 stage number

    def res(m, rest):
        return f"res{stage[m[1]]}_{m[2]}_{rest}"

    mapper = regex_mapper(
        [
            (r"blocks\.0\.conv\.weight", lambda m: "conv1_w"),
            (r"blocks\.0\.norm\." + _BN, lambda m: f"res_conv1_bn_{TORCH_BN[m[1]]}"),
            (r"blocks\.(\d+)\.res_blocks\.(\d+)\.branch1_conv\.weight", lambda m: res(m, "branch1_w")),
            (
                r"blocks\.(\d+)\.res_blocks\.(\d+)\.branch1_norm\." + _BN,
                lambda m: res(m, f"branch1_bn_{TORCH_BN[m[3]]}"),
            ),
            (r"blocks\.(\d+)\.res_blocks\.(\d+)\.branch2\.conv_([abc])\.weight", lambda m: res(m, f"branch2{m[3]}_w")),
            (
                r"blocks\.(\d+)\.res_blocks\.(\d+)\.branch2\.norm_([abc])\." + _BN,
                lambda m: res(m, f"branch2{m[3]}_bn_{TORCH_BN[m[4]]}"),
            ),
            (r"blocks\.\d+\.proj\.(weight|bias)", lambda m: f"pred_{TORCH_PARAM[m[1]]}"),
        ],
        ignore=[rf"\.{TORCH_BN_BOOKKEEPING}$"],
    )
    return mapper(keys)


def detect(keys):
    return any(k.removeprefix("module.").startswith("blocks.0.conv.") for k in keys)


register_format(
    CheckpointFormat(
        name="pytorchvideo_pyth",
        reader=load_torch_state_dict,
        map_names=map_names,
        detect=detect,
        suffixes=(".pyth", ".pth"),
        description="pytorchvideo hub checkpoint (model_state; blocks.0.conv..., blocks.N.proj)",
        flavours=("PySlowFast",),
    )
)
