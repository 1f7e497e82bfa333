"""Models: one CIFAR ResNet with SE placement by argument, an explicit registry, cost counters."""
from ressenet.models import resnet as _resnet  # noqa: F401  (registers the factories)
from ressenet.models.layers import SEBlock, Shortcut, ShortcutA, conv1x1, conv3x3
from ressenet.models.families import FAMILIES, FAMILY, Family, ModelInfo, SEPlacement, family_order
from ressenet.models.registry import (create_model, is_model, list_models, load_pretrained, model_info, natural_key,
                                     register_model)
from ressenet.models.resnet import DEPTHS, BasicBlock, Bottleneck, ResNet
from ressenet.models.stats import count_bridges, count_macs, count_params, count_se_blocks, describe_model

__all__ = [
    "BasicBlock", "Bottleneck", "DEPTHS", "FAMILIES", "FAMILY", "Family", "ModelInfo", "ResNet", "SEBlock",
    "SEPlacement", "Shortcut", "ShortcutA", "conv1x1", "family_order", "model_info", "natural_key",
    "conv3x3", "count_bridges", "count_macs", "count_params", "count_se_blocks", "create_model", "describe_model",
    "is_model", "list_models", "load_pretrained", "register_model",
]
