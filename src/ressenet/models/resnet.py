"""CIFAR ResNet, SE-ResNet and Res-SE-Net: one network, one block, SE placement by argument.

Res-SE-Net (Varshaneya V, Balasubramanian S, Gera D, "Res-SE-Net: Boosting Performance of Resnets by
Enhancing Bridge-connections", arXiv:1902.06066) puts a Squeeze-and-Excitation block on each
*bridge-connection* (the shortcut where a stage starts, after its conv1x1 + BN) and nowhere else.
SE-ResNet (Hu et al.) puts one at the end of every residual branch. The CIFAR network follows He et
al. (2016): 3x3 stem with 16 channels, three stages of n = (depth - 2) / 6 blocks of 16/32/64 channels,
global average pool, linear head. See docs/design.md for the exact architecture and the paper's ablations.
"""
from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ressenet.models.layers import SEBlock, Shortcut, conv1x1, conv3x3
from ressenet.models.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "VARIANTS", "DEPTHS"]

DEPTHS = (20, 32, 44, 56, 110, 1202)
SHORTCUTS = ("A", "B")
LAYOUTS = ("basic", "released")

# Where SE blocks go and whether bridges exist, per family and ablation (docs/design.md, "Architectures").
VARIANTS: dict[str, dict[str, Any]] = {
    "resnet": {},
    "se_resnet": {"se_residual": True},
    "res_se_net": {"bridge_se": "after"},
    "resnet_nobridge": {"bridge": False},  # ablation: bridge shortcut removed, output = ReLU(residual)
    "res_se_net_se_before_conv": {"bridge_se": "before"},  # ablation: SE before the bridge conv
    "res_se_net_se_all_identity": {"bridge_se": "after", "identity_se": True},  # ablation: SE on all shortcuts
}


def _shortcut(inplanes: int, outplanes: int, stride: int, *, shortcut: str, bridge: bool, bridge_se: str | None,
              identity_se: bool, se_reduction: int) -> Shortcut | None:
    is_bridge = stride != 1 or inplanes != outplanes
    if is_bridge and not bridge:
        return None
    se = bridge_se if is_bridge else ("after" if identity_se else None)
    return Shortcut(inplanes, outplanes, stride, kind=shortcut, se=se, se_reduction=se_reduction)


class BasicBlock(nn.Module):
    """conv3x3(s) -> BN -> ReLU -> conv3x3 -> BN -> [SE] -> + shortcut -> ReLU (He et al.; Hu et al. for SE)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, shortcut: str = "B", se_residual: bool = False,
                 bridge_se: str | None = None, identity_se: bool = False, bridge: bool = True,
                 se_reduction: int = 16) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SEBlock(planes, se_reduction) if se_residual else None
        self.shortcut = _shortcut(inplanes, planes, stride, shortcut=shortcut, bridge=bridge, bridge_se=bridge_se,
                                  identity_se=identity_se, se_reduction=se_reduction)
        self.is_bridge = stride != 1 or inplanes != planes

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class Bottleneck(nn.Module):
    """conv1x1 -> conv3x3(s) -> conv1x1 (x4 channels), each with BN; only for the released code's layout."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, shortcut: str = "B", se_residual: bool = False,
                 bridge_se: str | None = None, identity_se: bool = False, bridge: bool = True,
                 se_reduction: int = 16) -> None:
        super().__init__()
        outplanes = planes * self.expansion
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, outplanes)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.se = SEBlock(outplanes, se_reduction) if se_residual else None
        self.shortcut = _shortcut(inplanes, outplanes, stride, shortcut=shortcut, bridge=bridge, bridge_se=bridge_se,
                                  identity_se=identity_se, se_reduction=se_reduction)
        self.is_bridge = stride != 1 or inplanes != outplanes

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """The CIFAR ResNet of He et al. with SE placement and bridges chosen by arguments.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, 1202).
        num_classes: size of the linear head.
        shortcut: bridge type, ``"B"`` (conv1x1 + BN, the paper's) or ``"A"`` (subsample + zero channels).
        se_residual: SE at the end of every residual branch (SE-ResNet).
        bridge_se: ``None``, ``"after"`` (Res-SE-Net) or ``"before"`` (ablation) the bridge convolution.
        identity_se: SE on every identity connection too (ablation).
        bridge: ``False`` removes bridge shortcuts (ablation).
        se_reduction: SE reduction ratio r (16 in the paper).
        layout: ``"basic"`` (basic blocks everywhere: the paper's parameter claims) or ``"released"``: the
            released code's quirk of bottleneck blocks (expansion 4) with n = (depth - 2) / 6 for depth >= 44.
            The released code built SE-ResNet with basic blocks at every depth, so ``se_residual`` stays basic.
    """

    def __init__(self, depth: int, num_classes: int = 10, *, shortcut: str = "B", se_residual: bool = False,
                 bridge_se: str | None = None, identity_se: bool = False, bridge: bool = True, se_reduction: int = 16,
                 layout: str = "basic") -> None:
        super().__init__()
        _check_options(depth, num_classes, shortcut, se_reduction, layout)
        shortcut = shortcut.upper()
        n = (depth - 2) // 6
        bottleneck = layout == "released" and depth >= 44 and not se_residual
        block: type[BasicBlock] | type[Bottleneck] = Bottleneck if bottleneck else BasicBlock
        self.depth, self.layout, self.block_name = depth, layout, block.__name__
        block_kwargs = dict(shortcut=shortcut, se_residual=se_residual, bridge_se=bridge_se, identity_se=identity_se,
                            bridge=bridge, se_reduction=se_reduction)

        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.inplanes = 16
        self.layer1 = self._make_layer(block, 16, n, 1, block_kwargs)
        self.layer2 = self._make_layer(block, 32, n, 2, block_kwargs)
        self.layer3 = self._make_layer(block, 64, n, 2, block_kwargs)
        self.fc = nn.Linear(64 * block.expansion, num_classes)
        self.init_weights()

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int,
                    block_kwargs: dict[str, Any]) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(block(self.inplanes, planes, stride if i == 0 else 1, **block_kwargs))
            self.inplanes = planes * block.expansion
        return nn.Sequential(*layers)

    def init_weights(self) -> None:
        """The released code's init: conv ~ N(0, sqrt(2 / (k*k*out_channels))), BN (1, 0), Linear at defaults."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 16, 32, 32)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64 * expansion, 8, 8)
        return x.mean(dim=(2, 3))  # global average pool: (B, 64 * expansion)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))

    def blocks(self) -> list[BasicBlock | Bottleneck]:
        return [b for layer in (self.layer1, self.layer2, self.layer3) for b in layer]

    def se_modules(self) -> dict[str, SEBlock]:
        return {name: m for name, m in self.named_modules() if isinstance(m, SEBlock)}

    def record_se_weights(self, enabled: bool = True) -> None:
        """Keep every SE block's last channel weights in ``.last_weights`` (off by default)."""
        for m in self.se_modules().values():
            m.record = enabled
            if not enabled:
                m.last_weights = None

    def se_weights(self) -> dict[str, Tensor]:
        """The recorded (B, C) channel weights of each SE block, keyed by module name."""
        return {n: m.last_weights for n, m in self.se_modules().items() if m.last_weights is not None}


def _check_options(depth: int, num_classes: int, shortcut: str, se_reduction: int, layout: str) -> None:
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 with n >= 1 (e.g. {', '.join(map(str, DEPTHS))}), got {depth!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(shortcut, str) or shortcut.upper() not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS} ('B': conv1x1+BN, the paper's), got {shortcut!r}")
    if not isinstance(se_reduction, int) or se_reduction < 1:
        raise ValueError(f"se_reduction must be a positive integer, got {se_reduction!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS} ('released' = the released code's bottlenecks), got {layout!r}")


def _cifar_resnet(variant: str, depth: int, **kwargs: Any) -> ResNet:
    return ResNet(depth, **VARIANTS[variant], **kwargs)


# One line per registered name. Options for all: num_classes, shortcut, se_reduction, layout.
@register_model
def resnet20(**kw: Any) -> ResNet: return _cifar_resnet("resnet", 20, **kw)  # noqa: E704
@register_model
def resnet32(**kw: Any) -> ResNet: return _cifar_resnet("resnet", 32, **kw)  # noqa: E704
@register_model
def resnet44(**kw: Any) -> ResNet: return _cifar_resnet("resnet", 44, **kw)  # noqa: E704
@register_model
def resnet56(**kw: Any) -> ResNet: return _cifar_resnet("resnet", 56, **kw)  # noqa: E704
@register_model
def resnet110(**kw: Any) -> ResNet: return _cifar_resnet("resnet", 110, **kw)  # noqa: E704
@register_model
def resnet1202(**kw: Any) -> ResNet: return _cifar_resnet("resnet", 1202, **kw)  # noqa: E704
@register_model
def se_resnet20(**kw: Any) -> ResNet: return _cifar_resnet("se_resnet", 20, **kw)  # noqa: E704
@register_model
def se_resnet32(**kw: Any) -> ResNet: return _cifar_resnet("se_resnet", 32, **kw)  # noqa: E704
@register_model
def se_resnet44(**kw: Any) -> ResNet: return _cifar_resnet("se_resnet", 44, **kw)  # noqa: E704
@register_model
def se_resnet56(**kw: Any) -> ResNet: return _cifar_resnet("se_resnet", 56, **kw)  # noqa: E704
@register_model
def se_resnet110(**kw: Any) -> ResNet: return _cifar_resnet("se_resnet", 110, **kw)  # noqa: E704
@register_model
def se_resnet1202(**kw: Any) -> ResNet: return _cifar_resnet("se_resnet", 1202, **kw)  # noqa: E704
@register_model
def res_se_net20(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net", 20, **kw)  # noqa: E704
@register_model
def res_se_net32(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net", 32, **kw)  # noqa: E704
@register_model
def res_se_net44(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net", 44, **kw)  # noqa: E704
@register_model
def res_se_net56(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net", 56, **kw)  # noqa: E704
@register_model
def res_se_net110(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net", 110, **kw)  # noqa: E704
@register_model
def res_se_net1202(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net", 1202, **kw)  # noqa: E704
@register_model
def resnet20_nobridge(**kw: Any) -> ResNet: return _cifar_resnet("resnet_nobridge", 20, **kw)  # noqa: E704
@register_model
def resnet32_nobridge(**kw: Any) -> ResNet: return _cifar_resnet("resnet_nobridge", 32, **kw)  # noqa: E704
@register_model
def resnet44_nobridge(**kw: Any) -> ResNet: return _cifar_resnet("resnet_nobridge", 44, **kw)  # noqa: E704
@register_model
def resnet56_nobridge(**kw: Any) -> ResNet: return _cifar_resnet("resnet_nobridge", 56, **kw)  # noqa: E704
@register_model
def resnet110_nobridge(**kw: Any) -> ResNet: return _cifar_resnet("resnet_nobridge", 110, **kw)  # noqa: E704
@register_model
def resnet1202_nobridge(**kw: Any) -> ResNet: return _cifar_resnet("resnet_nobridge", 1202, **kw)  # noqa: E704
@register_model
def res_se_net20_se_before_conv(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net_se_before_conv", 20, **kw)  # noqa: E704,E501
@register_model
def res_se_net32_se_before_conv(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net_se_before_conv", 32, **kw)  # noqa: E704,E501
@register_model
def res_se_net44_se_before_conv(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net_se_before_conv", 44, **kw)  # noqa: E704,E501
@register_model
def res_se_net56_se_before_conv(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net_se_before_conv", 56, **kw)  # noqa: E704,E501
@register_model
def res_se_net110_se_before_conv(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net_se_before_conv", 110, **kw)  # noqa: E704,E501
@register_model
def res_se_net1202_se_before_conv(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net_se_before_conv", 1202, **kw)  # noqa: E704,E501
@register_model
def res_se_net20_se_all_identity(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net_se_all_identity", 20, **kw)  # noqa: E704,E501
@register_model
def res_se_net32_se_all_identity(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net_se_all_identity", 32, **kw)  # noqa: E704,E501
@register_model
def res_se_net44_se_all_identity(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net_se_all_identity", 44, **kw)  # noqa: E704,E501
@register_model
def res_se_net56_se_all_identity(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net_se_all_identity", 56, **kw)  # noqa: E704,E501
@register_model
def res_se_net110_se_all_identity(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net_se_all_identity", 110, **kw)  # noqa: E704,E501
@register_model
def res_se_net1202_se_all_identity(**kw: Any) -> ResNet: return _cifar_resnet("res_se_net_se_all_identity", 1202, **kw)  # noqa: E704,E501
