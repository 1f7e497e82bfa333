"""One validated reader per file a run directory holds: ``summary.json``, ``metrics.jsonl`` and ``config.yaml``.

Every command reads a run through these, so a damaged file means the same everywhere: a :class:`RunFileError` whose
one line names the file, the field and the fix. Commands that read many runs (report, tensorboard, a grid's dry run)
skip that run with the line as a warning; commands that act on one run (export, eval, resume) refuse it.

Only regular files are read, and only up to a size bound: a FIFO would block the reader forever and a link to
``/dev/zero`` would fill the memory.
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from ressenet.engine.config import ConfigError
from ressenet.engine.yamlfile import load_yaml
from ressenet.errors import RessenetError, quote
from ressenet.files import finite

__all__ = ["RunFileError", "RESULT_KEYS", "read_regular", "read_json_file", "check_summary", "read_summary",
           "read_metrics", "parse_metrics_line", "last_iteration", "read_config_tree", "finite"]

# The numbers every finished run's summary.json has (train prints them, the report's tables and the grid's "done"
# count on them): a summary lacking one is not a finished run.
RESULT_KEYS = ("test_top1", "test_top5", "best_test_top1", "best_test_top5", "iters", "wall_seconds")
PERCENT_KEYS = ("test_top1", "test_top5", "best_test_top1", "best_test_top5", "val_top1", "val_top5",
                "selected_test_top1", "selected_test_top5")
MAX_ITER = 1 << 62  # beyond any schedule, and within int64 (TensorBoard's step)
# Far above what a run writes (a summary is a few kB, metrics a few MB at 64k iterations logged every 10).
# Keyed by suffix (a summary, a config, a metrics log), so that only RunDir spells the run directory's file names.
MAX_BYTES = {".json": 16 << 20, ".yaml": 4 << 20, ".jsonl": 1 << 30}


class RunFileError(RessenetError, ValueError):
    """A run file that is missing a field, holds the wrong type or an out-of-range number, or is not a file."""


def read_regular(path: Path, limit: int | None = None) -> bytes | None:
    """The bytes of ``path``; None when there is nothing there.

    Raises:
        RunFileError: it is not a regular file (a FIFO, a device, a folder), or larger than ``limit`` bytes.
    """
    limit = limit if limit is not None else MAX_BYTES.get(path.suffix, 16 << 20)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it without reading.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise RunFileError(f"{path} is a folder, not a file; move it away") from None
    except OSError as e:
        raise RunFileError(f"{path} cannot be read ({e.strerror or type(e).__name__}); check its permissions") \
            from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise RunFileError(f"{path} is not a regular file (a FIFO, device or socket); replace it with the run's "
                               f"file or move the run directory away")
        if st.st_size > limit:
            raise RunFileError(f"{path} is {st.st_size:,} bytes, more than the {limit:,} a run writes; it is not this "
                               f"run's file: move it away")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise RunFileError(f"{path} grew past {limit:,} bytes while being read; move it away")
    return data


def read_json_file(path: Path) -> Any:
    """``path`` parsed as JSON (None when absent); one line naming the file when it is not valid JSON."""
    data = read_regular(path)
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else type(e).__name__
        raise RunFileError(f"{path} is not valid JSON ({why}); delete it to finish the run again, or move the run "
                           f"directory away") from None


def check_summary(tree: Any, path: Path | str) -> dict[str, Any]:
    """``tree`` when it is a finished run's summary: finite result numbers in range, and the fields the commands
    read of the right type; else one line naming the file and the first wrong field."""
    fix = "delete it and run the run again to finish it (or move the run directory away)"
    if not isinstance(tree, dict):
        raise RunFileError(f"{path} holds a {type(tree).__name__}, not a run summary; {fix}")
    for key in RESULT_KEYS:
        value = tree.get(key)
        if not finite(value):
            raise RunFileError(f"{path}: {key} is {quote(value)}, not a finite number; {fix}")
    for key in PERCENT_KEYS:
        value = tree.get(key)
        if value is not None and not (finite(value) and 0 <= value <= 100):
            raise RunFileError(f"{path}: {key} is {quote(value)}, not a percentage between 0 and 100; {fix}")
    if not isinstance(tree["iters"], int) or not 0 <= tree["iters"] <= MAX_ITER:
        raise RunFileError(f"{path}: iters is {quote(tree['iters'])}, not an iteration count; {fix}")
    if tree["wall_seconds"] < 0:
        raise RunFileError(f"{path}: wall_seconds is {quote(tree['wall_seconds'])}, below 0; {fix}")
    for key, kind, what in (("model", str, "a model name"), ("data", dict, "a mapping"), ("config", dict, "a mapping")):
        if key in tree and not isinstance(tree[key], kind):
            raise RunFileError(f"{path}: {key} is a {type(tree[key]).__name__}, not {what}; {fix}")
    for key in ("seed", "params"):
        value = tree.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_ITER):
            raise RunFileError(f"{path}: {key} is {quote(value)}, not an integer; {fix}")
    return tree


def read_summary(path: Path) -> dict[str, Any] | None:
    """A finished run's ``summary.json`` checked by :func:`check_summary`; None when there is none."""
    if not (path.exists() or path.is_symlink()):
        return None
    return check_summary(read_json_file(path), path)


def parse_metrics_line(line: str | bytes) -> dict[str, Any] | None:
    """One ``metrics.jsonl`` record, or None for a torn or damaged line (no object, no valid ``iter``).

    Numbers no float can hold (a 400-digit loss) become infinities, so every later ``float()`` is safe. An accuracy
    that is not a finite percentage (NaN, infinite, a string, outside 0-100) is dropped: the record has no such result.
    """
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(rec, dict):
        return None
    it = rec.get("iter")
    if isinstance(it, bool) or not isinstance(it, int) or not 0 <= it <= MAX_ITER:
        return None
    for key, value in rec.items():
        if isinstance(value, int) and not isinstance(value, bool) and key != "iter" and not finite(value):
            rec[key] = math.inf if value > 0 else -math.inf
    for key in PERCENT_KEYS:
        if key in rec and not (finite(rec[key]) and 0 <= rec[key] <= 100):
            del rec[key]
    return rec


def read_metrics(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (of one ``kind`` when given); damaged lines skipped, as resume skips them.

    Raises:
        RunFileError: the path is not a regular file or is beyond the size bound.
    """
    data = read_regular(path)
    out = []
    for line in (data or b"").decode("utf-8", errors="replace").splitlines():
        rec = parse_metrics_line(line)
        if rec is not None and (kind is None or rec.get("kind") == kind):
            out.append(rec)
    return out


def last_iteration(path: Path) -> int | None:
    """The ``iter`` of the last readable line of a ``metrics.jsonl`` (None when absent, empty or not a file)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        lines = f.read(4096).decode(errors="replace").splitlines()
    for line in reversed(lines):
        rec = parse_metrics_line(line)
        if rec is not None:
            return rec["iter"]
    return None


def read_config_tree(path: Path) -> dict[str, Any] | None:
    """A run's ``config.yaml`` as a mapping of sections (None when absent); one line naming the file otherwise."""
    data = read_regular(path)
    if data is None:
        return None
    try:
        tree = load_yaml(data.decode("utf-8"), str(path))
    except UnicodeDecodeError:
        raise RunFileError(f"{path} is not UTF-8 text; move the run directory away") from None
    except ConfigError as e:
        raise RunFileError(f"{e}; it is torn or not a run config: move the run directory away") from None
    if not isinstance(tree, dict):
        raise RunFileError(f"{path} holds a {type(tree).__name__}, not a run config; move the run directory away")
    for section, value in tree.items():
        if not isinstance(value, dict):
            raise RunFileError(f"{path}: {section} is a {type(value).__name__}, not a mapping; it is torn or not a "
                               f"run config: move the run directory away")
    return tree
