"""Running a grid here: the unfinished cells as separate trainer processes, a few at a time, each outcome reported.

:class:`GridRunner` holds what the workers share (the job queue, the running processes, the result, the stop flag);
:func:`run_grid` is its one-call front door. SIGINT and SIGTERM are passed on to the running trainers, which
checkpoint and exit; then the grid exits with 128 + the signal's number.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ressenet.engine.rundir import RunDir
from ressenet.engine.lock import EXIT_LOCKED, PARENT_ENV, LockHeld, RunLock
from ressenet.experiments.cells import read_json_object, cell_state
from ressenet.experiments.gridspec import Cell
from ressenet.experiments.jobs import Job, positive_count, job_command, plan_jobs, train_command

__all__ = ["GridResult", "GridRunner", "run_grid", "resolve_jobs", "usable_cores", "failure_line"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a cluster's scheduler or ``taskset`` narrows)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def resolve_jobs(value: int | str | None, *, gpus: Sequence[str], cuda: bool) -> int:
    """``--jobs``: a positive count, or ``auto`` (the default): one per listed GPU; one on an unlisted GPU; on the
    CPU one single-threaded process per usable core, which trains more images/s in all than fewer processes with
    several threads each (BENCHMARKS.md, "CPU grids")."""
    if value is None or value == "auto":
        if gpus:
            return len(gpus)
        return 1 if cuda else usable_cores()
    return positive_count(value, "--jobs", "cells at once")


def _default_command(cell: Cell) -> list[str]:
    return train_command(cell, program=(sys.executable, "-m", "ressenet"))


def _default_job_command(job: Job, mechanism: str = "auto") -> list[str]:
    return job_command(job, program=(sys.executable, "-m", "ressenet"), mechanism=mechanism)


@dataclass
class GridResult:
    """What ``run_grid`` did: cells skipped (done), run successfully, failed (name, return code, log)."""

    skipped: list[str] = field(default_factory=list)
    succeeded: list[str] = field(default_factory=list)
    failed: list[tuple[str, int, str]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # failed cell -> the one-line error its log ends with
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)  # locked by another runner: skipped here

    @property
    def ok(self) -> bool:
        return not self.failed and not self.conflicts


def run_grid(cells: Sequence[Cell], *, gpus: Sequence[str] | None = None, jobs: int | None = None,
             command: Callable[[Cell], list[str]] | None = None, echo: Callable[[str], None] = print,
             env: dict[str, str] | None = None, fuse: int = 1, mechanism: str = "auto",
             fused_command: Callable[[Job], list[str]] | None = None) -> GridResult:
    """Run the unfinished cells as separate processes and report each one's outcome.

    Args:
        cells: from ``expand_grid``.
        gpus: GPU ids; each process sees one through ``CUDA_VISIBLE_DEVICES``. None: no GPU pinning.
        jobs: processes at once (default: one per listed GPU, else 1; the CLI's ``--jobs auto`` is
            :func:`resolve_jobs`). With more jobs than GPUs they share GPUs round-robin; on CPU each of several jobs
            gets an equal share of the usable cores (``OMP_NUM_THREADS``), one thread each at one job per core.
        command: builds the argv of a cell (default ``python -m ressenet train ...``); tests pass a fake trainer.
        echo: where progress lines go.
        env: extra environment variables for every process.
        fuse: members per process: compatible unfinished cells are packed into fused jobs (:func:`plan_jobs`);
            1 runs every cell alone.
        mechanism: ``--fused-mechanism`` of the fused jobs (auto: the engine picks by device).
        fused_command: builds the argv of a fused job (default ``python -m ressenet train --model a,b ...``).

    A failing cell (non-zero exit, or exit 0 without ``summary.json``) is reported with its return code and log
    (``DIR/train.log``, appended to on each attempt) and the others go on. SIGINT (Ctrl-C) or SIGTERM is passed on
    to the running trainers, which checkpoint and exit; then the grid exits with 128 + the signal's number, and
    running the same command again resumes.
    """
    return GridRunner(cells, gpus=gpus, jobs=jobs, command=command, echo=echo, env=env, fuse=fuse,
                      mechanism=mechanism, fused_command=fused_command).run()


class GridRunner:
    """One run of a grid: worker threads (one per slot) take jobs off a shared queue and run each as a process.

    Arguments as :func:`run_grid`. The lock (``self._lock``) guards the queue, the running processes and the result;
    ``self._stopping`` is set by a signal, after which nothing new starts.
    """

    def __init__(self, cells: Sequence[Cell], *, gpus: Sequence[str] | None = None, jobs: int | None = None,
                 command: Callable[[Cell], list[str]] | None = None, echo: Callable[[str], None] = print,
                 env: dict[str, str] | None = None, fuse: int = 1, mechanism: str = "auto",
                 fused_command: Callable[[Job], list[str]] | None = None) -> None:
        self.cells = cells
        self.build = command or _default_command
        self.build_job = fused_command or functools.partial(_default_job_command, mechanism=mechanism)
        self.echo = echo
        self.extra_env = env
        self.fuse = fuse
        self.gpus = [str(g) for g in gpus] if gpus else []
        self.n_slots = max(1, jobs or len(self.gpus) or 1)
        self.result = GridResult()
        self.jobs: list[Job] = []
        self.base_env: dict[str, str] = {}
        self.signals: list[int] = []
        self._lock = threading.Lock()
        self._queue: list[tuple[int, Job]] = []
        self._procs: dict[int, subprocess.Popen] = {}
        self._stopping = threading.Event()

    # ----------------------------------------------------------------------------------------------------------
    # The whole run
    # ----------------------------------------------------------------------------------------------------------
    def run(self) -> GridResult:
        """Sort the cells, run the unfinished ones, and return the result (SystemExit after a signal)."""
        todo = self._triage()
        if not todo:
            return self.result
        self.jobs = plan_jobs(todo, self.fuse)
        if self.fuse > 1:
            self.echo(f"fused: {len(todo)} cells in {len(self.jobs)} jobs of at most {self.fuse} members")
        self.base_env = {**os.environ, **(self.extra_env or {})}
        if not self.gpus and self.n_slots > 1 and "OMP_NUM_THREADS" not in self.base_env:
            self.base_env["OMP_NUM_THREADS"] = str(max(1, usable_cores() // self.n_slots))
        self._queue = list(enumerate(self.jobs, 1))
        self._run_workers()
        if self.signals:
            self._report_stop()
        order = [c.name for c in self.cells]
        self.result.failed.sort(key=lambda f: order.index(f[0]))
        return self.result

    def _triage(self) -> list[Cell]:
        """Record the cells not to run here (done, running elsewhere, in conflict); return the others."""
        result, todo = self.result, []
        fingerprints: dict[tuple, str | None] = {}
        for c in self.cells:
            st = cell_state(c, fingerprints)
            if st.state == "done":
                result.skipped.append(c.name)
            elif st.state == "running":
                result.elsewhere.append(c.name)
                self.echo(f"skip      {c.name}: {st.detail}")
            elif st.state == "conflict":
                result.conflicts.append((c.name, st.detail))
                self.echo(f"conflict  {c.name}: {st.detail}; not run (move {c.out} away or use another --runs-dir)")
            else:
                todo.append(c)
        self.echo(f"{len(self.cells)} cells: {len(result.skipped)} done, {len(todo)} to run"
                  f"{f', {len(result.conflicts)} in conflict' if result.conflicts else ''}; "
                  f"{self.n_slots} at a time{' on GPUs ' + ','.join(self.gpus) if self.gpus else ''}")
        return todo

    def _run_workers(self) -> None:
        threads = [threading.Thread(target=self._worker, args=(s,), daemon=True)
                   for s in range(min(self.n_slots, len(self.jobs)))]
        with _signals_to(self.stop):
            for t in threads:
                t.start()
            try:
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(timeout=0.2)
            except KeyboardInterrupt:  # no handler could be installed (not the main thread): stop and wait the same way
                self.stop(signal.SIGINT)
                for t in threads:
                    t.join()

    # ----------------------------------------------------------------------------------------------------------
    # Signals
    # ----------------------------------------------------------------------------------------------------------
    def stop(self, signum: int, _frame: Any = None) -> None:
        """Pass the signal on and let the trainers end themselves: each finishes its step, saves last.pt and exits
        (engine/train.py), holding its directory's lock until then, so a re-run resumes and no other runner starts
        the cell meanwhile. Nothing new starts."""
        self.signals.append(signum)
        with self._lock:
            self._stopping.set()
            running = list(self._procs.values())
        for p in running:
            try:
                p.send_signal(signum)
            except OSError:  # ended meanwhile
                pass

    def _report_stop(self) -> None:
        name = signal.Signals(self.signals[0]).name
        self.echo(f"stopped by {name}: the running cells saved their checkpoints; run the same command to resume")
        raise SystemExit(128 + self.signals[0])

    # ----------------------------------------------------------------------------------------------------------
    # One job
    # ----------------------------------------------------------------------------------------------------------
    def _worker(self, slot: int) -> None:
        gpu = self.gpus[slot % len(self.gpus)] if self.gpus else None
        while not self._stopping.is_set():
            with self._lock:
                if not self._queue:
                    return
                index, job = self._queue.pop(0)
            self._run_job(slot, gpu, index, job)

    def _progress(self, index: int) -> str:
        return f"[{index}/{len(self.jobs)}]"

    def _run_job(self, slot: int, gpu: str | None, index: int, job: Job) -> None:
        # Take each cell's lock here, then look again: between the plan and now another runner may have taken or
        # finished a cell. The trainer inherits the locks (PARENT_ENV), so no other runner starts these cells.
        locks, mine = [], []
        for c in job.cells:
            lk = RunLock(c.out)
            try:
                lk.acquire()
            except LockHeld:
                with self._lock:
                    self.result.elsewhere.append(c.name)
                self.echo(f"{self._progress(index)} skip {c.name}: taken by another runner")
                continue
            if cell_state(c).state == "done":
                lk.release()
                with self._lock:
                    self.result.skipped.append(c.name)
                continue
            locks.append(lk)
            mine.append(c)
        try:
            if mine:
                self._launch(slot, gpu, index, Job(tuple(mine)) if len(mine) < len(job.cells) else job)
        finally:
            for lk in locks:
                lk.release()

    def _launch(self, slot: int, gpu: str | None, index: int, job: Job) -> None:
        """Start the job's process (unless a stop came meanwhile), wait for it, and report each cell."""
        cell = job.cells[0]
        argv = self.build(cell) if len(job.cells) == 1 else self.build_job(job)
        proc_env = dict(self.base_env)
        proc_env[PARENT_ENV] = str(os.getpid())
        if gpu is not None:
            proc_env["CUDA_VISIBLE_DEVICES"] = gpu
        for c in job.cells:
            c.out.mkdir(parents=True, exist_ok=True)
        log_path = RunDir(cell.out).log_file
        for c in job.cells[1:]:  # one log per process: the first member's; the others point to it
            with RunDir(c.out).log_file.open("a") as f:
                f.write(f"# ressenet grid: trained fused with {cell.name}; its log is {log_path}\n")
        where = f" on GPU {gpu}" if gpu is not None else ""
        self.echo(f"{self._progress(index)} start {job.name}{where}")
        start = time.time()
        with log_path.open("a") as log:
            log.write(f"# ressenet grid {time.strftime('%Y-%m-%d %H:%M:%S')}"
                      f"{f' CUDA_VISIBLE_DEVICES={gpu}' if gpu is not None else ''}: {shlex.join(argv)}\n")
            log.flush()
            with self._lock:  # a stop that came while this job was being prepared starts nothing
                if self._stopping.is_set():
                    return
                try:
                    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=proc_env,
                                            stdin=subprocess.DEVNULL)
                except OSError as e:
                    proc = None
                    error = e
                else:
                    self._procs[slot] = proc
            if proc is None:
                log.write(f"# could not start: {error}\n")
                with self._lock:
                    self.result.failed.extend((c.name, -1, str(log_path)) for c in job.cells)
                self.echo(f"{self._progress(index)} FAILED {job.name}: could not start ({error}); log {log_path}")
                return
            rc = proc.wait()
            with self._lock:
                self._procs.pop(slot, None)
        seconds = time.time() - start
        for c in job.cells:
            self._outcome(index, c, rc, seconds, log_path)

    def _outcome(self, index: int, cell: Cell, rc: int, seconds: float, log_path: Path) -> None:
        summary = read_json_object(RunDir(cell.out).summary_file)
        at = self._progress(index)
        if rc == 0 and summary is not None:
            top1 = summary.get("test_top1")
            score = f": test top-1 {top1:.2f}%" if isinstance(top1, (int, float)) else ""
            with self._lock:
                self.result.succeeded.append(cell.name)
            self.echo(f"{at} done {cell.name} in {seconds:.0f} s{score}")
        elif self._stopping.is_set():
            self.echo(f"{at} interrupted {cell.name} after {seconds:.0f} s; re-run the grid to resume it")
        elif rc == EXIT_LOCKED:  # cannot happen while we hold the lock, unless it went stale under us
            with self._lock:
                self.result.elsewhere.append(cell.name)
            self.echo(f"{at} skip {cell.name}: taken by another runner")
        else:
            why = f"exit code {rc}" if rc != 0 else "exit code 0 but no summary.json"
            error = failure_line(log_path)
            with self._lock:
                same = next((name for name, e in self.result.errors.items() if e == error), None)
                self.result.failed.append((cell.name, rc if rc != 0 else 1, str(log_path)))
                self.result.errors[cell.name] = error
            said = f"the same error as {same}" if same else error
            self.echo(f"{at} FAILED {cell.name} ({why}) after {seconds:.0f} s: {said}; log {log_path}")


def failure_line(log_path: Path) -> str:
    """The one-line error of a trainer's last attempt in its log: its ``ressenet ...: error:`` line (prefix dropped),
    else the last line it printed (a traceback's last line)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError as e:
        return f"its log {log_path} cannot be read ({e.strerror or e})"
    attempt = text[text.rfind("\n# ressenet grid ") + 1:].splitlines()[1:]
    lines = [line.strip() for line in attempt if line.strip() and not line.startswith("#")]
    for line in reversed(lines):
        if line.startswith("ressenet ") and ": error: " in line:
            return line.split(": error: ", 1)[1]
    return lines[-1] if lines else "it printed nothing"


@contextlib.contextmanager
def _signals_to(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``handler`` for the block (main thread only: elsewhere Python cannot install one)."""
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
