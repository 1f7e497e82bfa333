"""The families table (models/families.py) is the one source of every family's names, SE sites and bridges."""
from __future__ import annotations

import pytest

from ressenet.experiments.palette import FAMILY_COLORS, OTHER_COLOR, family_color
from ressenet.experiments.runs import COMPARISONS, FAMILY_TITLES, parse_model
from ressenet.models import (
    DEPTHS, FAMILIES, FAMILY, SEPlacement, count_bridges, count_se_blocks, create_model, list_models, model_info,
)
from ressenet.models.families import se_sites


def test_every_family_and_depth_is_registered_with_its_info():
    names = set(list_models())
    for fam in FAMILIES:
        for depth in DEPTHS:
            name = fam.model_name(depth)
            assert name in names
            info = model_info(name)
            assert (info.family, info.depth, info.placement, info.bridge) == (fam, depth, fam.placement, fam.bridge)
            assert parse_model(name) == (fam.key, depth)
    assert len(names) == len(FAMILIES) * len(DEPTHS)
    assert model_info("resnet21") is None and parse_model("wide_resnet") == (None, None)


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.key)
def test_se_blocks_and_bridges_follow_the_placement(fam):
    depth = 20  # 3 blocks per stage: 2 bridges (stages 2 and 3), 9 residual branches, 7 identity shortcuts
    m = create_model(fam.model_name(depth))
    residual, bridge_se, identity_se = se_sites(fam.placement)
    expected = 9 * residual + 2 * (bridge_se is not None and fam.bridge) + 7 * (identity_se is not None)
    assert count_se_blocks(m) == expected
    assert count_bridges(m) == (2 if fam.bridge else 0)
    assert m.placement is fam.placement and m.bridge == fam.bridge


def test_checkpoint_keys_are_stable():
    # Run directories trained before the table existed must still load: module names did not move.
    keys = set(create_model("res_se_net20").state_dict())
    assert any(k.startswith("layer2.0.shortcut.se_after.") for k in keys)
    assert not any(".se_after." in k for k in keys if k.startswith("layer1."))  # no SE on identity shortcuts
    se_keys = set(create_model("se_resnet20").state_dict())
    assert any(k.startswith("layer1.0.se.") for k in se_keys)
    before = set(create_model("res_se_net20_se_before_conv").state_dict())
    assert any(k.startswith("layer2.0.shortcut.se_before.") for k in before)


def test_report_titles_and_comparisons_come_from_the_table():
    assert FAMILY_TITLES == {f.key: f.title for f in FAMILIES}
    assert [(a, b) for a, b, _, _ in COMPARISONS] == [
        ("res_se_net", "resnet"), ("res_se_net", "se_resnet"), ("resnet_nobridge", "resnet"),
        ("res_se_net_se_before_conv", "res_se_net"), ("res_se_net_se_all_identity", "res_se_net")]
    assert all(b in FAMILY for _, b, _, _ in COMPARISONS)
    assert {p for p in SEPlacement} == {f.placement for f in FAMILIES}


def test_every_family_has_a_colour_in_the_reporting_layer():
    assert set(FAMILY_COLORS) == set(FAMILY)
    assert family_color(None) == family_color("wide_resnet") == OTHER_COLOR
