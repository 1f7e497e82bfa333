"""How a family is drawn in every figure (the report's and the SE analysis's): one Matplotlib colour per family.

Presentation lives here, not in the families table (models/families.py), which knows architectures only. Kept
free of Matplotlib so that importing the colours costs nothing.
"""
from __future__ import annotations

__all__ = ["FAMILY_COLORS", "OTHER_COLOR", "family_color"]

# Matplotlib's tab10 colours; a family missing here is drawn in OTHER_COLOR.
FAMILY_COLORS: dict[str, str] = {
    "resnet": "#1f77b4", "se_resnet": "#2ca02c", "res_se_net": "#d62728", "resnet_nobridge": "#7f7f7f",
    "res_se_net_se_before_conv": "#ff7f0e", "res_se_net_se_all_identity": "#9467bd",
}
OTHER_COLOR = "#7f7f7f"


def family_color(family: str | None) -> str:
    """The colour of ``family`` (a families-table key), grey for ``None`` or a family outside the table."""
    return FAMILY_COLORS.get(family or "", OTHER_COLOR)
