"""Counting what a model costs: parameters, multiply-accumulates, SE blocks and bridges.

One implementation used by ``ressenet models``, the report and the roofline benchmark.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ressenet.models.layers import SEBlock, Shortcut
from ressenet.models.registry import create_model

__all__ = ["count_params", "count_macs", "count_se_blocks", "count_bridges", "describe_model"]


def count_params(model: nn.Module) -> int:
    """Parameters of a model (every tensor, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Multiply-accumulates of one forward pass for one image, from the conv and linear layers.

    Convolutions dominate; BN, ReLU, pooling, the SE scale and the additions (about 1% here) are left out,
    as in He et al.'s FLOP counts.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out[0].numel() * k

    def linear_hook(m: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def count_se_blocks(model: nn.Module) -> int:
    """SE blocks in the network (0 for ResNet)."""
    return sum(isinstance(m, SEBlock) for m in model.modules())


def count_bridges(model: nn.Module) -> int:
    """Shape-changing shortcuts present in the network (0 for the ``nobridge`` ablation)."""
    return sum(isinstance(m, Shortcut) and m.is_bridge for m in model.modules())


def describe_model(name: str, num_classes: int = 10, **kwargs: Any) -> dict[str, Any]:
    """A table row for ``ressenet models``: name, parameters, MACs per 32x32 image, SE blocks, bridges."""
    model = create_model(name, num_classes=num_classes, **kwargs)
    return {
        "name": name,
        "params": count_params(model),
        "macs": count_macs(model),
        "se_blocks": count_se_blocks(model),
        "bridges": count_bridges(model),
        "block": getattr(model, "block_name", type(model).__name__),
    }
