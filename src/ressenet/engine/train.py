"""The training loop: the paper's protocol (Varshaneya et al., arXiv:1902.06066, following He et al.) by default.

64,000 iterations of SGD (momentum 0.9, weight decay 1e-4, batch 128), lr 0.1 divided by 10 at 32,000 and
48,000, pad-crop-flip augmentation. The loop counts iterations, not epochs, evaluates every
``run.eval_every`` iterations, checkpoints atomically and resumes bit-exactly on the CPU: the data order and
augmentation are pure functions of (seed, epoch, position), and nothing else draws random numbers.

``train(cfg)`` is the library entry point; ``ressenet train`` calls it. The pieces live beside it: engine/run.py
(one run's objects, step, boundary and summary), engine/setup.py, engine/evaluation.py, engine/records.py (metrics
and progress), engine/rundir.py, engine/checkpoint.py; engine/fused.py trains several runs at once.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ressenet.engine.checkpoint import atomic_write_json
from ressenet.engine.config import Config
from ressenet.engine.distributed import DistInfo, barrier, init_distributed, shutdown
from ressenet.engine.evaluation import eval_split, evaluate, evaluate_checkpoint
from ressenet.engine.lock import RunLock
from ressenet.engine.records import Progress
from ressenet.engine.run import CHECKPOINT_VERSION, NonFiniteLoss, Run, TrainState, lr_at, train_step
from ressenet.engine.rundir import RUN_FILES, prepare_run_dir
from ressenet.engine.setup import (CPU_COMPILE_MIN_ITERS, autocast_context, build_model, check_cpu_compiler,
                                   cpu_compiler_found, load_data, recorded_choices, resolve_channels_last,
                                   resolve_compile, resolve_device, resolve_eval_batch_size, resolve_precision,
                                   versions)
from ressenet.errors import RessenetError

__all__ = ["train", "evaluate", "evaluate_checkpoint", "lr_at", "resolve_device", "build_model", "load_data",
           "resolve_compile", "cpu_compiler_found", "CPU_COMPILE_MIN_ITERS", "Run", "TrainState", "train_step",
           "NonFiniteLoss", "CHECKPOINT_VERSION", "RUN_FILES", "autocast_context", "eval_split",
           "resolve_channels_last", "resolve_eval_batch_size", "resolve_precision", "versions", "stop_signals"]


class _StopRequested(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """SIGINT/SIGTERM append their number to the yielded list instead of killing the process: the loop finishes
    its step, checkpoints and exits."""
    import threading

    stop: list[int] = []
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda s, _f: stop.append(s))
    try:
        yield stop
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


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
        return _train(cfg, out, device, dist_info)
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
    here = load_data(cfg)["fingerprint"]
    if here != recorded:
        raise RessenetError(f"{out} holds a run finished on other data (fingerprint {recorded}; the data at "
                            f"{cfg.data.data_root or 'the default root'} is {here}); point --data-root at the data "
                            f"it was trained on, choose another --out, or pass --overwrite to train again")


def _train(cfg: Config, out: Path, device: torch.device, dist_info: DistInfo) -> dict[str, Any] | None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every training batch has the same shape (the loader drops the rest)
    run = Run.build(cfg, out, load_data(cfg), device, dist_info)
    run.step_model, compiling = _step_model(run, dist_info)
    progress = Progress(cfg.run.progress, cfg.optim.iters, run.state.it, dist_info.is_main)
    for note in ([f"resuming {out} at iteration {run.state.it}"] if run.resumed else []) + compiling:
        progress.message(note)
    t_start = t_interval = time.perf_counter()
    with stop_signals() as stop:
        try:
            while run.state.it < cfg.optim.iters:
                run.step()
                if not (run.due() or stop):
                    continue
                it_before, now = run.it_interval, time.perf_counter()
                rec = run.boundary(now - t_interval, now - t_start, stopping=bool(stop))
                if rec is not None:
                    if rec["kind"] == "eval":
                        progress.message(f"iter {rec['iter']}: test top-1 {rec['test_top1']:.2f}% top-5 "
                                         f"{rec['test_top5']:.2f}%" + (f"  val top-1 {rec['val_top1']:.2f}%"
                                                                       if "val_top1" in rec else ""))
                    progress.update(run.state.it, run.state.it - it_before, rec)
                barrier(dist_info)
                if stop and run.state.it < cfg.optim.iters:
                    raise _StopRequested(stop[0])
                t_interval = time.perf_counter()
        except _StopRequested as s:
            progress.close()
            if dist_info.is_main:
                print(f"stopped by {s} at iteration {run.state.it}; checkpoint saved to {out / 'last.pt'}; run the "
                      f"same command to resume", file=sys.stderr)
            raise SystemExit(128 + s.signum) from None
    progress.close()
    summary = run.summary(time.perf_counter() - t_start)
    if dist_info.is_main:
        atomic_write_json(out / "summary.json", summary)
    return summary if dist_info.is_main else None


def _step_model(run: Run, dist_info: DistInfo) -> tuple[nn.Module, list[str]]:
    """The module the step calls (DDP-wrapped across processes, compiled where that pays: resolve_compile), and
    what to tell the user about it. Writes config.yaml, whose meta records the choice."""
    cfg, device = run.cfg, run.device
    model: nn.Module = run.model
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    compile_on, compile_mode = resolve_compile(cfg.run.compile, cfg.run.compile_mode, device, dist_info.world_size,
                                               iters=cfg.optim.iters, precision=run.precision,
                                               recorded=recorded_choices(run.out).get("compile"))
    check_cpu_compiler(cfg.run.compile, compile_on, device)
    run.write_config(compile=compile_mode if compile_on else False)
    if not compile_on:
        return model, []
    how = "by default" if cfg.run.compile is None else "as asked"
    return torch.compile(model, mode=compile_mode), [
        f"compiling the model {how} (torch.compile, mode {compile_mode}): the first steps wait for it, a minute or "
        f"two on a CPU; --no-compile trains eager"]
