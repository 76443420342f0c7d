"""`NonLocalResNetBackbone`: the C2D/I3D ResNet trunk of a preset as a serializable `keras.Model` subclass.

keras-hub's `Backbone` shape: a functional model whose constructor arguments are its whole config, so
`from_config(get_config())` rebuilds it, and `from_preset(name)` builds it from the registry. Layer names are the
Caffe2 blob prefixes (`conv1`, `res3_1_branch2a`, `nonlocal_conv3_1`, ...), the names every converter writes into.

Example:
    >>> backbone = NonLocalResNetBackbone.from_preset("i3d_nl5_r50_8x8_kinetics400")
    >>> backbone.output.shape   # res5 map of 8 x 224 x 224 clips
    (None, 4, 7, 7, 2048)
"""
import json

import keras

from nonlocal_zoo.models.arch import normalize_arch, validate_input_shape
from nonlocal_zoo.models.backbone import apply_backbone
from nonlocal_zoo.presets import get_preset
from nonlocal_zoo.tasks import precision


@keras.saving.register_keras_serializable(package="nonlocal_zoo")
class NonLocalResNetBackbone(keras.Model):
    """The res5 feature extractor of a C2D/I3D ResNet with non-local blocks.

    Args:
        arch: `build_backbone` keyword arguments (a preset's `"arch"`); missing keys take the builder's defaults.
        clip_shape: `(frames, height, width, 3)` of the input clips; `None` sizes allowed. Defaults to
            `(None, None, None, 3)`.
        preset: the registry name the architecture came from (kept in the config; `None` for a custom one).
        name: the Keras model name. Defaults to `"nonlocal_resnet_backbone"`.
        dtype: the compute dtype, `"float32"` or `"bfloat16"` (Keras' `mixed_bfloat16` policy: float32 weights,
            bfloat16 arithmetic (BatchNormalization folded into the convolutions), the non-local attention in
            float32; refused on hardware
            without bfloat16, see `nonlocal_zoo.tasks.precision`). Defaults to None: the global Keras policy. Not
            part of the config (a runtime choice; the weights are float32 either way).
        **kwargs: `keras.Model` arguments (`trainable`).

    Example:
        >>> backbone = NonLocalResNetBackbone(get_preset("tiny_nl_i3d")["arch"], clip_shape=(4, 32, 32, 3))
        >>> keras.Model.from_config(backbone.get_config()) is not None
        True
    """

    def __init__(self, arch=None, *, clip_shape=(None, None, None, 3), preset=None, name=None, dtype=None, **kwargs):
        arch = normalize_arch(**(arch or {}))
        clip_shape = tuple(None if s is None else int(s) for s in clip_shape)
        validate_input_shape(arch, clip_shape)
        with precision.policy_scope(precision.policy_name(dtype)):  # every layer and the model take the policy
            inputs = keras.Input(shape=clip_shape, name="clip")
            stages = apply_backbone(inputs, **arch)  # {"res2": (B, T2, H2, W2, C2), ..., "res5": ...}
            super().__init__(inputs, stages[list(stages)[-1]], name=name or "nonlocal_resnet_backbone", **kwargs)
        # Kept as JSON text: Keras tracks dicts and lists set on a model (and deep-copying a tracked container
        # copies the whole model), while the architecture is plain data.
        self._arch_json = json.dumps(arch)
        self.clip_shape = clip_shape
        self.preset = preset
        self.stage_names = tuple(stages)

    @property
    def arch(self):
        """The complete `build_backbone` keyword arguments of this backbone (a fresh dict)."""
        return json.loads(self._arch_json)

    def get_config(self):
        return {"arch": self.arch, "clip_shape": list(self.clip_shape), "preset": self.preset, "name": self.name,
                "trainable": self.trainable}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, *, clip_shape=None, dtype=None, **arch_overrides):
        """The backbone of a registry preset (architecture only; weights come with `VideoClassifier.from_preset`).

        Args:
            preset: a preset name (`nonlocal_zoo.list_models()`, `"demo"`, `"tiny_nl_i3d"`).
            clip_shape: defaults to `(num_frames, None, None, 3)` of the preset.
            dtype: `"float32"` or `"bfloat16"` (see the class). Defaults to the global Keras policy.
            **arch_overrides: architecture keys replacing the preset's (e.g. `nonlocal_chunk_size=1024`).

        Example:
            >>> NonLocalResNetBackbone.from_preset("demo").count_params()
        """
        entry = get_preset(preset)
        if clip_shape is None:
            clip_shape = (entry["preprocessing"]["num_frames"], None, None, 3)
        return cls({**entry["arch"], **arch_overrides}, clip_shape=clip_shape, preset=preset, dtype=dtype)
