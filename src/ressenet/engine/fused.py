"""Fused training: several runs of one depth (models x seeds) trained together in one process.

``ressenet train --model resnet20,se_resnet20 --seed 1,2,3 --out DIR`` trains the six runs ``DIR/<model>-s<seed>``
at once. Each member is an ordinary run (its own seed, data order, optimizer and run directory; ``config.yaml``
adds ``meta.fused_with``), built by ``Run.build`` and doing its own ``Run.boundary``; engine/steppers.py holds the
mechanisms that step them (``--fused-mechanism``) and how close each is to separate runs.
"""
from __future__ import annotations

import os
import string
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ressenet.engine.config import FUSED_MECHANISMS, Config, load_config
from ressenet.engine.distributed import agreed_signal, barrier
from ressenet.engine.lock import LockHeld, RunLock, describe
from ressenet.engine.records import Progress
from ressenet.engine.run import NonFiniteLoss, Run
from ressenet.engine.rundir import RunDir, prepare_run_dir
from ressenet.engine.runtime import compile_notes, exit_stopped, prepare_device, stop_signals
from ressenet.engine.setup import RunData, load_data, resolve_device, resolve_precision, resolve_settings
from ressenet.engine.steppers import STEPPERS, FusedNetwork, Stepper
from ressenet.errors import RessenetError
from ressenet.models import create_model, is_model, list_models, model_info
from ressenet.names import suggest

__all__ = ["FusedGroup", "train_fused", "fused_configs", "resolve_mechanism", "run_group", "MEMBER_KEYS"]

# Keys in which the members of one group may differ; everything else (data, protocol, precision, device) is shared.
MEMBER_KEYS = ("model.name", "run.seed", "run.out")


def fused_configs(base: dict[str, Any], models: list[str], seeds: list[int], out: str,
                  config_file: str | None = None, name_template: str | None = None) -> list[Config]:
    """The members' configs: the product of ``models`` and ``seeds``, each in ``out/<model>-s<seed>``.

    Every name is checked before anything touches the disk. ``base`` holds the other overrides ({"section.key": v}).
    ``name_template`` (e.g. a grid's ``"{model}-cifar10-s{seed}"``) replaces the member directories' names.
    """
    template = name_template or "{model}-s{seed}"
    try:  # only the two plain fields: str.format would also run {seed.__class__} and fail on {x}
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError:
        fields = [("", None, None)]
    if "{model}" not in template or "{seed}" not in template or "/" in template or template.startswith(".") or \
            any(f not in ("model", "seed") or spec or conv for f, spec, conv in fields):
        raise RessenetError(f"--member-name {template!r} must contain {{model}} and {{seed}}, no other {{...}} field "
                            f"and no '/', e.g. '{{model}}-cifar10-s{{seed}}'")
    for m in models:
        if not is_model(m):
            raise RessenetError(f"unknown model {m!r} in --model; {suggest(m, list_models())}`ressenet models` lists "
                                f"them")
    if len(set(models)) != len(models) or len(set(seeds)) != len(seeds):
        raise RessenetError(f"--model {','.join(models)} --seed {','.join(map(str, seeds))} repeats a member; "
                            f"list each model and seed once")
    depths = {m: (info.depth if (info := model_info(m)) else create_model(m).depth) for m in models}
    if len(set(depths.values())) > 1:
        raise RessenetError(f"fused members must share one depth, got {depths}; run one command per depth")
    cfgs = []
    for m in models:
        for s in seeds:
            cfgs.append(load_config(config_file, {**base, "model.name": m, "run.seed": s,
                                                  "run.out": str(Path(out) / template.format(model=m, seed=s))}
                                    ).validate())
    return cfgs


def resolve_mechanism(name: str, device: torch.device) -> str:
    """``--fused-mechanism`` on ``device``: auto is ``graphs`` on CUDA and ``sequential`` on the CPU
    (benchmarks/fused_throughput.py)."""
    if name not in FUSED_MECHANISMS:
        raise RessenetError(f"--fused-mechanism {name!r} is not one of {', '.join(FUSED_MECHANISMS)}")
    if name == "auto":
        return "graphs" if device.type == "cuda" else "sequential"
    if name == "graphs" and device.type != "cuda":
        raise RessenetError("--fused-mechanism graphs needs CUDA (it replays CUDA graphs); use sequential on the CPU")
    return name


def _shared_part(cfg: Config) -> dict[str, Any]:
    tree = cfg.to_dict()
    for key in MEMBER_KEYS:
        section, _, k = key.partition(".")
        tree[section].pop(k, None)
    return tree


class FusedGroup:
    """The members (engine/run.py ``Run`` objects) of one fused job, claimed and built; ``stepper`` (from
    engine/steppers.py ``STEPPERS``) advances them, and :meth:`step`, :meth:`sync` and :meth:`release` are its."""

    def __init__(self, cfgs: list[Config], *, mechanism: str = "auto", overwrite: bool = False,
                 data: RunData | None = None, parallel_streams: bool = True) -> None:
        if not cfgs:
            raise RessenetError("a fused group needs at least one member")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RessenetError("fused training runs in one process; launch it without torchrun")
        shared = _shared_part(cfgs[0])
        for c in cfgs[1:]:
            if _shared_part(c) != shared:
                other = _shared_part(c)
                diff = sorted(f"{s}.{k}" for s in shared for k in shared[s] if shared[s][k] != other[s][k])
                raise RessenetError(f"fused members differ in {', '.join(diff)}; only the model and the seed may "
                                    f"differ within one command")
        cfg0 = cfgs[0]
        self.device = resolve_device(cfg0.run.device)
        self.mechanism = resolve_mechanism(mechanism, self.device)
        kind = STEPPERS[self.mechanism]
        # A group resumed from its members' checkpoints keeps what they chose when they started (one member's
        # record stands for all: they started together, or alone with the same auto choices on the same machine).
        self.recorded = next((r for r in (RunDir(c.run.out).recorded_choices() for c in cfgs) if r), {})
        self.precision = resolve_precision(cfg0.run.precision, self.device, self.recorded.get("precision"))
        if not kind.grad_stats and cfg0.run.grad_stats_every:
            raise RessenetError(f"--log-grad-stats probes each member's own eager step, which --fused-mechanism "
                                f"{self.mechanism} replaces; use --fused-mechanism sequential, or drop "
                                f"--log-grad-stats")
        if (why := kind.refuse(self.precision)) is not None:
            raise RessenetError(why)
        kind.check_members(cfgs)  # before any directory is touched
        names = [Path(c.run.out).name for c in cfgs]
        self.finished: dict[str, dict[str, Any]] = {}
        self.locked: dict[str, str] = {}  # member -> the runner that holds it
        self.locks: list[RunLock] = []
        pending: list[tuple[Config, Path]] = []
        for c in cfgs:
            lock = RunLock(c.run.out)
            try:
                lock.acquire()  # one runner per run directory: a member another runner holds is skipped
            except LockHeld as e:
                self.locked[Path(c.run.out).name] = describe(e.holder)
                continue
            self.locks.append(lock)
            out, done = prepare_run_dir(c, overwrite, True)
            if done is not None:
                self.finished[out.name] = done
            else:
                pending.append((c, out))
        self.members: list[Run] = []
        self.notes: list[str] = []  # what to tell the user before training (the compile decision)
        self.data: RunData | None = data
        self.stepper: Stepper = kind([])
        if not pending:
            return
        try:
            self._build(kind, pending, names, data, parallel_streams)
        except BaseException:
            self.release_locks()
            raise

    def _build(self, kind: type[Stepper], pending: list[tuple[Config, Path]], names: list[str],
               data: RunData | None, parallel_streams: bool) -> None:
        cfg0 = pending[0][0]
        prepare_device(self.device)
        self.data = data if data is not None else load_data(cfg0)
        settings = resolve_settings(cfg0, self.device, self.data, self.recorded, compiles=kind.compiles is not None,
                                    fused_with=names, fused_mechanism=self.mechanism)
        self.notes = compile_notes(cfg0, settings)
        amp = kind.amp(self.precision, self.device)
        for c, out in pending:
            first = self.members[0].loader if self.members else None
            run = Run.build(c, out, self.data, settings, share_pixels_with=first, amp=amp,
                            compile_step=kind.compiles == "runs")
            run.write_config()
            self.members.append(run)
        network_mode = settings.compile if kind.compiles == "network" and settings.compile else None
        self.stepper = kind(self.members, compile_mode=network_mode, parallel_streams=parallel_streams)
        self.release()  # members' streams see the weights and state built on the default stream

    # -- the stepper's ------------------------------------------------------------------------------------------
    @property
    def failed(self) -> dict[str, Any]:
        """The members that stopped (non-finite loss), by name, with why."""
        return self.stepper.failed

    @property
    def grouped(self) -> FusedNetwork | None:
        """Mechanism grouped: the fused network of the members that stepped last."""
        return getattr(self.stepper, "network", None)

    @property
    def active(self) -> list[Run]:
        """The members still training."""
        return self.stepper.active()

    def step(self) -> list[Run]:
        """One step of every active member (the stepper's); returns those that stepped."""
        return self.stepper.step()

    def sync(self) -> None:
        """Brings the members' own models up to date and waits for their work (the stepper's)."""
        self.stepper.sync()

    def release(self) -> None:
        """The members' streams wait for the host's work on the default stream (the stepper's)."""
        self.stepper.release()

    def release_locks(self) -> None:
        """Releases every member's run-directory lock."""
        for lock in self.locks:
            lock.release()
        self.locks = []


def train_fused(cfgs: list[Config], *, overwrite: bool = False, mechanism: str = "auto") -> list[dict[str, Any]]:
    """Trains the members of ``cfgs`` together; returns their summaries (finished ones included, not retrained).

    SIGINT/SIGTERM finish the current step, checkpoint every member and exit; the same command resumes.

    Raises:
        RessenetError: bad group, or a member whose loss became non-finite (the others still finish first).
    """
    group = FusedGroup(cfgs, mechanism=mechanism, overwrite=overwrite)
    try:
        summaries = dict(group.finished)
        parent = Path(cfgs[0].run.out).parent
        for name, holder in group.locked.items():
            print(f"{parent / name} is being trained by {holder}; skipped here", file=sys.stderr)
        for name in group.finished:
            print(f"{parent / name} already finished; not retrained")
        if group.members:
            progress = Progress(cfgs[0].run.progress, cfgs[0].optim.iters,
                                min(m.state.it for m in group.members), True, group=True)
            start = sorted({m.state.it for m in group.members})
            progress.message(f"fused training of {len(group.members)} members "
                             f"({', '.join(m.name for m in group.members)}) on {group.device}, mechanism "
                             f"{group.mechanism}, {group.precision}; from iteration {'/'.join(map(str, start))}")
            for note in group.notes:
                progress.message(note)
            summaries.update(finish_group(group.stepper, run_group(group.stepper, progress)))
        return [summaries[Path(c.run.out).name] for c in cfgs if Path(c.run.out).name in summaries]
    finally:
        group.release_locks()


def run_group(stepper: Stepper, progress: Progress) -> float:
    """Trains ``stepper``'s runs to their last iteration; returns the seconds this process trained.

    At a boundary (a run's log, evaluation or checkpoint interval ends, or a stop signal arrived) each run ending an
    interval does its boundary work (``Run.boundary``); a run whose loss became non-finite drops out
    (``stepper.failed``) and the others go on. A stop signal checkpoints every active run and exits with 128 + the
    signal's number; the same command resumes.
    """
    runs = stepper.runs
    t_start = t_interval = time.perf_counter()
    with stop_signals() as stop:
        while stepper.active():
            due = [r for r in stepper.step() if r.due()]
            if not due and not stop:
                continue
            # Decided once per boundary, as in engine/train.py: every member saves, or none does.
            signum = agreed_signal(stop, runs[0].dist, runs[0].device)
            stopping = bool(signum)
            stepper.sync()
            now = time.perf_counter()
            ending = due + [r for r in stepper.active() if r not in due] if stopping else due
            steps = {r.name: r.state.it - r.it_interval for r in due}
            recs = []
            for r in ending:
                try:
                    rec = r.boundary(now - t_interval, now - t_start, stopping=stopping)
                except NonFiniteLoss as e:  # this run stops; the others go on
                    stepper.failed[r.name] = e
                    if len(runs) > 1:
                        print(f"{r.out}: {e}", file=sys.stderr)
                    continue
                if rec is not None:
                    recs.append((rec, steps.get(r.name, 0)))
            stepper.release()
            progress.boundary(recs, sum(steps[r.name] * r.cfg.optim.batch_size for r in due), now - t_interval)
            barrier(runs[0].dist)
            if stopping and stepper.active():
                exit_stopped(signum, runs, progress)
            t_interval = time.perf_counter()
    progress.close()
    return time.perf_counter() - t_start


def finish_group(stepper: Stepper, elapsed: float) -> dict[str, dict[str, Any]]:
    """Each finished member's summary (``Run.finish``: written to its ``summary.json``), by run name.

    Raises:
        NonFiniteLoss: the one member failed; RessenetError naming each failed member of a larger group (after the
        others' summaries are written).
    """
    summaries = {r.name: r.finish(elapsed) for r in stepper.runs if r.name not in stepper.failed}
    if len(stepper.runs) == 1 and stepper.failed:
        raise next(iter(stepper.failed.values()))
    if stepper.failed:
        raise RessenetError("; ".join(f"{r.out}: {stepper.failed[r.name]}" for r in stepper.runs
                                      if r.name in stepper.failed))
    return summaries
