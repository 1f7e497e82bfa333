"""The run directory: create it, or find what it holds (a finished run, a resumable one, another configuration)."""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ressenet.engine.config import Config, ConfigError, diff_configs, dotted_value
from ressenet.engine.runfiles import (RESULT_KEYS, RunFileError, finite, read_config_tree, read_metrics, read_regular,
                                      read_summary)
from ressenet.engine.yamlfile import load_yaml
from ressenet.errors import RessenetError
from ressenet.files import atomic_write_json, atomic_write_text, remove_orphans

__all__ = ["RunDir", "RUN_FILES", "RESULT_KEYS", "missing_results", "prepare_run_dir", "portable_paths", "map_strings"]

class RunDir:
    """One run's directory and what it holds: the only place its file names are spelled.

    ``config.yaml`` (the resolved config, and ``meta``: versions, device, what auto chose), ``metrics.jsonl`` (one
    record per line, by ``kind``: train, eval, grads), ``last.pt`` and ``best.pt`` (checkpoints: engine/checkpoint.py
    ``open_checkpoint`` reads them), ``summary.json`` (a finished run's result), ``train.log`` (a grid's copy of the
    trainer's output) and ``.lock`` (engine/lock.py).
    """

    CONFIG, METRICS, LAST, BEST, SUMMARY, LOG = ("config.yaml", "metrics.jsonl", "last.pt", "best.pt",
                                                 "summary.json", "train.log")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def summary_file(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def log_file(self) -> Path:
        return self.path / self.LOG

    @classmethod
    def below(cls, root: str | Path) -> list[RunDir]:
        """Every run directory at or below ``root`` that holds a summary.json, in path order."""
        return [cls(p.parent) for p in sorted(Path(root).rglob(cls.SUMMARY))]

    @classmethod
    def with_metrics_below(cls, root: str | Path) -> list[RunDir]:
        """Every run directory at or below ``root`` that holds a metrics.jsonl, in path order."""
        return [cls(p.parent) for p in sorted(Path(root).rglob(cls.METRICS))]

    def started(self) -> bool:
        """Whether a run has begun writing here (a summary, a checkpoint or metrics)."""
        return self.summary_file.is_file() or self.last.is_file() or self.metrics_file.is_file()

    def read_config(self) -> Any:
        """``config.yaml`` as a mapping of sections (engine/runfiles.py), or None when there is none.

        Raises:
            RunFileError: it is torn, not a run config, or not a regular file (one line naming the file).
        """
        return read_config_tree(self.config_file)

    def read_summary(self) -> Any:
        """A finished run's ``summary.json`` (validated: engine/runfiles.py), or None when there is none.

        Raises:
            RunFileError: unreadable, or a field of the wrong type or range (one line naming the file and field).
        """
        return read_summary(self.summary_file)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_file, portable_paths(summary))

    def write_config(self, tree: dict[str, Any]) -> None:
        atomic_write_text(self.config_file, yaml.safe_dump(portable_paths(tree), sort_keys=False))

    def metrics_text(self) -> str:
        """``metrics.jsonl``'s text ("" when there is none); undecodable bytes become U+FFFD (their line is then
        unreadable and skipped by :meth:`metrics`). Raises RunFileError for a FIFO, a device or a huge file."""
        return (read_regular(self.metrics_file) or b"").decode("utf-8", errors="replace")

    def metrics(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (of one ``kind`` when given), skipping torn or unreadable lines."""
        return read_metrics(self.metrics_file, kind)

    def recorded_choices(self) -> dict[str, Any]:
        """What a run that is being resumed chose when it started (``meta`` of its ``config.yaml``: precision,
        compile, channels_last); empty for a new run or a config.yaml without them."""
        if not self.last.is_file():
            return {}
        try:
            meta = (self.read_config() or {}).get("meta") or {}
        except (OSError, UnicodeDecodeError, ConfigError, RunFileError, AttributeError):
            return {}  # prepare_run_dir has already refused an unreadable config.yaml in one line
        return {k: meta[k] for k in ("precision", "compile", "channels_last") if k in meta} \
            if isinstance(meta, dict) else {}


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` (nested dicts, lists, tuples, strings) with ``fn`` applied to every string in it; other leaves kept."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: map_strings(x, fn) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map_strings(x, fn) for x in value)
    return value


def portable_paths(value: Any, base: str | Path | None = None) -> Any:
    """``value`` (nested dicts, lists, strings) with the absolute prefix of ``base`` (default: the current
    directory) cut from every string, so the recorded ``run.out`` and ``data.data_root`` read as relative paths.

    Run directories get committed (results/): a path of the machine that trained them says nothing to a reader and
    names that machine's folders. Paths outside ``base`` are kept as given.
    """
    root = str(Path(base if base is not None else Path.cwd()).absolute())
    # The prefix where a path starts (not inside a longer one: /mnt/work/main/x is not under /work/main).
    prefix = re.compile(rf"(?<![\w.~/-]){re.escape(root.rstrip(os.sep) + os.sep)}")
    return map_strings(value, lambda v: "." if v == root else prefix.sub("", v))


# What a run writes and --overwrite removes (train.log is the grid's, and .lock the lock's).
RUN_FILES = (RunDir.CONFIG, RunDir.METRICS, RunDir.LAST, RunDir.BEST, RunDir.SUMMARY)



def missing_results(summary: Any) -> list[str]:
    """The RESULT_KEYS that ``summary`` lacks or holds as something other than a finite number (all, for a
    summary that is not a mapping)."""
    if not isinstance(summary, dict):
        return list(RESULT_KEYS)
    return [k for k in RESULT_KEYS if not finite(summary.get(k))]


def prepare_run_dir(cfg: Config, overwrite: bool, is_main: bool) -> tuple[Path, dict[str, Any] | None]:
    """Create or check ``run.out``; return (dir, finished summary or None). Refuses a foreign configuration."""
    run = RunDir(cfg.run.out)
    out = run.path
    if run.config_file.is_file():
        _refuse_foreign(run)
        old = _read_config(run.config_file, overwrite)
        changed = diff_configs(old, cfg.to_dict()) if old is not None else ["(unreadable config.yaml)"]
        if changed and not overwrite:
            new = cfg.to_dict()
            shown = ", ".join(f"{k}: {dotted_value(old, k)!r} -> {dotted_value(new, k)!r}" for k in changed[:4])
            raise RessenetError(f"{out} holds a run with another configuration ({shown}); choose another --out, "
                                f"or pass --overwrite to replace it")
        if changed and overwrite and is_main:
            for name in RUN_FILES + (RunDir.LOG,):
                (out / name).unlink(missing_ok=True)
        elif run.summary_file.is_file() and not overwrite:
            return out, run.read_summary()  # a damaged summary: one RunFileError line naming its field
        elif overwrite and is_main:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
    elif out.exists() and any(out.glob("*.pt")) and not overwrite:
        raise RessenetError(f"{out} holds checkpoints but no config.yaml; choose another --out or pass --overwrite")
    if is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RessenetError(f"cannot create {out}: {e.strerror or e}; choose another --out") from None
        remove_orphans(out, RUN_FILES)  # temporary files of a writer killed mid-write
    return out, None


# The top-level keys of a config.yaml this package writes: anything else there is another tool's file.
RUN_SECTIONS = frozenset({"model", "data", "optim", "run", "meta"})


def _refuse_foreign(run: RunDir) -> None:
    """One line when ``config.yaml`` parses but is not a run config of this package: never offer --overwrite, which
    would delete the folder's summary.json and train.log along with it."""
    try:
        tree = load_yaml((read_regular(run.config_file) or b"").decode("utf-8"), str(run.config_file))
    except (ConfigError, UnicodeDecodeError, RunFileError):
        return  # torn or unreadable: _read_config names it
    if isinstance(tree, dict) and "model" in tree and set(tree) <= RUN_SECTIONS:
        return
    keys = ", ".join(map(str, list(tree)[:4])) if isinstance(tree, dict) else type(tree).__name__
    raise RessenetError(f"{run.config_file} is not a run config of ressenet ({keys}): {run.path} belongs to "
                        f"something else; choose another --out (nothing there was changed)")


def _read_config(path: Path, overwrite: bool) -> dict[str, Any] | None:
    """A run directory's config.yaml as a mapping; one line naming it when it is not one (None with --overwrite)."""
    try:
        return read_config_tree(path)
    except RunFileError as e:
        if overwrite:
            return None
        raise RessenetError(f"{e} (or pass --overwrite)") from None

