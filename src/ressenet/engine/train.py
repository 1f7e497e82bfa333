"""The training loop: the paper's protocol (Varshaneya et al., arXiv:1902.06066, following He et al.) by default.

64,000 iterations of SGD (momentum 0.9, weight decay 1e-4, batch 128), lr 0.1 divided by 10 at 32,000 and
48,000, pad-crop-flip augmentation. The loop counts iterations, not epochs, evaluates every
``run.eval_every`` iterations, checkpoints atomically and resumes bit-exactly on the CPU: the data order and
augmentation are pure functions of (seed, epoch, position), and nothing else draws random numbers.

``train(cfg)`` is the library entry point; ``ressenet train`` calls it. It claims the run directory, loads the data,
resolves the run's settings once (engine/setup.py ``resolve_settings``), builds the run (engine/run.py ``Run``) and
trains it in the loop below; engine/fused.py drives several runs with the same ``Run.step`` and ``Run.boundary``.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import torch

from ressenet.engine.config import Config
from ressenet.engine.distributed import DistInfo, agreed_signal, barrier, init_distributed, shutdown
from ressenet.engine.lock import RunLock
from ressenet.engine.records import Progress
from ressenet.engine.run import Run
from ressenet.engine.rundir import RunDir, prepare_run_dir
from ressenet.engine.runtime import compile_notes, exit_stopped, prepare_device, stop_signals, synchronize
from ressenet.engine.setup import load_data, resolve_device, resolve_settings
from ressenet.errors import RessenetError

__all__ = ["train"]


def train(cfg: Config, *, overwrite: bool = False) -> dict[str, Any] | None:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg.optim``; write the run directory; return the summary.

    Resumes from ``<out>/last.pt`` when present. Returns the finished run's summary (rank 0; ``None`` on others).
    """
    cfg.validate()
    if not cfg.run.out:
        cfg.run.out = f"runs/{cfg.model.name}_{cfg.data.dataset}_s{cfg.run.seed}"
    device_pref = resolve_device(cfg.run.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist_info = init_distributed(device_pref.type)
    lock = RunLock(cfg.run.out)
    try:
        device = resolve_device(cfg.run.device, dist_info.local_rank)
        if dist_info.is_main:
            lock.acquire()  # one runner per run directory (engine/lock.py); before anything in it is touched
        out, finished = prepare_run_dir(cfg, overwrite, dist_info.is_main)
        barrier(dist_info)
        if finished is not None:
            if dist_info.is_main:
                _check_finished_data(cfg, out, finished)
                print(f"{out} already finished; delete summary.json or pass --overwrite to train again")
            return finished if dist_info.is_main else None
        if dist_info.enabled and cfg.run.grad_stats_every:
            raise RessenetError("--log-grad-stats records on one process (its probe step runs outside DDP); drop it "
                                "or train without torchrun")
        if cfg.optim.batch_size % dist_info.world_size:
            raise RessenetError(f"batch size {cfg.optim.batch_size} does not split over {dist_info.world_size} "
                                f"processes; use a multiple of {dist_info.world_size}")
        summary = _train(cfg, out, device, dist_info)
        # Every process leaves together: a rank that tore its process group down while rank 0 was still writing
        # the summary aborted (gloo, "terminate called without an active exception") under load.
        barrier(dist_info)
        return summary
    finally:
        lock.release()
        shutdown(dist_info)


def _check_finished_data(cfg: Config, out: Path, summary: dict[str, Any]) -> None:
    """A finished run is this command's result only if it was trained on the data this command names (as resume
    checks its checkpoint): the data root is result-neutral, so its content decides."""
    data = summary.get("data")
    recorded = data.get("fingerprint") if isinstance(data, dict) else None
    if recorded is None:
        return
    here = load_data(cfg).fingerprint
    if here != recorded:
        raise RessenetError(f"{out} holds a run finished on other data (fingerprint {recorded}; the data at "
                            f"{cfg.data.data_root or 'the default root'} is {here}); point --data-root at the data "
                            f"it was trained on, choose another --out, or pass --overwrite to train again")


def _train(cfg: Config, out: Path, device: torch.device, dist_info: DistInfo) -> dict[str, Any] | None:
    """Builds the run and trains it to its last iteration, nanoGPT's way: each step takes the learning rate, a
    batch, forward, backward and update (``Run.step``); at a boundary the run logs, evaluates and checkpoints
    (``Run.boundary``)."""
    prepare_device(device)
    data = load_data(cfg)
    settings = resolve_settings(cfg, device, data, RunDir(out).recorded_choices(), world_size=dist_info.world_size)
    run = Run.build(cfg, out, data, settings, dist_info)
    run.write_config()  # its meta records the choices, which a resumed run keeps
    progress = Progress(cfg.run.progress, cfg.optim.iters, run.state.it, dist_info.is_main)
    for note in ([f"resuming {out} at iteration {run.state.it}"] if run.resumed else []) + compile_notes(cfg, settings):
        progress.message(note)
    t_start = t_interval = time.perf_counter()
    with stop_signals() as stop, contextlib.closing(progress):
        while run.state.it < cfg.optim.iters:
            run.step()
            due = run.due()
            if not due and (not stop or dist_info.enabled):
                continue  # under torchrun a signal waits for the next boundary, which every process reaches
            # Decided once, and agreed between processes: a signal that lands during this boundary's evaluation is
            # acted on at the next one, never announced as "checkpoint saved" by a boundary that did not save.
            signum = agreed_signal(stop, dist_info, device)
            stopping = bool(signum)
            synchronize(device)
            now = time.perf_counter()
            steps = run.state.it - run.it_interval if due else 0
            rec = run.boundary(now - t_interval, now - t_start, stopping=stopping)  # raises NonFiniteLoss
            progress.boundary([(rec, steps)] if rec is not None else [], steps * cfg.optim.batch_size,
                              now - t_interval)
            barrier(dist_info)
            if stopping and run.state.it < cfg.optim.iters:
                exit_stopped(signum, [run], progress)
            t_interval = time.perf_counter()
    summary = run.finish(time.perf_counter() - t_start)
    return summary if dist_info.is_main else None
