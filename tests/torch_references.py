"""Independent PyTorch reference networks for the converter tests, and writers of upstream checkpoint files.

Three references, none of which uses nonlocal_zoo code:

- `official_forward`: the official Caffe2 network (`lib/models/resnet_video{,_org}.py`, `resnet_helper.py`,
  `nonlocal_helper.py` of facebookresearch/video-nonlocal-net) transcribed op by op with `torch.nn.functional` on a
  dict of blobs named exactly like the `.pkl` blobs (`conv1_w`, `res_conv1_bn_s`, ...). Caffe2 pools round down
  and are unpadded, as PyTorch's are by default.
- `ptv_resnet`: pytorchvideo's own `create_resnet` (PySlowFast/pytorchvideo geometry), with pytorchvideo's
  `create_nonlocal` blocks inserted after the chosen residual blocks (as PySlowFast's `ResStage` does). Its
  tensors are written under PySlowFast names, Caffe2 blob names, or pytorchvideo's native `state_dict` names.
- `MMRecognizer3D`: mmaction2's `Recognizer3D(ResNet3d, I3DHead)` with mmcv's `NonLocal3d`, transcribed as torch
  modules whose attribute names reproduce mmaction2's `state_dict` keys (`backbone.layer2.1.non_local_block.g.0.conv
  .weight`, ...), so `state_dict()` *is* the upstream naming.

All weights are random and non-trivial: He-scaled convolutions, BatchNorm gamma/beta and running statistics away
from 1/0, and a non-zero gamma in the non-local BatchNorm (upstream initialises it to zero, which would hide a
wrong non-local conversion).
"""
import collections
import contextlib
import pickle

import numpy as np

import tests.ptv  # noqa: F401  (makes pytorchvideo.models importable; skips when torch is missing)
import torch
import torch.nn as nn
import torch.nn.functional as F

BN_EPS = 1e-5
NL_KEY_GAIN = 0.1  # variance gain of the theta/phi projections


# ----------------------------------------------------------------------------------------------------------------
# Architecture helpers shared with the Keras side of the tests
# ----------------------------------------------------------------------------------------------------------------
def i3d_temporal_kernels(depths):
    """The official I3D pattern for any depth: res2 all inflated; res3/res4 alternate from inflated; res5 [1,3,1..]."""
    kernels = []
    for s, depth in enumerate(depths):
        if s == 0:
            kernels.append([3] * depth)
        elif s == len(depths) - 1:
            kernels.append([1 if i % 2 == 0 else 3 for i in range(depth)])
        else:
            kernels.append([3 if i % 2 == 0 else 1 for i in range(depth)])
    return kernels


def c2d_temporal_kernels(depths):
    return [[1] * d for d in depths]


def _bn_stats(generator, c, gamma=(0.6, 1.4)):
    return {
        "s": torch.empty(c).uniform_(*gamma, generator=generator),
        "b": torch.randn(c, generator=generator) * 0.1,
        "rm": torch.randn(c, generator=generator) * 0.1,
        "riv": torch.empty(c).uniform_(0.6, 1.6, generator=generator),
    }


def _perturbed_stats(y, generator):
    """Per-channel (mean, var) of an NCTHW batch, perturbed: statistics like a real model's, but not exact.

    The variance gets a floor of 10% of the average second moment of the layer: a non-local block's output varies
    little within one clip (it is a weighted mean over all positions), and dividing by that tiny within-clip
    spread would amplify float32 rounding far beyond the tolerance. Trained models see the spread across clips.
    """
    mean, var = y.mean(dim=(0, 2, 3, 4)), y.var(dim=(0, 2, 3, 4), unbiased=False)
    floor = 0.1 * (var + mean**2).mean()
    mean = mean + 0.2 * var.sqrt() * torch.randn(mean.shape, generator=generator)
    var = (var + floor) * torch.empty(var.shape).uniform_(0.6, 1.6, generator=generator) + 1e-3
    return mean, var


@torch.no_grad()
def calibrate_bn_(module, x, seed):
    """Sets every BatchNorm's running statistics to (perturbed) statistics of the data `x` flowing through it.

    Random weights with made-up running statistics let activations grow by orders of magnitude over the depth;
    then float32 rounding alone exceeds the 1e-4 tolerance. Real checkpoints have calibrated statistics.
    """
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm3d)]
    hooks = []

    def calibrate(m, inputs):
        mean, var = _perturbed_stats(inputs[0], g)
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)

    for m in norms:
        hooks.append(m.register_forward_pre_hook(calibrate))
    module.eval()
    module(torch.as_tensor(x))
    for hook in hooks:
        hook.remove()
    return module


def randomize_(module, seed, calibration=None, bn_gamma=(0.6, 1.4)):
    """Random non-trivial weights for every conv, linear and BatchNorm of a torch module (in place).

    With `calibration` (an NCTHW batch), the BatchNorm running statistics are then set from that data
    (`calibrate_bn_`), as in a trained model. `bn_gamma` is the range of the BatchNorm scales, which sets the
    size of the activations.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in module.named_modules():
            if isinstance(m, (nn.Conv3d, nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                # Non-local query/key projections get a smaller scale so that the softmax does not saturate
                # (a saturated softmax turns float32 rounding into differences beyond the test tolerance).
                gain = NL_KEY_GAIN if any(p in name for p in ("theta", "phi")) else 2.0
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (gain / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm3d):
                stats = _bn_stats(g, m.num_features, bn_gamma)
                m.weight.copy_(stats["s"])
                m.bias.copy_(stats["b"])
                m.running_mean.copy_(stats["rm"])
                m.running_var.copy_(stats["riv"])
                m.num_batches_tracked.fill_(1234)
    module.eval()
    if calibration is not None:
        calibrate_bn_(module, calibration, seed + 1)
    return module


# ----------------------------------------------------------------------------------------------------------------
# Official Caffe2 network, op by op on named blobs
# ----------------------------------------------------------------------------------------------------------------
def official_config(**overrides):
    """Arguments of the official network. Defaults: I3D R50 NL5 in the "paper" geometry (32x2 files)."""
    cfg = {
        "stem_width": 64,
        "conv1_kt": 5,
        "conv1_ts": 2,
        "pool1_kernel": (2, 3, 3),
        "pool1_stride": (2, 2, 2),
        "depths": [3, 4, 6, 3],
        "widths": [64, 128, 256, 512],
        "temporal_kernels": i3d_temporal_kernels([3, 4, 6, 3]),
        "nonlocal_blocks": [[], [1, 3], [1, 3, 5], []],
        "nonlocal_groups": [None, None, None, None],
        "nonlocal_softmax": True,
        "nonlocal_bn": True,
        "affine": False,
        "classes": 400,
    }
    unknown = set(overrides) - set(cfg)
    assert not unknown, unknown
    cfg.update(overrides)
    return cfg


def official_blobs(cfg, seed, calibration=None):
    """Random blobs with the official names and Caffe2 shapes, in network order (numpy float32).

    With `calibration` (an NCTHW batch), the BN statistics are set from that data (see `official_forward`).
    """
    g = torch.Generator().manual_seed(seed)
    blobs = collections.OrderedDict()

    def conv(name, shape, gain=2.0):
        fan_in = int(np.prod(shape[1:]))
        blobs[name] = torch.randn(shape, generator=g) * (gain / fan_in) ** 0.5

    def bn(prefix, c):
        stats = _bn_stats(g, c)
        for key in ("s", "b") if cfg["affine"] else ("s", "b", "rm", "riv"):
            blobs[f"{prefix}_{key}"] = stats[key]

    conv("conv1_w", (cfg["stem_width"], 3, cfg["conv1_kt"], 7, 7))
    bn("res_conv1_bn", cfg["stem_width"])
    dim_in = cfg["stem_width"]
    for s, depth in enumerate(cfg["depths"]):
        inner, out, stage = cfg["widths"][s], cfg["widths"][s] * 4, s + 2
        stride = 1 if s == 0 else 2
        for i in range(depth):
            p = f"res{stage}_{i}"
            if dim_in != out or (i == 0 and stride != 1):
                conv(f"{p}_branch1_w", (out, dim_in, 1, 1, 1))
                bn(f"{p}_branch1_bn", out)
            conv(f"{p}_branch2a_w", (inner, dim_in, cfg["temporal_kernels"][s][i], 1, 1))
            bn(f"{p}_branch2a_bn", inner)
            conv(f"{p}_branch2b_w", (inner, inner, 1, 3, 3))
            bn(f"{p}_branch2b_bn", inner)
            conv(f"{p}_branch2c_w", (out, inner, 1, 1, 1))
            bn(f"{p}_branch2c_bn", out)
            dim_in = out
            if i in cfg["nonlocal_blocks"][s]:
                n, d = f"nonlocal_conv{stage}_{i}", out // 2
                for part in ("theta", "phi", "g"):
                    conv(f"{n}_{part}_w", (d, out, 1, 1, 1), gain=NL_KEY_GAIN if part != "g" else 2.0)
                    blobs[f"{n}_{part}_b"] = torch.randn(d, generator=g) * 0.1
                conv(f"{n}_out_w", (out, d, 1, 1, 1))
                blobs[f"{n}_out_b"] = torch.randn(out, generator=g) * 0.1
                if cfg["nonlocal_bn"]:
                    stats = _bn_stats(g, out)
                    for key in ("s", "b", "rm", "riv"):
                        blobs[f"{n}_bn_{key}"] = stats[key]
    blobs["pred_w"] = torch.randn((cfg["classes"], dim_in), generator=g) * (1.0 / dim_in) ** 0.5
    blobs["pred_b"] = torch.randn(cfg["classes"], generator=g) * 0.1
    blobs = collections.OrderedDict((k, v.numpy().astype(np.float32)) for k, v in blobs.items())
    if calibration is not None:
        official_forward(blobs, calibration, cfg, calibrate_seed=seed + 1)
    return blobs


def _official_nonlocal(x, w, n, cfg, group, bn):
    """`nonlocal_helper.add_nonlocal_group` + `spacetime_nonlocal` (NCTHW)."""
    N, C, T, H, W = x.shape
    if group is not None and T // group > 1:
        # (N, C, T, H, W) -> (N, T, C, H, W) -> (N * T/G, G, C, H, W) -> (N * T/G, C, G, H, W)
        x = x.permute(0, 2, 1, 3, 4).reshape(N * (T // group), group, C, H, W).permute(0, 2, 1, 3, 4)
    b = x.shape[0]
    theta = F.conv3d(x, w[f"{n}_theta_w"], w[f"{n}_theta_b"])
    pooled = F.max_pool3d(x, kernel_size=(1, 2, 2), stride=(1, 2, 2))  # Caffe2 MaxPool, pads 0
    phi = F.conv3d(pooled, w[f"{n}_phi_w"], w[f"{n}_phi_b"])
    g = F.conv3d(pooled, w[f"{n}_g_w"], w[f"{n}_g_b"])
    d = theta.shape[1]
    theta, phi, g = theta.reshape(b, d, -1), phi.reshape(b, d, -1), g.reshape(b, d, -1)
    affinity = torch.einsum("ndi,ndj->nij", theta, phi)  # BatchMatMul(theta, phi, trans_a=1)
    if cfg["nonlocal_softmax"]:
        affinity = torch.softmax(affinity * d**-0.5, dim=2)
    else:
        affinity = affinity / phi.shape[2]
    t = torch.einsum("nij,ndj->ndi", affinity, g).reshape(b, d, *x.shape[2:])  # BatchMatMul(g, p, trans_b=1)
    out = F.conv3d(t, w[f"{n}_out_w"], w[f"{n}_out_b"])
    if cfg["nonlocal_bn"]:
        out = bn(out, f"{n}_bn")
    y = x + out
    if group is not None and T // group > 1:
        y = y.permute(0, 2, 1, 3, 4).reshape(N, T, C, H, W).permute(0, 2, 1, 3, 4)
    return y


@torch.no_grad()
def official_forward(blobs, x, cfg, *, calibrate_seed=None):
    """Logits of the official network (test mode, pool5 over the whole res5 map) for an NCTHW clip batch.

    With `calibrate_seed`, every BN's `_rm`/`_riv` (or, for AffineNd, `_s`/`_b` folded from them) is first set in
    `blobs` from perturbed statistics of the data reaching it (see `calibrate_bn_`).
    """
    w = {k: torch.from_numpy(np.array(v)) for k, v in blobs.items()}
    x = torch.as_tensor(x)
    generator = None if calibrate_seed is None else torch.Generator().manual_seed(calibrate_seed)

    def norm(y, p):
        if generator is not None:
            mean, var = _perturbed_stats(y, generator)
            if cfg["affine"]:  # fold a BN with these statistics into the affine transform
                scale = w[f"{p}_s"] / torch.sqrt(var + BN_EPS)
                w[f"{p}_b"] = w[f"{p}_b"] - mean * scale
                w[f"{p}_s"] = scale
            else:
                w[f"{p}_rm"], w[f"{p}_riv"] = mean, var
            for key in ("s", "b", "rm", "riv"):
                if f"{p}_{key}" in blobs:
                    blobs[f"{p}_{key}"] = w[f"{p}_{key}"].numpy().astype(np.float32)
        if cfg["affine"]:  # AffineNd: y * s + b
            return y * w[f"{p}_s"].view(1, -1, 1, 1, 1) + w[f"{p}_b"].view(1, -1, 1, 1, 1)
        return F.batch_norm(y, w[f"{p}_rm"], w[f"{p}_riv"], w[f"{p}_s"], w[f"{p}_b"], False, 0.0, BN_EPS)

    kt = cfg["conv1_kt"]
    y = F.conv3d(x, w["conv1_w"], stride=(cfg["conv1_ts"], 2, 2), padding=(kt // 2, 3, 3))
    y = F.relu(norm(y, "res_conv1_bn"))
    y = F.max_pool3d(y, kernel_size=cfg["pool1_kernel"], stride=cfg["pool1_stride"])
    for s, depth in enumerate(cfg["depths"]):
        stage = s + 2
        for i in range(depth):
            p = f"res{stage}_{i}"
            stride = 2 if (s > 0 and i == 0) else 1
            if f"{p}_branch1_w" in w:
                shortcut = norm(F.conv3d(y, w[f"{p}_branch1_w"], stride=(1, stride, stride)), f"{p}_branch1_bn")
            else:
                shortcut = y
            k = cfg["temporal_kernels"][s][i]
            t = F.relu(norm(F.conv3d(y, w[f"{p}_branch2a_w"], padding=(k // 2, 0, 0)), f"{p}_branch2a_bn"))
            t = F.conv3d(t, w[f"{p}_branch2b_w"], stride=(1, stride, stride), padding=(0, 1, 1))
            t = F.relu(norm(t, f"{p}_branch2b_bn"))
            t = norm(F.conv3d(t, w[f"{p}_branch2c_w"]), f"{p}_branch2c_bn")
            y = F.relu(t + shortcut)
            if i in cfg["nonlocal_blocks"][s]:
                y = _official_nonlocal(y, w, f"nonlocal_conv{stage}_{i}", cfg, cfg["nonlocal_groups"][s], norm)
        if s == 0:
            y = F.max_pool3d(y, kernel_size=(2, 1, 1), stride=(2, 1, 1))  # pool2
    y = y.mean(dim=(2, 3, 4))
    return F.linear(y, w["pred_w"], w["pred_b"])


def save_caffe2_pickle(path, blobs, *, solver_state=False):
    """`pickle.dump(dict(blobs=...), protocol=2)` like `lib/utils/checkpoints.py`; optionally with solver blobs."""
    blobs = collections.OrderedDict(blobs)
    if solver_state:
        for name in list(blobs):
            blobs[f"{name}_momentum"] = np.zeros_like(blobs[name])
        blobs["lr"] = np.array([0.01], np.float32)
        blobs["model_iter"] = np.array([400000], np.int64)
    with open(path, "wb") as f:
        pickle.dump({"blobs": dict(blobs)}, f, protocol=2)
    return path


# ----------------------------------------------------------------------------------------------------------------
# pytorchvideo create_resnet (+ NonLocal), written as PySlowFast / Caffe2 / pytorchvideo checkpoints
# ----------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _stage_depths(depths):
    from pytorchvideo.models import resnet

    key = 10_000 + len(resnet._MODEL_STAGE_DEPTH)
    resnet._MODEL_STAGE_DEPTH[key] = tuple(depths)
    try:
        yield key
    finally:
        del resnet._MODEL_STAGE_DEPTH[key]


def ptv_resnet(*, depths=(3, 4, 6, 3), stem_width=64, conv1_kt=5, temporal_kernels=None, pool2=True,
               head_pool=(4, 7, 7), nonlocal_blocks=([], [], [], []), nonlocal_pool=(1, 2, 2), classes=400, seed=0,
               calibration=None):
    """pytorchvideo `create_resnet` with pytorchvideo `create_nonlocal` blocks after the given residual blocks."""
    from pytorchvideo.layers.nonlocal_net import create_nonlocal
    from pytorchvideo.models import resnet

    depths = list(depths)
    temporal_kernels = temporal_kernels or i3d_temporal_kernels(depths)
    conv_a = tuple([(k, 1, 1) for k in stage] for stage in temporal_kernels)
    with _stage_depths(depths) as key:
        net = resnet.create_resnet(
            model_depth=key,
            model_num_class=classes,
            stem_dim_out=stem_width,
            stem_conv_kernel_size=(conv1_kt, 7, 7),
            stage1_pool=nn.MaxPool3d if pool2 else None,
            stage_conv_a_kernel_size=conv_a,
            head_pool_kernel_size=tuple(head_pool),
        )
    stages = [b for b in net.blocks if isinstance(b, resnet.ResStage)]
    for s, stage in enumerate(stages):
        for i in nonlocal_blocks[s]:
            dim = stage.res_blocks[i].branch2.conv_c.out_channels
            block = create_nonlocal(dim_in=dim, dim_inner=dim // 2, pool_size=nonlocal_pool, instantiation="softmax")
            stage.res_blocks[i] = nn.Sequential(stage.res_blocks[i], block)
    return randomize_(net, seed, calibration)


def _ptv_parts(net):
    """(name parts, tensor) for every tensor of a `ptv_resnet`: ("stem", ...), ("res", s, i, ...), ("nl", s, i, ...)."""
    from pytorchvideo.models import resnet

    def bn(module):
        return [("weight", module.weight), ("bias", module.bias), ("running_mean", module.running_mean),
                ("running_var", module.running_var), ("num_batches_tracked", module.num_batches_tracked)]

    stem = net.blocks[0]
    yield ("conv1", "weight"), stem.conv.weight
    for key, t in bn(stem.norm):
        yield ("conv1_bn", key), t
    stages = [b for b in net.blocks if isinstance(b, resnet.ResStage)]
    for s, stage in enumerate(stages):
        for i, block in enumerate(stage.res_blocks):
            nl = None
            if isinstance(block, nn.Sequential):
                block, nl = block[0], block[1]
            if block.branch1_conv is not None:
                yield ("res", s + 2, i, "branch1", "weight"), block.branch1_conv.weight
                for key, t in bn(block.branch1_norm):
                    yield ("res", s + 2, i, "branch1_bn", key), t
            for part in "abc":
                yield ("res", s + 2, i, part, "weight"), getattr(block.branch2, f"conv_{part}").weight
                for key, t in bn(getattr(block.branch2, f"norm_{part}")):
                    yield ("res", s + 2, i, f"{part}_bn", key), t
            if nl is not None:
                for part in ("theta", "phi", "g", "out"):
                    conv = getattr(nl, f"conv_{part}")
                    yield ("nl", s + 2, i, part, "weight"), conv.weight
                    yield ("nl", s + 2, i, part, "bias"), conv.bias
                for key, t in bn(nl.norm):
                    yield ("nl", s + 2, i, "bn", key), t
    head = net.blocks[-1]
    yield ("pred", "weight"), head.proj.weight
    yield ("pred", "bias"), head.proj.bias


_C2_BN = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}


def ptv_to_pyslowfast_state(net):
    """The PySlowFast `state_dict` names (`slowfast/models/*`) for a `ptv_resnet`, incl. `num_batches_tracked`."""
    state = collections.OrderedDict()
    for parts, tensor in _ptv_parts(net):
        if parts[0] == "conv1":
            name = "s1.pathway0_stem.conv.weight"
        elif parts[0] == "conv1_bn":
            name = f"s1.pathway0_stem.bn.{parts[1]}"
        elif parts[0] == "res":
            _, s, i, part, key = parts
            module = {"branch1": "branch1", "branch1_bn": "branch1_bn"}.get(part, f"branch2.{part}")
            name = f"s{s}.pathway0_res{i}.{module}.{key}"
        elif parts[0] == "nl":
            _, s, i, part, key = parts
            name = f"s{s}.pathway0_nonlocal{i}.{'bn' if part == 'bn' else 'conv_' + part}.{key}"
        else:
            name = f"head.projection.{parts[1]}"
        state[name] = tensor.detach().clone()
    return state


def ptv_to_caffe2_blobs(net):
    """The official Caffe2 blob names (as in PySlowFast's Caffe2 `.pkl` files) for a `ptv_resnet`."""
    blobs = collections.OrderedDict()
    for parts, tensor in _ptv_parts(net):
        key = parts[-1]
        if key == "num_batches_tracked":
            continue
        if parts[0] == "conv1":
            name = "conv1_w"
        elif parts[0] == "conv1_bn":
            name = f"res_conv1_bn_{_C2_BN[key]}"
        elif parts[0] == "res":
            _, s, i, part, key = parts
            part = {"branch1": "branch1", "branch1_bn": "branch1_bn"}.get(part, f"branch2{part}")
            name = f"res{s}_{i}_{part}_" + (_C2_BN[key] if part.endswith("_bn") else "w")
        elif parts[0] == "nl":
            _, s, i, part, key = parts
            suffix = _C2_BN[key] if part == "bn" else {"weight": "w", "bias": "b"}[key]
            name = f"nonlocal_conv{s}_{i}_{part}_{suffix}"
        else:
            name = f"pred_{'w' if key == 'weight' else 'b'}"
        blobs[name] = tensor.detach().numpy().astype(np.float32).copy()
    return blobs


# ----------------------------------------------------------------------------------------------------------------
# mmaction2 Recognizer3D(ResNet3d + mmcv NonLocal3d, I3DHead)
# ----------------------------------------------------------------------------------------------------------------
class ConvModule(nn.Module):
    """mmcv `ConvModule`: `conv` -> `bn` (BN3d, abbreviation "bn") -> ReLU; `bias='auto'` = no bias with a norm."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, *, norm=True, act=True, bias=None, conv=nn.Conv3d):
        super().__init__()
        bias = (not norm) if bias is None else bias
        self.conv = conv(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
        if norm:
            self.bn = nn.BatchNorm3d(cout)
        self.act = nn.ReLU() if act else None

    def forward(self, x):
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return self.act(x) if self.act is not None else x


class NonLocal3d(nn.Module):
    """mmcv `NonLocal3d(in_channels, sub_sample, use_scale, norm_cfg=BN3d, mode)` (`mmcv/cnn/bricks/non_local.py`)."""

    def __init__(self, channels, *, mode="embedded_gaussian", sub_sample=True, use_scale=False):
        super().__init__()
        self.mode, self.use_scale, self.sub_sample = mode, use_scale, sub_sample
        self.in_channels, self.inter_channels = channels, max(channels // 2, 1)
        self.g = ConvModule(channels, self.inter_channels, 1, norm=False, act=False)
        self.conv_out = ConvModule(self.inter_channels, channels, 1, norm=True, act=False)
        if mode != "gaussian":
            self.theta = ConvModule(channels, self.inter_channels, 1, norm=False, act=False)
            self.phi = ConvModule(channels, self.inter_channels, 1, norm=False, act=False)
        if mode == "concatenation":
            self.concat_project = ConvModule(2 * self.inter_channels, 1, 1, norm=False, act=True, bias=False,
                                             conv=nn.Conv2d)
        if sub_sample:
            pool = nn.MaxPool3d(kernel_size=(1, 2, 2))
            self.g = nn.Sequential(self.g, pool)
            self.phi = nn.Sequential(self.phi, pool) if mode != "gaussian" else pool

    def pairwise(self, theta_x, phi_x):
        if self.mode == "concatenation":
            h, w = theta_x.size(2), phi_x.size(3)
            feature = torch.cat([theta_x.repeat(1, 1, 1, w), phi_x.repeat(1, 1, h, 1)], dim=1)
            weight = self.concat_project(feature)
            n, _, h, w = weight.size()
            weight = weight.view(n, h, w)
            return weight / weight.shape[-1]
        weight = torch.matmul(theta_x, phi_x)
        if self.mode == "dot_product":
            return weight / weight.shape[-1]
        if self.mode == "embedded_gaussian" and self.use_scale:
            weight = weight / theta_x.shape[-1] ** 0.5
        return weight.softmax(dim=-1)

    def forward(self, x):
        n = x.size(0)
        g_x = self.g(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
        if self.mode == "gaussian":
            theta_x = x.view(n, self.in_channels, -1).permute(0, 2, 1)
            phi_x = (self.phi(x) if self.sub_sample else x).view(n, self.in_channels, -1)
        elif self.mode == "concatenation":
            theta_x = self.theta(x).view(n, self.inter_channels, -1, 1)
            phi_x = self.phi(x).view(n, self.inter_channels, 1, -1)
        else:
            theta_x = self.theta(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
            phi_x = self.phi(x).view(n, self.inter_channels, -1)
        y = torch.matmul(self.pairwise(theta_x, phi_x), g_x)
        y = y.permute(0, 2, 1).contiguous().reshape(n, self.inter_channels, *x.size()[2:])
        return x + self.conv_out(y)


class Bottleneck3d(nn.Module):
    """mmaction2 `Bottleneck3d`, style 'pytorch' (stride on conv2), inflate_style '3x1x1'."""

    def __init__(self, inplanes, planes, *, spatial_stride, inflate, downsample, non_local, nonlocal_mode):
        super().__init__()
        kernel, pad = ((3, 1, 1), (1, 0, 0)) if inflate else ((1, 1, 1), (0, 0, 0))
        self.conv1 = ConvModule(inplanes, planes, kernel, padding=pad)
        self.conv2 = ConvModule(planes, planes, (1, 3, 3), stride=(1, spatial_stride, spatial_stride),
                                padding=(0, 1, 1))
        self.conv3 = ConvModule(planes, planes * 4, 1, act=False)
        self.downsample = downsample
        self.relu = nn.ReLU()
        if non_local:
            self.non_local_block = NonLocal3d(planes * 4, mode=nonlocal_mode)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)
        return self.non_local_block(out) if hasattr(self, "non_local_block") else out


class ResNet3d(nn.Module):
    """mmaction2 `ResNet3d` as configured by `configs/_base_/models/i3d_r50.py` (conv1 5x7x7 stride 2, pool1 stride 2)."""

    def __init__(self, *, depths, base_channels, inflate, non_local, nonlocal_mode):
        super().__init__()
        self.conv1 = ConvModule(3, base_channels, (5, 7, 7), stride=(2, 2, 2), padding=(2, 3, 3))
        self.maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(2, 2, 2), padding=(0, 1, 1))
        self.pool2 = nn.MaxPool3d(kernel_size=(2, 1, 1), stride=(2, 1, 1))
        inplanes = base_channels
        self.res_layers = []
        for i, depth in enumerate(depths):
            planes, stride = base_channels * 2**i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * 4:
                downsample = ConvModule(inplanes, planes * 4, 1, stride=(1, stride, stride), act=False)
            blocks = []
            for b in range(depth):
                blocks.append(Bottleneck3d(inplanes, planes, spatial_stride=stride if b == 0 else 1,
                                           inflate=inflate[i][b] == 1, downsample=downsample if b == 0 else None,
                                           non_local=non_local[i][b] == 1, nonlocal_mode=nonlocal_mode))
                inplanes = planes * 4
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.res_layers.append(f"layer{i + 1}")

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i == 0:
                x = self.pool2(x)
        return x


class I3DHead(nn.Module):
    def __init__(self, channels, classes):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.dropout = nn.Dropout(0.5)
        self.fc_cls = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc_cls(self.dropout(self.avg_pool(x)).flatten(1))


class MMRecognizer3D(nn.Module):
    """`Recognizer3D(backbone=ResNet3d, cls_head=I3DHead)`: `state_dict()` gives mmaction2's key names."""

    def __init__(self, *, depths=(3, 4, 6, 3), base_channels=64, inflate=None, nonlocal_blocks=([], [], [], []),
                 nonlocal_mode="embedded_gaussian", classes=400, seed=0, calibration=None, bn_gamma=(0.6, 1.4)):
        super().__init__()
        depths = list(depths)
        inflate = inflate or [[1 if k == 3 else 0 for k in stage] for stage in i3d_temporal_kernels(depths)]
        non_local = [[1 if b in nonlocal_blocks[s] else 0 for b in range(d)] for s, d in enumerate(depths)]
        self.backbone = ResNet3d(depths=depths, base_channels=base_channels, inflate=inflate, non_local=non_local,
                                 nonlocal_mode=nonlocal_mode)
        self.cls_head = I3DHead(base_channels * 2 ** (len(depths) - 1) * 4, classes)
        randomize_(self, seed, bn_gamma=bn_gamma)
        with torch.no_grad():
            # mmaction2's blocks do not scale the logits by d**-0.5: shrink theta and phi by d**-0.25 each so that
            # the softmax is as far from saturation as in the scaled (official) flavour.
            for m in self.modules():
                if isinstance(m, NonLocal3d) and m.mode != "gaussian":
                    for proj in (m.theta, m.phi[0] if isinstance(m.phi, nn.Sequential) else m.phi):
                        proj.conv.weight.mul_(m.inter_channels**-0.25)
        if calibration is not None:
            calibrate_bn_(self, calibration, seed + 1)

    def forward(self, x):
        return self.cls_head(self.backbone(x))


def save_torch_checkpoint(path, state, *, wrapper):
    """`torch.save({wrapper: state, ...})` the way each code base publishes (`model_state` / `state_dict`)."""
    state = collections.OrderedDict((k, v.detach().clone()) for k, v in state.items())
    payload = {wrapper: state}
    if wrapper == "state_dict":
        payload["meta"] = {"mmaction_version": "1.0.0", "epoch": 100}
    else:
        payload["epoch"] = 196
    torch.save(payload, path)
    return path


@torch.no_grad()
def torch_logits(net, x):
    net.eval()
    return net(torch.from_numpy(x)).numpy()


# ----------------------------------------------------------------------------------------------------------------
# Keras side
# ----------------------------------------------------------------------------------------------------------------
def tiny_overrides(*, depths, stem_width, temporal_kernels, nonlocal_blocks, **extra):
    """`create_model` architecture overrides for a reduced network (widths double per stage from `stem_width`)."""
    return {
        "stage_depths": list(depths),
        "stem_width": stem_width,
        "stage_widths": [stem_width * 2**s for s in range(len(depths))],
        "temporal_kernels": [list(k) for k in temporal_kernels],
        "nonlocal_blocks": [list(b) for b in nonlocal_blocks],
        **extra,
    }


def random_clips(shape, seed=0):
    """Random NCTHW clips (float32)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def keras_logits(model, x_ncthw):
    import keras

    x = np.ascontiguousarray(np.transpose(x_ncthw, (0, 2, 3, 4, 1)))  # NCTHW -> NTHWC
    return keras.ops.convert_to_numpy(model(x, training=False))


def assert_logits_match(actual, expected, rtol=1e-4):
    """max |diff| <= rtol * max |expected|, and the same top-1 class for every clip."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = np.abs(expected).max()
    diff = np.abs(actual - expected).max()
    assert diff <= rtol * scale, f"max |diff| {diff:.3g} > {rtol} x max |logit| {scale:.3g}"
    np.testing.assert_array_equal(actual.argmax(-1), expected.argmax(-1))
    return diff / scale
