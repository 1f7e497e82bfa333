"""Every registered model keeps the protocol other code relies on (models/registry.py's docstring)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ressenet.models import create_model, list_models, model_info
from ressenet.models.layers import SEBlock


@pytest.mark.parametrize("name", list_models())
def test_registered_model_keeps_the_protocol(name):
    # On the CPU, not the meta device: meta tensors run every op through Python reference kernels, which took
    # about 3x longer than real arithmetic on one tiny batch at depth 1202.
    model = create_model(name, num_classes=7, shortcut="B", se_reduction=8, layout="basic").eval()
    assert isinstance(model.depth, int) and model.depth == (model_info(name).depth if model_info(name) else model.depth)
    assert model.num_classes == 7
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 7
    assert model.fc.in_features == model.num_features and model.get_classifier() is model.fc
    assert model.options == {"shortcut": "B", "se_reduction": 8, "layout": "basic"}
    blocks = [m for m in model.modules() if hasattr(m, "grad_probe")]
    assert len(blocks) == 3 * ((model.depth - 2) // 6)  # every residual block says whether it is a bridge
    assert all(isinstance(b.is_bridge, bool) and b.grad_probe is None for b in blocks)
    assert sum(b.is_bridge for b in blocks) == 2  # the first block of stages 2 and 3 (the paper's bridges)
    info = model_info(name)
    if info is not None and name.startswith(("res_se_net", "se_resnet")):
        assert any(isinstance(m, SEBlock) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, model.num_features, 8, 8)
        assert model(x).shape == (2, 7)


def test_default_keyword_arguments_are_the_models_own():
    a = create_model("resnet20", shortcut=None, se_reduction=None, layout=None)
    b = create_model("resnet20")
    assert a.options == b.options
