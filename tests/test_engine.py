"""Training engine: run directory contract, exact resume after SIGKILL, errors, config precedence, eval, DDP."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ressenet.cli import main as cli_main
from ressenet.engine.checkpoint import load_checkpoint
from ressenet.engine.config import Config, ConfigError, load_config
from ressenet.engine import setup as engine_setup
from ressenet.engine.setup import CPU_COMPILE_MIN_ITERS, resolve_compile, resolve_precision
from ressenet.engine.run import lr_at
from ressenet.engine.setup import resolve_eval_batch_size
from ressenet.engine.evaluation import evaluate_checkpoint
from ressenet.engine.train import train
from ressenet.errors import RessenetError
from tiny import DDP_COMMON, HAS_TENSORBOARD, SMOKE, signal_during_evaluation, subprocess_env, tiny_config


# A small, fast, learnable problem: synthetic 10-class images, resnet20 at batch 32.


def smoke_config(out: Path, **over) -> Config:
    return tiny_config(out, **{"data.train_limit": 512, "data.test_limit": 256, "optim.iters": 20,
                               "optim.milestones": [10, 15], "run.eval_every": 10, "run.log_every": 5,
                               "run.ckpt_every": 10, "run.compile": None, **over})


def _train_cmd(out: Path, iters: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ressenet", "train", *SMOKE, "--iters", str(iters), "--out", str(out),
            "--ckpt-every", "4", "--eval-every", "20", "--log-every", "4", *extra]


def test_lr_schedule_is_the_papers():
    cfg = Config()
    assert (cfg.optim.iters, cfg.optim.batch_size, cfg.optim.momentum, cfg.optim.weight_decay, cfg.run.seed) == (
        64_000, 128, 0.9, 1e-4, 12)
    assert not cfg.optim.nesterov
    assert lr_at(cfg, 0) == 0.1 and lr_at(cfg, 31_999) == 0.1
    assert lr_at(cfg, 32_000) == pytest.approx(0.01) and lr_at(cfg, 48_000) == pytest.approx(0.001)


def test_compile_default_is_cuda_graphs_on_one_gpu_and_long_cpu_runs(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    long = CPU_COMPILE_MIN_ITERS
    assert resolve_compile(None, "auto", gpu) == (True, "reduce-overhead")
    assert resolve_compile(None, "auto", gpu, world_size=2) == (False, "reduce-overhead")  # DDP stays eager
    assert resolve_compile(None, "auto", cpu, iters=long - 1) == (False, "default")  # short runs stay eager
    monkeypatch.setattr(engine_setup, "cpu_compiler_found", lambda: True)
    assert resolve_compile(None, "auto", cpu, iters=long) == (True, "default")
    assert resolve_compile(None, "auto", cpu, world_size=2, iters=long) == (False, "default")
    monkeypatch.setattr(engine_setup, "cpu_compiler_found", lambda: False)
    assert resolve_compile(None, "auto", cpu, iters=long) == (False, "default")  # no C++ compiler: eager
    assert resolve_compile(True, "auto", cpu) == (True, "default")
    assert resolve_compile(False, "auto", gpu) == (False, "reduce-overhead")
    assert resolve_compile(True, "max-autotune", gpu) == (True, "max-autotune")
    cfg = load_config(None, {"run.compile": "true", "run.compile_mode": "reduce-overhead"})
    assert cfg.run.compile is True and cfg.run.compile_mode == "reduce-overhead"
    assert load_config(None, {}).run.compile is None
    with pytest.raises(ConfigError, match="run.compile_mode"):
        load_config(None, {"run.compile_mode": "fast"})


@pytest.mark.parametrize("compiler", [True, False], ids=["with-compiler", "without-compiler"])
def test_the_paper_run_compiles_on_a_cpu_with_a_compiler(monkeypatch, compiler):
    # The paper's 64,000-iteration run compiles by default on a CPU exactly when a C++ compiler is found; the probe is
    # replaced, so the decision is pinned whether or not this machine has g++/clang++.
    monkeypatch.setattr(engine_setup, "cpu_compiler_found", lambda: compiler)
    assert Config().optim.iters >= CPU_COMPILE_MIN_ITERS
    assert resolve_compile(None, "auto", torch.device("cpu"), iters=Config().optim.iters) == (compiler, "default")
    assert resolve_compile(True, "auto", torch.device("cpu"), iters=Config().optim.iters) == (True, "default")
    assert resolve_compile(False, "auto", torch.device("cpu"), iters=Config().optim.iters) == (False, "default")


def test_cpu_compiler_probe_answers_without_raising():
    # Whatever this machine has, the probe is a plain yes/no (it swallows the private API's errors).
    assert isinstance(engine_setup.cpu_compiler_found(), bool)


def test_compile_without_a_cpu_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_setup, "cpu_compiler_found", lambda: False)
    with pytest.raises(RessenetError, match="needs a C..? compiler.*--no-compile"):
        train(smoke_config(tmp_path / "run", **{"optim.iters": 4, "run.compile": True}))


def test_precision_auto_follows_the_cpus_bf16_arithmetic(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(engine_setup, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32"  # an explicit choice wins
    assert resolve_precision("auto", cpu, recorded="fp32") == "fp32"  # a resumed run keeps its start's choice
    monkeypatch.setattr(engine_setup, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("auto", cpu, recorded="bf16") == "bf16"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(RessenetError, match="fp16 needs a GPU"):
        resolve_precision("fp16", cpu)
    assert isinstance(engine_setup.cpu_has_native_bf16(), bool)  # the real probe answers without raising


def test_cpu_compile_default_follows_the_precision_and_a_resumed_choice(monkeypatch):
    cpu, long = torch.device("cpu"), CPU_COMPILE_MIN_ITERS
    monkeypatch.setattr(engine_setup, "cpu_compiler_found", lambda: True)
    monkeypatch.setattr(engine_setup, "cpu_bf16_compile_pays", lambda: False)  # AMX: tests/test_measured.py
    assert resolve_compile(None, "auto", cpu, iters=long, precision="fp32") == (True, "default")
    assert resolve_compile(None, "auto", cpu, iters=long, precision="bf16") == (False, "default")
    assert resolve_compile(True, "auto", cpu, iters=long, precision="bf16") == (True, "default")
    # Resumed: what config.yaml recorded, whatever auto would say now.
    assert resolve_compile(None, "auto", cpu, iters=long, precision="fp32", recorded=False) == (False, "default")
    assert resolve_compile(None, "auto", cpu, iters=10, precision="bf16", recorded="default") == (True, "default")


def test_a_resumed_run_keeps_the_precision_and_compile_it_started_with(tmp_path, monkeypatch):
    # Started where auto meant fp32, resumed where auto means bf16: it goes on in fp32, eager, as it began.
    out = tmp_path / "run"
    monkeypatch.setattr(engine_setup, "cpu_has_native_bf16", lambda: False)
    train(smoke_config(out, **{"optim.iters": 4, "run.ckpt_every": 2}))
    meta = yaml.safe_load((out / "config.yaml").read_text())["meta"]
    assert (meta["precision"], meta["compile"]) == ("fp32", False)
    (out / "summary.json").unlink()
    monkeypatch.setattr(engine_setup, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(engine_setup, "CPU_COMPILE_MIN_ITERS", 1)  # auto would now compile, were it a new run
    summary = train(smoke_config(out, **{"optim.iters": 4, "run.ckpt_every": 2}))
    assert summary is not None and summary["iters"] == 4
    meta = yaml.safe_load((out / "config.yaml").read_text())["meta"]
    assert (meta["precision"], meta["compile"]) == ("fp32", False)
    # A new run on the same machine takes the new choice.
    train(smoke_config(tmp_path / "new", **{"optim.iters": 4}))
    assert yaml.safe_load((tmp_path / "new" / "config.yaml").read_text())["meta"]["precision"] == "bf16"


def test_eval_batch_default_is_per_device():
    assert resolve_eval_batch_size(None, torch.device("cpu")) == 100
    assert resolve_eval_batch_size(None, torch.device("cuda", 0)) == 1000
    assert resolve_eval_batch_size(250, torch.device("cpu")) == 250
    assert load_config(None, {"run.eval_batch_size": "64"}).run.eval_batch_size == 64
    with pytest.raises(ConfigError, match="run.eval_batch_size"):
        load_config(None, {"run.eval_batch_size": "0"})


def test_short_run_writes_the_run_directory(tmp_path):
    out = tmp_path / "run"
    summary = train(smoke_config(out, **{"optim.iters": 40, "optim.milestones": [20, 30], "optim.lr": 0.05}))
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "summary.json"):
        assert (out / name).is_file(), name
    assert not (out / "best.pt").exists()  # no validation split, so no "best" checkpoint
    tree = yaml.safe_load((out / "config.yaml").read_text())
    assert tree["model"]["name"] == "resnet20" and tree["optim"]["iters"] == 40
    assert {"python", "torch", "ressenet", "git_commit", "device"} <= set(tree["meta"])
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in lines] == [5, 10, 15, 20, 25, 30, 35, 40]
    for r in lines:
        assert {"iter", "epoch", "lr", "train_loss", "train_top1", "images_per_second"} <= set(r)
    evals = [r for r in lines if r["kind"] == "eval"]
    assert [r["iter"] for r in evals] == [10, 20, 30, 40]
    assert all({"test_top1", "test_top5", "test_loss"} <= set(r) for r in evals)
    assert lines[0]["lr"] == 0.05 and lines[-1]["lr"] == pytest.approx(0.0005)
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]  # it learns the synthetic classes
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary
    assert saved["test_top1"] == evals[-1]["test_top1"] and saved["test_top5"] == evals[-1]["test_top5"]
    assert saved["best_test_top1"] == max(r["test_top1"] for r in evals)
    assert saved["params"] == 272_474 and saved["iters"] == 40 and saved["data"]["num_classes"] == 10
    assert saved["train_images_per_second"] > 0 and saved["wall_seconds"] > 0
    assert saved["selected_test_top1"] is None
    state = load_checkpoint(out / "last.pt")
    assert state["iter"] == 40 and {"optimizer", "scaler", "data", "rng", "config", "scheduler"} <= set(state)
    # Re-running a finished run returns its summary without training.
    assert train(smoke_config(out, **{"optim.iters": 40, "optim.milestones": [20, 30], "optim.lr": 0.05})) == saved


def test_validation_split_selects_best_checkpoint(tmp_path):
    out = tmp_path / "run"
    summary = train(smoke_config(out, **{"data.val_split": 100}))
    assert (out / "best.pt").is_file()
    assert summary["data"]["val_size"] == 100 and summary["data"]["train_size"] == 412
    assert summary["best_val_iter"] in (10, 20) and summary["selected_test_top1"] is not None
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("val_top1" in r for r in lines if r["kind"] == "eval")
    assert load_checkpoint(out / "best.pt")["iter"] == summary["best_val_iter"]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)
    flat = {f"model.{k}": v for k, v in state["model"].items()}
    for pid, s in state["optimizer"]["state"].items():
        flat[f"momentum.{pid}"] = s["momentum_buffer"]
    return flat


def _assert_bitwise_equal(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{k} differs"


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_sigkill_then_resume_gives_bit_identical_weights(tmp_path, compiled):
    # Compiled too: a long CPU run compiles by default, and its resume must be as exact (the kernels are
    # generated afresh in the resuming process).
    iters, flags = 48, ["--compile" if compiled else "--no-compile"]
    ref = tmp_path / "ref"  # trained alongside the killed run (one thread each): only its end result is compared
    ref_proc = subprocess.Popen(_train_cmd(ref, iters, *flags), env=subprocess_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(run, iters, *flags), env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _wait_for(run / "last.pt", proc)
    time.sleep(0.15)  # somewhere between checkpoints, mid-step
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists(), "the run finished before it could be killed"
    killed_at = load_checkpoint(run / "last.pt")["iter"]
    assert 0 < killed_at < iters

    done = subprocess.run(_train_cmd(run, iters, *flags), env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resuming {run} at iteration {killed_at}" in done.stdout
    ref_err = ref_proc.communicate()[1]
    assert ref_proc.returncode == 0, ref_err
    _assert_bitwise_equal(ref / "last.pt", run / "last.pt")
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in lines] == sorted({r["iter"] for r in lines})  # no duplicated or lost lines
    ref_lines = [json.loads(ln) for ln in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in lines] == [r["train_loss"] for r in ref_lines]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_sigint_checkpoint_and_exit_cleanly(tmp_path, sig):
    run = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(run, 400, "--ckpt-every", "1000"), env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(run / "metrics.jsonl", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "checkpoint saved" in err and "Traceback" not in err
    stopped = load_checkpoint(run / "last.pt")["iter"]
    assert 4 <= stopped < 400


def test_signal_during_an_evaluation_still_checkpoints_before_it_exits(tmp_path, monkeypatch, capsys):
    # A SIGTERM landing while a boundary evaluates (no checkpoint due there) must not end the run with "checkpoint
    # saved" and no last.pt: the run takes one more step, checkpoints and exits.
    signal_during_evaluation(monkeypatch, at_iter=10)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        train(smoke_config(out, **{"run.ckpt_every": 0, "run.progress": "none"}))
    assert e.value.code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM at iteration 11; checkpoint saved" in capsys.readouterr().err
    assert load_checkpoint(out / "last.pt")["iter"] == 11 and not (out / "summary.json").exists()


def test_corrupt_checkpoint_is_reported(tmp_path, capsys):
    out = tmp_path / "run"
    train(smoke_config(out))
    (out / "summary.json").unlink()
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(RessenetError, match="corrupt or truncated"):
        train(smoke_config(out))
    args = ["train", *SMOKE, "--iters", "20", "--milestones", "10,15", "--eval-every", "10", "--log-every", "5",
            "--ckpt-every", "10", "--progress", "none", "--out", str(out)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt is corrupt or truncated" in err[0]


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = smoke_config(out, **{"optim.lr": 1e30, "run.ckpt_every": 1, "run.log_every": 1, "optim.iters": 30})
    with pytest.raises(RessenetError, match=r"non-finite at iteration (\d+)") as e:
        train(cfg)
    bad = int(e.value.args[0].split("iteration ")[1].split()[0])
    state = load_checkpoint(out / "last.pt")
    assert state["iter"] == bad - 1  # the last good one
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "summary.json").exists()


def test_non_finite_loss_before_any_checkpoint_says_there_is_none(tmp_path):
    out = tmp_path / "run"
    cfg = smoke_config(out, **{"optim.lr": 1e30, "run.ckpt_every": 0, "run.log_every": 1, "run.eval_every": 0,
                               "optim.iters": 30})
    with pytest.raises(RessenetError, match=r"non-finite at iteration (\d+)") as e:
        train(cfg)
    msg = str(e.value)
    assert not (out / "last.pt").exists()
    assert "kept in" not in msg and "no checkpoint was written yet" in msg and "lower --lr or check the data" in msg


def test_out_with_other_config_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    train(smoke_config(out))
    with pytest.raises(RessenetError, match=r"another configuration \(optim.lr: 0.1 -> 0.05"):
        train(smoke_config(out, **{"optim.lr": 0.05}))
    summary = train(smoke_config(out, **{"optim.lr": 0.05}), overwrite=True)
    assert summary["config"]["optim"]["lr"] == 0.05
    # Result-neutral keys (logging, device, progress) do not block a resume.
    assert train(smoke_config(out, **{"optim.lr": 0.05, "run.log_every": 2})) == summary


def test_config_precedence_defaults_yaml_flags(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("optim:\n  lr: 0.2\n  iters: 500\n  milestones: [100, 200]\nrun:\n  seed: 3\n")
    cfg = load_config(yml, {"optim.lr": "0.05", "run.channels_last": "false"})
    assert (cfg.optim.lr, cfg.optim.iters, cfg.optim.milestones, cfg.run.seed) == (0.05, 500, [100, 200], 3)
    assert cfg.optim.momentum == 0.9 and cfg.run.channels_last is False
    from ressenet.cli import build_parser, train_overrides

    args = build_parser().parse_args(["train", "--config", str(yml), "--iters", "700", "--no-nesterov",
                                      "--set", "optim.gamma=0.2", "--milestones", "300,600"])
    cfg = load_config(args.config, train_overrides(args))
    assert (cfg.optim.lr, cfg.optim.iters, cfg.optim.gamma, cfg.optim.milestones) == (0.2, 700, 0.2, [300, 600])
    yml.write_text("optim:\n  lrr: 0.2\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        load_config(yml)
    with pytest.raises(ConfigError, match="optim.milestones"):
        load_config(None, {"optim.milestones": "48000,32000"})
    with pytest.raises(ConfigError, match="not a valid int"):
        load_config(None, {"optim.iters": "many"})


@pytest.mark.parametrize("argv,msg", [
    (["--model", "resnet21"], "unknown model 'resnet21'"),
    (["--iters", "0"], "optim.iters=0 is invalid"),
    (["--dataset", "cifar10", "--data-root", "/nonexistent/x"], "CIFAR-10"),
    (["--set", "optim.foo=1"], "unknown config key"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, argv, msg):
    base = ["train", *SMOKE, "--out", str(tmp_path / "r"), "--iters", "5"]
    assert cli_main(base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err


def test_eval_cli_on_written_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    summary = train(smoke_config(out))
    assert cli_main(["eval", "--checkpoint", str(out / "last.pt"), "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["top1"] == pytest.approx(summary["test_top1"]) and res["top5"] == pytest.approx(summary["test_top5"])
    assert res["images"] == 256 and res["iter"] == 20


def test_real_data_short_run(tmp_path, cifar10_jpeg_root, data_cache_dir):
    """A few iterations on the real CIFAR-10 (JPEG copy), through the image-folder archive and its cache."""
    out = tmp_path / "run"
    cfg = smoke_config(out, **{"model.name": "res_se_net20", "data.dataset": "imagefolder",
                               "data.data_root": str(cifar10_jpeg_root), "data.cache_dir": str(data_cache_dir),
                               "data.train_limit": 0, "data.test_limit": 500, "optim.iters": 10,
                               "run.eval_every": 10})
    summary = train(cfg)
    assert summary["data"]["train_size"] == 50_000 and summary["data"]["test_size"] == 500
    assert summary["data"]["classes"][:2] == ["airplane", "automobile"] and summary["data"]["source"] == "imagefolder"
    # The summary's accuracy is the run's last evaluation (iteration 10, on the 500 test images) ...
    evals = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [rec for rec in evals if rec["kind"] == "eval"]
    assert [rec["iter"] for rec in evals] == [10]
    assert (summary["test_top1"], summary["test_top5"]) == (evals[-1]["test_top1"], evals[-1]["test_top5"])
    assert summary["best_test_top1"] == summary["test_top1"] and summary["best_test_iter"] == 10
    # ... and that of the weights saved in last.pt, re-evaluated from the checkpoint alone on the same images.
    res = evaluate_checkpoint(out / "last.pt", cache_dir=str(data_cache_dir), device="cpu")
    assert res["iter"] == 10 and res["images"] == 500 and res["dataset"] == "imagefolder"
    assert res["top1"] == pytest.approx(summary["test_top1"]) and res["top5"] == pytest.approx(summary["test_top5"])
    assert (summary["test_top1"] * 5) == pytest.approx(round(summary["test_top1"] * 5))  # a count of 500 images


@pytest.mark.slow
def test_ddp_two_processes_gloo_matches_single_process(tmp_path, ddp_run):
    single = tmp_path / "single"
    proc = subprocess.Popen([sys.executable, "-m", "ressenet", "train", *SMOKE, *DDP_COMMON, "--out", str(single)],
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ghost = _ghost_batch_losses(iters=40, lr=0.05, halves=2)  # meanwhile, here (one thread each)
    err = proc.communicate()[1]
    assert proc.returncode == 0, err
    ddp, res = ddp_run  # tiny.ddp_train: the same run under torchrun, two processes
    assert res.returncode == 0, res.stderr[-3000:]
    files = sorted(p.name for p in ddp.iterdir())
    events = [f for f in files if f.startswith("events.out.tfevents.")]  # TensorBoard's, when the extra is there
    assert len(events) == (1 if HAS_TENSORBOARD else 0)
    assert [f for f in files if f not in events] == ["config.yaml", "last.pt", "metrics.jsonl", "summary.json"]
    s = json.loads((ddp / "summary.json").read_text())
    assert s["world_size"] == 2 and s["iters"] == 40 and s["data"]["test_size"] == 256
    a = [json.loads(ln)["train_loss"] for ln in (single / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(ln)["train_loss"] for ln in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 8
    assert abs(a[0] - b[0]) < 0.1 and b[-1] < b[0] and a[-1] < a[0]
    # Exactly what DDP should compute: the same global batches with BatchNorm statistics per half-batch
    # ("ghost batches" of 16), gradients averaged. This pins the sharding and the gradient reduction.
    assert b == pytest.approx(ghost, abs=2e-3)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers through /proc")
def test_ddp_signal_to_one_process_stops_every_process_with_a_checkpoint(tmp_path):
    # torchrun's workers get a signal at slightly different steps; here only rank 1 gets one. Both must stop at
    # the same boundary, rank 0 saving last.pt, instead of one waiting forever in a collective the other left.
    out = tmp_path / "ddp"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "ressenet", "train", *SMOKE, *DDP_COMMON, "--iters", "400", "--ckpt-every", "0",
                             "--eval-every", "0", "--out", str(out)],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        _wait_for(out / "metrics.jsonl", proc)
        workers = _children(proc.pid)
        rank1 = [pid for pid in workers if b"RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")]
        assert len(workers) == 2 and len(rank1) == 1, workers
        os.kill(rank1[0], signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the processes did not stop within 120 s of a signal to rank 1 (one waits on the other)")
    finally:
        if proc.poll() is None:  # torchrun starts its workers in their own sessions: kill them by name
            for pid in [*workers, proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.communicate()
    assert "stopped by SIGTERM at iteration" in err and "checkpoint saved" in err, err[-3000:]
    stopped = load_checkpoint(out / "last.pt")["iter"]
    assert 5 <= stopped < 400 and stopped % 5 == 0  # a log boundary, which both processes reach
    assert not (out / "summary.json").exists()


def _ghost_batch_losses(iters: int, lr: float, halves: int) -> list[float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the OMP_NUM_THREADS=1 subprocesses: the same kernels, the same rounding
    try:
        return _ghost_batch_run(iters, lr, halves)
    finally:
        torch.set_num_threads(threads)


def _ghost_batch_run(iters: int, lr: float, halves: int) -> list[float]:
    import torch.nn.functional as F

    from ressenet.data import TrainLoader
    from ressenet.engine.setup import build_model, load_data

    cfg = smoke_config(Path("unused"), **{"optim.iters": iters, "optim.milestones": [30, 45], "optim.lr": lr})
    data = load_data(cfg)
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg, 10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    loader = TrainLoader(data.train, 32, mean=data.mean, std=data.std, seed=cfg.run.seed, channels_last=True)
    losses, total = [], 0.0
    for it in range(iters):
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, it)
        x, y = loader.next()
        loss = sum(F.cross_entropy(model(xc), yc) for xc, yc in zip(x.chunk(halves), y.chunk(halves))) / halves
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()
        if (it + 1) % 5 == 0:
            losses.append(total / 5)
            total = 0.0
    return losses
