"""One runner per run directory (engine/lock.py): the lock, its staleness, train, fused members and the grid."""
from __future__ import annotations

import json
import signal
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ressenet.engine.lock import EXIT_LOCKED, LOCK_NAME, STALE_SECONDS, LockHeld, RunLock, lock_holder
from ressenet.errors import RessenetError
from tiny import subprocess_env



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
                       env=subprocess_env(), capture_output=True, text=True)
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
    # Four cells for three runners: at least one runner finds every cell it reaches taken.
    grid.write_text("name: tiny\nseeds: [1, 2]\nmodels: [resnet20, res_se_net20]\n"
                    "datasets: [synthetic]\nconfig:\n  optim: {iters: 6, batch_size: 16, milestones: [4]}\n"
                    "  data: {train_limit: 128, test_limit: 64}\n"
                    "  run: {eval_every: 6, log_every: 2, ckpt_every: 2, device: cpu, compile: false}\n")
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "ressenet", "grid", str(grid), "--runs-dir", str(runs)]
    procs = [subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    cells = sorted(d.name for d in runs.iterdir() if d.is_dir())
    assert len(cells) == 4
    done = [m for o in outs for m in re.findall(r"\] done (\S+) in", o)]
    assert sorted(done) == cells, outs  # each cell trained by exactly one runner
    for c in cells:
        its = [json.loads(x)["iter"] for x in (runs / c / "metrics.jsonl").read_text().splitlines() if x.strip()]
        assert its == sorted(set(its)) == [2, 4, 6], (c, its)  # no interleaved writers
        assert not (runs / c / LOCK_NAME).exists()


def test_a_lock_naming_a_reused_process_id_is_taken_over_at_once(tmp_path):
    # This process is alive, but began long after the lock says its holder took it: the id was reused.
    _foreign_lock(tmp_path / "r", host=socket.gethostname(), pid=os.getpid())
    lock = tmp_path / "r" / LOCK_NAME
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time() - 1e7}))
    assert lock_holder(tmp_path / "r") is None
    held = json.loads(lock.read_text())
    held["procs"] = [[os.getpid(), 1]]  # a start time that is not this process's
    lock.write_text(json.dumps(held))
    assert lock_holder(tmp_path / "r") is None
    with RunLock(tmp_path / "r"):
        assert lock_holder(tmp_path / "r")["pid"] == os.getpid()


def test_a_lock_refreshed_in_the_future_is_taken_over(tmp_path):
    _foreign_lock(tmp_path / "r", age=-(STALE_SECONDS + 3600))
    assert lock_holder(tmp_path / "r") is None
    with RunLock(tmp_path / "r"):
        assert lock_holder(tmp_path / "r")["pid"] == os.getpid()


def test_a_lock_that_is_a_directory_or_cannot_be_created_is_one_line(tmp_path, capsys):
    (tmp_path / "run" / LOCK_NAME).mkdir(parents=True)
    with pytest.raises(RessenetError, match=r"\.lock is a directory, not a lock file; remove it"):
        RunLock(tmp_path / "run").acquire()
    assert sorted(x.name for x in (tmp_path / "run").iterdir()) == [LOCK_NAME]  # no .lock.stale.* left
    long = tmp_path / ("x" * 300)
    with pytest.raises(RessenetError, match=r"cannot create the run directory .*File name too long"):
        RunLock(long).acquire()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a read-only folder is writable")
        with pytest.raises(RessenetError, match=r"cannot create the run directory .*Permission denied"):
            RunLock(ro / "run").acquire()
        ro_run = tmp_path / "ro-run"
        ro_run.mkdir()
        ro_run.chmod(0o555)
        with pytest.raises(RessenetError, match=r"cannot create the lock .*Permission denied; make"):
            RunLock(ro_run).acquire()
    finally:
        ro.chmod(0o755)
        (tmp_path / "ro-run").chmod(0o755) if (tmp_path / "ro-run").exists() else None


_GRID_LIKE = """
import os, subprocess, sys, time
from ressenet.engine.lock import PARENT_ENV, RunLock
out = sys.argv[1]
RunLock(out).acquire()
child = subprocess.Popen([sys.executable, "-c", sys.argv[2], out], env={**os.environ, PARENT_ENV: str(os.getpid())})
time.sleep(120)
"""
_TRAINER_LIKE = """
import pathlib, sys, time
from ressenet.engine.lock import RunLock
lk = RunLock(sys.argv[1]).acquire()
pathlib.Path(sys.argv[1], "child.pid").write_text(str(__import__("os").getpid()))
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 120)
lk.release()
"""


def test_the_lock_stays_valid_while_the_trainer_outlives_its_grid(tmp_path):
    out = tmp_path / "cell"
    grid = subprocess.Popen([sys.executable, "-c", _GRID_LIKE, str(out), _TRAINER_LIKE], env=subprocess_env())
    t0 = time.time()
    while not (out / "child.pid").exists():
        assert grid.poll() is None and time.time() - t0 < 120
        time.sleep(0.05)
    child = int((out / "child.pid").read_text())
    held = json.loads((out / LOCK_NAME).read_text())
    assert [p for p, _ in held["procs"]] == [grid.pid, child]
    grid.kill()
    grid.wait()
    try:  # the grid is gone; its trainer still trains, so the cell is still locked
        assert lock_holder(out) is not None
        with pytest.raises(LockHeld):
            RunLock(out).acquire()
    finally:
        os.kill(child, 9)
    t0 = time.time()
    while lock_holder(out) is not None:  # once the trainer is gone too, at once
        assert time.time() - t0 < 10, "the lock outlived every process of its run"
        time.sleep(0.05)


def test_a_trainer_leaving_the_lock_leaves_it_to_its_grid(tmp_path):
    out = tmp_path / "cell"
    with RunLock(out) as mine:
        env = {**subprocess_env(), "RESSENET_LOCK_PARENT": str(os.getpid())}
        p = subprocess.run([sys.executable, "-c", _TRAINER_LIKE, str(out), "0"], env=env, capture_output=True,
                           text=True)
        assert p.returncode == 0, p.stderr
        held = json.loads((out / LOCK_NAME).read_text())
        assert [pid for pid, _ in held["procs"]] == [os.getpid()] and mine.held
    assert not (out / LOCK_NAME).exists()


_SLOW_GRID = ("name: tiny\nseeds: [1]\nmodels: [resnet20]\ndatasets: [synthetic]\nconfig:\n"
              "  optim: {iters: 100000, batch_size: 16}\n  data: {train_limit: 128, test_limit: 64}\n"
              "  run: {eval_every: 100000, log_every: 2, ckpt_every: 100000, device: cpu, compile: false}\n")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_grid_reaches_its_trainer_which_checkpoints(tmp_path, sig):
    grid = tmp_path / "g.yaml"
    grid.write_text(_SLOW_GRID)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "ressenet", "grid", str(grid), "--runs-dir", str(runs)]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cell = runs / "resnet20-synthetic-s1"
    t0 = time.time()
    while not (cell / "metrics.jsonl").exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() - t0 < 300
        time.sleep(0.05)
    trainer, = [int(c) for t in Path(f"/proc/{proc.pid}/task").iterdir() for c in (t / "children").read_text().split()]
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, out
    assert f"stopped by {signal.Signals(sig).name}" in out and "Traceback" not in out
    with pytest.raises(ProcessLookupError):  # no orphan left training
        os.kill(trainer, 0)
    assert "checkpoint saved" in (cell / "train.log").read_text()
    assert (cell / "last.pt").is_file() and not (cell / LOCK_NAME).exists()
    plan = subprocess.run([*cmd, "--dry-run"], env=subprocess_env(), capture_output=True, text=True)
    assert "partial" in plan.stdout and "resumes" in plan.stdout, plan.stdout
