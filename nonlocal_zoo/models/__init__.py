"""Video networks of nonlocal_zoo: the generic C2D/I3D ResNet backbone builder, heads, presets' factories, counts.

Example:
    >>> from nonlocal_zoo.models import create_model, nl_resnet50_3d
    >>> model = nl_resnet50_3d(clip="8x8", weights=None)
"""
from nonlocal_zoo.models.backbone import apply_backbone, build_backbone, build_feature_extractor, get_stage_outputs
from nonlocal_zoo.models.classifier import add_classifier_head, apply_head
from nonlocal_zoo.models.factories import (
    FACTORIES,
    FACTORY_PRESETS,
    c2d_resnet50,
    c2d_resnet101,
    create_model,
    factory_preset,
    i3d_resnet50,
    i3d_resnet101,
    nl_c2d_resnet50,
    nl_c2d_resnet101,
    nl_resnet50_3d,
    nl_resnet101_3d,
    preset_of,
)
from nonlocal_zoo.models.flops import count_macs, count_params, format_info, model_info

__all__ = [
    "FACTORIES",
    "FACTORY_PRESETS",
    "add_classifier_head",
    "apply_backbone",
    "apply_head",
    "build_backbone",
    "build_feature_extractor",
    "c2d_resnet50",
    "c2d_resnet101",
    "count_macs",
    "count_params",
    "create_model",
    "factory_preset",
    "format_info",
    "get_stage_outputs",
    "i3d_resnet50",
    "i3d_resnet101",
    "model_info",
    "nl_c2d_resnet50",
    "nl_c2d_resnet101",
    "nl_resnet50_3d",
    "nl_resnet101_3d",
    "preset_of",
]
