"""One runner per run directory (engine/lock.py): the lock, its staleness, train, fused members and the grid."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ressenet.engine.lock import EXIT_LOCKED, LOCK_NAME, STALE_SECONDS, LockHeld, RunLock, lock_holder

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _foreign_lock(out: Path, *, age: float = 0.0, host: str = "another-host", pid: int = 4242) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    path.write_text(json.dumps({"host": host, "pid": pid, "started": time.time() - age}))
    os.utime(path, (time.time() - age, time.time() - age))


def test_lock_is_exclusive_and_released(tmp_path):
    with RunLock(tmp_path / "r") as lock:
        assert lock_holder(tmp_path / "r")["pid"] == os.getpid()
        with pytest.raises(LockHeld, match=f"process {os.getpid()} on {re.escape(socket.gethostname())}"):
            RunLock(tmp_path / "r").acquire()
    assert not (tmp_path / "r" / LOCK_NAME).exists() and lock_holder(tmp_path / "r") is None


def test_stale_locks_are_taken_over_and_live_ones_are_not(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _foreign_lock(tmp_path / "a", host=socket.gethostname(), pid=dead.pid)  # this host, process gone
    _foreign_lock(tmp_path / "b", age=STALE_SECONDS + 60)  # another host, not refreshed for too long
    _foreign_lock(tmp_path / "c")  # another host, fresh: provably alive as far as we can know
    for name in ("a", "b"):
        with RunLock(tmp_path / name):
            assert lock_holder(tmp_path / name)["pid"] == os.getpid()
    with pytest.raises(LockHeld, match="another-host"):
        RunLock(tmp_path / "c").acquire()
    assert json.loads((tmp_path / "c" / LOCK_NAME).read_text())["pid"] == 4242  # untouched


def test_train_on_a_locked_directory_exits_with_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    _foreign_lock(out)
    p = subprocess.run([sys.executable, "-m", "ressenet", "train", "--model", "resnet20", "--dataset", "synthetic",
                        "--iters", "2", "--out", str(out), "--device", "cpu", "--no-compile"],
                       env=_env(), capture_output=True, text=True)
    assert p.returncode == EXIT_LOCKED, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "being trained by process 4242 on another-host" in p.stderr
    assert sorted(x.name for x in out.iterdir()) == [LOCK_NAME]


def test_fused_training_skips_a_member_another_runner_holds(tmp_path):
    from ressenet.engine.fused import fused_configs, train_fused

    base = {"data.dataset": "synthetic", "data.train_limit": 128, "data.test_limit": 64, "optim.batch_size": 16,
            "optim.iters": 4, "run.progress": "none", "run.device": "cpu", "run.compile": False}
    cfgs = fused_configs(base, ["resnet20", "res_se_net20"], [1], str(tmp_path))
    _foreign_lock(tmp_path / "res_se_net20-s1")
    summaries = train_fused(cfgs)
    assert [s["model"] for s in summaries] == ["resnet20"]
    assert not (tmp_path / "res_se_net20-s1" / "summary.json").exists()
    assert not (tmp_path / "resnet20-s1" / LOCK_NAME).exists()  # released


@pytest.mark.slow
def test_three_grid_runners_train_each_cell_exactly_once(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: tiny\nseeds: [1, 2]\nmodels: [resnet20, se_resnet20, res_se_net20]\n"
                    "datasets: [synthetic]\nconfig:\n  optim: {iters: 6, batch_size: 16, milestones: [4]}\n"
                    "  data: {train_limit: 128, test_limit: 64}\n"
                    "  run: {eval_every: 6, log_every: 2, ckpt_every: 2, device: cpu, compile: false}\n")
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "ressenet", "grid", str(grid), "--runs-dir", str(runs)]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    cells = sorted(d.name for d in runs.iterdir() if d.is_dir())
    assert len(cells) == 6
    done = [m for o in outs for m in re.findall(r"\] done (\S+) in", o)]
    assert sorted(done) == cells, outs  # each cell trained by exactly one runner
    for c in cells:
        its = [json.loads(x)["iter"] for x in (runs / c / "metrics.jsonl").read_text().splitlines() if x.strip()]
        assert its == sorted(set(its)) == [2, 4, 6], (c, its)  # no interleaved writers
        assert not (runs / c / LOCK_NAME).exists()
