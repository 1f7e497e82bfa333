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

from ressenet.data.constants import INPUT_SIZE, PAPER_MEAN, PAPER_STD
from ressenet.models.families import FAMILIES, Family, ModelInfo, SEPlacement, se_sites
from ressenet.models.layers import SEBlock, Shortcut, conv1x1, conv3x3
from ressenet.models.registry import model_info, register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "DEPTHS", "SHORTCUTS", "LAYOUTS"]

DEPTHS = (20, 32, 44, 56, 110, 1202)
SHORTCUTS = ("A", "B")  # the bridge shortcut: A zero-pads (He et al.), B is conv1x1 + BN (the paper's)
LAYOUTS = ("basic", "released")  # "released": the released code's bottleneck blocks


def default_pretrained_cfg(name: str | None, num_classes: int) -> dict[str, Any]:
    """A model's ``pretrained_cfg`` (timm's name): what it takes and predicts, from the families table and the data
    layer's constants. Untrained models expect the paper's normalisation (the default ``data.normalization``);
    ``ressenet.load_pretrained`` replaces mean, std, dataset and classes with those the weights were trained on."""
    fam = None
    if name is not None:
        info = model_info(name)
        fam = info.family.key if info is not None else None
    return {"architecture": name, "family": fam, "input_size": INPUT_SIZE, "mean": PAPER_MEAN, "std": PAPER_STD,
            "normalization": "paper", "num_classes": num_classes, "classifier": "fc", "dataset": None,
            "classes": None, "file": None, "sha256": None}


def _shortcut(inplanes: int, outplanes: int, stride: int, *, shortcut: str, placement: SEPlacement, bridge: bool,
              se_reduction: int) -> Shortcut | None:
    is_bridge = stride != 1 or inplanes != outplanes
    if is_bridge and not bridge:
        return None
    _, bridge_se, identity_se = se_sites(placement)
    return Shortcut(inplanes, outplanes, stride, kind=shortcut, se=bridge_se if is_bridge else identity_se,
                    se_reduction=se_reduction)


def probe_paths(x: Tensor, probe: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Two aliases of the block input, one per path, whose gradients land in ``probe`` ("residual", "shortcut"):
    the gradient reaching the input through each path separately (their sum is the input's gradient)."""
    xr, xs = x.view_as(x), x.view_as(x)
    if x.requires_grad:
        xr.register_hook(lambda g: probe.__setitem__("residual", g.detach().float().norm()))
        xs.register_hook(lambda g: probe.__setitem__("shortcut", g.detach().float().norm()))
    return xr, xs


class BasicBlock(nn.Module):
    """conv3x3(s) -> BN -> ReLU -> conv3x3 -> BN -> [SE] -> + shortcut -> ReLU (He et al.; Hu et al. for SE)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, shortcut: str = "B",
                 placement: SEPlacement = SEPlacement.NONE, bridge: bool = True, se_reduction: int = 16) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SEBlock(planes, se_reduction) if se_sites(placement)[0] else None
        self.shortcut = _shortcut(inplanes, planes, stride, shortcut=shortcut, placement=placement, bridge=bridge,
                                  se_reduction=se_reduction)
        self.is_bridge = stride != 1 or inplanes != planes
        self.grad_probe: dict[str, Tensor] | None = None  # set by the engine's --log-grad-stats for one step

    def forward(self, x: Tensor) -> Tensor:
        xr, xs = (x, x) if self.grad_probe is None else probe_paths(x, self.grad_probe)
        out = F.relu(self.bn1(self.conv1(xr)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        if self.shortcut is not None:
            out = out + self.shortcut(xs)
        return F.relu(out)


class Bottleneck(nn.Module):
    """conv1x1 -> conv3x3(s) -> conv1x1 (x4 channels), each with BN; only for the released code's layout."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, shortcut: str = "B",
                 placement: SEPlacement = SEPlacement.NONE, bridge: bool = True, se_reduction: int = 16) -> None:
        super().__init__()
        outplanes = planes * self.expansion
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, outplanes)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.se = SEBlock(outplanes, se_reduction) if se_sites(placement)[0] else None
        self.shortcut = _shortcut(inplanes, outplanes, stride, shortcut=shortcut, placement=placement, bridge=bridge,
                                  se_reduction=se_reduction)
        self.is_bridge = stride != 1 or inplanes != outplanes
        self.grad_probe: dict[str, Tensor] | None = None  # set by the engine's --log-grad-stats for one step

    def forward(self, x: Tensor) -> Tensor:
        xr, xs = (x, x) if self.grad_probe is None else probe_paths(x, self.grad_probe)
        out = F.relu(self.bn1(self.conv1(xr)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        if self.shortcut is not None:
            out = out + self.shortcut(xs)
        return F.relu(out)


class ResNet(nn.Module):
    """The CIFAR ResNet of He et al. with SE placement and bridges chosen by arguments.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, 1202).
        num_classes: size of the linear head.
        shortcut: bridge type, ``"B"`` (conv1x1 + BN, the paper's) or ``"A"`` (subsample + zero channels).
        placement: where the SE blocks go (models/families.py): none, residual (SE-ResNet), bridge_after
            (Res-SE-Net), bridge_before or bridge_and_identity (the paper's negative ablations).
        bridge: ``False`` removes bridge shortcuts (ablation).
        se_reduction: SE reduction ratio r (16 in the paper).
        layout: ``"basic"`` (basic blocks everywhere: the paper's parameter claims) or ``"released"``: the
            released code's quirk of bottleneck blocks (expansion 4) with n = (depth - 2) / 6 for depth >= 44.
            The released code built SE-ResNet with basic blocks at every depth, so ``residual`` stays basic.
    """

    def __init__(self, depth: int, num_classes: int = 10, *, shortcut: str = "B",
                 placement: SEPlacement | str = SEPlacement.NONE, bridge: bool = True, se_reduction: int = 16,
                 layout: str = "basic") -> None:
        super().__init__()
        _check_options(depth, num_classes, shortcut, se_reduction, layout)
        placement = SEPlacement(placement)
        shortcut = shortcut.upper()
        n = (depth - 2) // 6
        bottleneck = layout == "released" and depth >= 44 and placement is not SEPlacement.RESIDUAL
        block: type[BasicBlock] | type[Bottleneck] = Bottleneck if bottleneck else BasicBlock
        self.depth, self.layout, self.block_name = depth, layout, block.__name__
        self.placement, self.bridge = placement, bridge
        self.shortcut_kind, self.se_reduction = shortcut, se_reduction
        block_kwargs = dict(shortcut=shortcut, placement=placement, bridge=bridge, se_reduction=se_reduction)

        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.inplanes = 16
        self.layer1 = self._make_layer(block, 16, n, 1, block_kwargs)
        self.layer2 = self._make_layer(block, 32, n, 2, block_kwargs)
        self.layer3 = self._make_layer(block, 64, n, 2, block_kwargs)
        self.num_features = 64 * block.expansion  # width of the pooled features the head reads
        self.num_classes = num_classes
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes)
        # What the model expects and predicts (timm's ``pretrained_cfg``); create_model names the architecture,
        # load_pretrained fills in the file's data and normalisation.
        self.pretrained_cfg: dict[str, Any] = default_pretrained_cfg(None, num_classes)
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

    @property
    def options(self) -> dict[str, Any]:
        """The constructor options beyond depth and family (resolved: what a weights file must match)."""
        return {"shortcut": self.shortcut_kind, "se_reduction": self.se_reduction, "layout": self.layout}

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, before pooling (as timm's): (B, num_features, 8, 8) for a 32x32 input."""
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 16, 32, 32)
        return self.layer3(self.layer2(self.layer1(x)))  # (B, 64 * expansion, 8, 8)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, then the classifier; ``pre_logits=True`` stops at the pooled features."""
        x = x.mean(dim=(2, 3))  # (B, num_features)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised head for ``num_classes`` classes (0: none, ``forward`` returns the pooled
        features, as timm's)."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative integer (0: no head), got {num_classes!r}")
        old = self.fc.weight if isinstance(self.fc, nn.Linear) else next(self.parameters())
        self.fc = (nn.Linear(self.num_features, num_classes, device=old.device, dtype=old.dtype) if num_classes
                   else nn.Identity())
        self.num_classes = num_classes
        # The new head predicts other classes: the data the weights came from no longer describes the output.
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes, "classes": None}

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


def _factory(family: Family, depth: int):
    def factory(**kw: Any) -> ResNet:
        model = ResNet(depth, placement=family.placement, bridge=family.bridge, **kw)
        model.pretrained_cfg = default_pretrained_cfg(family.model_name(depth), model.num_classes)
        return model

    factory.__name__ = factory.__qualname__ = family.model_name(depth)
    factory.__doc__ = f"{family.title}-{depth} (placement {family.placement.value}, bridges {family.bridge})."
    return factory


# One factory per (family, depth), generated from the table; also module attributes (`resnet.res_se_net20()`).
for _family in FAMILIES:
    for _depth in DEPTHS:
        globals()[_family.model_name(_depth)] = register_model(_factory(_family, _depth),
                                                               info=ModelInfo(_family.model_name(_depth), _family,
                                                                              _depth))
