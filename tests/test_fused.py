"""Fused training (engine/fused.py) on the CPU: members equal separate runs, exact resume, skipping, names."""
from __future__ import annotations

import json
import os
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
from ressenet.engine.train import evaluate_checkpoint, train
from ressenet.errors import RessenetError

REPO = Path(__file__).resolve().parents[1]
BASE = {"data.dataset": "synthetic", "data.train_limit": 256, "data.test_limit": 128, "optim.batch_size": 16,
        "optim.iters": 24, "optim.milestones": [12, 18], "run.eval_every": 12, "run.log_every": 4,
        "run.ckpt_every": 6, "run.progress": "none", "run.device": "cpu", "run.compile": False}
# Mixed families and seeds: what the paper's comparison fuses.
MEMBERS = [("resnet20", 1), ("res_se_net20", 2), ("resnet20_nobridge", 3)]


def _members(out: Path, members=MEMBERS) -> list:
    cfgs = []
    for model, seed in members:
        cfgs += fused_configs(dict(BASE), [model], [seed], str(out))
    return cfgs


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _drop_times(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_second")} for r in recs]


def test_fused_members_equal_separate_runs(tmp_path):
    # The CPU mechanism steps members one after another with the single-run step: bit-identical, not just close.
    fused = train_fused(_members(tmp_path / "fused"))
    for (model, seed), summary in zip(MEMBERS, fused):
        out = tmp_path / "alone" / f"{model}-s{seed}"
        cfg = fused_configs(dict(BASE), [model], [seed], str(tmp_path / "alone"))[0]
        alone = train(cfg)
        member = tmp_path / "fused" / f"{model}-s{seed}"
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


def test_extracted_member_evaluates_as_inside_the_group(tmp_path):
    summaries = train_fused(_members(tmp_path, MEMBERS[:2]))
    for (model, seed), s in zip(MEMBERS[:2], summaries):
        res = evaluate_checkpoint(tmp_path / f"{model}-s{seed}" / "last.pt", device="cpu")
        assert res["model"] == model
        assert res["top1"] == s["test_top1"] and res["top5"] == s["test_top5"]


def test_finished_member_is_not_retrained(tmp_path, capsys):
    train_fused(_members(tmp_path, MEMBERS[:1]))
    done = tmp_path / "resnet20-s1"
    stamps = {p.name: p.stat().st_mtime_ns for p in done.iterdir()}
    summaries = train_fused(_members(tmp_path, MEMBERS[:2]))
    assert "already finished; not retrained" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in done.iterdir()} == stamps
    assert [s["model"] for s in summaries] == ["resnet20", "res_se_net20"]


def _cli_cmd(out: Path, iters: int) -> list[str]:
    return [sys.executable, "-m", "ressenet", "train", "--model", "resnet20,se_resnet20", "--seed", "4,5",
            "--dataset", "synthetic", "--set", "data.train_limit=256", "--set", "data.test_limit=64",
            "--batch-size", "16", "--iters", str(iters), "--milestones", "20,30", "--ckpt-every", "2",
            "--log-every", "2", "--eval-every", "40", "--device", "cpu", "--no-compile", "--progress", "none",
            "--out", str(out)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # the same kernels in every process: bit-exact comparisons
    return env


@pytest.mark.slow
def test_fused_group_resumes_bit_exactly_after_sigkill(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cli_cmd(ref, 40), env=_env(), check=True, capture_output=True)
    proc = subprocess.Popen(_cli_cmd(killed, 40), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    subprocess.run(_cli_cmd(killed, 40), env=_env(), check=True, capture_output=True)
    for name in ("resnet20-s4", "resnet20-s5", "se_resnet20-s4", "se_resnet20-s5"):
        a = load_checkpoint(ref / name / "last.pt")["model"]
        b = load_checkpoint(killed / name / "last.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert _drop_times(_metrics(ref / name / "metrics.jsonl")) == \
            _drop_times(_metrics(killed / name / "metrics.jsonl"))


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
