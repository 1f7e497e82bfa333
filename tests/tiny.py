"""The one tiny training run the tests share: resnet20 on synthetic images, on the CPU, eager, a few iterations.

``tiny_config(out, **over)`` builds its Config; ``over`` holds dotted keys ({"optim.iters": 4}) for what a test
needs otherwise. Eager (``run.compile: False``) so that no test waits for a compiler.
"""
from __future__ import annotations

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
