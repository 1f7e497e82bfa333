"""TensorBoard event files: written live with --tensorboard (resume appends at the right step) and by `ressenet
tensorboard RUNS_DIR` from metrics.jsonl; read back with TensorBoard's own event reader and compared with
metrics.jsonl."""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures_runs import make_run
from ressenet.cli import main
from ressenet.engine.checkpoint import load_checkpoint
from ressenet.engine.run import Run
from ressenet.engine.tensorboard import EVENTS_GLOB, TAGS, EventLog
from ressenet.engine.train import train
from tiny import tiny_config

pytest.importorskip("tensorboard", reason="the optional extra `tensorboard` (part of the test extra)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _config(out: Path, **over):
    return tiny_config(out, **{"data.val_split": 64, "run.tensorboard": True, "run.compile": None, **over})


def read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard reads the folder."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point, no sampling
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_from_metrics(run: Path) -> dict[str, list[tuple[int, float]]]:
    """What the events must hold: every train/eval line's scalars, as float32 (TensorBoard stores float32)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] not in ("train", "eval"):
            continue
        for key, tag in TAGS.items():
            if key in rec:
                out.setdefault(tag, []).append((rec["iter"], float(np.float32(rec[key]))))
    return out


def test_training_with_tensorboard_writes_what_metrics_jsonl_holds(tmp_path):
    out = tmp_path / "run"
    train(_config(out))
    events = read_events(out)
    assert events == expected_from_metrics(out)
    assert {"train/loss", "train/top1", "train/lr", "train/images_per_second", "test/top1", "test/top5",
            "test/loss", "val/top1", "val/top5", "val/loss"} <= set(events)
    assert [s for s, _ in events["train/loss"]] == [2, 4, 6, 8] and [s for s, _ in events["test/top1"]] == [4, 8]


def test_a_resumed_run_appends_at_the_right_step(tmp_path):
    out = tmp_path / "run"
    step = Run.step

    def step_then_interrupt(self: Run) -> None:
        step(self)
        if self.state.it == 5:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C: the run checkpoints at 5 and exits

    mp = pytest.MonkeyPatch()
    mp.setattr(Run, "step", step_then_interrupt)
    try:
        with pytest.raises(SystemExit):
            train(_config(out))
    finally:
        mp.undo()
    assert load_checkpoint(out / "last.pt")["iter"] == 5
    # A line and an event past the checkpoint, as a process killed after logging but before checkpointing leaves:
    # resume drops both.
    ghost = {"kind": "train", "iter": 6, "epoch": 0, "lr": 0.1, "train_loss": 999.0, "train_top1": 0.0,
             "images_per_second": 1.0, "time": 0.0}
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(ghost) + "\n")
    EventLog(out, [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]).close()
    assert (6, 999.0) in read_events(out)["train/loss"]
    train(_config(out))
    events = read_events(out)
    assert events == expected_from_metrics(out)
    steps = [s for s, _ in events["train/loss"]]
    assert steps == [2, 4, 6, 8] and (6, 999.0) not in events["train/loss"]
    assert len(list(out.glob(EVENTS_GLOB))) == 1


def test_tensorboard_command_converts_runs_trained_without_it(tmp_path, capsys):
    root = tmp_path / "results"
    a = make_run(root / "grid", "resnet20-cifar10-s0", model="resnet20", iters=100)
    b = make_run(root / "grid", "res_se_net20-cifar10-s0", model="res_se_net20", iters=100, finished=False)
    assert main(["tensorboard", str(root)]) == 0
    text = capsys.readouterr().out
    assert "grid/resnet20-cifar10-s0: 11 records" in text and f"tensorboard --logdir {root}" in text
    for run in (a, b):
        assert read_events(run) == expected_from_metrics(run)
    # A second conversion leaves the runs alone unless asked; --out mirrors the tree elsewhere.
    assert main(["tensorboard", str(root)]) == 0
    assert "skipped (--overwrite rewrites them)" in capsys.readouterr().out
    assert main(["tensorboard", str(root), "--overwrite"]) == 0
    assert len(list(a.glob(EVENTS_GLOB))) == 1 and read_events(a) == expected_from_metrics(a)
    mirror = tmp_path / "tb"
    assert main(["tensorboard", str(root), "--out", str(mirror)]) == 0
    assert read_events(mirror / "grid" / a.name) == expected_from_metrics(a)


def test_tensorboard_command_errors_are_one_line(tmp_path, capsys):
    assert main(["tensorboard", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["tensorboard", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no run directory" in err and err.count("\n") == 1


def test_a_missing_extra_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    make_run(tmp_path / "runs", "r", model="resnet20")
    assert main(["tensorboard", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'ressenet[tensorboard]'" in err and err.count("\n") == 1
    assert main(["train", "--model", "resnet20", "--dataset", "synthetic", "--set", "data.train_limit=64",
                 "--set", "data.test_limit=32", "--batch-size", "32", "--iters", "2", "--progress", "none",
                 "--device", "cpu", "--out", str(tmp_path / "t"), "--tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "optional extra `tensorboard`" in err and err.count("\n") == 1
    assert not (tmp_path / "t" / "last.pt").exists()


@pytest.mark.slow
def test_under_ddp_only_rank_0_writes_events(ddp_run):
    out, res = ddp_run  # tiny.ddp_train: two processes under torchrun, --tensorboard (the extra is installed here)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list(out.glob(EVENTS_GLOB))) == 1  # one writer: rank 0's
    assert read_events(out) == expected_from_metrics(out)
