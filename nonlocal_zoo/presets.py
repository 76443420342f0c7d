"""The one registry of nonlocal_zoo: preset name -> architecture, weights source, preprocessing and metadata.

Each entry of `PRESETS` is a plain, JSON-able dict with four keys:

- `"arch"`: keyword arguments of `nonlocal_zoo.models.build_backbone` (stage depths, temporal kernel table, stem
  geometry, non-local placement and flavour, normalization). Sources: `research/architecture.md` §1-3 and
  `research/gluoncv.md` §2.
- `"weights"`: `None` (architecture only) or where the published checkpoint lives: `format` (`"caffe2_pkl"`,
  `"pyslowfast_pkl"`, `"pytorchvideo_pyth"`, `"mmaction2_pth"`, `"gluoncv_pth"`), `url`, `file_name`, the hashes that
  are known (`sha256`, `sha256_prefix`, `sha1`, `sha1_prefix`; `None` when unknown), `licence`, `source`.
- `"preprocessing"`: `num_frames`, `sampling_rate`, `mean` and `std` (per RGB channel, in the units of pixel values
  in `[0, scale]`, i.e. `x_normalized = (x - mean) / std` on 0-255 frames when `scale` is 255), `channel_order`,
  `train_crop`, `train_short_side_range`, `test_short_side`, `test_crop`, `test_num_clips`, `test_num_crops`,
  `sampling` (whose temporal sampling code defines the clips), `decode_size` (`[height, width]` every frame is
  first resized to, aspect ratio ignored, or `None`), `test_aggregation` (average `"softmax"`
  probabilities or raw `"logits"` over views) and `test_fully_convolutional` (the official per-location softmax head
  on the test crop, see `nonlocal_zoo.models.create_model(fully_convolutional=True)`).
- `"metadata"`: `description`, Kinetics-400 `top1`/`top5` as published (30-view testing; `None` when not
  published), `params` (trainable parameters, 400 classes), `macs` (multiply-accumulates of one test view:
  `num_frames x test_crop x test_crop`, analytic count of `nonlocal_zoo.models.flops`), `paper`, `licence`, `source`.

This module imports nothing else of nonlocal_zoo (it sits at the bottom of the layering).

Example:
    >>> from nonlocal_zoo.presets import get_preset, list_models
    >>> "i3d_nl5_r50_32x2_kinetics400" in list_models(pretrained=True)
    True
    >>> get_preset("i3d_nl5_r50_32x2_kinetics400")["preprocessing"]["num_frames"]
    32
"""
import copy
import difflib

# --------------------------------------------------------------------------------------------------------------------
# Architecture tables (architecture.md §1.1, §1.3; gluoncv.md §2)
# --------------------------------------------------------------------------------------------------------------------
STAGE_DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}

# Temporal kernel of conv "a" (the first 1x1 of each bottleneck), per block; 3 = inflated 3x1x1, 1 = 1x1x1.
# I3D: official `obtain_arc` (res2 all inflated, res3/res4 alternate starting inflated, res5 [0, 1, 0]).
I3D_TEMPORAL_KERNELS = {
    50: [[3, 3, 3], [3, 1, 3, 1], [3, 1, 3, 1, 3, 1], [1, 3, 1]],
    101: [[3, 3, 3], [3, 1, 3, 1], [3 if i % 2 == 0 else 1 for i in range(23)], [1, 3, 1]],
}
C2D_TEMPORAL_KERNELS = {depth: [[1] * n for n in blocks] for depth, blocks in STAGE_DEPTHS.items()}

# Non-local placement: block indices (0-based) per stage res2..res5; a block goes after that residual block.
NONLOCAL_PLACEMENTS = {
    # Official `res_stage_nonlocal` with LAYER_MOD=2 (R101: res4 mod 7) -> every released NL model.
    ("nl5", 50): [[], [1, 3], [1, 3, 5], []],
    ("nl5", 101): [[], [1, 3], [6, 13, 20], []],
    # Paper's 10-block model ("every residual block in res3 and res4"); gluon-cv's nl10 for R50.
    ("nl10", 50): [[], [0, 1, 2, 3], [0, 1, 2, 3, 4, 5], []],
    # gluon-cv nl10 R101 (`nonlocal_freq`): res3 all, res4 every 4th block from 2.
    ("nl10_gluoncv", 101): [[], [0, 1, 2, 3], [2, 6, 10, 14, 18, 22], []],
    (None, 50): [[], [], [], []],
    (None, 101): [[], [], [], []],
}

# Stem geometries: conv1 strides, pool1, pool2 (architecture.md §1.1, §1.5, §1.7; gluoncv.md §2).
GEOMETRIES = {
    # Official `resnet_video_org.py` (32x2, 128x1 files): conv1 t-stride 2, pool1 2x3x3 stride 2, unpadded (224 -> 55).
    "paper": {"conv1_strides": [2, 2, 2], "pool1_size": [2, 3, 3], "pool1_strides": [2, 2, 2],
              "pool1_padding": [0, 0, 0], "pool2_size": [2, 1, 1]},
    # Official `resnet_video.py` (8x8, 32x4 files): conv1 t-stride 1, pool1 1x3x3 stride (1, 2, 2), unpadded.
    "repo": {"conv1_strides": [1, 2, 2], "pool1_size": [1, 3, 3], "pool1_strides": [1, 2, 2],
             "pool1_padding": [0, 0, 0], "pool2_size": [2, 1, 1]},
    # PySlowFast / pytorchvideo: as "repo" but pool1 padded (0, 1, 1) (224 -> 56).
    "pyslowfast": {"conv1_strides": [1, 2, 2], "pool1_size": [1, 3, 3], "pool1_strides": [1, 2, 2],
                   "pool1_padding": [0, 1, 1], "pool2_size": [2, 1, 1]},
    # PySlowFast C2D_NOPOOL: no temporal pooling after res2.
    "pyslowfast_nopool": {"conv1_strides": [1, 2, 2], "pool1_size": [1, 3, 3], "pool1_strides": [1, 2, 2],
                          "pool1_padding": [0, 1, 1], "pool2_size": None},
    # mmaction2 and gluon-cv 32x2: conv1 stride 2, pool1 1x3x3 stride 2 padded (0, 1, 1): takes every other frame.
    "mmaction2": {"conv1_strides": [2, 2, 2], "pool1_size": [1, 3, 3], "pool1_strides": [2, 2, 2],
                  "pool1_padding": [0, 1, 1], "pool2_size": [2, 1, 1]},
}
GEOMETRIES["gluoncv"] = copy.deepcopy(GEOMETRIES["mmaction2"])

# Non-local flavours: how each code base computes the block (architecture.md §2.5, gluoncv.md §2).
NONLOCAL_FLAVOURS = {
    # Official Caffe2 and PySlowFast: biased projections, 1x2x2 max-pool of x before phi/g, d^-0.5 scale, BN(gamma 0).
    "official": {"nonlocal_mode": "embedded", "nonlocal_compression": 2, "nonlocal_pool_position": "input",
                 "nonlocal_use_scale": True, "nonlocal_use_bias": True, "nonlocal_out_use_bias": None,
                 "nonlocal_normalization": "batch"},
    # mmcv NonLocal3d as configured by mmaction2: pool after the phi/g projections, no scale, `out` without bias.
    "mmaction2": {"nonlocal_mode": "embedded", "nonlocal_compression": 2, "nonlocal_pool_position": "projection",
                  "nonlocal_use_scale": False, "nonlocal_use_bias": True, "nonlocal_out_use_bias": False,
                  "nonlocal_normalization": "batch"},
    # gluon-cv (current weights): as official but without subsampling.
    "gluoncv": {"nonlocal_mode": "embedded", "nonlocal_compression": None, "nonlocal_pool_position": "input",
                "nonlocal_use_scale": True, "nonlocal_use_bias": True, "nonlocal_out_use_bias": None,
                "nonlocal_normalization": "batch"},
}


def make_arch(*, depth=50, temporal="i3d", geometry="paper", nonlocal_placement="nl5", flavour="official",
              frozen_bn=False):
    """Expand the tables above into the JSON-able keyword arguments of `build_backbone`.

    Args:
        depth: 50 or 101.
        temporal: `"i3d"` (inflated 5x7x7 conv1 and 3x1x1 conv "a" per the official table) or `"c2d"` (all 1).
        geometry: a key of `GEOMETRIES`.
        nonlocal_placement: `"nl5"`, `"nl10"`, `"nl10_gluoncv"` or `None` (no blocks); see `NONLOCAL_PLACEMENTS`.
        flavour: a key of `NONLOCAL_FLAVOURS`.
        frozen_bn: the official frozen-BN long-clip models (32x4, 128x1): `Affine` instead of BatchNorm, no
            normalization in the non-local blocks and res3 blocks attending within groups of 4 frames.

    Returns:
        A dict of `build_backbone` keyword arguments.

    Example:
        >>> make_arch(depth=50, temporal="c2d", geometry="repo")["conv1_kernel"]
        [1, 7, 7]
    """
    if depth not in STAGE_DEPTHS:
        raise ValueError(f"`depth` must be one of {sorted(STAGE_DEPTHS)}. Received: depth={depth!r}")
    if temporal not in ("i3d", "c2d"):
        raise ValueError(f"`temporal` must be 'i3d' or 'c2d'. Received: temporal={temporal!r}")
    if geometry not in GEOMETRIES:
        raise ValueError(f"`geometry` must be one of {sorted(GEOMETRIES)}. Received: geometry={geometry!r}")
    if (nonlocal_placement, depth) not in NONLOCAL_PLACEMENTS:
        raise ValueError(
            f"No non-local placement {nonlocal_placement!r} for depth {depth}. "
            f"Received: nonlocal_placement={nonlocal_placement!r}, depth={depth}"
        )
    if flavour not in NONLOCAL_FLAVOURS:
        raise ValueError(f"`flavour` must be one of {sorted(NONLOCAL_FLAVOURS)}. Received: flavour={flavour!r}")
    kernels = I3D_TEMPORAL_KERNELS if temporal == "i3d" else C2D_TEMPORAL_KERNELS
    arch = {
        # Stem
        "stem_width": 64,
        "conv1_kernel": [5 if temporal == "i3d" else 1, 7, 7],
        **copy.deepcopy(GEOMETRIES[geometry]),
        # Stages
        "stage_depths": list(STAGE_DEPTHS[depth]),
        "stage_widths": [64, 128, 256, 512],
        "stage_strides": [1, 2, 2, 2],
        "bottleneck_expansion": 4,
        "temporal_kernels": copy.deepcopy(kernels[depth]),
        # Non-local
        "nonlocal_blocks": copy.deepcopy(NONLOCAL_PLACEMENTS[(nonlocal_placement, depth)]),
        **copy.deepcopy(NONLOCAL_FLAVOURS[flavour]),
        "nonlocal_temporal_group_sizes": [None, None, None, None],
        # Normalization
        "normalization": "batch",
    }
    if frozen_bn:
        arch["normalization"] = "affine"
        arch["nonlocal_normalization"] = None
        arch["nonlocal_temporal_group_sizes"] = [None, 4, None, None]
    return arch


# --------------------------------------------------------------------------------------------------------------------
# Preprocessing (architecture.md §5, gluoncv.md §4)
# --------------------------------------------------------------------------------------------------------------------
_OFFICIAL_MEAN, _OFFICIAL_STD = [114.75] * 3, [57.375] * 3  # (x - 0.45) / 0.225 on [0, 1] frames
_IMAGENET_MEAN, _IMAGENET_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def _preprocessing(num_frames, sampling_rate, sampling, *, mean=_OFFICIAL_MEAN, std=_OFFICIAL_STD,
                   train_short_side_range=(256, 320), test_aggregation="softmax", test_fully_convolutional=True,
                   decode_size=None):
    return {
        "num_frames": num_frames,
        "sampling_rate": sampling_rate,
        "mean": list(mean),
        "std": list(std),
        "scale": 255.0,
        "channel_order": "RGB",
        "train_crop": 224,
        "train_short_side_range": list(train_short_side_range),
        "test_short_side": 256,
        "test_crop": 256,
        "test_num_clips": 10,
        "test_num_crops": 3,
        "sampling": sampling,
        "decode_size": None if decode_size is None else list(decode_size),
        "test_aggregation": test_aggregation,
        "test_fully_convolutional": test_fully_convolutional,
    }


_PAPER = "Wang, Girshick, Gupta, He. Non-local Neural Networks. CVPR 2018. arXiv:1711.07971"
_OFFICIAL_SOURCE = "facebookresearch/video-nonlocal-net"
_OFFICIAL_URL = "https://dl.fbaipublicfiles.com/video-nonlocal/"
_PYSLOWFAST_URL = "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/kinetics400/"
_PYTORCHVIDEO_URL = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/"
_MMACTION2_URL = "https://download.openmmlab.com/mmaction/v1.0/recognition/i3d/"
_GLUONCV_URL = "https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/torch/models/"

# Analytic counts from `nonlocal_zoo.models.flops` (trainable params with 400 classes; MACs of one test view at
# num_frames x test_crop^2). tests/test_presets.py checks that they still equal the counter and the built models.
_COUNTS = {
    # name: (trainable params, MACs per test view)
    "c2d_nl10_r50": (39044560, 50082643968),
    "c2d_nl5_r101": (50678224, 57665945600),
    "c2d_nl5_r50": (31686096, 38271483904),
    "c2d_nl5_r50_32x2_kinetics400": (31686096, 38271483904),
    "c2d_nl5_r50_8x8_kinetics400": (31686096, 37038358528),
    "c2d_nopool_r50_8x8_kinetics400_pyslowfast": (24327632, 42707222528),
    "c2d_r101": (43319760, 45854785536),
    "c2d_r50": (24327632, 26460323840),
    "c2d_r50_32x2_kinetics400": (24327632, 26460323840),
    "c2d_r50_8x8_kinetics400": (24327632, 25227198464),
    "c2d_r50_8x8_kinetics400_pytorchvideo": (24327632, 25460244480),
    "i3d_nl10_r101_32x2_kinetics400_gluoncv": (66471120, 129772584960),
    "i3d_nl10_r50": (42760400, 66550333440),
    "i3d_nl10_r50_32x2_kinetics400_gluoncv": (42760400, 105546285056),
    "i3d_nl5_r101": (59112656, 78965473280),
    "i3d_nl5_r101_32x2_kinetics400_gluoncv": (59112656, 98634072064),
    "i3d_nl5_r50": (35401936, 54739173376),
    "i3d_nl5_r50_128x1_kinetics400": (35393744, 228617912320),
    "i3d_nl5_r50_32x2_kinetics400": (35401936, 54739173376),
    "i3d_nl5_r50_32x2_kinetics400_gluoncv": (35401936, 74407772160),
    "i3d_nl5_r50_32x2_kinetics400_mmaction2_dot": (35397840, 59106951168),
    "i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded": (35397840, 59106951168),
    "i3d_nl5_r50_32x2_kinetics400_mmaction2_gaussian": (31723728, 56288378880),
    "i3d_nl5_r50_32x4_kinetics400": (35393744, 203955404800),
    "i3d_nl5_r50_8x8_kinetics400": (35401936, 48573546496),
    "i3d_nl5_r50_8x8_kinetics400_pyslowfast": (35401936, 48914792448),
    "i3d_r101": (51754192, 67154313216),
    "i3d_r50": (28043472, 42928013312),
    "i3d_r50_128x1_kinetics400": (28043472, 171709595648),
    "i3d_r50_32x2_kinetics400": (28043472, 42928013312),
    "i3d_r50_32x2_kinetics400_mmaction2": (28043472, 43269259264),
    "i3d_r50_32x4_kinetics400": (28043472, 147047088128),
    "i3d_r50_8x8_kinetics400": (28043472, 36762386432),
    "i3d_r50_8x8_kinetics400_pyslowfast": (28043472, 37103632384),
    "i3d_r50_8x8_kinetics400_pytorchvideo": (28043472, 37103632384),
}


def _weights(fmt, url, file_name, *, licence, source, sha256=None, sha256_prefix=None, sha1=None, sha1_prefix=None):
    return {
        "format": fmt,
        "url": url,
        "file_name": file_name,
        "sha256": sha256,
        "sha256_prefix": sha256_prefix,
        "sha1": sha1,
        "sha1_prefix": sha1_prefix,
        "licence": licence,
        "source": source,
    }


def _metadata(description, top1, top5, *, licence, source):
    return {
        "description": description,
        "top1": top1,
        "top5": top5,
        "params": None,
        "macs": None,
        "paper": _PAPER,
        "licence": licence,
        "source": source,
    }


def _preset(arch, weights, preprocessing, metadata):
    return {"arch": arch, "weights": weights, "preprocessing": preprocessing, "metadata": metadata}


def _build_presets():
    presets = {}
    official_licence = "CC-BY-NC-4.0"
    # ---------------------------------------------------------------- official Caffe2 checkpoints (R50, README)
    official = [
        # (preset, file stem, temporal, nl, geometry, frames, rate, frozen_bn, top1, top5)
        ("c2d_r50_32x2", "c2d_baseline_32x2_IN_pretrain_400k", "c2d", None, "paper", 32, 2, False, 72.0, 90.0),
        ("c2d_nl5_r50_32x2", "c2d_nonlocal_32x2_IN_pretrain_400k", "c2d", "nl5", "paper", 32, 2, False, 73.9, 91.0),
        ("i3d_r50_32x2", "i3d_baseline_32x2_IN_pretrain_400k", "i3d", None, "paper", 32, 2, False, 73.6, 90.8),
        ("i3d_nl5_r50_32x2", "i3d_nonlocal_32x2_IN_pretrain_400k", "i3d", "nl5", "paper", 32, 2, False, 74.9, 91.6),
        ("c2d_r50_8x8", "c2d_baseline_8x8_IN_pretrain_400k", "c2d", None, "repo", 8, 8, False, 71.9, 90.0),
        ("c2d_nl5_r50_8x8", "c2d_nonlocal_8x8_IN_pretrain_400k", "c2d", "nl5", "repo", 8, 8, False, 74.4, 91.4),
        ("i3d_r50_8x8", "i3d_baseline_8x8_IN_pretrain_400k", "i3d", None, "repo", 8, 8, False, 73.4, 90.9),
        ("i3d_nl5_r50_8x8", "i3d_nonlocal_8x8_IN_pretrain_400k", "i3d", "nl5", "repo", 8, 8, False, 74.7, 91.6),
        ("i3d_r50_128x1", "i3d_baseline_128x1_I3D_pretrain_400k", "i3d", None, "paper", 128, 1, True, 75.2, 92.0),
        ("i3d_nl5_r50_128x1", "i3d_nonlocal_128x1_I3D_pretrain_400k", "i3d", "nl5", "paper", 128, 1, True, 76.5, 92.7),
        ("i3d_r50_32x4", "i3d_baseline_32x4_I3D_pretrain_400k", "i3d", None, "repo", 32, 4, True, 75.5, 92.0),
        ("i3d_nl5_r50_32x4", "i3d_nonlocal_32x4_I3D_pretrain_400k", "i3d", "nl5", "repo", 32, 4, True, 76.5, 92.6),
    ]
    for key, stem, temporal, nl, geometry, frames, rate, frozen, top1, top5 in official:
        kind = f"{temporal.upper()}{' + 5 non-local blocks' if nl else ''} ResNet-50"
        extra = ", frozen BN (affine), res3 NL grouped by 4 frames" if frozen and nl else (
            ", frozen BN (affine)" if frozen else "")
        presets[f"{key}_kinetics400"] = _preset(
            make_arch(depth=50, temporal=temporal, geometry=geometry, nonlocal_placement=nl, frozen_bn=frozen),
            _weights("caffe2_pkl", _OFFICIAL_URL + stem + ".pkl", stem + ".pkl", licence=official_licence,
                     source=_OFFICIAL_SOURCE),
            _preprocessing(frames, rate, "official"),
            _metadata(f"{kind}, {frames}x{rate} clips, official Caffe2 release ({geometry} geometry{extra}), "
                      "Kinetics-400", top1, top5, licence=official_licence, source=_OFFICIAL_SOURCE),
        )
    # ---------------------------------------------------------------- PySlowFast (Caffe2-format pkl, padded pool1)
    pyslowfast = [
        ("i3d_r50_8x8_kinetics400_pyslowfast", "I3D_8x8_R50.pkl", "i3d", None, "pyslowfast", 73.5, 90.8,
         "I3D ResNet-50"),
        ("i3d_nl5_r50_8x8_kinetics400_pyslowfast", "I3D_NLN_8x8_R50.pkl", "i3d", "nl5", "pyslowfast", 74.0, 91.1,
         "I3D + 5 non-local blocks ResNet-50"),
        ("c2d_nopool_r50_8x8_kinetics400_pyslowfast", "C2D_NOPOOL_8x8_R50.pkl", "c2d", None, "pyslowfast_nopool",
         67.2, 87.8, "C2D ResNet-50 without temporal pooling"),
    ]
    for name, file_name, temporal, nl, geometry, top1, top5, kind in pyslowfast:
        presets[name] = _preset(
            make_arch(depth=50, temporal=temporal, geometry=geometry, nonlocal_placement=nl),
            _weights("pyslowfast_pkl", _PYSLOWFAST_URL + file_name, file_name, licence="Apache-2.0",
                     source="facebookresearch/SlowFast"),
            _preprocessing(8, 8, "pyslowfast"),
            _metadata(f"{kind}, 8x8 clips, PySlowFast model zoo (padded pool1), Kinetics-400", top1, top5,
                      licence="Apache-2.0", source="facebookresearch/SlowFast"),
        )
    # ---------------------------------------------------------------- mmaction2 1.x (32x2x1)
    mm_cfg = "i3d_imagenet-pretrained-r50{}_8xb8-32x2x1-100e_kinetics400-rgb"
    mmaction2 = [
        # (preset, cfg infix, suffix, mode, top1, top5)
        ("i3d_r50_32x2_kinetics400_mmaction2", "", "20220812-e213c223", None, 73.47, 91.27),
        ("i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded", "-nl-embedded-gaussian", "20220812-afd8f562",
         "embedded", 74.73, 91.80),
        ("i3d_nl5_r50_32x2_kinetics400_mmaction2_dot", "-nl-dot-product", "20220812-8e1f2148", "dot", 74.80, 92.07),
        ("i3d_nl5_r50_32x2_kinetics400_mmaction2_gaussian", "-nl-gaussian", "20220812-0c5cbf5a", "gaussian",
         73.97, 91.33),
    ]
    for name, infix, suffix, mode, top1, top5 in mmaction2:
        cfg = mm_cfg.format(infix)
        file_name = f"{cfg}_{suffix}.pth"
        arch = make_arch(depth=50, temporal="i3d", geometry="mmaction2",
                         nonlocal_placement="nl5" if mode else None, flavour="mmaction2")
        if mode:
            arch["nonlocal_mode"] = mode
        kind = f"I3D + 5 non-local blocks ({mode}) ResNet-50" if mode else "I3D ResNet-50"
        presets[name] = _preset(
            arch,
            _weights("mmaction2_pth", f"{_MMACTION2_URL}{cfg}/{file_name}", file_name, licence="Apache-2.0",
                     source="open-mmlab/mmaction2", sha256_prefix=suffix.split("-")[1]),
            _preprocessing(32, 2, "mmaction2", mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
                           train_short_side_range=(256, 256), test_fully_convolutional=False),
            _metadata(f"{kind}, 32x2 clips, mmaction2 model zoo, Kinetics-400", top1, top5, licence="Apache-2.0",
                      source="open-mmlab/mmaction2"),
        )
    # ---------------------------------------------------------------- pytorchvideo hub (PySlowFast geometry)
    for temporal, top1, top5 in (("c2d", 71.46, 89.68), ("i3d", 73.27, 90.70)):
        file_name = f"{temporal.upper()}_8x8_R50.pyth"
        presets[f"{temporal}_r50_8x8_kinetics400_pytorchvideo"] = _preset(
            make_arch(depth=50, temporal=temporal, geometry="pyslowfast", nonlocal_placement=None),
            _weights("pytorchvideo_pyth", _PYTORCHVIDEO_URL + file_name, file_name, licence="Apache-2.0",
                     source="facebookresearch/pytorchvideo"),
            _preprocessing(8, 8, "pyslowfast"),
            _metadata(f"{temporal.upper()} ResNet-50, 8x8 clips, pytorchvideo model zoo, Kinetics-400", top1, top5,
                      licence="Apache-2.0", source="facebookresearch/pytorchvideo"),
        )
    # ---------------------------------------------------------------- gluon-cv PyTorch (32x2)
    gluoncv = [
        ("i3d_nl5_r50_32x2_kinetics400_gluoncv", "i3d_nl5_resnet50_v1_kinetics400", 50, "nl5",
         "9df1e103d54bc1227da58d19347e1371cf98a9fb", 75.17),
        ("i3d_nl10_r50_32x2_kinetics400_gluoncv", "i3d_nl10_resnet50_v1_kinetics400", 50, "nl10",
         "281e1e8a8ef78ada7e095b43caf0cd3f75e7a6a4", 75.93),
        ("i3d_nl5_r101_32x2_kinetics400_gluoncv", "i3d_nl5_resnet101_v1_kinetics400", 101, "nl5",
         "2cea8edd07e5565b9c1eb66ca862ade3127ce523", 75.81),
        ("i3d_nl10_r101_32x2_kinetics400_gluoncv", "i3d_nl10_resnet101_v1_kinetics400", 101, "nl10_gluoncv",
         "526a2ed07cffeab6d827ab28c979b537100cd2b3", 75.93),
    ]
    for name, model_name, depth, nl, sha1, top1 in gluoncv:
        file_name = f"{model_name}-{sha1[:8]}.pth"
        blocks = "10" if nl.startswith("nl10") else "5"
        presets[name] = _preset(
            make_arch(depth=depth, temporal="i3d", geometry="gluoncv", nonlocal_placement=nl, flavour="gluoncv"),
            _weights("gluoncv_pth", _GLUONCV_URL + file_name, file_name, licence="Apache-2.0",
                     source="dmlc/gluon-cv", sha1=sha1, sha1_prefix=sha1[:8]),
            # decord decodes every frame to 340x256 (W x H, aspect ignored); 3 crops of 256 along the 340 side.
            _preprocessing(32, 2, "gluoncv", mean=_IMAGENET_MEAN, std=_IMAGENET_STD, train_short_side_range=(256, 320),
                           test_aggregation="logits", test_fully_convolutional=False, decode_size=(256, 340)),
            _metadata(f"I3D + {blocks} non-local blocks ResNet-{depth} (no NL subsampling), 32x2 clips, gluon-cv "
                      "PyTorch model zoo, Kinetics-400", top1, None, licence="Apache-2.0", source="dmlc/gluon-cv"),
        )
    # ---------------------------------------------------------------- architecture only (paper geometry, 32x2)
    for temporal in ("c2d", "i3d"):
        for depth in (50, 101):
            for nl in (None, "nl5", "nl10"):
                if nl == "nl10" and depth == 101:
                    continue  # no official definition of a 10-block R101 (architecture.md §1.3)
                name = f"{temporal}_{nl + '_' if nl else ''}r{depth}"
                kind = f"{temporal.upper()}{' + ' + nl[2:] + ' non-local blocks' if nl else ''} ResNet-{depth}"
                presets[name] = _preset(
                    make_arch(depth=depth, temporal=temporal, geometry="paper", nonlocal_placement=nl),
                    None,
                    _preprocessing(32, 2, "official"),
                    _metadata(f"{kind}, official paper geometry (32x2 clips), architecture only", None, None,
                              licence=None, source=_OFFICIAL_SOURCE),
                )
    for name, (params, macs) in _COUNTS.items():
        presets[name]["metadata"]["params"] = params
        presets[name]["metadata"]["macs"] = macs
    return presets


PRESETS = _build_presets()


def list_models(pretrained=False):
    """Names of the presets, sorted.

    Args:
        pretrained: only the presets with published weights. Defaults to `False`.

    Returns:
        A list of preset names.

    Example:
        >>> list_models(pretrained=True)[:2]
        ['c2d_nl5_r50_32x2_kinetics400', 'c2d_nl5_r50_8x8_kinetics400']
    """
    return sorted(name for name, preset in PRESETS.items() if not pretrained or preset["weights"] is not None)


def get_preset(name):
    """A deep copy of one preset (`arch`, `weights`, `preprocessing`, `metadata`).

    Args:
        name: a preset name, see `list_models()`.

    Returns:
        The preset dict; changing it does not change the registry.

    Raises:
        ValueError: for an unknown name, listing the closest names.

    Example:
        >>> get_preset("c2d_r50_8x8_kinetics400")["arch"]["stage_depths"]
        [3, 4, 6, 3]
    """
    if not isinstance(name, str) or name not in PRESETS:
        close = difflib.get_close_matches(str(name), PRESETS.keys(), n=5, cutoff=0.5)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"Unknown preset.{hint} See nonlocal_zoo.list_models() for all {len(PRESETS)} names. "
            f"Received: name={name!r}"
        )
    return copy.deepcopy(PRESETS[name])
