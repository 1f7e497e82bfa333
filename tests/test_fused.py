"""Fused training (engine/fused.py) on the CPU: members equal separate runs, exact resume, skipping, names."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ressenet.cli import main as cli_main
from ressenet.engine.checkpoint import load_checkpoint
from ressenet.engine.fused import FusedGroup, fused_configs, train_fused
from ressenet.engine.evaluation import evaluate_checkpoint
from ressenet.engine.train import train
from ressenet.errors import RessenetError
from tiny import signal_during_evaluation, subprocess_env

BASE = {"data.dataset": "synthetic", "data.train_limit": 256, "data.test_limit": 128, "optim.batch_size": 16,
        "optim.iters": 24, "optim.milestones": [12, 18], "run.eval_every": 12, "run.log_every": 4,
        "run.ckpt_every": 6, "run.progress": "none", "run.device": "cpu", "run.compile": False}
# Mixed families and seeds: what the paper's comparison fuses.
MEMBERS = [("resnet20", 1), ("res_se_net20", 2), ("resnet20_nobridge", 3)]


# The float64 comparisons: batch 4 (float64 convolutions are slow on a CPU, and four images exercise the same
# arithmetic as sixteen), both lr milestones inside 12 iterations.
FLOAT64 = {"optim.batch_size": 4, "optim.iters": 12, "optim.milestones": [4, 8], "run.eval_every": 6,
           "run.ckpt_every": 6}


def _members(out: Path, members=MEMBERS, over: dict | None = None) -> list:
    cfgs = []
    for model, seed in members:
        cfgs += fused_configs({**BASE, **(over or {})}, [model], [seed], str(out))
    return cfgs


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _drop_times(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_second")} for r in recs]


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One finished fused group of MEMBERS (24 iterations), shared by the tests that only read it or copy it."""
    root = tmp_path_factory.mktemp("fused")
    return root, train_fused(_members(root))


def test_fused_members_equal_separate_runs(tmp_path, fused_run):
    # The CPU mechanism steps members one after another with the single-run step: bit-identical, not just close.
    root, fused = fused_run
    for (model, seed), summary in zip(MEMBERS, fused):
        out = tmp_path / "alone" / f"{model}-s{seed}"
        cfg = fused_configs(dict(BASE), [model], [seed], str(tmp_path / "alone"))[0]
        alone = train(cfg)
        member = root / f"{model}-s{seed}"
        a, b = load_checkpoint(member / "last.pt")["model"], load_checkpoint(out / "last.pt")["model"]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), model
        assert _drop_times(_metrics(member / "metrics.jsonl")) == _drop_times(_metrics(out / "metrics.jsonl"))
        assert (summary["test_top1"], summary["params"], summary["seed"]) == (alone["test_top1"], alone["params"],
                                                                              alone["seed"])
        # The member's own parameter count, not the group's.
        from ressenet.models import count_params, create_model
        assert summary["params"] == count_params(create_model(model))
        cfg_yaml = (member / "config.yaml").read_text()
        assert "fused_with" in cfg_yaml and "resnet20_nobridge-s3" in cfg_yaml


def test_extracted_member_evaluates_as_inside_the_group(fused_run):
    root, summaries = fused_run
    for (model, seed), s in zip(MEMBERS, summaries):
        res = evaluate_checkpoint(root / f"{model}-s{seed}" / "last.pt", device="cpu")
        assert res["model"] == model
        assert res["top1"] == s["test_top1"] and res["top5"] == s["test_top5"]


def test_finished_member_is_not_retrained(tmp_path, capsys, fused_run):
    # A member finished in an earlier group (copied in: run.out is result-neutral), then a group that holds it.
    shutil.copytree(fused_run[0] / "resnet20-s1", tmp_path / "resnet20-s1")
    done = tmp_path / "resnet20-s1"
    stamps = {p.name: p.stat().st_mtime_ns for p in done.iterdir()}
    capsys.readouterr()
    summaries = train_fused(_members(tmp_path, MEMBERS[:2]))
    assert "already finished; not retrained" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in done.iterdir()} == stamps
    assert [s["model"] for s in summaries] == ["resnet20", "res_se_net20"]


def _float64(group: FusedGroup) -> FusedGroup:
    """The group's members in float64 (models, batches, accumulators): rounding then costs about 1e-15 a step, so
    two ways of computing the same training agree to ~1e-10 after dozens of steps. In float32 they do not stay
    close: a first step's 1e-7 difference grows about tenfold per step at this tiny batch and lr 0.1 (training is
    chaotic there), so an fp32 comparison over many steps would test the chaos, not the arithmetic."""
    for m in group.members:
        m.model.double()
        m.acc = m.acc.double()
        m.loader.next = (lambda nxt: lambda: (lambda xy: (xy[0].double(), xy[1]))(nxt()))(m.loader.next)
    return group


GROUPED = MEMBERS + [("se_resnet20", 4), ("res_se_net20_se_before_conv", 5), ("res_se_net20_se_all_identity", 6)]


def test_grouped_members_equal_separate_runs(tmp_path):
    # One network with convolutions grouped over the members (HFTA) against the single-run step member by member;
    # every family (all SE sites, a member without bridges) and both lr milestones, in float64.
    seq = _float64(FusedGroup(_members(tmp_path / "seq", GROUPED, FLOAT64), mechanism="sequential"))
    grp = _float64(FusedGroup(_members(tmp_path / "grp", GROUPED, FLOAT64), mechanism="grouped"))
    for _ in range(FLOAT64["optim.iters"]):
        seq.step()
        grp.step()
    seq.sync()
    grp.sync()
    for a, b in zip(seq.members, grp.members):
        assert a.state.it == b.state.it == FLOAT64["optim.iters"]
        assert a.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # past both milestones
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys()  # no parameter of another family leaks into a member
        worst = max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)
        assert worst < 1e-7, (a.name, worst)
        ma, mb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
        assert ma.keys() == mb.keys()
        assert max((ma[k]["momentum_buffer"] - mb[k]["momentum_buffer"]).abs().max().item() for k in ma) < 1e-7
        assert torch.allclose(a.acc, b.acc, rtol=1e-10, atol=0)


def test_grouped_float32_first_step_and_files(tmp_path):
    seq_cfgs, grp_cfgs = _members(tmp_path / "seq", MEMBERS), _members(tmp_path / "grp", MEMBERS)
    for c in seq_cfgs + grp_cfgs:
        c.run.precision = "fp32"  # float32 whatever auto picks on this CPU
    seq = FusedGroup(seq_cfgs, mechanism="sequential")
    grp = FusedGroup(grp_cfgs, mechanism="grouped")
    seq.step()
    grp.step()
    grp.sync()
    for a, b in zip(seq.members, grp.members):
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa) < 1e-5
    grp.release_locks()
    seq.release_locks()
    summaries = train_fused(_members(tmp_path / "run", MEMBERS), mechanism="grouped")
    for (model, seed), s in zip(MEMBERS, summaries):
        member = tmp_path / "run" / f"{model}-s{seed}"
        assert "fused_mechanism: grouped" in (member / "config.yaml").read_text()
        res = evaluate_checkpoint(member / "last.pt", device="cpu")  # the member's own, unfused weights
        assert res["model"] == model and res["top1"] == s["test_top1"]
        from ressenet.models import count_params, create_model
        assert s["params"] == count_params(create_model(model))


class _MemberOf(torch.nn.Module):
    """Member ``i`` as computed inside the fused network: every member sees the same images."""

    def __init__(self, net: torch.nn.Module, i: int) -> None:
        super().__init__()
        self.net, self.i = net, i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.repeat(1, self.net.n, 1, 1))[self.i]


def test_extracted_member_evaluates_as_inside_the_fused_network(tmp_path):
    from ressenet.engine.evaluation import eval_split

    grp = FusedGroup(_members(tmp_path, MEMBERS), mechanism="grouped")
    for _ in range(8):
        grp.step()
    grp.sync()
    try:
        for i, m in enumerate(grp.members):
            inside = eval_split(_MemberOf(grp.grouped.net, i), grp.data.test, grp.data, m.cfg, m.device,
                                m.channels_last, m.amp, m.dist)
            alone = m.evaluate("test")  # the member's own model, written back from the fused one
            assert inside.top1 == alone.top1 and inside.top5 == alone.top5, m.name
            assert inside.loss == pytest.approx(alone.loss, rel=1e-4)
    finally:
        grp.release_locks()


def _assert_same(seq: FusedGroup, grp: FusedGroup) -> None:
    seq.sync()
    grp.sync()
    for a, b in zip(seq.members, grp.members):
        assert a.state.it == b.state.it, a.name
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa) < 1e-7, a.name
        ma, mb = a.optimizer.state_dict(), b.optimizer.state_dict()
        assert max((ma["state"][k]["momentum_buffer"] - mb["state"][k]["momentum_buffer"]).abs().max().item()
                   for k in ma["state"]) < 1e-7, a.name
        assert ma["param_groups"][0]["lr"] == mb["param_groups"][0]["lr"], a.name  # what last.pt records


def test_grouped_levels_members_at_different_iterations(tmp_path):
    # A kill between two members' checkpoints resumes them at different iterations: the one behind takes
    # single-run steps until level, then the group fuses (float64, against the single-run step throughout).
    seq = _float64(FusedGroup(_members(tmp_path / "seq", MEMBERS, FLOAT64), mechanism="sequential"))
    grp = _float64(FusedGroup(_members(tmp_path / "grp", MEMBERS, FLOAT64), mechanism="grouped"))
    for g in (seq, grp):
        for _ in range(5):
            g.members[1].step()  # this member is 5 iterations ahead
    for _ in range(FLOAT64["optim.iters"]):
        seq.step()
        grp.step()
    assert grp.grouped is not None and len(grp.grouped.names) == 3  # fused once level
    _assert_same(seq, grp)


def test_grouped_refuses_after_a_member_leaves(tmp_path):
    # A member stops (non-finite loss, or finished): the group writes back, fuses the rest and goes on exactly.
    seq = _float64(FusedGroup(_members(tmp_path / "seq", MEMBERS, FLOAT64), mechanism="sequential"))
    grp = _float64(FusedGroup(_members(tmp_path / "grp", MEMBERS, FLOAT64), mechanism="grouped"))
    for step in range(11):
        if step == 7:
            for g in (seq, grp):
                g.sync()  # a boundary
                g.failed[g.members[0].name] = "stopped for the test"
        seq.step()
        grp.step()
    assert grp.grouped.names == [m.name for m in grp.members[1:]]
    _assert_same(seq, grp)


def test_grouped_refusals(tmp_path):
    cfgs = _members(tmp_path / "b", MEMBERS[:2])
    for c in cfgs:
        c.run.grad_stats_every = 2
    with pytest.raises(RessenetError, match="--log-grad-stats"):
        FusedGroup(cfgs, mechanism="grouped")
    cfgs = _members(tmp_path / "c", MEMBERS[:2])
    for c in cfgs:
        c.run.precision = "fp16"
    with pytest.raises(RessenetError, match="fp32 or bf16"):
        FusedGroup(cfgs, mechanism="grouped")
    # Bottleneck and basic blocks (the released layout at depth 44) cannot share one network: said before any
    # directory exists.
    cfgs = [c for model in ("resnet44", "se_resnet44")
            for c in fused_configs(dict(BASE, **{"model.layout": "released"}), [model], [1], str(tmp_path / "d"))]
    with pytest.raises(RessenetError, match="block type"):
        FusedGroup(cfgs, mechanism="grouped")
    assert not (tmp_path / "d").exists()


def _cli_cmd(out: Path, iters: int, mechanism: str = "sequential") -> list[str]:
    return [sys.executable, "-m", "ressenet", "train", "--model", "resnet20,se_resnet20", "--seed", "4,5",
            "--fused-mechanism", mechanism,
            "--dataset", "synthetic", "--set", "data.train_limit=256", "--set", "data.test_limit=64",
            "--batch-size", "16", "--iters", str(iters), "--milestones", "20,30", "--ckpt-every", "2",
            "--log-every", "2", "--eval-every", "40", "--device", "cpu", "--no-compile", "--progress", "none",
            "--out", str(out)]


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["sequential", "grouped"])
def test_fused_group_resumes_bit_exactly_after_sigkill(tmp_path, mechanism):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    # The reference trains alongside the killed group (one thread each): only its end result is compared.
    ref_proc = subprocess.Popen(_cli_cmd(ref, 40, mechanism), env=subprocess_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(_cli_cmd(killed, 40, mechanism), env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = killed / "se_resnet20-s5" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and load_checkpoint(last)["iter"] >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the group finished before it could be killed; lengthen it"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "resnet20-s4" / "summary.json").exists()
    subprocess.run(_cli_cmd(killed, 40, mechanism), env=subprocess_env(), check=True, capture_output=True)
    ref_err = ref_proc.communicate()[1]
    assert ref_proc.returncode == 0, ref_err
    for name in ("resnet20-s4", "resnet20-s5", "se_resnet20-s4", "se_resnet20-s5"):
        a = load_checkpoint(ref / name / "last.pt")["model"]
        b = load_checkpoint(killed / name / "last.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert _drop_times(_metrics(ref / name / "metrics.jsonl")) == \
            _drop_times(_metrics(killed / name / "metrics.jsonl"))


def test_signal_during_a_members_evaluation_checkpoints_every_member(tmp_path, monkeypatch, capsys):
    # A SIGTERM landing while the first member evaluates: every member checkpoints at one later step, none is
    # announced as checkpointed without a last.pt.
    signal_during_evaluation(monkeypatch, at_iter=12, model=MEMBERS[0][0])
    with pytest.raises(SystemExit) as e:
        train_fused(_members(tmp_path, over={"run.ckpt_every": 0}))
    assert e.value.code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM at iteration 13; every member checkpointed" in capsys.readouterr().err
    for model, seed in MEMBERS:
        assert load_checkpoint(tmp_path / f"{model}-s{seed}" / "last.pt")["iter"] == 13, model


def test_model_typo_creates_nothing_and_suggests(tmp_path, capsys):
    out = tmp_path / "x"
    rc = cli_main(["train", "--model", "resnet20,res_se_nett20", "--seed", "1,2", "--dataset", "synthetic",
                   "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "res_se_nett20" in err and "did you mean 'res_se_net20'" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_group_refuses_mixed_depths_and_protocols(tmp_path):
    with pytest.raises(RessenetError, match="share one depth"):
        fused_configs(dict(BASE), ["resnet20", "resnet56"], [1], str(tmp_path))
    cfgs = _members(tmp_path, MEMBERS[:2])
    cfgs[1].optim.lr = 0.05
    with pytest.raises(RessenetError, match="optim.lr"):
        FusedGroup(cfgs)
    with pytest.raises(RessenetError, match="needs CUDA"):
        FusedGroup(_members(tmp_path, MEMBERS[:1]), mechanism="graphs")


def test_several_members_need_out(capsys):
    assert cli_main(["train", "--model", "resnet20", "--seed", "1,2", "--dataset", "synthetic"]) == 2
    assert "need --out DIR" in capsys.readouterr().err
