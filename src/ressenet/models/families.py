"""Model families as one table: where the SE blocks go, whether bridges exist, how a family is named.

Everything else reads this table: the registry generates one factory per (family, depth) from it, the report
takes titles from it, and the tests iterate over it. How a family is drawn (its colour) and which families the
paper compares belong to the reporting layer (experiments/figures.py, experiments/runs.py). Adding an SE
placement is one :class:`SEPlacement` value, one branch in :func:`se_sites` and one :data:`FAMILIES` row.

Placements (Varshaneya et al., arXiv:1902.06066; docs/design.md, "Architectures"):

* ``none``: no SE block (ResNet; with ``bridge=False``, the paper's "no bridge-connections" ablation);
* ``residual``: at the end of every residual branch (SE-ResNet, Hu et al.);
* ``bridge_after``: on each bridge-connection after its conv1x1 + BN (Res-SE-Net, the paper's proposal);
* ``bridge_before``: on each bridge-connection before its convolution (a negative ablation of the paper);
* ``bridge_and_identity``: after the bridges and on every identity connection (the other negative ablation).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["SEPlacement", "Family", "FAMILIES", "FAMILY", "ModelInfo", "se_sites", "family_order"]


class SEPlacement(str, Enum):
    """Where a family puts its SE blocks (SPEC: residual branch, bridge after or before its conv, every identity)."""

    NONE = "none"
    RESIDUAL = "residual"
    BRIDGE_AFTER = "bridge_after"
    BRIDGE_BEFORE = "bridge_before"
    BRIDGE_AND_IDENTITY = "bridge_and_identity"


def se_sites(placement: SEPlacement) -> tuple[bool, str | None, str | None]:
    """(SE at the end of the residual branch?, SE on a bridge: None/"after"/"before", SE on an identity shortcut).

    The one place a placement becomes module positions; the blocks read nothing else.
    """
    if placement is SEPlacement.NONE:
        return False, None, None
    if placement is SEPlacement.RESIDUAL:
        return True, None, None
    if placement is SEPlacement.BRIDGE_AFTER:
        return False, "after", None
    if placement is SEPlacement.BRIDGE_BEFORE:
        return False, "before", None
    if placement is SEPlacement.BRIDGE_AND_IDENTITY:
        return False, "after", "after"
    raise ValueError(f"unknown SE placement {placement!r}")


@dataclass(frozen=True)
class Family:
    """One row of the table.

    Attributes:
        key: Family id, e.g. ``"res_se_net"`` (what run directories and the report group by).
        title: Human name, e.g. ``"Res-SE-Net"``.
        placement: Where its SE blocks go.
        bridge: ``False`` removes the bridge shortcuts (output = ReLU of the residual branch there).
        prefix: Model names are ``f"{prefix}{depth}{suffix}"``.
        suffix: See ``prefix``.
    """

    key: str
    title: str
    placement: SEPlacement
    bridge: bool
    prefix: str
    suffix: str

    def model_name(self, depth: int) -> str:
        return f"{self.prefix}{depth}{self.suffix}"


FAMILIES: tuple[Family, ...] = (
    Family("resnet", "ResNet", SEPlacement.NONE, True, "resnet", ""),
    Family("se_resnet", "SE-ResNet", SEPlacement.RESIDUAL, True, "se_resnet", ""),
    Family("res_se_net", "Res-SE-Net", SEPlacement.BRIDGE_AFTER, True, "res_se_net", ""),
    Family("resnet_nobridge", "ResNet without bridges", SEPlacement.NONE, False, "resnet", "_nobridge"),
    Family("res_se_net_se_before_conv", "Res-SE-Net, SE before the bridge conv", SEPlacement.BRIDGE_BEFORE, True,
           "res_se_net", "_se_before_conv"),
    Family("res_se_net_se_all_identity", "Res-SE-Net, SE on every identity connection",
           SEPlacement.BRIDGE_AND_IDENTITY, True, "res_se_net", "_se_all_identity"),
)
FAMILY: dict[str, Family] = {f.key: f for f in FAMILIES}


def family_order(key: str | None) -> int:
    """Position of a family in the table (unknown ones last): the order of every table and legend."""
    return next((i for i, f in enumerate(FAMILIES) if f.key == key), len(FAMILIES))


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model name means: ``model_info("res_se_net44")``."""

    name: str
    family: Family
    depth: int

    @property
    def placement(self) -> SEPlacement:
        return self.family.placement

    @property
    def bridge(self) -> bool:
        return self.family.bridge
