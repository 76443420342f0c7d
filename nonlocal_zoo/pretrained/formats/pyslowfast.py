"""PySlowFast PyTorch checkpoints (`.pyth`, `{"model_state": state_dict, ...}`) of C2D/I3D(-NL) ResNets.

Key scheme (`slowfast/models/{video_model_builder,stem_helper,resnet_helper,nonlocal_helper,head_helper}.py`;
`research/architecture.md` §3.2, the inverse of PySlowFast's Caffe2 -> PyTorch table):

    s1.pathway0_stem.conv.weight                    -> conv1_w
    s1.pathway0_stem.bn.{weight,bias,running_mean,running_var} -> res_conv1_bn_{s,b,rm,riv}
    s{S}.pathway0_res{i}.branch2.{a,b,c}.weight     -> res{S}_{i}_branch2{a,b,c}_w
    s{S}.pathway0_res{i}.branch2.{a,b,c}_bn.*       -> res{S}_{i}_branch2{a,b,c}_bn_*
    s{S}.pathway0_res{i}.branch1.weight / branch1_bn.* -> res{S}_{i}_branch1_w / _bn_*
    s{S}.pathway0_nonlocal{i}.conv_{theta,phi,g,out}.{weight,bias} -> nonlocal_conv{S}_{i}_{...}_{w,b}
    s{S}.pathway0_nonlocal{i}.bn.*                  -> nonlocal_conv{S}_{i}_bn_*
    head.projection.{weight,bias}                   -> pred_{w,b}

`*.num_batches_tracked` (a BatchNorm step counter) is dropped.
"""
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

map_names = regex_mapper(
    [
        (r"s1\.pathway0_stem\.conv\.weight", lambda m: "conv1_w"),
        (r"s1\.pathway0_stem\.bn\." + _BN, lambda m: f"res_conv1_bn_{TORCH_BN[m[1]]}"),
        (r"s(\d+)\.pathway0_res(\d+)\.branch2\.([abc])\.weight", lambda m: f"res{m[1]}_{m[2]}_branch2{m[3]}_w"),
        (
            r"s(\d+)\.pathway0_res(\d+)\.branch2\.([abc])_bn\." + _BN,
            lambda m: f"res{m[1]}_{m[2]}_branch2{m[3]}_bn_{TORCH_BN[m[4]]}",
        ),
        (r"s(\d+)\.pathway0_res(\d+)\.branch1\.weight", lambda m: f"res{m[1]}_{m[2]}_branch1_w"),
        (r"s(\d+)\.pathway0_res(\d+)\.branch1_bn\." + _BN, lambda m: f"res{m[1]}_{m[2]}_branch1_bn_{TORCH_BN[m[3]]}"),
        (
            r"s(\d+)\.pathway0_nonlocal(\d+)\.conv_(theta|phi|g|out)\.(weight|bias)",
            lambda m: f"nonlocal_conv{m[1]}_{m[2]}_{m[3]}_{TORCH_PARAM[m[4]]}",
        ),
        (r"s(\d+)\.pathway0_nonlocal(\d+)\.bn\." + _BN, lambda m: f"nonlocal_conv{m[1]}_{m[2]}_bn_{TORCH_BN[m[3]]}"),
        (r"head\.projection\.(weight|bias)", lambda m: f"pred_{TORCH_PARAM[m[1]]}"),
    ],
    ignore=[rf"\.{TORCH_BN_BOOKKEEPING}$"],
)


def detect(keys):
    return any(k.removeprefix("module.").startswith("s1.pathway0_stem.") for k in keys)


register_format(
    CheckpointFormat(
        name="pyslowfast_pyth",
        reader=load_torch_state_dict,
        map_names=map_names,
        detect=detect,
        suffixes=(".pyth", ".pth"),
        description="PySlowFast PyTorch checkpoint (model_state; s1.pathway0_stem..., head.projection)",
        flavours=("PySlowFast",),
    )
)
