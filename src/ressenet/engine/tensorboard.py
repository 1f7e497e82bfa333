"""TensorBoard event files of a run's scalars: the same numbers as ``metrics.jsonl``, for ``tensorboard --logdir``.

Written two ways, by one implementation: live while training with ``--tensorboard`` (``run.tensorboard``; rank 0
only, through :class:`~ressenet.engine.records.MetricsLog`), and afterwards from ``metrics.jsonl`` by ``ressenet
tensorboard RUNS_DIR`` for runs trained without it. The event files sit in the run directory, so each run is one
TensorBoard run named by its path. A resumed run rewrites its events from ``metrics.jsonl`` (which resume has cut back
to the checkpoint's iteration) and appends from there, so no step is shown twice, nor one the run went back on.

TensorBoard is an optional extra (``pip install 'ressenet[tensorboard]'``); nothing imports it unless asked.
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ressenet.engine import runfiles
from ressenet.engine.rundir import RunDir
from ressenet.engine.runfiles import RunFileError
from ressenet.errors import RessenetError, not_a_folder

__all__ = ["TAGS", "EVENTS_GLOB", "OWN_EVENTS_GLOB", "scalars", "read_metrics", "EventLog", "convert_runs",
           "require_tensorboard"]

# metrics.jsonl key -> TensorBoard tag. "grads" lines (--log-grad-stats) are per-layer tables, left to `ressenet analyze`.
TAGS: dict[str, str] = {
    "train_loss": "train/loss", "train_top1": "train/top1", "lr": "train/lr",
    "images_per_second": "train/images_per_second",
    "test_top1": "test/top1", "test_top5": "test/top5", "test_loss": "test/loss",
    "val_top1": "val/top1", "val_top5": "val/top5", "val_loss": "val/loss",
}
EVENTS_GLOB = "events.out.tfevents.*"
# The suffix of the event files this package writes: the only ones it ever removes (another tool's event files in the
# same folder are the user's, and stay).
OWN_SUFFIX = ".ressenet"
OWN_EVENTS_GLOB = f"{EVENTS_GLOB}{OWN_SUFFIX}"


def require_tensorboard() -> Any:
    """torch's ``SummaryWriter``, or one line naming the optional extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RessenetError("TensorBoard event files need the optional extra `tensorboard`: pip install "
                            "'ressenet[tensorboard]' (or pip install tensorboard), or drop --tensorboard") from None
    return SummaryWriter


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one metrics.jsonl record ({tag: value}); none for "grads" lines."""
    if record.get("kind") not in ("train", "eval"):
        return {}
    return {tag: float(record[key]) for key, tag in TAGS.items()
            if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool)
            and math.isfinite(record[key])}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (a torn or damaged line is skipped, as resume skips it; engine/runfiles.py).

    Raises:
        RunFileError: not a regular file (a FIFO would block), or beyond the size bound.
    """
    return runfiles.read_metrics(path)


class EventLog:
    """The event files of one run directory: replaces any there with ``records``, then appends with :meth:`write`."""

    def __init__(self, folder: Path, records: Iterable[dict[str, Any]] = ()) -> None:
        writer_cls = require_tensorboard()
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(OWN_EVENTS_GLOB):  # the run's earlier events; rewritten below from metrics.jsonl
            if old.is_file() and not old.is_symlink():
                old.unlink()
        self.writer = writer_cls(log_dir=str(folder), filename_suffix=OWN_SUFFIX)
        for rec in records:
            self._add(rec)
        self.writer.flush()

    def _add(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=int(record["iter"]))

    def write(self, record: dict[str, Any]) -> None:
        """One record, on disk when this returns (records come every log_every iterations: flushing is cheap)."""
        self._add(record)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def convert_runs(runs_dir: str | Path, *, out: str | Path | None = None,
                 overwrite: bool = False) -> list[tuple[str, str]]:
    """Event files for every run under ``runs_dir`` (any depth) from its metrics.jsonl; returns (run, what was done).

    Writes into each run directory, or into ``out``/<the run's path under runs_dir> (for a read-only tree). A run
    that already has event files (trained with --tensorboard, or converted before) is left alone unless
    ``overwrite``.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"runs directory {root} not found; pass the folder holding run directories")
    if out is not None and (blocked := not_a_folder(out)) is not None:
        raise blocked  # before any run is converted, not once per run
    require_tensorboard()
    done = []

    for found in RunDir.with_metrics_below(root):
        run, metrics = found.path, found.metrics_file
        rel = str(run.relative_to(root)) if run != root else "."
        target = run if out is None else Path(out) / run.relative_to(root)
        # Only files count: a folder that happens to match the pattern holds no events.
        events = [p for p in target.glob(EVENTS_GLOB) if p.is_file()]
        if events and not overwrite:
            if any(p.match(OWN_EVENTS_GLOB) for p in events):
                done.append((rel, "has event files already; skipped (--overwrite rewrites them)"))
            else:  # only --overwrite's half applies: another tool's files are never removed
                done.append((rel, "holds another tool's event files; skipped (--overwrite writes this run's beside "
                                  "them and keeps them)"))
            continue
        try:
            records = read_metrics(metrics)
        except RunFileError as e:  # one damaged run is skipped; the others are converted
            done.append((rel, f"{e}; skipped"))
            continue
        try:
            # Probe first: TensorBoard opens its file in a background thread, which would print a traceback for a
            # read-only folder instead of raising here.
            target.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=target):
                pass
            EventLog(target, records).close()
        except OSError as e:
            done.append((rel, f"cannot write event files in {target} ({e.strerror or type(e).__name__}); skipped "
                              f"(for a read-only tree pass --out DIR)"))
            continue
        n = sum(1 for r in records if scalars(r))
        done.append((rel, f"{n} records -> {target}"))
    if not done:
        raise RessenetError(f"no run directory (with a metrics.jsonl) under {root}; pass the folder `ressenet grid "
                            f"--runs-dir` or `ressenet train --out` wrote into")
    return done
