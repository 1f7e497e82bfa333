"""`ressenet analyze` (src/ressenet/analysis/): excitation statistics and reliance of SE blocks, on tiny runs.

The runs are real engine run directories (config.yaml, metrics.jsonl, last.pt, summary.json) trained for 4
iterations on synthetic data; what the tests need from them is the checkpoint format, not accuracy.
"""
from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ressenet.analysis import (CONSTANT_STD, GateAccumulator, add_parser, analyze, gate_override, hist_quantiles,
                               paired_drop, record_gates, se_sites_of)
from ressenet.engine.checkpoint import load_checkpoint, save_checkpoint
from ressenet.errors import RessenetError
from ressenet.models import create_model
from tiny import tiny_config

BRIDGES = ["layer2.0.shortcut.se_after", "layer3.0.shortcut.se_after"]


def _train(root: Path, model: str, seed: int = 1) -> Path:
    from ressenet.engine.train import train

    out = root / f"{model}-s{seed}"
    train(tiny_config(out, **{"model.name": model, "optim.iters": 4, "run.seed": seed}))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analysis-runs")
    return {"rsn1": _train(root, "res_se_net20", 1), "rsn2": _train(root, "res_se_net20", 2),
            "resnet": _train(root, "resnet20", 1), "se_resnet": _train(root, "se_resnet20", 1)}


def _constant_copy(run: Path, dest: Path, bias: float) -> Path:
    """A copy of ``run`` whose every SE gate is forced constant: last Linear's weight 0, its bias ``bias``."""
    shutil.copytree(run, dest)
    state = load_checkpoint(dest / "last.pt")
    for key in list(state["model"]):
        if key.endswith("fc2.weight"):
            state["model"][key] = torch.zeros_like(state["model"][key])
        elif key.endswith("fc2.bias"):
            state["model"][key] = torch.full_like(state["model"][key], bias)
    save_checkpoint(dest / "last.pt", state)
    return dest


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- the statistics, by hand ----------------------------------------------------------------------------------
def test_gate_accumulator_matches_a_direct_computation() -> None:
    g = torch.Generator().manual_seed(0)
    n, c, k = 500, 6, 4
    y = torch.randint(0, k, (n,), generator=g)
    w = torch.sigmoid(torch.randn(n, c, generator=g) + y[:, None].float() * torch.linspace(-1, 1, c))
    acc = GateAccumulator(c, k)
    for i in range(0, n, 64):  # streamed in batches
        acc.add(w[i:i + 64], y[i:i + 64])
    st = acc.result()
    x = w.double().numpy()
    means = np.stack([x[y.numpy() == j].mean(0) for j in range(k)])
    within = np.stack([x[y.numpy() == j].var(0) for j in range(k)]).mean(0)
    np.testing.assert_allclose(st.class_mean, means, atol=1e-12)
    np.testing.assert_allclose(st.between, means.var(0), atol=1e-12)
    np.testing.assert_allclose(st.within, within, atol=1e-12)
    np.testing.assert_allclose(st.mean, x.mean(0), atol=1e-12)
    np.testing.assert_allclose(st.std, x.std(0), atol=1e-12)
    assert st.ratio == pytest.approx(means.var(0).mean() / within.mean())
    assert 0 < st.eta2 < 1
    q = st.quantiles((0.0, 0.25, 0.5, 0.75, 1.0))
    np.testing.assert_allclose(q, np.quantile(x.ravel(), [0, 0.25, 0.5, 0.75, 1.0]), atol=2e-3)
    assert q[0] == pytest.approx(x.min()) and q[-1] == pytest.approx(x.max())


def test_constant_gate_has_zero_variance_and_selectivity() -> None:
    acc = GateAccumulator(3, 2)
    acc.add(torch.full((10, 3), 0.7), torch.tensor([0, 1] * 5))
    st = acc.result()
    assert st.std_max == 0 and st.between_block == 0 and st.within_block == 0
    assert st.ratio == 0 and st.eta2 == 0 and st.constant(CONSTANT_STD)


def test_hist_quantiles_of_a_point_mass() -> None:
    hist = np.zeros(100)
    hist[99] = 5
    assert hist_quantiles(hist, (0.0, 0.5, 1.0), 1.0, 1.0) == [1.0, 1.0, 1.0]


def test_paired_drop_interval_by_hand() -> None:
    from scipy import stats as sps

    intact = np.array([True] * 80 + [False] * 20)
    mod = intact.copy()
    mod[:12] = False  # 12 lost
    mod[80:83] = True  # 3 gained
    x = paired_drop(intact, mod)
    assert (x.lost, x.gained, x.n) == (12, 3, 100)
    assert x.drop == pytest.approx(9.0) and x.intact_top1 == 80 and x.top1 == 71
    p_lo, p_hi = sps.beta.ppf(0.025, 12, 4), sps.beta.ppf(0.975, 13, 3)
    assert x.ci_low == pytest.approx(15 * (2 * p_lo - 1)) and x.ci_high == pytest.approx(15 * (2 * p_hi - 1))
    assert x.ci_low < x.drop < x.ci_high and x.excludes_zero
    assert x.p == pytest.approx(sps.binomtest(12, 15, 0.5).pvalue)
    same = paired_drop(intact, intact)
    assert (same.drop, same.ci_low, same.ci_high, same.p) == (0.0, 0.0, 0.0, 1.0) and not same.excludes_zero


# --- hooks ----------------------------------------------------------------------------------------------------
def test_sites_of_every_se_family() -> None:
    kinds = {name: sorted({s.kind for s in se_sites_of(create_model(name))}) for name in
             ("resnet20", "se_resnet20", "res_se_net20", "res_se_net20_se_before_conv", "res_se_net20_se_all_identity")}
    assert kinds == {"resnet20": [], "se_resnet20": ["residual"], "res_se_net20": ["bridge_after"],
                     "res_se_net20_se_before_conv": ["bridge_before"],
                     "res_se_net20_se_all_identity": ["bridge_after", "identity"]}
    assert [s.name for s in se_sites_of(create_model("res_se_net20"))] == BRIDGES
    assert [s.stage for s in se_sites_of(create_model("res_se_net20"))] == [2, 3]


def test_hooks_replace_and_then_leave_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = create_model("res_se_net20").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        seen: dict[str, torch.Tensor] = {}
        with record_gates(model, lambda n, w: seen.__setitem__(n, w)):
            assert torch.equal(model(x), ref)
        assert sorted(seen) == BRIDGES and seen[BRIDGES[0]].shape == (4, 32)
        assert all(not m.record and m.last_weights is None for m in model.se_modules().values())
        with gate_override(model, {n: "one" for n in BRIDGES}):
            removed = model(x)
        with gate_override(model, {n: torch.ones(m.channels) for n, m in model.se_modules().items()}):
            assert torch.equal(model(x), removed)
        assert not torch.equal(removed, ref)
        assert torch.equal(model(x), ref)  # hooks gone


def test_removing_an_se_block_the_model_lacks_is_refused() -> None:
    with pytest.raises(RessenetError, match="resnet20 has no SE blocks at all"):
        with gate_override(create_model("resnet20"), {BRIDGES[0]: "one"}, what="resnet20"):
            pass
    with pytest.raises(RessenetError, match="no such SE block.*layer2.0.shortcut.se_after"):
        with gate_override(create_model("res_se_net20"), {"layer1.0.se": "one"}):
            pass


# --- analyze() on run directories ------------------------------------------------------------------------------
def test_gate_forced_constant_through_its_bias(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _constant_copy(runs["rsn1"], tmp_path / "const", bias=2.0)
    md = analyze([run], tmp_path / "out", device="cpu")
    gates = {r["block"]: r for r in _read(md.parent / "gates.csv")}
    assert sorted(gates) == BRIDGES
    for r in gates.values():
        assert float(r["gate_std_max"]) == 0.0
        assert float(r["between_class_var"]) == 0.0 and float(r["within_class_var"]) == 0.0
        assert float(r["selectivity_ratio"]) == 0.0 and float(r["eta2"]) == 0.0
        assert r["constant"] == "1"
        assert float(r["gate_mean"]) == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-6)
    rel = [r for r in _read(md.parent / "reliance.csv") if r["replacement"] == "mean"]
    assert {r["target"] for r in rel} == set(BRIDGES) | {"all"}
    for r in rel:  # replacing a constant gate by its mean changes nothing
        assert float(r["drop"]) == 0.0 and int(r["lost"]) == 0 and int(r["gained"]) == 0
        assert float(r["ci_low"]) == 0.0 and float(r["ci_high"]) == 0.0
    text = md.read_text()
    assert "a learned per-channel scale that the bridge's batch norm could carry" in text
    assert "is dead (zero variance over all test images" in text  # a gate that never moves is called dead


def test_removing_a_gate_of_one_costs_nothing(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _constant_copy(runs["rsn1"], tmp_path / "ones", bias=20.0)  # sigmoid(20) is 1.0 in float32
    md = analyze([run], tmp_path / "out", device="cpu")
    rel = _read(md.parent / "reliance.csv")
    assert {(r["target"], r["replacement"]) for r in rel} == {(t, h) for t in BRIDGES + ["all"]
                                                              for h in ("mean", "one")}
    for r in rel:
        assert float(r["drop"]) == 0.0 and float(r["top1"]) == float(r["intact_top1"])
        assert int(r["lost"]) + int(r["gained"]) == 0


def test_removal_refused_for_a_checkpoint_without_that_block(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(RessenetError, match=r"resnet20 .*has no SE blocks at all"):
        analyze([runs["resnet"]], tmp_path / "out", device="cpu", blocks=[BRIDGES[0]])
    with pytest.raises(RessenetError, match="no such SE block"):
        analyze([runs["rsn1"], runs["se_resnet"]], tmp_path / "out", device="cpu", blocks=[BRIDGES[0]])
    assert not (tmp_path / "out").exists()  # refused before anything was computed or written


def test_run_without_se_blocks_is_reported_as_such(runs: dict[str, Path], tmp_path: Path) -> None:
    md = analyze([runs["resnet"]], tmp_path / "out", device="cpu")
    text = md.read_text()
    assert "resnet20 has no SE blocks (placement none)" in text
    assert _read(md.parent / "gates.csv") == [] and _read(md.parent / "reliance.csv") == []


def test_outputs_and_aggregation_over_seeds(runs: dict[str, Path], tmp_path: Path) -> None:
    from ressenet.engine.evaluation import evaluate_checkpoint

    out = tmp_path / "out"
    md = analyze([runs["rsn1"], runs["rsn2"], runs["se_resnet"], runs["resnet"]], out, device="cpu")
    assert md == out / "analysis.md"
    for name in ("analysis.md", "gates.csv", "gate_channels.csv", "gate_class_means.csv", "reliance.csv",
                 "across_runs.csv", "selectivity.png", "reliance.png", "gates_res_se_net20_synthetic_4it.png",
                 "class_gates_res_se_net20_synthetic_4it_s1.png", "gates_se_resnet20_synthetic_4it.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    text = md.read_text()
    for fig in out.glob("*.png"):
        assert f"]({fig.name})" in text
    assert "## res_se_net20 (Res-SE-Net)" in text and "## Across models" in text and "### Findings" in text
    assert "(mean ± SD over 2 runs)" in text and "sample std" not in text and "mean ± std" not in text
    # Setting a gate to 1 is an intervention on trained weights, not "what the blocks contribute" or a removal.
    assert "BatchNorm statistics not recalibrated" in text and "(removed)" not in text
    assert "not adjusted for multiplicity" in text  # per-run McNemar intervals
    assert "no test compares them, so the rows are listed, not ranked" in text

    gates = _read(out / "gates.csv")
    assert len(gates) == 2 + 2 + 9  # two bridge SE blocks per Res-SE-Net run, nine residual ones in SE-ResNet-20
    assert len(_read(out / "gate_channels.csv")) == 2 * (32 + 64) + 3 * (16 + 32 + 64)
    assert {r["site"] for r in gates} == {"bridge_after", "residual"}
    across = [r for r in _read(out / "across_runs.csv") if r["model"] == "res_se_net20"]
    ratio = [r for r in across if r["block"] == BRIDGES[1] and r["metric"] == "ratio"]
    assert len(ratio) == 1 and ratio[0]["n"] == "2" and ratio[0]["std"] != ""
    vals = [float(r["selectivity_ratio"]) for r in gates if r["model"] == "res_se_net20" and r["block"] == BRIDGES[1]]
    assert float(ratio[0]["mean"]) == pytest.approx(np.mean(vals), rel=1e-4)

    # The intact pass is the engine's evaluation: same top-1 as `ressenet eval`.
    rel = [r for r in _read(out / "reliance.csv") if r["run"] == str(runs["se_resnet"])]
    assert len(rel) == 2 * (9 + 1)
    ev = evaluate_checkpoint(runs["se_resnet"] / "last.pt", device="cpu")
    assert float(rel[0]["intact_top1"]) == pytest.approx(ev["top1"], abs=1e-3)


def test_fused_group_folder_and_cli_entry(runs: dict[str, Path], tmp_path: Path) -> None:
    """A folder of run directories (a fused group's --out) expands to its members; add_parser/cmd_analyze work."""
    parser = argparse.ArgumentParser(prog="ressenet")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", str(runs["rsn1"].parent), "--out", str(tmp_path / "o"), "--device", "cpu",
                              "--no-reliance"])
    assert args.func(args) == 0
    assert {r["model"] for r in _read(tmp_path / "o" / "gates.csv")} == {"res_se_net20", "se_resnet20"}
    assert _read(tmp_path / "o" / "reliance.csv") == []

    args = parser.parse_args(["analyze", str(runs["rsn1"]), "--out", str(tmp_path / "p"), "--device", "cpu",
                              "--block", BRIDGES[1]])
    assert args.func(args) == 0
    assert {r["target"] for r in _read(tmp_path / "p" / "reliance.csv")} == {BRIDGES[1]}

    with pytest.raises(RessenetError, match="does not exist"):
        analyze([tmp_path / "nope"], tmp_path / "q")


def test_gate_constant_in_every_run_and_dead_in_some_reads_as_one_sentence() -> None:
    from types import SimpleNamespace

    from ressenet.analysis.prose import group_findings
    from ressenet.experiments.stats import summarize

    stds = [(0, 0.0), (1, 0.004), (2, 0.0)]  # near-constant in all three runs, exactly constant in seeds 0 and 2
    block = {"site": SimpleNamespace(name="layer2.0.shortcut.se_before", kind="bridge_before"), "constant": 3,
             "n": 3, "std_max_runs": stds, "std_max": summarize([v for _, v in stds]),
             "eta2": summarize([0.0, 0.1, 0.0])}
    runs = [SimpleNamespace(reliance=[]) for _ in stds]
    first = group_findings(runs, [block], [], constant_std=0.02, pct=95)[0]
    assert first.startswith("The gate of `layer2.0.shortcut.se_before` (a bridge SE, before the conv) is nearly the "
                            "same for every image in all 3 runs (largest per-channel std ")
    assert first.endswith("below 0.02), and dead (zero variance over all test images) in seeds 0, 2: a learned "
                          "per-channel scale that the bridge's conv1x1 could carry.")
