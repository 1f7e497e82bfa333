"""Building blocks shared by every architecture: convolutions, the SE block and the shortcuts.

Res-SE-Net (Varshaneya et al., arXiv:1902.06066) differs from ResNet only in *where* SE blocks sit,
so these pieces are written once and placed by arguments of the block in ``resnet.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["conv3x3", "conv1x1", "SEBlock", "ShortcutA", "Shortcut"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BN follows every conv)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias: the projection of an option-B bridge."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class SEBlock(nn.Module):
    """Squeeze-and-Excitation (Hu et al.): pool -> FC(C, C//r) -> ReLU -> FC(C//r, C) -> sigmoid -> scale.

    ``hidden = max(1, C // r)``: with the paper's r = 16 the 16-channel stage gets a width-1 bottleneck.
    When ``record`` is set, the channel weights of the last forward pass are kept (detached) in
    ``last_weights`` with shape (B, C), so one can ask what a bridge SE learned; off by default so the
    forward pass stays free of side effects (``torch.compile`` and export see a pure function).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if reduction < 1:
            raise ValueError(f"se_reduction must be a positive integer, got {reduction}")
        hidden = max(1, channels // reduction)
        self.channels, self.reduction = channels, reduction
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.record = False
        self.last_weights: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3))  # squeeze: (B, C)
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))  # excitation: (B, C)
        if self.record:
            self.last_weights = w.detach()
        return x * w[:, :, None, None]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}"


class ShortcutA(nn.Module):
    """He et al.'s option A: parameter-free stride-s subsample, new channels filled with zeros."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError("option-A shortcut cannot reduce channels; use shortcut='B'")
        self.stride = stride
        self.pad_lo = (out_planes - in_planes) // 2
        self.pad_hi = out_planes - in_planes - self.pad_lo

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_lo, self.pad_hi))


class Shortcut(nn.Module):
    """A shortcut connection: identity, or a bridge that reshapes (option A or B), with an optional SE.

    ``se`` is ``None``, ``"after"`` (Res-SE-Net: SE after the bridge's conv + BN, docs/design.md) or ``"before"``
    (the paper's ablation: SE on the bridge input, before its convolution). On an identity connection
    the two are the same thing: SE applied to the block's input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, *, kind: str = "B",
                 se: str | None = None, se_reduction: int = 16) -> None:
        super().__init__()
        self.is_bridge = stride != 1 or in_planes != out_planes
        self.kind = kind if self.is_bridge else "identity"
        self.se_before = SEBlock(in_planes, se_reduction) if se == "before" else None
        if not self.is_bridge:
            self.proj: nn.Module = nn.Identity()
        elif kind == "A":
            self.proj = ShortcutA(in_planes, out_planes, stride)
        else:
            self.proj = nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
        # On an identity connection "after" and "before" coincide; keep one SE, after.
        self.se_after = SEBlock(out_planes, se_reduction) if se == "after" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.se_before is not None:
            x = self.se_before(x)
        x = self.proj(x)
        if self.se_after is not None:
            x = self.se_after(x)
        return x
