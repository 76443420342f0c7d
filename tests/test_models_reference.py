"""Whole-network numerics against an independent PyTorch reference: pytorchvideo's `create_resnet` (C2D/I3D ResNet)
with pytorchvideo's `NonLocal` blocks inserted after the residual blocks the paper's code names.

Each reference is configured from literal values of research/architecture.md (not from our presets), gets random
weights and random BN statistics, and its weights are copied into the Keras model by the Caffe2 layer names. Logits
must agree to 1e-4 of their largest magnitude. Small clips (64x64) keep the default run short; full-size 224 runs are
marked slow.
"""
import numpy as np
import pytest

import tests.ptv  # noqa: F401  (makes pytorchvideo.models importable without torchvision)

import torch  # noqa: E402
from torch import nn  # noqa: E402
from pytorchvideo.layers.nonlocal_net import create_nonlocal  # noqa: E402
from pytorchvideo.models.resnet import ResStage, create_resnet  # noqa: E402

from nonlocal_zoo.models import create_model  # noqa: E402

# architecture.md §1.1: conv "a" temporal kernels of I3D R50 (official obtain_arc; pytorchvideo i3d_r50 cycles
# the same pattern).
I3D_CONV_A = ((3, 1, 1), [(3, 1, 1), (1, 1, 1)], [(3, 1, 1), (1, 1, 1)], [(1, 1, 1), (3, 1, 1)])
C2D_CONV_A = ((1, 1, 1), (1, 1, 1), (1, 1, 1), (1, 1, 1))
NL5_R50 = {1: [1, 3], 2: [1, 3, 5]}  # pytorchvideo stage index (0 = res2) -> blocks followed by a non-local block
NL5_R101 = {1: [1, 3], 2: [6, 13, 20]}


class TorchAffine(nn.Module):
    """Frozen BN of the official long-clip models: y = x * s + b per channel."""

    def __init__(self, num_features, **unused):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_features))
        self.bias = nn.Parameter(torch.empty(num_features))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)


class TemporalGroups(nn.Module):
    """Official `add_nonlocal_group`: fold groups of `size` consecutive frames into the batch around a block."""

    def __init__(self, block, size):
        super().__init__()
        self.block, self.size = block, size

    def forward(self, x):
        n, c, t, h, w = x.shape
        g = x.view(n, c, t // self.size, self.size, h, w).permute(0, 2, 1, 3, 4, 5).reshape(-1, c, self.size, h, w)
        y = self.block(g)
        return y.view(n, t // self.size, c, self.size, h, w).permute(0, 2, 1, 3, 4, 5).reshape(n, c, t, h, w)


def reference(*, depth=50, conv1_kernel, conv1_stride, pool1, pool1_stride, pool1_padding, conv_a, nonlocal_blocks=None,
              nonlocal_pool=(1, 2, 2), affine=False, group=None, res5_size):
    """pytorchvideo ResNet with the given stem geometry and NL blocks; random weights and BN statistics."""
    torch.manual_seed(0)
    norm = TorchAffine if affine else nn.BatchNorm3d
    model = create_resnet(
        input_channel=3, model_depth=depth, model_num_class=400, dropout_rate=0.5, norm=norm,
        stem_conv_kernel_size=conv1_kernel, stem_conv_stride=conv1_stride,
        stem_pool_kernel_size=pool1, stem_pool_stride=pool1_stride,
        stage1_pool=nn.MaxPool3d, stage1_pool_kernel_size=(2, 1, 1),
        stage_conv_a_kernel_size=conv_a,
        head_pool=nn.AvgPool3d, head_pool_kernel_size=res5_size, head_activation=None,
    )
    # pytorchvideo always pads pool1 by k // 2; the official Caffe2 pool1 is unpadded.
    model.blocks[0].pool = nn.MaxPool3d(pool1, stride=pool1_stride, padding=pool1_padding)
    stages = [b for b in model.blocks if isinstance(b, ResStage)]
    for s, blocks in (nonlocal_blocks or {}).items():
        dim = stages[s].res_blocks[0].branch2.conv_c.out_channels
        for i in blocks:
            nl = create_nonlocal(dim_in=dim, dim_inner=dim // 2, pool_size=nonlocal_pool, instantiation="softmax",
                                 norm=None if affine else nn.BatchNorm3d)
            if group is not None and s == 1:
                nl = TemporalGroups(nl, group)
            stages[s].res_blocks[i] = nn.Sequential(stages[s].res_blocks[i], nl)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm3d, TorchAffine)):
                n = module.weight.shape[0]
                module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                if isinstance(module, nn.BatchNorm3d):
                    module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                    module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
            elif isinstance(module, nn.Conv3d) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model.eval(), stages


def _np(t):
    return t.detach().cpu().numpy()


def _conv(conv):
    return _np(conv.weight).transpose(2, 3, 4, 1, 0)  # (O, I, T, H, W) -> (T, H, W, I, O)


def _norm(module):
    if isinstance(module, TorchAffine):
        return [_np(module.weight), _np(module.bias)]
    return [_np(module.weight), _np(module.bias), _np(module.running_mean), _np(module.running_var)]


def _dense(conv):
    return _np(conv.weight)[:, :, 0, 0, 0].T  # (O, I, 1, 1, 1) -> (I, O)


def port(model, stages, keras_model):
    """Copy the pytorchvideo weights into the Keras model by Caffe2 layer name; every weighted layer is assigned."""
    assigned = set()

    def put(name, weights):
        keras_model.get_layer(name).set_weights(weights)
        assigned.add(name)

    stem = model.blocks[0]
    put("conv1", [_conv(stem.conv)])
    put("res_conv1_bn", _norm(stem.norm))
    for s, stage in enumerate(stages):
        for i, block in enumerate(stage.res_blocks):
            nl = None
            if isinstance(block, nn.Sequential):
                block, nl = block[0], block[1]
            prefix = f"res{s + 2}_{i}"
            if block.branch1_conv is not None:
                put(f"{prefix}_branch1", [_conv(block.branch1_conv)])
                put(f"{prefix}_branch1_bn", _norm(block.branch1_norm))
            for letter in "abc":
                put(f"{prefix}_branch2{letter}", [_conv(getattr(block.branch2, f"conv_{letter}"))])
                put(f"{prefix}_branch2{letter}_bn", _norm(getattr(block.branch2, f"norm_{letter}")))
            if nl is not None:
                nl = nl.block if isinstance(nl, TemporalGroups) else nl
                layer = keras_model.get_layer(f"nonlocal_conv{s + 2}_{i}")
                pairs = (("theta", nl.conv_theta), ("phi", nl.conv_phi), ("g", nl.conv_g), ("out", nl.conv_out))
                for ours, theirs in pairs:
                    getattr(layer, ours).set_weights([_dense(theirs), _np(theirs.bias)])
                if nl.norm is not None:
                    layer.bn.set_weights(_norm(nl.norm))
                assigned.add(layer.name)
    head = model.blocks[-1]
    put("pred", [_np(head.proj.weight).T, _np(head.proj.bias)])
    weighted = {layer.name for layer in keras_model.layers if layer.weights}
    assert weighted == assigned, f"not assigned: {sorted(weighted - assigned)}"


def compare(preset, ref_model, stages, clip_shape, **overrides):
    """Logits of the Keras preset and the reference on one random clip; returns (ours, theirs)."""
    keras_model = create_model(preset, input_shape=clip_shape, classifier_activation=None, **overrides)
    port(ref_model, stages, keras_model)
    clip = np.random.default_rng(2).standard_normal((1, *clip_shape)).astype("float32")
    with torch.no_grad():
        theirs = _np(ref_model(torch.from_numpy(clip.transpose(0, 4, 1, 2, 3))))  # NTHWC -> NCTHW
    ours = np.asarray(keras_model(clip, training=False))
    return ours, theirs


def assert_close(ours, theirs):
    assert ours.shape == theirs.shape
    scale = np.abs(theirs).max()
    assert scale > 1e-3  # the reference output is not degenerate
    assert np.abs(ours - theirs).max() <= 1e-4 * scale, (np.abs(ours - theirs).max(), scale)


def test_i3d_nl5_r50_repo_geometry_matches_pytorchvideo():
    # Official 8x8 file `resnet_video.py`: conv1 5x7x7 stride (1,2,2), pool1 1x3x3 stride (1,2,2) unpadded; NL 1x2x2.
    ref, stages = reference(conv1_kernel=(5, 7, 7), conv1_stride=(1, 2, 2), pool1=(1, 3, 3), pool1_stride=(1, 2, 2),
                            pool1_padding=(0, 0, 0), conv_a=I3D_CONV_A, nonlocal_blocks=NL5_R50, res5_size=(4, 2, 2))
    assert_close(*compare("i3d_nl5_r50_8x8_kinetics400", ref, stages, (8, 64, 64, 3)))


def test_c2d_nl5_r50_paper_geometry_matches_pytorchvideo():
    # Official 32x2 file `resnet_video_org.py`: conv1 1x7x7 stride (2,2,2), pool1 2x3x3 stride 2 unpadded.
    ref, stages = reference(conv1_kernel=(1, 7, 7), conv1_stride=(2, 2, 2), pool1=(2, 3, 3), pool1_stride=(2, 2, 2),
                            pool1_padding=(0, 0, 0), conv_a=C2D_CONV_A, nonlocal_blocks=NL5_R50, res5_size=(2, 2, 2))
    assert_close(*compare("c2d_nl5_r50_32x2_kinetics400", ref, stages, (16, 64, 64, 3)))


def test_i3d_r50_pytorchvideo_geometry_matches_pytorchvideo():
    # pytorchvideo hub i3d_r50: conv1 stride (1,2,2), pool1 1x3x3 stride (1,2,2) padded (0,1,1).
    ref, stages = reference(conv1_kernel=(5, 7, 7), conv1_stride=(1, 2, 2), pool1=(1, 3, 3), pool1_stride=(1, 2, 2),
                            pool1_padding=(0, 1, 1), conv_a=I3D_CONV_A, res5_size=(4, 2, 2))
    assert_close(*compare("i3d_r50_8x8_kinetics400_pytorchvideo", ref, stages, (8, 64, 64, 3)))


def test_i3d_nl5_r50_gluoncv_geometry_matches_pytorchvideo():
    # gluon-cv: conv1 stride (2,2,2), pool1 1x3x3 stride (2,2,2) padded (0,1,1); NL without subsampling.
    ref, stages = reference(conv1_kernel=(5, 7, 7), conv1_stride=(2, 2, 2), pool1=(1, 3, 3), pool1_stride=(2, 2, 2),
                            pool1_padding=(0, 1, 1), conv_a=I3D_CONV_A, nonlocal_blocks=NL5_R50,
                            nonlocal_pool=(1, 1, 1), res5_size=(2, 2, 2))
    assert_close(*compare("i3d_nl5_r50_32x2_kinetics400_gluoncv", ref, stages, (16, 64, 64, 3)))


def test_frozen_bn_grouped_nl_matches_reference():
    # Official 32x4 frozen-BN model: affine BN, NL without BN, res3 NL within groups of 4 consecutive frames.
    ref, stages = reference(conv1_kernel=(5, 7, 7), conv1_stride=(1, 2, 2), pool1=(1, 3, 3), pool1_stride=(1, 2, 2),
                            pool1_padding=(0, 0, 0), conv_a=I3D_CONV_A, nonlocal_blocks=NL5_R50, affine=True, group=4,
                            res5_size=(8, 2, 2))
    assert_close(*compare("i3d_nl5_r50_32x4_kinetics400", ref, stages, (16, 64, 64, 3)))


@pytest.mark.slow
def test_i3d_nl5_r101_official_rule_matches_pytorchvideo():
    ref, stages = reference(depth=101, conv1_kernel=(5, 7, 7), conv1_stride=(2, 2, 2), pool1=(2, 3, 3),
                            pool1_stride=(2, 2, 2), pool1_padding=(0, 0, 0),
                            conv_a=((3, 1, 1), [(3, 1, 1), (1, 1, 1)], [(3, 1, 1), (1, 1, 1)], [(1, 1, 1), (3, 1, 1)]),
                            nonlocal_blocks=NL5_R101, res5_size=(2, 2, 2))
    assert_close(*compare("i3d_nl5_r101", ref, stages, (16, 64, 64, 3)))


@pytest.mark.slow
@pytest.mark.parametrize("preset, frames, conv1, stride, pool1, pool1_stride, conv_a, nl", [
    ("i3d_nl5_r50_32x2_kinetics400", 32, (5, 7, 7), (2, 2, 2), (2, 3, 3), (2, 2, 2), I3D_CONV_A, NL5_R50),
    ("c2d_r50_8x8_kinetics400", 8, (1, 7, 7), (1, 2, 2), (1, 3, 3), (1, 2, 2), C2D_CONV_A, None),
])
def test_full_size_224_matches_pytorchvideo(preset, frames, conv1, stride, pool1, pool1_stride, conv_a, nl):
    ref, stages = reference(conv1_kernel=conv1, conv1_stride=stride, pool1=pool1, pool1_stride=pool1_stride,
                            pool1_padding=(0, 0, 0), conv_a=conv_a, nonlocal_blocks=nl, res5_size=(4, 7, 7))
    ours, theirs = compare(preset, ref, stages, (frames, 224, 224, 3))
    assert_close(ours, theirs)
