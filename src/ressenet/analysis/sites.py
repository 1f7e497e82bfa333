"""Where the SE blocks of a model sit: residual branch, bridge (after or before its conv), identity path."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ressenet.models.layers import SEBlock

__all__ = ["SESite", "se_modules", "se_sites_of", "missing_blocks_message", "KIND_TEXT"]

KIND_TEXT = {"bridge_after": "bridge (after conv)", "bridge_before": "bridge (before conv)",
             "identity": "identity", "residual": "residual", "other": "other"}


@dataclass(frozen=True)
class SESite:
    """One SE block: its module name, where it sits, and its width."""

    name: str  # module name, e.g. "layer2.0.shortcut.se_after"
    kind: str  # bridge_after | bridge_before | identity | residual | other
    stage: int  # 1..3 (0 when unknown)
    index: int  # block index within the stage (-1 when unknown)
    channels: int

    @property
    def on_bridge(self) -> bool:
        return self.kind.startswith("bridge")

    @property
    def short(self) -> str:
        """``s2b0 bridge``: compact label for figures."""
        kind = {"bridge_after": "bridge", "bridge_before": "bridge-in", "identity": "ident", "residual": "res"}
        return f"s{self.stage}b{self.index} {kind.get(self.kind, self.kind)}"

    @property
    def text(self) -> str:
        return f"stage {self.stage} block {self.index}, {KIND_TEXT.get(self.kind, self.kind)}"


_NAME_RE = re.compile(r"^layer(\d+)\.(\d+)\.(se|shortcut\.se_after|shortcut\.se_before)$")


def se_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every SE block of ``model`` by module name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SEBlock)}


def se_sites_of(model: nn.Module) -> list[SESite]:
    """The SE blocks of a model with their placement (residual branch, bridge after/before its conv, identity)."""
    sites = []
    for name, m in se_modules(model).items():
        match = _NAME_RE.match(name)
        if match is None:
            sites.append(SESite(name, "other", 0, -1, int(m.channels)))
            continue
        stage, index, where = int(match[1]), int(match[2]), match[3]
        if where == "se":
            kind = "residual"
        else:
            block = model.get_submodule(f"layer{stage}.{index}")
            is_bridge = bool(getattr(block, "is_bridge", False))
            kind = ("bridge_before" if where.endswith("before") else "bridge_after") if is_bridge else "identity"
        sites.append(SESite(name, kind, stage, index, int(m.channels)))
    return sites


def missing_blocks_message(missing: Sequence[str], have: Sequence[str], what: str) -> str:
    """The one-line error for SE blocks asked to be replaced or removed that ``what`` does not have."""
    names = ", ".join(repr(n) for n in missing)
    if not have:
        return f"cannot replace or remove SE block {names}: {what} has no SE blocks at all"
    return (f"cannot replace or remove SE block {names}: {what} has no such SE block; its SE blocks are "
            f"{', '.join(have)}")

