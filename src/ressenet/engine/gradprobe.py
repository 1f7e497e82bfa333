"""``--log-grad-stats``: where the gradient flows during one training step (a "grads" line of metrics.jsonl)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["GradProbe"]


class GradProbe:
    """Around one eager step of ``model``: the norm reaching each bridge block's input through its shortcut and
    through its residual branch (the blocks record it when their ``grad_probe`` is a dict), and every weight's
    gradient norm, read after the step (SGD leaves ``.grad`` as the backward wrote it)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.blocks = {name: m for name, m in model.named_modules() if getattr(m, "is_bridge", False)
                       and hasattr(m, "grad_probe")}
        self.probes: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> GradProbe:
        for m in self.blocks.values():
            m.grad_probe = {}
        return self

    def __exit__(self, *exc: Any) -> None:
        self.probes = {name: m.grad_probe or {} for name, m in self.blocks.items()}
        for m in self.blocks.values():
            m.grad_probe = None

    def record(self, it: int) -> dict[str, Any]:
        """The "grads" line for iteration ``it`` (synchronises with the device: a probed step is not the hot path)."""
        weights = {n: p.grad for n, p in self.model.named_parameters() if p.grad is not None and p.dim() > 1}
        names = list(weights)
        norms = torch.stack([weights[n].float().norm() for n in names]).tolist() if names else []
        return {"kind": "grads", "iter": it,
                "bridge": {b: float(p["shortcut"]) for b, p in self.probes.items() if "shortcut" in p},
                "residual": {b: float(p["residual"]) for b, p in self.probes.items() if "residual" in p},
                "weights": dict(zip(names, norms))}
