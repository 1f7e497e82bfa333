"""The one training loop, and what every driver of it shares: stop signals, the compile decision, the summaries.

``run_loop(stepper, progress)`` is the only loop that trains. ``ressenet train`` drives one run through it
(engine/train.py); fused training drives a group of runs (engine/fused.py). A *stepper* advances its active runs
by one SGD step each; the loop decides when a run's interval ends (log, evaluation, checkpoint: ``Run.due``), has
the run do its boundary work (``Run.boundary``), reports progress, and stops cleanly on SIGINT/SIGTERM.

One step of ``ressenet train``, file by file: docs/design.md, section 7.

Steppers (the table ``STEPPERS`` in engine/steppers.py picks one by ``--fused-mechanism``):

* :class:`Sequential`: each run's own single-run step in turn. One run (its ``step_model`` is the model, compiled
  or DDP-wrapped) or fused members, each bit-identical to its separate run.
* ``Graphs`` and ``Grouped`` (engine/steppers.py): CUDA-graph replay, and one network grouped over the members.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from ressenet.engine.config import Config
from ressenet.engine.distributed import barrier
from ressenet.engine.records import Progress
from ressenet.engine.run import NonFiniteLoss, Run
from ressenet.engine.setup import check_cpu_compiler, resolve_compile
from ressenet.errors import RessenetError

__all__ = ["Stepper", "Sequential", "run_loop", "finish", "stop_signals", "compile_choice", "prepare_device"]


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


def prepare_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every training batch has the same shape (the loader drops the rest)


def compile_choice(cfg: Config, device: torch.device, precision: str, recorded: Any,
                   world_size: int = 1) -> tuple[str | None, list[str]]:
    """Whether the step is compiled (its torch.compile mode, or None for eager) and what to tell the user about it:
    :func:`~ressenet.engine.setup.resolve_compile`'s decision, and an explicit ``--compile`` refused in one line on a
    CPU without a C++ compiler. ``recorded``: what a resumed run chose when it started."""
    on, mode = resolve_compile(cfg.run.compile, cfg.run.compile_mode, device, world_size, iters=cfg.optim.iters,
                               precision=precision, recorded=recorded)
    check_cpu_compiler(cfg.run.compile, on, device)
    if not on:
        return None, []
    how = "by default" if cfg.run.compile is None else "as asked"
    return mode, [f"compiling the model {how} (torch.compile, mode {mode}): the first steps wait for it, a minute or "
                  f"two on a CPU; --no-compile trains eager"]


class Stepper:
    """Advances runs one SGD step at a time. ``failed`` maps a run that stopped (non-finite loss) to why; it no
    longer steps. Subclasses implement :meth:`step`; :meth:`sync` and :meth:`release` bracket the host's work at a
    boundary (reading weights and accumulators, evaluating, checkpointing).

    What a mechanism needs is said by its class: ``compiles`` (whether the compile decision applies to it),
    ``grad_stats`` (whether it can run ``--log-grad-stats``'s probed eager step), ``fp16_refusal`` (read by
    :meth:`refuse`: why it cannot train in fp16), :meth:`amp` (an autocast context of its own, else None for the
    run's) and :meth:`check_members` (runs it cannot train together).
    """

    compiles = True
    grad_stats = True
    fp16_refusal: str | None = None  # why this mechanism cannot train in fp16 (one line with the fix), or None

    @classmethod
    def refuse(cls, precision: str) -> str | None:
        """Why this mechanism cannot train in ``precision`` (one line with the fix), or None."""
        return cls.fp16_refusal if precision == "fp16" else None

    @staticmethod
    def amp(precision: str, device: torch.device) -> Any:
        return None

    @staticmethod
    def check_members(cfgs: list[Config]) -> None:
        """Raises RessenetError (one line with the fix) when this mechanism cannot train these runs together."""

    def __init__(self, runs: list[Run], *, compile_mode: str | None = None, parallel_streams: bool = True) -> None:
        """``compile_mode``: torch.compile's mode when the compile decision said yes; ``parallel_streams``: for
        mechanisms that use CUDA streams (benchmarks turn it off)."""
        self.runs = runs
        self.failed: dict[str, NonFiniteLoss] = {}

    def active(self) -> list[Run]:
        return [r for r in self.runs if r.name not in self.failed and r.state.it < r.cfg.optim.iters]

    def step(self) -> list[Run]:
        """One training step of every active run; returns the runs that stepped."""
        raise NotImplementedError

    def sync(self) -> None:
        """Brings every run's own model and optimizer up to date and waits for its queued work."""
        if self.runs and self.runs[0].device.type == "cuda":
            torch.cuda.synchronize(self.runs[0].device)

    def release(self) -> None:
        """After host-side work on the default stream, the runs' own streams wait for it (none here)."""


class Sequential(Stepper):
    """Each active run's single-run step (:meth:`Run.step`), one after another: bit-identical to separate runs.
    With a ``compile_mode``, each run's step module is compiled."""

    def __init__(self, runs: list[Run], *, compile_mode: str | None = None, parallel_streams: bool = True) -> None:
        super().__init__(runs)
        if compile_mode:
            for r in runs:
                r.step_model = torch.compile(r.step_model, mode=compile_mode)

    def step(self) -> list[Run]:
        stepped = self.active()
        for r in stepped:
            r.step()
        return stepped


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_loop(stepper: Stepper, progress: Progress) -> float:
    """Trains ``stepper``'s runs to their last iteration; returns the seconds this process trained.

    At a boundary (a run's log, evaluation or checkpoint interval ends, or a stop signal arrived) each run ending an
    interval does its boundary work; a run whose loss became non-finite drops out (``stepper.failed``) and the others
    go on. A stop signal checkpoints every active run and exits with 128 + the signal's number; the same command
    resumes.
    """
    runs = stepper.runs
    t_start = t_interval = time.perf_counter()
    with stop_signals() as stop:
        try:
            while stepper.active():
                due = [r for r in stepper.step() if r.due()]
                if not due and not stop:
                    continue
                stepper.sync()
                now = time.perf_counter()
                ending = due + [r for r in stepper.active() if r not in due] if stop else due
                steps = {r.name: r.state.it - r.it_interval for r in due}
                recs = []
                for r in ending:
                    try:
                        rec = r.boundary(now - t_interval, now - t_start, stopping=bool(stop))
                    except NonFiniteLoss as e:  # this run stops; the others go on
                        stepper.failed[r.name] = e
                        if len(runs) > 1 and r.dist.is_main:
                            print(f"{r.out}: {e}", file=sys.stderr)
                        continue
                    if rec is not None:
                        recs.append((rec, steps.get(r.name, 0)))
                stepper.release()
                progress.boundary(recs, sum(steps[r.name] * r.cfg.optim.batch_size for r in due),
                                  now - t_interval)
                barrier(runs[0].dist)
                if stop and stepper.active():
                    raise _Stopped(stop[0])
                t_interval = time.perf_counter()
        except _Stopped as s:
            progress.close()
            if runs[0].dist.is_main:
                where = (f"checkpoint saved to {runs[0].dir.last}" if len(runs) == 1 else
                         f"every member checkpointed in {runs[0].out.parent}")
                print(f"stopped by {s} at iteration {'/'.join(sorted({str(r.state.it) for r in runs}))}; {where}; "
                      f"run the same command to resume", file=sys.stderr)
            raise SystemExit(128 + s.signum) from None
    progress.close()
    return time.perf_counter() - t_start


def finish(stepper: Stepper, elapsed: float) -> dict[str, dict[str, Any]]:
    """Each finished run's ``summary.json`` (written by the main rank), by run name.

    Raises:
        NonFiniteLoss: the one run failed; RessenetError naming each failed member of a group (after the others'
        summaries are written).
    """
    summaries = {}
    for r in stepper.runs:
        if r.name not in stepper.failed:
            summaries[r.name] = r.summary(elapsed)
            if r.dist.is_main:
                r.dir.write_summary(summaries[r.name])
    if len(stepper.runs) == 1 and stepper.failed:
        raise next(iter(stepper.failed.values()))
    if stepper.failed:
        raise RessenetError("; ".join(f"{r.out}: {stepper.failed[r.name]}" for r in stepper.runs
                                      if r.name in stepper.failed))
    return summaries
