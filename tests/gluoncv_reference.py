"""An independent PyTorch transcription of gluon-cv's I3D(-NL) ResNet-50/101 (`research/gluoncv.md` §2-3).

Written from the semantics of dmlc/gluon-cv `gluoncv/torch/model_zoo/action_recognition/i3d_resnet.py`
(`I3D_ResNetV1`, `Bottleneck`, `make_res_layer`) and `non_local.py` (`NonLocal`, embedded Gaussian), with gluon-cv's
module names and registration order, so `state_dict()` has exactly the keys of the published `.pth` files,
including the aliases `nonlocal_block.W_bn.{0,1}.*` (`W_bn = Sequential(W, bn)`) and `head.1.*`
(`head = Sequential(dp, fc)`). Nothing here is derived from nonlocal_zoo: the per-model tables below are literal
copies of the `inflate_freq` / `nonlocal_freq` arguments of gluon-cv's model functions.

Layout NCTHW, as in gluon-cv. The model outputs logits.
"""
import torch
from torch import nn
from torch.nn import functional as F

# gluon-cv model functions (`i3d_nl{5,10}_resnet{50,101}_v1_kinetics400`): depth, inflate_freq, nonlocal_freq.
_R101_INFLATE = tuple(1 - i % 2 for i in range(23))  # (1, 0, 1, 0, ..., 1)
GLUONCV_MODELS = {
    "i3d_nl5_resnet50_v1_kinetics400": dict(
        depth=50,
        inflate_freq=((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0)),
        nonlocal_freq=((0, 0, 0), (0, 1, 0, 1), (0, 1, 0, 1, 0, 1), (0, 0, 0)),
    ),
    "i3d_nl10_resnet50_v1_kinetics400": dict(
        depth=50,
        inflate_freq=((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0)),
        nonlocal_freq=((0, 0, 0), (1, 1, 1, 1), (1, 1, 1, 1, 1, 1), (0, 0, 0)),
    ),
    "i3d_nl5_resnet101_v1_kinetics400": dict(
        depth=101,
        inflate_freq=((1, 1, 1), (1, 0, 1, 0), _R101_INFLATE, (0, 1, 0)),
        nonlocal_freq=((0, 0, 0), (0, 1, 0, 1),
                       (0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0), (0, 0, 0)),
    ),
    "i3d_nl10_resnet101_v1_kinetics400": dict(
        depth=101,
        inflate_freq=((1, 1, 1), (1, 0, 1, 0), _R101_INFLATE, (0, 1, 0)),
        nonlocal_freq=((0, 0, 0), (1, 1, 1, 1),
                       (0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1), (0, 0, 0)),
    ),
}
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class NonLocal(nn.Module):
    """gluon-cv `NonLocal(nonlocal_type="gaussian")`: embedded Gaussian, biased 1x1x1 projections to C/2, no
    subsampling, softmax of theta^T phi * (C/2)^-0.5 over the keys, z = BN(W(y)) + x."""

    def __init__(self, in_channels):
        super().__init__()
        self.embed_dim = in_channels // 2
        self.theta = nn.Conv3d(in_channels, self.embed_dim, kernel_size=1)
        self.phi = nn.Conv3d(in_channels, self.embed_dim, kernel_size=1)
        self.g = nn.Conv3d(in_channels, self.embed_dim, kernel_size=1)
        self.W = nn.Conv3d(self.embed_dim, in_channels, kernel_size=1)
        self.bn = nn.BatchNorm3d(in_channels, momentum=0.9)
        self.W_bn = nn.Sequential(self.W, self.bn)  # registers W and bn a second time: the W_bn.* key aliases

    def forward(self, x):
        b, _, t, h, w = x.shape
        theta = self.theta(x).reshape(b, self.embed_dim, -1)  # (B, C/2, N)
        phi = self.phi(x).reshape(b, self.embed_dim, -1)  # (B, C/2, N)
        g = self.g(x).reshape(b, self.embed_dim, -1)  # (B, C/2, N)
        affinity = torch.einsum("bci,bcj->bij", theta, phi) * self.embed_dim ** -0.5  # (B, N queries, N keys)
        attention = F.softmax(affinity, dim=-1)
        y = torch.einsum("bcj,bij->bci", g, attention).reshape(b, self.embed_dim, t, h, w)  # (B, C/2, T, H, W)
        return self.W_bn(y) + x


class Bottleneck(nn.Module):
    """gluon-cv `Bottleneck` with `inflate_style='3x1x1'`: conv1 3x1x1 (pad 1,0,0) when inflated, else 1x1x1;
    conv2 1x3x3 with the spatial stride; conv3 1x1x1; projection shortcut `downsample`; NL after the final ReLU."""

    expansion = 4

    def __init__(self, inplanes, planes, spatial_stride, inflate, nonlocal_, downsample):
        super().__init__()
        if inflate:
            self.conv1 = nn.Conv3d(inplanes, planes, (3, 1, 1), stride=1, padding=(1, 0, 0), bias=False)
        else:
            self.conv1 = nn.Conv3d(inplanes, planes, 1, stride=1, bias=False)
        self.conv2 = nn.Conv3d(planes, planes, (1, 3, 3), stride=(1, spatial_stride, spatial_stride),
                               padding=(0, 1, 1), bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.downsample = downsample
        self.nonlocal_block = NonLocal(planes * self.expansion) if nonlocal_ else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(out + identity)
        if self.nonlocal_block is not None:
            out = self.nonlocal_block(out)
        return out


class I3DResNetV1(nn.Module):
    """gluon-cv `I3D_ResNetV1` at its defaults (conv1 5x7x7 stride (2,2,2) pad (2,3,3); pool1 max (1,3,3) stride
    (2,2,2) pad (0,1,1); pool2 max (2,1,1) after res2; spatial strides (1,2,2,2); head: global average, dropout 0.5,
    fc). Module names as in gluon-cv: `first_stage`, `pool2`, `res_layers`, `st_avg`, `dp`, `fc`, `head`."""

    def __init__(self, *, depth, inflate_freq, nonlocal_freq, num_classes=400, spatial_strides=(1, 2, 2, 2)):
        super().__init__()
        self.first_stage = nn.Sequential(
            nn.Conv3d(3, 64, (5, 7, 7), stride=(2, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(64),
            nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(2, 2, 2), padding=(0, 1, 1)),
        )
        self.pool2 = nn.MaxPool3d(kernel_size=(2, 1, 1), stride=(2, 1, 1))
        inplanes, stages = 64, []
        for s, num_blocks in enumerate(STAGE_BLOCKS[depth]):
            planes = 64 * 2 ** s
            blocks = []
            for i in range(num_blocks):
                stride = spatial_strides[s] if i == 0 else 1
                downsample = None
                if i == 0 and (stride != 1 or inplanes != planes * Bottleneck.expansion):
                    downsample = nn.Sequential(
                        nn.Conv3d(inplanes, planes * Bottleneck.expansion, 1, stride=(1, stride, stride), bias=False),
                        nn.BatchNorm3d(planes * Bottleneck.expansion),
                    )
                blocks.append(Bottleneck(inplanes, planes, stride, inflate_freq[s][i] == 1,
                                         nonlocal_freq[s][i] == 1, downsample))
                inplanes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.res_layers = nn.Sequential(*stages)
        self.st_avg = nn.AdaptiveAvgPool3d(1)
        self.dp = nn.Dropout(0.5)
        self.fc = nn.Linear(inplanes, num_classes)
        self.head = nn.Sequential(self.dp, self.fc)  # registers fc a second time: the head.1.* key aliases

    def forward(self, x):
        x = self.first_stage(x)
        for i, stage in enumerate(self.res_layers):
            x = stage(x)
            if i == 0:
                x = self.pool2(x)
        x = self.st_avg(x).flatten(1)
        return self.head(x)


def build(name, num_classes=400):
    """The reference network of one gluon-cv model name (random PyTorch default initialisation)."""
    return I3DResNetV1(num_classes=num_classes, **GLUONCV_MODELS[name])


def count_parameters(model):
    """Distinct trainable parameters (`parameters()` visits an aliased module's tensors once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def randomize(model, clip, *, seed=0, affinity_std=2.0, logit_std=3.0, stat_noise=0.05, residual_gamma=(0.1, 0.4)):
    """Non-trivial random weights and BatchNorm statistics, at a well-conditioned scale.

    Convolutions get He-normal weights and N(0, 0.1) biases; every BN (the non-local BNs included) gets gamma in
    [0.5, 1.5] and beta N(0, 0.2). One train-mode forward pass on `clip` then
    - stores the batch statistics as running statistics (so activations keep a sane scale through 100+ layers),
    - rescales each non-local block's theta and phi so that their outputs on `clip` have unit variance, which gives
      affinities theta_i . phi_j / sqrt(C/2) of standard deviation about `affinity_std` (an attention that is
      neither uniform nor one-hot; untamed random projections give affinities in the thousands, a one-hot
      softmax whose float32 round-off alone moves the logits by percents),
    - makes `fc` blind to the batch's mean feature and rescales it so that the logits have standard deviation about
      `logit_std` (so clips differ in their top-1 class).
    Dropout is off in that pass, so the weights depend on `seed` alone. Afterwards the running statistics are
    perturbed (mean shifted by `stat_noise` sigma, variance scaled by [1 - 1.5 stat_noise, 1 + 2 stat_noise]) so that
    they are not the batch statistics. Leaves the model in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=gen) * std

    def uniform(shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=gen)

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv3d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(normal(module.weight.shape, (2.0 / fan_in) ** 0.5))
            if module.bias is not None:
                module.bias.copy_(normal(module.bias.shape, 0.1))
        elif isinstance(module, nn.BatchNorm3d):
            # The last BN of a residual branch (bn3, the non-local bn) gets a smaller gamma, as trained ResNets have.
            residual = name.endswith((".bn3", ".nonlocal_block.bn"))
            module.weight.copy_(uniform(module.weight.shape, *residual_gamma) if residual else
                                uniform(module.weight.shape, 0.5, 1.5))
            module.bias.copy_(normal(module.bias.shape, 0.2))
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one train-mode pass stores the batch statistics

    def unit_projections(block, inputs):
        for conv in (block.theta, block.phi):
            scale = F.conv3d(inputs[0], conv.weight, conv.bias).std() / affinity_std ** 0.5
            conv.weight.div_(scale)
            conv.bias.div_(scale)

    def scale_logits(fc, inputs):
        # Post-ReLU features share a large common part that would give every clip the same top-1 class: make each
        # class's weights orthogonal to the batch's mean feature (not a bias that cancels it: that would lose
        # float32 digits), then scale.
        mean = inputs[0].mean(0)
        fc.weight.sub_(torch.outer(fc.weight @ mean, mean) / mean.dot(mean))
        scale = F.linear(inputs[0], fc.weight, fc.bias).std() / logit_std
        fc.weight.div_(scale)
        fc.bias.div_(scale)

    hooks = [m.register_forward_pre_hook(unit_projections) for m in model.modules() if isinstance(m, NonLocal)]
    hooks.append(model.fc.register_forward_pre_hook(scale_logits))
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            # dropout would draw from torch's global RNG (whatever earlier tests left in it) and calibrate `fc` on
            # dropped features: the pass must depend on `seed` alone
            module.eval()
    model(clip)
    model.eval()
    for hook in hooks:
        hook.remove()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            std = module.running_var.sqrt()
            module.running_mean.add_(normal(std.shape, stat_noise) * std)
            module.running_var.mul_(uniform(std.shape, 1 - 1.5 * stat_noise, 1 + 2 * stat_noise))
            module.num_batches_tracked.fill_(1000)
    return model


def test_clips(batch, frames, height, width, *, seed=0):
    """Clips that differ in content (noise, moving gratings, colour blobs), so that random networks do not give
    every clip the same top-1 class. NCTHW float32, roughly zero-mean unit-variance."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(frames).view(1, frames, 1, 1).float()
    y = torch.arange(height).view(1, 1, height, 1).float()
    x = torch.arange(width).view(1, 1, 1, width).float()
    clips = []
    for b in range(batch):
        freq = torch.rand(3, 1, 1, 1, generator=gen) * 0.5 + 0.05
        phase = torch.rand(3, 1, 1, 1, generator=gen) * 6.3
        angle = torch.rand(1, generator=gen) * 3.1416
        grating = torch.sin(freq * (x * torch.cos(angle) + y * torch.sin(angle) + (b + 1) * t) + phase)
        colour = torch.randn(3, 1, 1, 1, generator=gen)
        noise = torch.randn(3, frames, height, width, generator=gen)
        weight = b / max(batch - 1, 1)
        clips.append(weight * grating * 1.5 + (1 - weight) * noise + colour)
    return torch.stack(clips)
