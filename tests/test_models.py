"""Model zoo: every registered architecture builds, runs forward and backward, and matches docs/design.md."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import ressenet
from ressenet.models import (
    DEPTHS, BasicBlock, Bottleneck, ResNet, SEBlock, Shortcut, ShortcutA, count_bridges, count_params, count_se_blocks,
    create_model, list_models,
)

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("resnet", "se_resnet", "res_se_net")
ABLATIONS = ("resnet{d}_nobridge", "res_se_net{d}_se_before_conv", "res_se_net{d}_se_all_identity")


def test_registry_names_complete_and_sorted():
    names = ressenet.list_models()
    expected = {f"{f}{d}" for f in FAMILIES for d in DEPTHS} | {a.format(d=d) for a in ABLATIONS for d in DEPTHS}
    assert set(names) == expected
    assert len(names) == len(set(names)) == 36
    assert names == list_models()  # stable order
    assert list_models("res_se_net*_se_before_conv") == [f"res_se_net{d}_se_before_conv" for d in DEPTHS]


@pytest.mark.parametrize("name", [n for n in list_models() if "1202" not in n])
def test_forward_backward_every_model(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=100)
    x = torch.randn(3, 3, 32, 32)
    out = model(x)
    assert out.shape == (3, 100)
    out.logsumexp(1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


@pytest.mark.parametrize("family", ["resnet", "se_resnet", "res_se_net", "resnet1202_nobridge"])
def test_depth_1202_builds_and_runs(family):
    name = family if family.endswith("nobridge") else f"{family}1202"
    model = create_model(name, num_classes=100)
    assert len(model.blocks()) == 600
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def _params(name: str, **kw) -> int:
    return count_params(create_model(name, num_classes=10, **kw))


def test_paper_parameter_claims():
    """Res-SE-Net-44 has 61.75% fewer parameters than ResNet-110 and 62.06% fewer than SE-ResNet-110."""
    r44 = _params("res_se_net44")
    assert round(100 * (1 - r44 / _params("resnet110")), 2) == 61.75
    assert round(100 * (1 - r44 / _params("se_resnet110")), 2) == 62.06


@pytest.mark.parametrize("depth,millions", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_he_et_al_parameter_counts_option_a(depth, millions):
    p = _params(f"resnet{depth}", shortcut="A")
    digits = 1 if millions >= 1 else 2
    assert round(p / 1e6, digits) == millions


def test_exact_counts_pin_the_architecture():
    # Hand-computed: option-A ResNet-20 is 269,722 parameters; each option-B bridge adds conv1x1 + BN.
    assert _params("resnet20", shortcut="A") == 269_722
    assert _params("resnet20") == 269_722 + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    # SE on a C-channel map: Linear(C, C//16) + Linear(C//16, C), with biases; C = 32 and 64 at the bridges.
    se = lambda c: c * (c // 16) + c // 16 + (c // 16) * c + c  # noqa: E731
    assert _params("res_se_net20") == _params("resnet20") + se(32) + se(64)
    assert _params("se_resnet20") == _params("resnet20") + 3 * (se(16) + se(32) + se(64))
    assert se(16) == 16 + 1 + 16 + 16  # the 16-channel stage has a hidden width of 1


def test_released_layout_is_bottleneck_from_depth_44():
    m44 = create_model("resnet44", layout="released")
    assert isinstance(m44.blocks()[0], Bottleneck) and len(m44.blocks()) == 3 * 7  # n = (44-2)/6 = 7, 65 layers
    assert m44.fc.in_features == 256
    assert all(isinstance(b, BasicBlock) for b in create_model("resnet32", layout="released").blocks())
    assert isinstance(create_model("res_se_net56", layout="released").blocks()[0], Bottleneck)
    # The released code's SE-ResNet used basic blocks at every depth.
    assert isinstance(create_model("se_resnet110", layout="released").blocks()[0], BasicBlock)
    assert all(isinstance(b, BasicBlock) for b in create_model("resnet110").blocks())  # default stays basic


def _bridge_blocks(model: ResNet) -> list[int]:
    return [i for i, b in enumerate(model.blocks()) if b.is_bridge]


@pytest.mark.parametrize("depth", [20, 56])
def test_structure_of_families_and_ablations(depth):
    n = (depth - 2) // 6
    bridges = [n, 2 * n]  # first block of stages 2 and 3
    for name in list_models(f"*{depth}*"):
        if "1202" in name or "110" in name and depth != 110:
            continue
        m = create_model(name)
        assert _bridge_blocks(m) == bridges, name
        for i, b in enumerate(m.blocks()):
            sc = b.shortcut
            if "nobridge" in name and i in bridges:
                assert sc is None, f"{name}: block {i} keeps a bridge"
                continue
            assert isinstance(sc, Shortcut), f"{name}: block {i} lost its shortcut"
            assert isinstance(sc.proj, nn.Identity) == (i not in bridges)
            if i in bridges:
                assert isinstance(sc.proj, nn.Sequential) and isinstance(sc.proj[0], nn.Conv2d)  # option B
                assert sc.proj[0].kernel_size == (1, 1) and sc.proj[0].stride == (2, 2)
            on_residual = b.se is not None
            before, after = sc.se_before is not None, sc.se_after is not None
            if name.startswith("se_resnet"):
                assert on_residual and not before and not after
            elif name.endswith("_se_before_conv"):
                assert not on_residual and before == (i in bridges) and not after
            elif name.endswith("_se_all_identity"):
                assert not on_residual and not before and after
            elif name.startswith("res_se_net"):
                assert not on_residual and not before and after == (i in bridges)
            else:
                assert not on_residual and not before and not after
        expected_se = {"se_resnet": 3 * n, "res_se_net": 2}
        if name == f"res_se_net{depth}_se_all_identity":
            assert count_se_blocks(m) == 3 * n
        elif name == f"res_se_net{depth}_se_before_conv":
            assert count_se_blocks(m) == 2
        elif name.rstrip("0123456789") in expected_se:
            assert count_se_blocks(m) == expected_se[name.rstrip("0123456789")]
        assert count_bridges(m) == (0 if "nobridge" in name else 2)


def test_res_se_net_bridge_order_is_conv_bn_se():
    sc = create_model("res_se_net20").layer2[0].shortcut
    assert [type(m) for m in sc.proj] == [nn.Conv2d, nn.BatchNorm2d] and isinstance(sc.se_after, SEBlock)
    assert sc.se_after.channels == 32 and sc.se_after.fc1.out_features == 2
    before = create_model("res_se_net20_se_before_conv").layer2[0].shortcut
    assert before.se_before.channels == 16 and before.se_before.fc1.out_features == 1


def test_nobridge_output_is_relu_of_residual():
    torch.manual_seed(0)
    m = create_model("resnet20_nobridge").eval()
    block = m.layer2[0]
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        expected = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))
        assert torch.equal(block(x), expected)


def test_option_a_shortcut_zero_pads_channels():
    m = create_model("resnet20", shortcut="A")
    sc = m.layer2[0].shortcut
    assert isinstance(sc.proj, ShortcutA) and count_params(sc) == 0
    x = torch.randn(2, 16, 32, 32)
    y = sc(x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and not y[:, :8].any() and not y[:, 24:].any()


def test_se_block_math_and_recording():
    torch.manual_seed(0)
    se = SEBlock(32, reduction=16)
    x = torch.randn(4, 32, 8, 8)
    w = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3))))))
    assert torch.allclose(se(x), x * w[:, :, None, None])
    assert se.last_weights is None  # recording is off by default
    m = create_model("res_se_net20").eval()
    m.record_se_weights(True)
    with torch.no_grad():
        m(torch.randn(5, 3, 32, 32))
    weights = m.se_weights()
    assert set(weights) == {"layer2.0.shortcut.se_after", "layer3.0.shortcut.se_after"}
    assert weights["layer3.0.shortcut.se_after"].shape == (5, 64)
    assert not weights["layer2.0.shortcut.se_after"].requires_grad
    assert ((weights["layer2.0.shortcut.se_after"] > 0) & (weights["layer2.0.shortcut.se_after"] < 1)).all()
    m.record_se_weights(False)
    assert m.se_weights() == {}


def test_se_reduction_option():
    m = create_model("res_se_net20", se_reduction=4)
    assert m.layer3[0].shortcut.se_after.fc1.out_features == 16


def test_init_follows_released_code():
    torch.manual_seed(0)
    m = create_model("resnet110")
    conv = m.layer3[5].conv1  # 3x3, 64 out channels: std sqrt(2 / (9 * 64))
    assert abs(conv.weight.std().item() - (2 / (9 * 64)) ** 0.5) < 0.002
    assert torch.equal(m.bn1.weight, torch.ones(16)) and torch.equal(m.bn1.bias, torch.zeros(16))


@pytest.mark.parametrize("call,match", [
    (lambda: create_model("resnet21"), "unknown model 'resnet21'"),
    (lambda: create_model("nope"), "unknown model"),
    (lambda: ResNet(21), "6n\\+2"),
    (lambda: ResNet(2), "6n\\+2"),
    (lambda: create_model("resnet20", shortcut="C"), "shortcut must be one of"),
    (lambda: create_model("resnet20", layout="bottleneck"), "layout must be one of"),
    (lambda: create_model("resnet20", se_reduction=0), "se_reduction must be a positive integer"),
    (lambda: create_model("resnet20", num_classes=0), "num_classes must be a positive integer"),
])
def test_bad_names_and_options_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_none_options_fall_back_to_defaults():
    assert count_params(create_model("resnet20", shortcut=None, layout=None)) == _params("resnet20")


def test_pickle_and_torch_save_whole_model():
    m = create_model("res_se_net20_se_before_conv", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    clone = pickle.loads(pickle.dumps(m))
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert torch.equal(clone(x), m(x)) and torch.equal(loaded(x), m(x))


def test_torch_export():
    m = create_model("res_se_net20", shortcut="A").eval()
    x = torch.randn(2, 3, 32, 32)
    ep = torch.export.export(m, (x,))
    with torch.no_grad():
        assert torch.allclose(ep.module()(x), m(x), atol=1e-5)


def test_torch_compile():
    m = create_model("res_se_net20_se_all_identity").eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)  # same graph capture as inductor, fast on CI
    with torch.no_grad():
        assert torch.allclose(compiled(x), m(x), atol=1e-5)


ONNX_MODELS = ("resnet20", "se_resnet20", "res_se_net20", "resnet20_nobridge", "res_se_net20_se_before_conv",
               "res_se_net20_se_all_identity")
ONNX_TOL = {"atol": 1e-4, "rtol": 1e-4}  # float32 kernels of ONNX Runtime vs PyTorch, 20 layers deep


@pytest.mark.parametrize("name", ONNX_MODELS)
def test_onnx_export(tmp_path, name):
    """Each family exports in eval mode to a valid ONNX graph that ONNX Runtime runs to PyTorch's outputs.

    CI installs onnx, onnxscript and onnxruntime through the ``test`` extra; the skips are only for a developer's
    environment without them."""
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[test]')")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (torch.onnx's exporter needs it)")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[test]')")
    torch.manual_seed(0)
    m = create_model(name)
    # Random BatchNorm statistics and affine parameters: with the fresh (0, 1) running statistics, eval-mode
    # BatchNorm is nearly the identity and a mistranslated one would go unnoticed.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                mod.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                mod.bias.copy_(torch.randn(c, generator=g) * 0.1)
    m.eval()
    x = torch.randn(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        expected = m(x)
    assert expected.shape == (4, 10)

    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(m, (x,), str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)  # structure, operator sets and shape inference

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    outputs = session.run(None, {inp.name: x.numpy()})
    assert len(outputs) == 1
    torch.testing.assert_close(torch.from_numpy(outputs[0]), expected, **ONNX_TOL)


def test_torch_hub_local():
    m = torch.hub.load(str(REPO), "res_se_net20", source="local", num_classes=10)
    assert isinstance(m, ResNet) and m.fc.out_features == 10
    assert count_se_blocks(m) == 2
