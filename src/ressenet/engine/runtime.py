"""What the single-run loop (engine/train.py) and the fused group's loop (engine/fused.py) share: stop signals and
the clean exit they lead to, the device's one-time switches and waits, and the note on the compile decision."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

import torch

from ressenet.engine.config import Config
from ressenet.engine.records import Progress
from ressenet.engine.run import Run
from ressenet.engine.setup import Settings

__all__ = ["stop_signals", "exit_stopped", "prepare_device", "synchronize", "compile_notes"]


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """SIGINT/SIGTERM append their number to the yielded list instead of killing the process: the loop finishes
    its step, checkpoints and exits."""
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


def exit_stopped(signum: int, runs: list[Run], progress: Progress) -> None:
    """After a stop signal, every run checkpointed: says where (main rank) and exits with 128 + the signal's
    number; the same command resumes."""
    progress.close()
    if runs[0].dist.is_main:
        where = (f"checkpoint saved to {runs[0].dir.last}" if len(runs) == 1 else
                 f"every member checkpointed in {runs[0].out.parent}")
        print(f"stopped by {signal.Signals(signum).name} at iteration "
              f"{'/'.join(sorted({str(r.state.it) for r in runs}))}; {where}; run the same command to resume",
              file=sys.stderr)
    raise SystemExit(128 + signum)


def prepare_device(device: torch.device) -> None:
    """The device's switches, set once before anything is built."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every training batch has the same shape (the loader drops the rest)


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (a boundary's timing must not count it twice)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_notes(cfg: Config, settings: Settings) -> list[str]:
    """What to tell the user about the compile decision (``settings.compile``) before training."""
    if not settings.compile:
        return []
    how = "by default" if cfg.run.compile is None else "as asked"
    return [f"compiling the model {how} (torch.compile, mode {settings.compile}): the first steps wait for it, a "
            f"minute or two on a CPU; --no-compile trains eager"]
