"""--log-grad-stats: where the gradient flows at each bridge block, checked against torch.autograd.grad."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ressenet.engine.train import train
from ressenet.models import create_model
from tiny import tiny_config


def _path_grads(model, x, y, block):
    """Hand computation: the gradient reaching ``block``'s input through each path alone (the other path sees a
    detached copy of the input)."""
    out = {}
    for keep in ("residual", "shortcut"):
        captured = {}

        def pre(mod, args):
            inp = args[0].detach().requires_grad_(True)
            captured["x"] = inp
            return (inp,)

        h = block.register_forward_pre_hook(pre)
        orig = block.forward

        def forward(x, keep=keep):
            xr, xs = (x, x.detach()) if keep == "residual" else (x.detach(), x)
            o = F.relu(block.bn1(block.conv1(xr)))
            o = block.bn2(block.conv2(o))
            if block.se is not None:
                o = block.se(o)
            if block.shortcut is not None:
                o = o + block.shortcut(xs)
            return F.relu(o)

        block.forward = forward
        try:
            loss = F.cross_entropy(model(x), y)
            (g,) = torch.autograd.grad(loss, captured["x"], allow_unused=True)
        finally:
            block.forward = orig
            h.remove()
        out[keep] = 0.0 if g is None else float(g.norm())
    return out


@pytest.mark.parametrize("name", ["res_se_net20", "resnet20_nobridge"])
def test_probe_matches_autograd(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    blocks = {n: m for n, m in model.named_modules() if getattr(m, "is_bridge", False) and hasattr(m, "grad_probe")}
    assert sorted(blocks) == ["layer2.0", "layer3.0"]
    for n, b in blocks.items():
        want = _path_grads(model, x, y, b)  # BN in train mode: both passes see the same batch statistics
        b.grad_probe = {}
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        got = b.grad_probe
        b.grad_probe = None
        assert float(got["residual"]) == pytest.approx(want["residual"], rel=1e-5)
        if name == "resnet20_nobridge":
            assert "shortcut" not in got and want["shortcut"] == 0.0  # no bridge: nothing flows through one
        else:
            assert float(got["shortcut"]) == pytest.approx(want["shortcut"], rel=1e-5)


def test_two_step_run_logs_grads_lines_without_changing_the_weights(tmp_path):
    base = {"model.name": "res_se_net20", "data.train_limit": 64, "data.test_limit": 32, "optim.batch_size": 16,
            "optim.iters": 2, "run.eval_every": 2, "run.log_every": 1, "run.ckpt_every": 2}
    train(tiny_config(tmp_path / "a", **base, **{"run.grad_stats_every": 1}))
    train(tiny_config(tmp_path / "b", **base))
    recs = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    grads = [r for r in recs if r["kind"] == "grads"]
    assert [r["iter"] for r in grads] == [1, 2]
    assert set(grads[0]["bridge"]) == set(grads[0]["residual"]) == {"layer2.0", "layer3.0"}
    assert "conv1.weight" in grads[0]["weights"] and all(v > 0 for v in grads[0]["weights"].values())
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # recording does not change the training


def test_grad_flow_section_summarises_runs(tmp_path):
    from ressenet.gradflow import grad_flow_section

    base = {"data.train_limit": 64, "data.test_limit": 32, "optim.batch_size": 16, "optim.iters": 4,
            "run.grad_stats_every": 2}
    dirs = []
    for model in ("resnet20", "resnet20_nobridge"):
        out = tmp_path / model
        train(tiny_config(out, **base, **{"model.name": model}))
        dirs.append(out)
    lines = grad_flow_section(dirs, tmp_path / "an")
    table = [ln for ln in lines if ln.startswith("| resnet20")]
    assert len(table) == 4  # 2 models x 2 bridge blocks
    assert all(ln.endswith("| 0.000 |") for ln in table if "nobridge" in ln)  # nothing flows through a bridge
    assert (tmp_path / "an" / "grad_flow.png").is_file() and (tmp_path / "an" / "grad_flow.csv").is_file()
    assert grad_flow_section([tmp_path / "nothing"], tmp_path / "x") == []
