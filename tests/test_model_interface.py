"""The timm-style model interface over every registered model: forward_features, forward_head, get_classifier,
reset_classifier and pretrained_cfg (read from the families table and the data constants)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ressenet.data.constants import INPUT_SIZE, PAPER_MEAN, PAPER_STD
from ressenet.models import FAMILIES, create_model, list_models, model_info

# Every registered name at depth 20 (all families), plus the released layout's bottleneck blocks at depth 44.
NAMES = [n for n in list_models() if model_info(n).depth == 20]


def test_names_cover_every_family():
    assert {model_info(n).family.key for n in NAMES} == {f.key for f in FAMILIES}


@pytest.mark.parametrize("name,layout", [(n, "basic") for n in NAMES] + [("res_se_net44", "released")])
def test_features_head_and_forward_agree(name, layout):
    torch.manual_seed(0)
    m = create_model(name, num_classes=7, layout=layout).eval()
    x = torch.randn(3, *INPUT_SIZE)
    feats = m.forward_features(x)
    assert feats.shape == (3, m.num_features, 8, 8)  # the last feature map, before pooling (timm's convention)
    assert m.num_features == (256 if m.block_name == "Bottleneck" else 64)
    pooled = m.forward_head(feats, pre_logits=True)
    assert pooled.shape == (3, m.num_features)
    torch.testing.assert_close(pooled, feats.mean(dim=(2, 3)))
    logits = m.forward_head(feats)
    torch.testing.assert_close(logits, m.get_classifier()(pooled))
    torch.testing.assert_close(m(x), logits, rtol=0, atol=0)
    assert m.get_classifier() is m.fc and m.fc.out_features == 7 and m.num_classes == 7


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg_comes_from_the_tables(name):
    m = create_model(name, num_classes=100)
    cfg = m.pretrained_cfg
    assert cfg["architecture"] == name and cfg["family"] == model_info(name).family.key
    assert cfg["input_size"] == INPUT_SIZE and cfg["mean"] == PAPER_MEAN and cfg["std"] == PAPER_STD
    assert cfg["num_classes"] == 100 and cfg["classifier"] == "fc" and cfg["file"] is None


@pytest.mark.parametrize("name", NAMES)
def test_reset_classifier_then_one_training_step(name):
    torch.manual_seed(1)
    m = create_model(name, num_classes=10)
    body = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("fc.")}
    m.reset_classifier(3)
    assert isinstance(m.get_classifier(), nn.Linear) and m.get_classifier().out_features == 3
    assert m.num_classes == 3 and m.pretrained_cfg["num_classes"] == 3
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in body.items())  # only the head changed
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, *INPUT_SIZE), torch.randint(0, 3, (8,))
    m.train()
    loss = F.cross_entropy(m(x), y)
    opt.zero_grad()
    loss.backward()
    assert m.fc.weight.grad is not None and m.fc.weight.grad.abs().sum() > 0  # the new head is trained
    before = m.fc.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, m.fc.weight) and torch.isfinite(m(x)).all()
    assert m(x).shape == (8, 3)


def test_reset_classifier_to_zero_gives_pooled_features():
    m = create_model("res_se_net20").eval()
    x = torch.randn(2, *INPUT_SIZE)
    pooled = m.forward_head(m.forward_features(x), pre_logits=True)
    m.reset_classifier(0)
    assert isinstance(m.get_classifier(), nn.Identity) and m.num_classes == 0
    torch.testing.assert_close(m(x), pooled)


@pytest.mark.parametrize("bad", [-1, 2.5, "10", True])
def test_reset_classifier_refuses_a_bad_class_count(bad):
    with pytest.raises(ValueError, match="num_classes must be a non-negative integer"):
        create_model("resnet20").reset_classifier(bad)


def test_options_are_the_resolved_constructor_options():
    assert create_model("resnet20").options == {"shortcut": "B", "se_reduction": 16, "layout": "basic"}
    assert create_model("resnet20", shortcut="a", se_reduction=4, layout="released").options == {
        "shortcut": "A", "se_reduction": 4, "layout": "released"}
