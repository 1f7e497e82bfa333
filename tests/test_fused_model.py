"""The horizontally fused network (models/fused.py): N members as one network computes each member's function.

Checked in float64, where the different summation order of grouped kernels costs about 1e-15: forward outputs,
every parameter's gradient and the batch-norm running statistics equal the members' own to 1e-9.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ressenet.models import FAMILIES, create_model
from ressenet.models.fused import FusedResNet

TOL = 1e-9


def _members(names: list[str], **kw) -> list:
    out = []
    for i, name in enumerate(names):
        torch.manual_seed(i)
        out.append(create_model(name, **kw).double())
    return out


def _check(names: list[str], batch: int = 5, **kw) -> FusedResNet:
    members = _members(names, **kw)
    net = FusedResNet(members)
    n = len(members)
    torch.manual_seed(123)
    xs = [torch.randn(batch, 3, 32, 32, dtype=torch.float64) for _ in range(n)]
    ys = [torch.randint(0, 10, (batch,)) for _ in range(n)]
    ref = torch.stack([m(x) for m, x in zip(members, xs)])
    out = net(torch.cat(xs, dim=1))
    assert out.shape == (n, batch, 10)
    assert (out - ref).abs().max().item() < TOL
    sum(F.cross_entropy(r, y) for r, y in zip(ref, ys)).backward()
    sum(F.cross_entropy(o, y) for o, y in zip(out, ys)).backward()
    for i, m in enumerate(members):
        for k, p in m.named_parameters():
            g = net.member_tensor(net.tensor(k).grad, k, i)
            assert (g - p.grad).abs().max().item() < TOL, (names[i], k)
        for k, t in m.state_dict().items():  # running statistics and batch counters advanced alike
            assert (net.member_tensor(net.tensor(k), k, i).double() - t.double()).abs().max().item() < TOL, k
    net.eval()
    for m in members:
        m.eval()
    with torch.no_grad():
        ref = torch.stack([m(x) for m, x in zip(members, xs)])
        assert (net(torch.cat(xs, dim=1)) - ref).abs().max().item() < TOL
    return net


def test_every_family_fused_in_one_network():
    # The superset: residual SE, bridge SE after and before the conv, identity SE, a member without bridges.
    net = _check([f.model_name(20) for f in FAMILIES])
    assert net.masked >= {"layer2.0.shortcut", "layer1.0.se", "layer2.0.shortcut.se_after",
                              "layer2.0.shortcut.se_before", "layer1.1.shortcut.se_after"}


def test_masks_follow_the_network_to_another_device():
    # .to(device) replaces buffer objects; a mask cached before the move would stay behind (a CUDA group of mixed
    # families would fail on its first step). "meta" stands in for CUDA here.
    net = FusedResNet(_members(["resnet20", "res_se_net20", "resnet20_nobridge"])).to("meta")
    assert all(net.mask(site).device.type == "meta" for site in net.masked)
    assert net(torch.empty(2, 9, 32, 32, dtype=torch.float64, device="meta")).shape == (3, 2, 10)


def test_parameters_a_member_lacks_get_no_gradient():
    members = _members(["resnet20", "res_se_net20", "resnet20_nobridge"])
    net = FusedResNet(members)
    x = torch.randn(4, 9, 32, 32, dtype=torch.float64)
    net(x).sum().backward()
    se = net.member_tensor(net.tensor("layer2.0.shortcut.se_after.fc1.weight").grad,
                           "layer2.0.shortcut.se_after.fc1.weight", 0)
    assert torch.count_nonzero(se) == 0  # resnet20 has no bridge SE
    bridge = net.member_tensor(net.tensor("layer2.0.shortcut.proj.0.weight").grad, "layer2.0.shortcut.proj.0.weight", 2)
    assert torch.count_nonzero(bridge) == 0  # resnet20_nobridge has no bridge
    real = net.member_tensor(net.tensor("layer2.0.shortcut.se_after.fc1.weight").grad,
                             "layer2.0.shortcut.se_after.fc1.weight", 1)
    assert torch.count_nonzero(real) > 0


@pytest.mark.parametrize("kw, names", [
    ({"shortcut": "A"}, ["resnet20", "se_resnet20", "res_se_net20", "res_se_net20_se_before_conv"]),
    ({"layout": "released"}, ["resnet44", "res_se_net44", "resnet44_nobridge"]),  # bottleneck blocks
    ({}, ["resnet20_nobridge", "resnet20_nobridge"]),  # no member has a bridge
    ({}, ["res_se_net32"]),
])
def test_other_shapes(kw, names):
    _check(names, batch=3, **kw)


def test_copy_to_writes_each_member_back_and_nothing_else():
    members = _members(["resnet20", "res_se_net20"])
    net = FusedResNet(members)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in members]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.copy_to(members)
    for m, old in zip(members, before):
        sd = m.state_dict()
        assert sd.keys() == old.keys()  # resnet20 gains no SE parameters
        assert all(torch.equal(sd[k], old[k] + 1) for k in old if k in dict(m.named_parameters()))


@pytest.mark.parametrize("a, b, kw_b, match", [
    ("resnet20", "resnet32", {}, "depth"),
    ("resnet20", "resnet20", {"num_classes": 100}, "head shape"),
    ("resnet20", "resnet20", {"shortcut": "A"}, "shortcut option"),
    ("se_resnet20", "res_se_net20", {"se_reduction": 4}, "SE reduction"),
    ("resnet44", "se_resnet44", {"layout": "released"}, "block type"),
])
def test_members_that_cannot_be_fused_are_named(a, b, kw_b, match):
    kw_a = {"layout": "released"} if kw_b.get("layout") else {}
    with pytest.raises(ValueError, match=match):
        FusedResNet([create_model(a, **kw_a), create_model(b, **kw_b)])
