"""The one registry of nonlocal_zoo: one readable entry per preset, from architecture to licence.

Every preset is written below as one `Preset(...)` entry with keyword fields only. `PRESETS[name]` (and
`get_preset(name)`, a deep copy) is the entry as a plain, JSON-able dict:

- `"arch"`: keyword arguments of `nonlocal_zoo.models.build_backbone` (stage depths, temporal kernel table, stem
  geometry, non-local placement and flavour, normalization). Sources: `research/architecture.md` §1-3 and
  `research/gluoncv.md` §2.
- `"weights"`: `None` (architecture only) or where the checkpoint lives: `format` (`"caffe2_pkl"`,
  `"pyslowfast_pkl"`, `"pytorchvideo_pyth"`, `"mmaction2_pth"`, `"gluoncv_pth"`, or `"keras_weights_h5"` for the
  packaged demo weights), `url`, `file_name`, the hashes that are known (`sha256`, `sha256_prefix`, `sha1`,
  `sha1_prefix`; `None` when unknown), `licence`, `source` and `package_file` (`True`: the file ships inside the
  package, `nonlocal_zoo/weights/<file_name>`, and has no URL).
- `"preprocessing"`: `num_frames`, `sampling_rate`, `mean` and `std` (per RGB channel, in the units of pixel values
  in `[0, scale]`, i.e. `x_normalized = (x - mean) / std` on 0-255 frames when `scale` is 255), `channel_order`,
  `train_crop`, `train_short_side_range`, `test_short_side`, `test_crop`, `test_num_clips`, `test_num_crops`,
  `sampling` (whose temporal sampling code defines the clips), `decode_size` (`[height, width]` every frame is
  first resized to, aspect ratio ignored, or `None`), `test_aggregation` (average `"softmax"`
  probabilities or raw `"logits"` over views) and `test_fully_convolutional` (the official per-location softmax head
  on the test crop, see `nonlocal_zoo.models.create_model(fully_convolutional=True)`).
- `"metadata"`: `description`, Kinetics-400 `top1`/`top5` as published (30-view testing; `None` when not
  published), `params` (trainable parameters with the preset's classes), `macs` (multiply-accumulates of one test
  view: `num_frames x test_crop x test_crop`, analytic count of `nonlocal_zoo.models.flops`), `paper`, `licence`,
  `source`, `internal` (`True` for the demo and test presets, which `list_models()` leaves out by default).
- `"labels"`: the class names of the head, in output order: a list, or the name of a packaged label set
  (`"kinetics400"`, resolved by `nonlocal_zoo.pretrained.labels`).
- `"factory"`: the `keras.applications`-style factory call that builds this preset,
  `{"function": "nl_resnet50_3d", "arguments": {"clip": "32x2", "source": "official", "num_nonlocal": 5}}`, or
  `None`. `nonlocal_zoo.models.FACTORY_PRESETS` is derived from these fields.
- `"parity_test"`: the test (`"tests/<file>.py::<function>"`) that checks this preset's network (or its checkpoint
  conversion) against an independent reference; `nonlocal_zoo.model_cards` names it in the model card.
- `"licence"`: the licence of the weights (`None`: no weights).

`params` and `macs` are data written in each entry; tests/test_presets.py checks them against the analytic counter
and built models, so a changed architecture fails a test instead of silently changing the tables.

This module imports nothing else of nonlocal_zoo (it sits at the bottom of the layering).

Example:
    >>> from nonlocal_zoo.presets import get_preset, list_models
    >>> "i3d_nl5_r50_32x2_kinetics400" in list_models(pretrained=True)
    True
    >>> get_preset("i3d_nl5_r50_32x2_kinetics400")["preprocessing"]["num_frames"]
    32
    >>> get_preset("i3d_nl5_r50_32x2_kinetics400")["factory"]["function"]
    'nl_resnet50_3d'
"""
import copy
import dataclasses
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
              nonlocal_mode=None, frozen_bn=False):
    """Expand the tables above into the JSON-able keyword arguments of `build_backbone`.

    Args:
        depth: 50 or 101.
        temporal: `"i3d"` (inflated 5x7x7 conv1 and 3x1x1 conv "a" per the official table) or `"c2d"` (all 1).
        geometry: a key of `GEOMETRIES`.
        nonlocal_placement: `"nl5"`, `"nl10"`, `"nl10_gluoncv"` or `None` (no blocks); see `NONLOCAL_PLACEMENTS`.
        flavour: a key of `NONLOCAL_FLAVOURS`.
        nonlocal_mode: replaces the flavour's pairwise function (`"embedded"`, `"dot"`, `"gaussian"`,
            `"concatenate"`), e.g. for mmaction2's dot-product and Gaussian models. Defaults to the flavour's.
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
    if nonlocal_mode is not None:
        arch["nonlocal_mode"] = nonlocal_mode
    if frozen_bn:
        arch["normalization"] = "affine"
        arch["nonlocal_normalization"] = None
        arch["nonlocal_temporal_group_sizes"] = [None, 4, None, None]
    return arch




# --------------------------------------------------------------------------------------------------------------------
# Preprocessing protocols (architecture.md §5, gluoncv.md §4)
# --------------------------------------------------------------------------------------------------------------------
_OFFICIAL_MEAN, _OFFICIAL_STD = [114.75] * 3, [57.375] * 3  # (x - 0.45) / 0.225 on [0, 1] frames
_IMAGENET_MEAN, _IMAGENET_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def _protocol(*, num_frames, sampling_rate, sampling, mean=_OFFICIAL_MEAN, std=_OFFICIAL_STD, train_crop=224,
              train_short_side_range=(256, 320), test_short_side=256, test_crop=256, test_num_clips=10,
              test_num_crops=3, decode_size=None, test_aggregation="softmax", test_fully_convolutional=True):
    """A preprocessing dict; the defaults are the Kinetics-400 protocol shared by every source (10x3 views)."""
    return {
        "num_frames": num_frames,
        "sampling_rate": sampling_rate,
        "mean": list(mean),
        "std": list(std),
        "scale": 255.0,
        "channel_order": "RGB",
        "train_crop": train_crop,
        "train_short_side_range": list(train_short_side_range),
        "test_short_side": test_short_side,
        "test_crop": test_crop,
        "test_num_clips": test_num_clips,
        "test_num_crops": test_num_crops,
        "sampling": sampling,
        "decode_size": None if decode_size is None else list(decode_size),
        "test_aggregation": test_aggregation,
        "test_fully_convolutional": test_fully_convolutional,
    }


def _official_protocol(*, num_frames, sampling_rate):
    """Official Caffe2: official mean/std, short side in [256, 320] for training, fully-convolutional 10x3 test."""
    return _protocol(num_frames=num_frames, sampling_rate=sampling_rate, sampling="official")


def _pyslowfast_protocol(*, num_frames, sampling_rate):
    """PySlowFast and pytorchvideo: as official, with PySlowFast's clip index rules."""
    return _protocol(num_frames=num_frames, sampling_rate=sampling_rate, sampling="pyslowfast")


def _mmaction2_protocol(*, num_frames, sampling_rate):
    """mmaction2: ImageNet mean/std, training short side 256, global-pool head at test time."""
    return _protocol(num_frames=num_frames, sampling_rate=sampling_rate, sampling="mmaction2", mean=_IMAGENET_MEAN,
                     std=_IMAGENET_STD, train_short_side_range=(256, 256), test_fully_convolutional=False)


def _gluoncv_protocol(*, num_frames, sampling_rate):
    """gluon-cv: decord decodes every frame to 340x256 (W x H, aspect ignored); 3 crops of 256 along the 340 side;
    logits (not softmax) averaged over the views."""
    return _protocol(num_frames=num_frames, sampling_rate=sampling_rate, sampling="gluoncv", mean=_IMAGENET_MEAN,
                     std=_IMAGENET_STD, decode_size=(256, 340), test_aggregation="logits",
                     test_fully_convolutional=False)


# --------------------------------------------------------------------------------------------------------------------
# The demo model (nonlocal_zoo.demo) and the tiny test architecture
# --------------------------------------------------------------------------------------------------------------------
# A miniature I3D ResNet with the official layout, built by the zoo's own builder: three stages (res2-res4) of one
# bottleneck each, widths 8-16-32 (x4 out), 3x1x1 inflated convs, pool2 halving time, and a dot-product non-local
# block after res3 and after res4 (no key pooling: the maps are 8x8 and 4x4). Its convolutions see at most 43 px
# of the 64 px frames; the non-local blocks see everything. Dot product is the instantiation with the best
# accuracy in the paper's Table 2a.
DEMO_ARCH = {
    # Stem
    "stem_width": 8,
    "conv1_kernel": [3, 7, 7],
    "conv1_strides": [1, 2, 2],
    "pool1_size": [1, 3, 3],
    "pool1_strides": [1, 2, 2],
    "pool1_padding": [0, 1, 1],
    "pool2_size": [2, 1, 1],
    "pool2_strides": None,
    # Stages
    "stage_depths": [1, 1, 1],
    "stage_widths": [8, 16, 32],
    "stage_strides": [1, 2, 2],
    "bottleneck_expansion": 4,
    "temporal_kernels": [[3], [3], [3]],
    # Non-local
    "nonlocal_blocks": [[], [0], [0]],
    "nonlocal_mode": "dot",
    "nonlocal_compression": None,
    "nonlocal_pool_position": "input",
    "nonlocal_use_scale": True,
    "nonlocal_use_bias": True,
    "nonlocal_out_use_bias": None,
    "nonlocal_normalization": "batch",
    "nonlocal_temporal_group_sizes": [None, None, None],
    "nonlocal_chunk_size": None,
    # Normalization
    "normalization": "batch",
}

# Test protocol of the demo model: the 8 frames of a clip, resized so the short side is 64, centre crop 64, official
# mean/std, one view. mmaction2's index rules: views spread evenly inside the video (the official rule wraps clips
# around the end, which scrambles the order of events in an 8-frame clip).
DEMO_PREPROCESSING = _protocol(num_frames=8, sampling_rate=1, sampling="mmaction2", train_crop=64,
                               train_short_side_range=(64, 64), test_short_side=64, test_crop=64, test_num_clips=1,
                               test_num_crops=1, test_fully_convolutional=False)

# The demo's synthetic motion classes (`nonlocal_zoo.synthetic`) in the output order of the shipped weights.
DEMO_CLASSES = (
    "moving_left",
    "moving_right",
    "rotating_clockwise",
    "rotating_counterclockwise",
    "approaching",
    "receding",
    "meeting",
    "separating",
    "flashing",
    "steady",
    "same_direction",
    "opposite_direction",
)

# The smallest NL I3D worth testing (fast tests build it in well under a second): the demo's layout at half the
# width, 4 frames of 32x32, an embedded-Gaussian non-local block after res3 and after res4, 5 generic classes.
TINY_ARCH = {
    **copy.deepcopy(DEMO_ARCH),
    "stem_width": 4,
    "stage_widths": [4, 8, 16],
    "nonlocal_mode": "embedded",
}
TINY_PREPROCESSING = _protocol(num_frames=4, sampling_rate=2, sampling="official", train_crop=32,
                               train_short_side_range=(32, 40), test_short_side=32, test_crop=32, test_num_clips=2,
                               test_num_crops=3, test_fully_convolutional=False)
TINY_CLASSES = ("class_0", "class_1", "class_2", "class_3", "class_4")

# Most temporal views (clips) per video a test protocol may ask for (the published protocol uses 10).
MAX_TEST_CLIPS = 100

# Sizes of the packaged label sets a preset may name in `labels`.
LABEL_SET_SIZES = {"kinetics400": 400}


# --------------------------------------------------------------------------------------------------------------------
# Sources, weights, factories, parity tests
# --------------------------------------------------------------------------------------------------------------------
_PAPER = "Wang, Girshick, Gupta, He. Non-local Neural Networks. CVPR 2018. arXiv:1711.07971"
_OFFICIAL_SOURCE = "facebookresearch/video-nonlocal-net"
_PYSLOWFAST_SOURCE = "facebookresearch/SlowFast"
_PYTORCHVIDEO_SOURCE = "facebookresearch/pytorchvideo"
_MMACTION2_SOURCE = "open-mmlab/mmaction2"
_GLUONCV_SOURCE = "dmlc/gluon-cv"
_ZOO_SOURCE = "nonlocal_zoo"
_OFFICIAL_URL = "https://dl.fbaipublicfiles.com/video-nonlocal/"
_PYSLOWFAST_URL = "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/kinetics400/"
_PYTORCHVIDEO_URL = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/"
_MMACTION2_URL = "https://download.openmmlab.com/mmaction/v1.0/recognition/i3d/"
_GLUONCV_URL = "https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/torch/models/"


def _weights(fmt, file_name, *, url=None, sha256=None, sha256_prefix=None, sha1=None, sha1_prefix=None,
             package_file=False):
    # `licence` and `source` are filled in from the entry (`Preset.to_dict`).
    return {"format": fmt, "url": url, "file_name": file_name, "sha256": sha256, "sha256_prefix": sha256_prefix,
            "sha1": sha1, "sha1_prefix": sha1_prefix, "package_file": package_file}


def _official_weights(file_name):
    return _weights("caffe2_pkl", file_name, url=_OFFICIAL_URL + file_name)


def _pyslowfast_weights(file_name):
    return _weights("pyslowfast_pkl", file_name, url=_PYSLOWFAST_URL + file_name)


def _pytorchvideo_weights(file_name):
    return _weights("pytorchvideo_pyth", file_name, url=_PYTORCHVIDEO_URL + file_name)


def _mmaction2_weights(file_name, *, sha256_prefix):
    """mmaction2 1.x: `<config>/<config>_<date>-<sha256 prefix>.pth`."""
    config = file_name.rsplit("_", 1)[0]
    return _weights("mmaction2_pth", file_name, url=f"{_MMACTION2_URL}{config}/{file_name}",
                    sha256_prefix=sha256_prefix)


def _gluoncv_weights(file_name, *, sha1):
    """gluon-cv: `<model>-<sha1[:8]>.pth`, verified against the full sha1 of gluon-cv's model store."""
    return _weights("gluoncv_pth", file_name, url=_GLUONCV_URL + file_name, sha1=sha1, sha1_prefix=sha1[:8])


def _factory(function, **arguments):
    """`function(**arguments)` (a factory of `nonlocal_zoo.models`) builds the preset."""
    return {"function": function, "arguments": arguments}


# The tests that check each kind of preset against an independent reference (model_cards.PARITY_REFERENCES says
# what each compares against; tests/test_presets.py checks that every named test function exists).
_PARITY_OFFICIAL_CAFFE2 = "tests/test_convert_caffe2.py::test_official_caffe2_pkl"
_PARITY_PYSLOWFAST_CAFFE2 = "tests/test_convert_caffe2.py::test_pyslowfast_caffe2_pkl"
_PARITY_PYTORCHVIDEO = "tests/test_convert_torch.py::test_pyslowfast_and_pytorchvideo_state_dicts"
_PARITY_MMACTION2 = "tests/test_convert_torch.py::test_mmaction2_state_dict"
_PARITY_GLUONCV = "tests/test_gluoncv.py::test_converted_checkpoint_matches_reference"
_PARITY_C2D_PAPER = "tests/test_models_reference.py::test_c2d_nl5_r50_paper_geometry_matches_pytorchvideo"
_PARITY_R101_RULE = "tests/test_models_reference.py::test_i3d_nl5_r101_official_rule_matches_pytorchvideo"
_PARITY_DEMO = "tests/test_demo.py::test_demo_model_reaches_stated_held_out_accuracy"
_PARITY_TINY = "tests/test_presets.py::test_tiny_preset_builds_with_its_counts"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    """One registry entry (keyword fields only); `to_dict()` gives the JSON-able dict of `PRESETS`.

    Args:
        name: the preset name.
        description: one line on what the network and checkpoint are.
        arch: `build_backbone` keyword arguments (usually from `make_arch`).
        preprocessing: the clip protocol (see the module docstring).
        labels: class names in output order, or a packaged label set name (`"kinetics400"`).
        licence: licence of the weights; `None` without weights.
        source: the repository the architecture (and weights) come from.
        parity_test: `"tests/<file>.py::<function>"` that checks the preset against an independent reference.
        params: trainable parameters with the preset's classes (checked by tests/test_presets.py).
        macs: multiply-accumulates of one test view (checked by tests/test_presets.py).
        weights: where the checkpoint lives (`_official_weights(...)`, ...), or `None`.
        factory: `_factory(function, **arguments)` that builds this preset, or `None`.
        top1, top5: published Kinetics-400 accuracy (%), or `None`.
        paper: the reference of the method.
        internal: demo and test presets, left out of `list_models()` by default.
    """

    name: str
    description: str
    arch: dict
    preprocessing: dict
    labels: object
    licence: object
    source: str
    parity_test: str
    params: int
    macs: int
    weights: object = None
    factory: object = None
    top1: object = None
    top5: object = None
    paper: str = _PAPER
    internal: bool = False

    def __post_init__(self):
        named = isinstance(self.labels, str) and self.labels in LABEL_SET_SIZES
        listed = isinstance(self.labels, (list, tuple)) and self.labels and all(isinstance(c, str) for c in self.labels)
        if not (named or listed):
            raise ValueError(f"Preset {self.name!r}: `labels` must be one of {sorted(LABEL_SET_SIZES)} or a list of "
                             f"class names. Received: labels={self.labels!r}")
        if (self.weights is None) != (self.licence is None):
            raise ValueError(f"Preset {self.name!r}: a licence goes with weights and only with weights. "
                             f"Received: licence={self.licence!r}, weights={self.weights!r}")
        if not isinstance(self.parity_test, str) or "::" not in self.parity_test:
            raise ValueError(f"Preset {self.name!r}: `parity_test` must be 'tests/<file>.py::<function>'. "
                             f"Received: parity_test={self.parity_test!r}")

    def to_dict(self):
        weights = None
        if self.weights is not None:
            weights = {**copy.deepcopy(self.weights), "licence": self.licence, "source": self.source}
        return {
            "arch": copy.deepcopy(self.arch),
            "weights": weights,
            "preprocessing": copy.deepcopy(self.preprocessing),
            "metadata": {
                "description": self.description,
                "top1": self.top1,
                "top5": self.top5,
                "params": self.params,
                "macs": self.macs,
                "paper": self.paper,
                "licence": self.licence,
                "source": self.source,
                "internal": self.internal,
            },
            "labels": self.labels if isinstance(self.labels, str) else list(self.labels),
            "factory": copy.deepcopy(self.factory),
            "parity_test": self.parity_test,
            "licence": self.licence,
        }


# --------------------------------------------------------------------------------------------------------------------
# The presets
# --------------------------------------------------------------------------------------------------------------------
_ENTRIES = (
    # -------------------- official Caffe2 checkpoints (video-nonlocal-net README; R50)
    Preset(
        name="c2d_r50_32x2_kinetics400",
        description="C2D ResNet-50, 32x2 clips, official Caffe2 release (paper geometry), Kinetics-400",
        arch=make_arch(depth=50, temporal="c2d", geometry="paper", nonlocal_placement=None),
        weights=_official_weights("c2d_baseline_32x2_IN_pretrain_400k.pkl"),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("c2d_resnet50", clip="32x2", source="official"),
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence="CC-BY-NC-4.0", source=_OFFICIAL_SOURCE,
        top1=72.0, top5=90.0, params=24_327_632, macs=26_460_323_840,
    ),
    Preset(
        name="c2d_nl5_r50_32x2_kinetics400",
        description="C2D + 5 non-local blocks ResNet-50, 32x2 clips, official Caffe2 release (paper geometry), "
                    "Kinetics-400",
        arch=make_arch(depth=50, temporal="c2d", geometry="paper", nonlocal_placement="nl5"),
        weights=_official_weights("c2d_nonlocal_32x2_IN_pretrain_400k.pkl"),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("nl_c2d_resnet50", clip="32x2", source="official", num_nonlocal=5),
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence="CC-BY-NC-4.0", source=_OFFICIAL_SOURCE,
        top1=73.9, top5=91.0, params=31_686_096, macs=38_271_483_904,
    ),
    Preset(
        name="i3d_r50_32x2_kinetics400",
        description="I3D ResNet-50, 32x2 clips, official Caffe2 release (paper geometry), Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="paper", nonlocal_placement=None),
        weights=_official_weights("i3d_baseline_32x2_IN_pretrain_400k.pkl"),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("i3d_resnet50", clip="32x2", source="official"),
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence="CC-BY-NC-4.0", source=_OFFICIAL_SOURCE,
        top1=73.6, top5=90.8, params=28_043_472, macs=42_928_013_312,
    ),
    Preset(
        name="i3d_nl5_r50_32x2_kinetics400",
        description="I3D + 5 non-local blocks ResNet-50, 32x2 clips, official Caffe2 release (paper geometry), "
                    "Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="paper", nonlocal_placement="nl5"),
        weights=_official_weights("i3d_nonlocal_32x2_IN_pretrain_400k.pkl"),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("nl_resnet50_3d", clip="32x2", source="official", num_nonlocal=5),
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence="CC-BY-NC-4.0", source=_OFFICIAL_SOURCE,
        top1=74.9, top5=91.6, params=35_401_936, macs=54_739_173_376,
    ),
    Preset(
        name="c2d_r50_8x8_kinetics400",
        description="C2D ResNet-50, 8x8 clips, official Caffe2 release (repo geometry), Kinetics-400",
        arch=make_arch(depth=50, temporal="c2d", geometry="repo", nonlocal_placement=None),
        weights=_official_weights("c2d_baseline_8x8_IN_pretrain_400k.pkl"),
        preprocessing=_official_protocol(num_frames=8, sampling_rate=8),
        labels="kinetics400",
        factory=_factory("c2d_resnet50", clip="8x8", source="official"),
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence="CC-BY-NC-4.0", source=_OFFICIAL_SOURCE,
        top1=71.9, top5=90.0, params=24_327_632, macs=25_227_198_464,
    ),
    Preset(
        name="c2d_nl5_r50_8x8_kinetics400",
        description="C2D + 5 non-local blocks ResNet-50, 8x8 clips, official Caffe2 release (repo geometry), "
                    "Kinetics-400",
        arch=make_arch(depth=50, temporal="c2d", geometry="repo", nonlocal_placement="nl5"),
        weights=_official_weights("c2d_nonlocal_8x8_IN_pretrain_400k.pkl"),
        preprocessing=_official_protocol(num_frames=8, sampling_rate=8),
        labels="kinetics400",
        factory=_factory("nl_c2d_resnet50", clip="8x8", source="official", num_nonlocal=5),
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence="CC-BY-NC-4.0", source=_OFFICIAL_SOURCE,
        top1=74.4, top5=91.4, params=31_686_096, macs=37_038_358_528,
    ),
    Preset(
        name="i3d_r50_8x8_kinetics400",
        description="I3D ResNet-50, 8x8 clips, official Caffe2 release (repo geometry), Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="repo", nonlocal_placement=None),
        weights=_official_weights("i3d_baseline_8x8_IN_pretrain_400k.pkl"),
        preprocessing=_official_protocol(num_frames=8, sampling_rate=8),
        labels="kinetics400",
        factory=_factory("i3d_resnet50", clip="8x8", source="official"),
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence="CC-BY-NC-4.0", source=_OFFICIAL_SOURCE,
        top1=73.4, top5=90.9, params=28_043_472, macs=36_762_386_432,
    ),
    Preset(
        name="i3d_nl5_r50_8x8_kinetics400",
        description="I3D + 5 non-local blocks ResNet-50, 8x8 clips, official Caffe2 release (repo geometry), "
                    "Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="repo", nonlocal_placement="nl5"),
        weights=_official_weights("i3d_nonlocal_8x8_IN_pretrain_400k.pkl"),
        preprocessing=_official_protocol(num_frames=8, sampling_rate=8),
        labels="kinetics400",
        factory=_factory("nl_resnet50_3d", clip="8x8", source="official", num_nonlocal=5),
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence="CC-BY-NC-4.0", source=_OFFICIAL_SOURCE,
        top1=74.7, top5=91.6, params=35_401_936, macs=48_573_546_496,
    ),
    Preset(
        name="i3d_r50_128x1_kinetics400",
        description="I3D ResNet-50, 128x1 clips, official Caffe2 release (paper geometry, frozen BN (affine)), "
                    "Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="paper", nonlocal_placement=None, frozen_bn=True),
        weights=_official_weights("i3d_baseline_128x1_I3D_pretrain_400k.pkl"),
        preprocessing=_official_protocol(num_frames=128, sampling_rate=1),
        labels="kinetics400",
        factory=_factory("i3d_resnet50", clip="128x1", source="official"),
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence="CC-BY-NC-4.0", source=_OFFICIAL_SOURCE,
        top1=75.2, top5=92.0, params=28_043_472, macs=171_709_595_648,
    ),
    Preset(
        name="i3d_nl5_r50_128x1_kinetics400",
        description="I3D + 5 non-local blocks ResNet-50, 128x1 clips, official Caffe2 release (paper geometry, frozen "
                    "BN (affine), res3 NL grouped by 4 frames), Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="paper", nonlocal_placement="nl5", frozen_bn=True),
        weights=_official_weights("i3d_nonlocal_128x1_I3D_pretrain_400k.pkl"),
        preprocessing=_official_protocol(num_frames=128, sampling_rate=1),
        labels="kinetics400",
        factory=_factory("nl_resnet50_3d", clip="128x1", source="official", num_nonlocal=5),
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence="CC-BY-NC-4.0", source=_OFFICIAL_SOURCE,
        top1=76.5, top5=92.7, params=35_393_744, macs=228_617_912_320,
    ),
    Preset(
        name="i3d_r50_32x4_kinetics400",
        description="I3D ResNet-50, 32x4 clips, official Caffe2 release (repo geometry, frozen BN (affine)), "
                    "Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="repo", nonlocal_placement=None, frozen_bn=True),
        weights=_official_weights("i3d_baseline_32x4_I3D_pretrain_400k.pkl"),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=4),
        labels="kinetics400",
        factory=_factory("i3d_resnet50", clip="32x4", source="official"),
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence="CC-BY-NC-4.0", source=_OFFICIAL_SOURCE,
        top1=75.5, top5=92.0, params=28_043_472, macs=147_047_088_128,
    ),
    Preset(
        name="i3d_nl5_r50_32x4_kinetics400",
        description="I3D + 5 non-local blocks ResNet-50, 32x4 clips, official Caffe2 release (repo geometry, frozen BN "
                    "(affine), res3 NL grouped by 4 frames), Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="repo", nonlocal_placement="nl5", frozen_bn=True),
        weights=_official_weights("i3d_nonlocal_32x4_I3D_pretrain_400k.pkl"),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=4),
        labels="kinetics400",
        factory=_factory("nl_resnet50_3d", clip="32x4", source="official", num_nonlocal=5),
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence="CC-BY-NC-4.0", source=_OFFICIAL_SOURCE,
        top1=76.5, top5=92.6, params=35_393_744, macs=203_955_404_800,
    ),
    # -------------------- PySlowFast model zoo (Caffe2-format .pkl, padded pool1)
    Preset(
        name="i3d_r50_8x8_kinetics400_pyslowfast",
        description="I3D ResNet-50, 8x8 clips, PySlowFast model zoo (padded pool1), Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="pyslowfast", nonlocal_placement=None),
        weights=_pyslowfast_weights("I3D_8x8_R50.pkl"),
        preprocessing=_pyslowfast_protocol(num_frames=8, sampling_rate=8),
        labels="kinetics400",
        factory=_factory("i3d_resnet50", clip="8x8", source="pyslowfast"),
        parity_test=_PARITY_PYSLOWFAST_CAFFE2,
        licence="Apache-2.0", source=_PYSLOWFAST_SOURCE,
        top1=73.5, top5=90.8, params=28_043_472, macs=37_103_632_384,
    ),
    Preset(
        name="i3d_nl5_r50_8x8_kinetics400_pyslowfast",
        description="I3D + 5 non-local blocks ResNet-50, 8x8 clips, PySlowFast model zoo (padded pool1), Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="pyslowfast", nonlocal_placement="nl5"),
        weights=_pyslowfast_weights("I3D_NLN_8x8_R50.pkl"),
        preprocessing=_pyslowfast_protocol(num_frames=8, sampling_rate=8),
        labels="kinetics400",
        factory=_factory("nl_resnet50_3d", clip="8x8", source="pyslowfast", num_nonlocal=5),
        parity_test=_PARITY_PYSLOWFAST_CAFFE2,
        licence="Apache-2.0", source=_PYSLOWFAST_SOURCE,
        top1=74.0, top5=91.1, params=35_401_936, macs=48_914_792_448,
    ),
    Preset(
        name="c2d_nopool_r50_8x8_kinetics400_pyslowfast",
        description="C2D ResNet-50 without temporal pooling, 8x8 clips, PySlowFast model zoo (padded pool1), "
                    "Kinetics-400",
        arch=make_arch(depth=50, temporal="c2d", geometry="pyslowfast_nopool", nonlocal_placement=None),
        weights=_pyslowfast_weights("C2D_NOPOOL_8x8_R50.pkl"),
        preprocessing=_pyslowfast_protocol(num_frames=8, sampling_rate=8),
        labels="kinetics400",
        factory=_factory("c2d_resnet50", clip="8x8", source="pyslowfast"),
        parity_test=_PARITY_PYSLOWFAST_CAFFE2,
        licence="Apache-2.0", source=_PYSLOWFAST_SOURCE,
        top1=67.2, top5=87.8, params=24_327_632, macs=42_707_222_528,
    ),
    # -------------------- mmaction2 1.x model zoo (32x2x1)
    Preset(
        name="i3d_r50_32x2_kinetics400_mmaction2",
        description="I3D ResNet-50, 32x2 clips, mmaction2 model zoo, Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="mmaction2", nonlocal_placement=None, flavour="mmaction2"),
        weights=_mmaction2_weights(
            "i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb_20220812-e213c223.pth",
            sha256_prefix="e213c223",
        ),
        preprocessing=_mmaction2_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("i3d_resnet50", clip="32x2", source="mmaction2"),
        parity_test=_PARITY_MMACTION2,
        licence="Apache-2.0", source=_MMACTION2_SOURCE,
        top1=73.47, top5=91.27, params=28_043_472, macs=43_269_259_264,
    ),
    Preset(
        name="i3d_nl5_r50_32x2_kinetics400_mmaction2_embedded",
        description="I3D + 5 non-local blocks (embedded) ResNet-50, 32x2 clips, mmaction2 model zoo, Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="mmaction2", nonlocal_placement="nl5", flavour="mmaction2"),
        weights=_mmaction2_weights(
            "i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb_20220812-afd8f562.pth",
            sha256_prefix="afd8f562",
        ),
        preprocessing=_mmaction2_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("nl_resnet50_3d", clip="32x2", source="mmaction2", num_nonlocal=5),
        parity_test=_PARITY_MMACTION2,
        licence="Apache-2.0", source=_MMACTION2_SOURCE,
        top1=74.73, top5=91.8, params=35_397_840, macs=59_106_951_168,
    ),
    Preset(
        name="i3d_nl5_r50_32x2_kinetics400_mmaction2_dot",
        description="I3D + 5 non-local blocks (dot) ResNet-50, 32x2 clips, mmaction2 model zoo, Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="mmaction2",
                       nonlocal_placement="nl5", flavour="mmaction2", nonlocal_mode="dot"),
        weights=_mmaction2_weights(
            "i3d_imagenet-pretrained-r50-nl-dot-product_8xb8-32x2x1-100e_kinetics400-rgb_20220812-8e1f2148.pth",
            sha256_prefix="8e1f2148",
        ),
        preprocessing=_mmaction2_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("nl_resnet50_3d", clip="32x2", source="mmaction2_dot", num_nonlocal=5),
        parity_test=_PARITY_MMACTION2,
        licence="Apache-2.0", source=_MMACTION2_SOURCE,
        top1=74.8, top5=92.07, params=35_397_840, macs=59_106_951_168,
    ),
    Preset(
        name="i3d_nl5_r50_32x2_kinetics400_mmaction2_gaussian",
        description="I3D + 5 non-local blocks (gaussian) ResNet-50, 32x2 clips, mmaction2 model zoo, Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="mmaction2",
                       nonlocal_placement="nl5", flavour="mmaction2", nonlocal_mode="gaussian"),
        weights=_mmaction2_weights(
            "i3d_imagenet-pretrained-r50-nl-gaussian_8xb8-32x2x1-100e_kinetics400-rgb_20220812-0c5cbf5a.pth",
            sha256_prefix="0c5cbf5a",
        ),
        preprocessing=_mmaction2_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("nl_resnet50_3d", clip="32x2", source="mmaction2_gaussian", num_nonlocal=5),
        parity_test=_PARITY_MMACTION2,
        licence="Apache-2.0", source=_MMACTION2_SOURCE,
        top1=73.97, top5=91.33, params=31_723_728, macs=56_288_378_880,
    ),
    # -------------------- pytorchvideo model zoo (PySlowFast geometry)
    Preset(
        name="c2d_r50_8x8_kinetics400_pytorchvideo",
        description="C2D ResNet-50, 8x8 clips, pytorchvideo model zoo, Kinetics-400",
        arch=make_arch(depth=50, temporal="c2d", geometry="pyslowfast", nonlocal_placement=None),
        weights=_pytorchvideo_weights("C2D_8x8_R50.pyth"),
        preprocessing=_pyslowfast_protocol(num_frames=8, sampling_rate=8),
        labels="kinetics400",
        factory=_factory("c2d_resnet50", clip="8x8", source="pytorchvideo"),
        parity_test=_PARITY_PYTORCHVIDEO,
        licence="Apache-2.0", source=_PYTORCHVIDEO_SOURCE,
        top1=71.46, top5=89.68, params=24_327_632, macs=25_460_244_480,
    ),
    Preset(
        name="i3d_r50_8x8_kinetics400_pytorchvideo",
        description="I3D ResNet-50, 8x8 clips, pytorchvideo model zoo, Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="pyslowfast", nonlocal_placement=None),
        weights=_pytorchvideo_weights("I3D_8x8_R50.pyth"),
        preprocessing=_pyslowfast_protocol(num_frames=8, sampling_rate=8),
        labels="kinetics400",
        factory=_factory("i3d_resnet50", clip="8x8", source="pytorchvideo"),
        parity_test=_PARITY_PYTORCHVIDEO,
        licence="Apache-2.0", source=_PYTORCHVIDEO_SOURCE,
        top1=73.27, top5=90.7, params=28_043_472, macs=37_103_632_384,
    ),
    # -------------------- gluon-cv PyTorch model zoo (32x2)
    Preset(
        name="i3d_nl5_r50_32x2_kinetics400_gluoncv",
        description="I3D + 5 non-local blocks ResNet-50 (no NL subsampling), 32x2 clips, gluon-cv PyTorch model zoo, "
                    "Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="gluoncv", nonlocal_placement="nl5", flavour="gluoncv"),
        weights=_gluoncv_weights("i3d_nl5_resnet50_v1_kinetics400-9df1e103.pth",
                                 sha1="9df1e103d54bc1227da58d19347e1371cf98a9fb"),
        preprocessing=_gluoncv_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("nl_resnet50_3d", clip="32x2", source="gluoncv", num_nonlocal=5),
        parity_test=_PARITY_GLUONCV,
        licence="Apache-2.0", source=_GLUONCV_SOURCE,
        top1=75.17, params=35_401_936, macs=74_407_772_160,
    ),
    Preset(
        name="i3d_nl10_r50_32x2_kinetics400_gluoncv",
        description="I3D + 10 non-local blocks ResNet-50 (no NL subsampling), 32x2 clips, gluon-cv PyTorch model zoo, "
                    "Kinetics-400",
        arch=make_arch(depth=50, temporal="i3d", geometry="gluoncv", nonlocal_placement="nl10", flavour="gluoncv"),
        weights=_gluoncv_weights("i3d_nl10_resnet50_v1_kinetics400-281e1e8a.pth",
                                 sha1="281e1e8a8ef78ada7e095b43caf0cd3f75e7a6a4"),
        preprocessing=_gluoncv_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("nl_resnet50_3d", clip="32x2", source="gluoncv", num_nonlocal=10),
        parity_test=_PARITY_GLUONCV,
        licence="Apache-2.0", source=_GLUONCV_SOURCE,
        top1=75.93, params=42_760_400, macs=105_546_285_056,
    ),
    Preset(
        name="i3d_nl5_r101_32x2_kinetics400_gluoncv",
        description="I3D + 5 non-local blocks ResNet-101 (no NL subsampling), 32x2 clips, gluon-cv PyTorch model zoo, "
                    "Kinetics-400",
        arch=make_arch(depth=101, temporal="i3d", geometry="gluoncv", nonlocal_placement="nl5", flavour="gluoncv"),
        weights=_gluoncv_weights("i3d_nl5_resnet101_v1_kinetics400-2cea8edd.pth",
                                 sha1="2cea8edd07e5565b9c1eb66ca862ade3127ce523"),
        preprocessing=_gluoncv_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("nl_resnet101_3d", clip="32x2", source="gluoncv", num_nonlocal=5),
        parity_test=_PARITY_GLUONCV,
        licence="Apache-2.0", source=_GLUONCV_SOURCE,
        top1=75.81, params=59_112_656, macs=98_634_072_064,
    ),
    Preset(
        name="i3d_nl10_r101_32x2_kinetics400_gluoncv",
        description="I3D + 10 non-local blocks ResNet-101 (no NL subsampling), 32x2 clips, gluon-cv PyTorch model zoo, "
                    "Kinetics-400",
        arch=make_arch(depth=101, temporal="i3d", geometry="gluoncv",
                       nonlocal_placement="nl10_gluoncv", flavour="gluoncv"),
        weights=_gluoncv_weights("i3d_nl10_resnet101_v1_kinetics400-526a2ed0.pth",
                                 sha1="526a2ed07cffeab6d827ab28c979b537100cd2b3"),
        preprocessing=_gluoncv_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("nl_resnet101_3d", clip="32x2", source="gluoncv", num_nonlocal=10),
        parity_test=_PARITY_GLUONCV,
        licence="Apache-2.0", source=_GLUONCV_SOURCE,
        top1=75.93, params=66_471_120, macs=129_772_584_960,
    ),
    # -------------------- architecture only (paper geometry, 32x2 clips; no published weights)
    Preset(
        name="c2d_r50",
        description="C2D ResNet-50, official paper geometry (32x2 clips), architecture only",
        arch=make_arch(depth=50, temporal="c2d", geometry="paper", nonlocal_placement=None),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        parity_test=_PARITY_C2D_PAPER,
        licence=None, source=_OFFICIAL_SOURCE,
        params=24_327_632, macs=26_460_323_840,
    ),
    Preset(
        name="c2d_nl5_r50",
        description="C2D + 5 non-local blocks ResNet-50, official paper geometry (32x2 clips), architecture only",
        arch=make_arch(depth=50, temporal="c2d", geometry="paper", nonlocal_placement="nl5"),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        parity_test=_PARITY_C2D_PAPER,
        licence=None, source=_OFFICIAL_SOURCE,
        params=31_686_096, macs=38_271_483_904,
    ),
    Preset(
        name="c2d_nl10_r50",
        description="C2D + 10 non-local blocks ResNet-50, official paper geometry (32x2 clips), architecture only",
        arch=make_arch(depth=50, temporal="c2d", geometry="paper", nonlocal_placement="nl10"),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("nl_c2d_resnet50", clip="32x2", source="official", num_nonlocal=10),
        parity_test=_PARITY_C2D_PAPER,
        licence=None, source=_OFFICIAL_SOURCE,
        params=39_044_560, macs=50_082_643_968,
    ),
    Preset(
        name="c2d_r101",
        description="C2D ResNet-101, official paper geometry (32x2 clips), architecture only",
        arch=make_arch(depth=101, temporal="c2d", geometry="paper", nonlocal_placement=None),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("c2d_resnet101", clip="32x2", source="official"),
        parity_test=_PARITY_R101_RULE,
        licence=None, source=_OFFICIAL_SOURCE,
        params=43_319_760, macs=45_854_785_536,
    ),
    Preset(
        name="c2d_nl5_r101",
        description="C2D + 5 non-local blocks ResNet-101, official paper geometry (32x2 clips), architecture only",
        arch=make_arch(depth=101, temporal="c2d", geometry="paper", nonlocal_placement="nl5"),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("nl_c2d_resnet101", clip="32x2", source="official", num_nonlocal=5),
        parity_test=_PARITY_R101_RULE,
        licence=None, source=_OFFICIAL_SOURCE,
        params=50_678_224, macs=57_665_945_600,
    ),
    Preset(
        name="i3d_r50",
        description="I3D ResNet-50, official paper geometry (32x2 clips), architecture only",
        arch=make_arch(depth=50, temporal="i3d", geometry="paper", nonlocal_placement=None),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence=None, source=_OFFICIAL_SOURCE,
        params=28_043_472, macs=42_928_013_312,
    ),
    Preset(
        name="i3d_nl5_r50",
        description="I3D + 5 non-local blocks ResNet-50, official paper geometry (32x2 clips), architecture only",
        arch=make_arch(depth=50, temporal="i3d", geometry="paper", nonlocal_placement="nl5"),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence=None, source=_OFFICIAL_SOURCE,
        params=35_401_936, macs=54_739_173_376,
    ),
    Preset(
        name="i3d_nl10_r50",
        description="I3D + 10 non-local blocks ResNet-50, official paper geometry (32x2 clips), architecture only",
        arch=make_arch(depth=50, temporal="i3d", geometry="paper", nonlocal_placement="nl10"),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("nl_resnet50_3d", clip="32x2", source="official", num_nonlocal=10),
        parity_test=_PARITY_OFFICIAL_CAFFE2,
        licence=None, source=_OFFICIAL_SOURCE,
        params=42_760_400, macs=66_550_333_440,
    ),
    Preset(
        name="i3d_r101",
        description="I3D ResNet-101, official paper geometry (32x2 clips), architecture only",
        arch=make_arch(depth=101, temporal="i3d", geometry="paper", nonlocal_placement=None),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("i3d_resnet101", clip="32x2", source="official"),
        parity_test=_PARITY_R101_RULE,
        licence=None, source=_OFFICIAL_SOURCE,
        params=51_754_192, macs=67_154_313_216,
    ),
    Preset(
        name="i3d_nl5_r101",
        description="I3D + 5 non-local blocks ResNet-101, official paper geometry (32x2 clips), architecture only",
        arch=make_arch(depth=101, temporal="i3d", geometry="paper", nonlocal_placement="nl5"),
        preprocessing=_official_protocol(num_frames=32, sampling_rate=2),
        labels="kinetics400",
        factory=_factory("nl_resnet101_3d", clip="32x2", source="official", num_nonlocal=5),
        parity_test=_PARITY_R101_RULE,
        licence=None, source=_OFFICIAL_SOURCE,
        params=59_112_656, macs=78_965_473_280,
    ),
    # -------------------- internal: the embedded demo model and the tiny test architecture
    Preset(
        name="demo",
        description="miniature non-local I3D ResNet (3 stages, 2 dot-product NL blocks) for 12 synthetic motion "
                    "classes that need temporal reasoning (nonlocal_zoo.demo; 99.4% on held-out clips)",
        arch=DEMO_ARCH,
        weights=_weights("keras_weights_h5", "demo_nl_motion.weights.h5", package_file=True,
                         sha256="d3dfa66b2d81e2d2c171f28044a31e290943e03dd27a7f3a03a83c5cd16cef84"),
        preprocessing=DEMO_PREPROCESSING,
        labels=DEMO_CLASSES,
        parity_test=_PARITY_DEMO,
        licence="Apache-2.0", source=_ZOO_SOURCE,
        params=83_876, macs=46_335_488,
        internal=True,
    ),
    Preset(
        name="tiny_nl_i3d",
        description="tiny non-local I3D ResNet (3 stages of width 4-8-16, 2 NL blocks, 4x32x32 clips) for fast "
                    "tests, architecture only",
        arch=TINY_ARCH,
        preprocessing=TINY_PREPROCESSING,
        labels=TINY_CLASSES,
        parity_test=_PARITY_TINY,
        licence=None, source=_ZOO_SOURCE,
        params=22_289, macs=2_240_832,
        internal=True,
    ),
)


def _build_presets(entries):
    presets = {}
    for entry in entries:
        if entry.name in presets:
            raise ValueError(f"Two registry entries are named {entry.name!r}.")
        presets[entry.name] = entry.to_dict()
    return presets


PRESETS = _build_presets(_ENTRIES)
INTERNAL_PRESETS = tuple(name for name, preset in PRESETS.items() if preset["metadata"]["internal"])


def list_models(pretrained=False, include_internal=False):
    """Names of the presets, sorted.

    Args:
        pretrained: only the presets with published weights. Defaults to `False`.
        include_internal: also the internal presets (`"demo"`, the embedded demo model, and `"tiny_nl_i3d"`, the
            tiny test architecture). Defaults to `False`: the model zoo only.

    Returns:
        A list of preset names.

    Example:
        >>> list_models(pretrained=True)[:2]
        ['c2d_nl5_r50_32x2_kinetics400', 'c2d_nl5_r50_8x8_kinetics400']
        >>> "demo" in list_models(include_internal=True)
        True
    """
    return sorted(name for name, preset in PRESETS.items()
                  if (not pretrained or preset["weights"] is not None)
                  and (include_internal or not preset["metadata"]["internal"]))


def get_preset(name):
    """A deep copy of one preset (`arch`, `weights`, `preprocessing`, `metadata`, `labels`, `factory`,
    `parity_test`, `licence`).

    Args:
        name: a preset name, see `list_models(include_internal=True)`.

    Returns:
        The preset dict; changing it does not change the registry.

    Raises:
        ValueError: for an unknown name, listing the closest names.

    Example:
        >>> get_preset("c2d_r50_8x8_kinetics400")["arch"]["stage_depths"]
        [3, 4, 6, 3]
        >>> get_preset("demo")["labels"][:2]
        ['moving_left', 'moving_right']
    """
    if not isinstance(name, str) or name not in PRESETS:
        close = difflib.get_close_matches(str(name), PRESETS.keys(), n=5, cutoff=0.5)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"Unknown preset.{hint} See nonlocal_zoo.list_models() for the {len(list_models())} model names "
            f"(plus {', '.join(repr(n) for n in INTERNAL_PRESETS)}). Received: name={name!r}"
        )
    return copy.deepcopy(PRESETS[name])


def num_classes(preset):
    """The number of classes of a preset's head, from its `labels`.

    Args:
        preset: a preset name or a preset dict (`get_preset(name)`).

    Returns:
        `len(labels)`, or the size of the named label set (400 for `"kinetics400"`).

    Example:
        >>> num_classes("i3d_nl5_r50_32x2_kinetics400"), num_classes("demo")
        (400, 12)
    """
    labels = (PRESETS[preset] if isinstance(preset, str) and preset in PRESETS else
              get_preset(preset) if isinstance(preset, str) else preset)["labels"]
    if isinstance(labels, str):
        if labels not in LABEL_SET_SIZES:
            raise ValueError(f"Unknown label set. Expected one of {sorted(LABEL_SET_SIZES)} or a list of class "
                             f"names. Received: labels={labels!r}")
        return LABEL_SET_SIZES[labels]
    return len(labels)
