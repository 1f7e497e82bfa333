"""The one tiny training run the tests share: resnet20 on synthetic images, on the CPU, eager, a few iterations.

``tiny_config(out, **over)`` builds its Config; ``over`` holds dotted keys ({"optim.iters": 4}) for what a test
needs otherwise. Eager (``run.compile: False``) so that no test waits for a compiler.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ressenet.engine.config import Config, load_config

TINY: dict[str, Any] = {
    "model.name": "resnet20", "data.dataset": "synthetic", "data.train_limit": 256, "data.test_limit": 128,
    "optim.batch_size": 32, "optim.iters": 8, "optim.milestones": [4, 6], "run.eval_every": 4, "run.log_every": 2,
    "run.ckpt_every": 4, "run.progress": "none", "run.device": "cpu", "run.compile": False,
}


def tiny_config(out: str | Path, **over: Any) -> Config:
    return load_config(None, {**TINY, "run.out": str(out), **over})


# The command-line smoke run (test_engine.py) and the DDP run two test files read.
SMOKE = ["--model", "resnet20", "--dataset", "synthetic", "--set", "data.train_limit=512",
         "--set", "data.test_limit=256", "--batch-size", "32", "--milestones", "30,45", "--progress", "plain",
         "--device", "cpu"]
# fp32: the DDP test's reference computes in fp32, whatever auto picks on this CPU.
DDP_COMMON = ["--iters", "40", "--log-every", "5", "--eval-every", "20", "--ckpt-every", "20",
              "--progress", "plain", "--set", "optim.lr=0.05", "--precision", "fp32"]
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def subprocess_env() -> dict[str, str]:
    """The environment of a training subprocess: this checkout's sources, one thread (the same kernels in every
    process, so bit-exact comparisons hold)."""
    repo = Path(__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": str(repo / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def ddp_train(out: Path) -> subprocess.CompletedProcess:
    """Two processes under torchrun (gloo) train the smoke run into ``out``, with TensorBoard events when the
    optional extra is installed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ressenet",
           "train", *SMOKE, *DDP_COMMON, *(["--tensorboard"] if HAS_TENSORBOARD else []), "--out", str(out)]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def signal_during_evaluation(monkeypatch: Any, at_iter: int, model: str | None = None) -> None:
    """Makes ``Run.evaluate`` send SIGTERM to this process right after evaluating at ``at_iter`` (of ``model``'s
    runs only, when given): a stop signal landing in the middle of a boundary."""
    import signal

    from ressenet.engine.run import Run

    evaluate = Run.evaluate

    def evaluate_then_signal(self: Run, split: str) -> Any:
        scores = evaluate(self, split)
        if self.state.it == at_iter and model in (None, self.cfg.model.name):
            os.kill(os.getpid(), signal.SIGTERM)
        return scores

    monkeypatch.setattr(Run, "evaluate", evaluate_then_signal)
