"""One runner per run directory: an exclusive lock file that works across processes and machines.

``DIR/.lock`` is created atomically (``O_CREAT | O_EXCL``, which shared filesystems such as NFSv3+ honour) and
names its holder: host, process id, start time. A thread of the holder refreshes the file's modification time every
``REFRESH_SECONDS`` while the run lives. Another runner takes a lock over only when it is provably stale: its
holder is a process of this host that no longer exists, or (any host) the file has not been refreshed for
``STALE_SECONDS``. Taking over renames the stale file away first, which only one of several contenders can do.

``ressenet train`` on a locked directory exits with a one-line error naming the holder; ``ressenet grid`` skips a
locked cell; fused training skips a locked member.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from ressenet.errors import RessenetError

__all__ = ["RunLock", "LockHeld", "lock_holder", "describe", "LOCK_NAME", "REFRESH_SECONDS", "STALE_SECONDS",
           "EXIT_LOCKED", "PARENT_ENV"]

LOCK_NAME = ".lock"
REFRESH_SECONDS = 30.0
# A live holder refreshes every 30 s; ten missed refreshes (a stopped machine, a dead NFS client) make it stale.
STALE_SECONDS = 300.0
# A runner that takes a directory's lock and then launches the trainer for it (the grid) names itself here, so the
# trainer uses the lock instead of finding it held.
PARENT_ENV = "RESSENET_LOCK_PARENT"
EXIT_LOCKED = 75  # `ressenet train`'s exit status when another runner holds the directory (BSD's EX_TEMPFAIL)


class LockHeld(RessenetError):
    """The run directory is being trained by another runner."""

    def __init__(self, out: Path, holder: dict[str, Any]) -> None:
        super().__init__(f"{out} is being trained by {describe(holder)}; wait for it, or run another directory "
                         f"(if that runner is dead, its lock goes stale {STALE_SECONDS:.0f} s after its last "
                         f"refresh, or at once when it ran on this host)")
        self.holder = holder


def describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')} (since {when})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def lock_holder(out: str | Path) -> dict[str, Any] | None:
    """The live holder of ``out``'s lock, or None (no lock, or a stale one)."""
    path = Path(out) / LOCK_NAME
    try:
        holder = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # Being written this instant, or garbage: treat as held until it is old enough to be stale.
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None
        return None if age > STALE_SECONDS else {"host": "?", "pid": "?", "started": None}
    if not isinstance(holder, dict) or age > STALE_SECONDS:
        return None
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
            and not _pid_alive(holder["pid"]):
        return None
    return holder


class RunLock:
    """``with RunLock(out):`` holds ``out/.lock`` for the block (refreshed in the background), or raises LockHeld."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def acquire(self) -> RunLock:
        self.out.mkdir(parents=True, exist_ok=True)
        holder = lock_holder(self.out)
        parent = os.environ.get(PARENT_ENV)
        if holder is not None and parent and holder.get("host") == self.me["host"] and \
                str(holder.get("pid")) == parent:
            return self  # held for us by the process that launched us (the grid); it refreshes and releases it
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = lock_holder(self.out)
                if holder is not None:
                    raise LockHeld(self.out, holder) from None
                self._break_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            self._thread = threading.Thread(target=self._refresh, name=f"lock {self.out.name}", daemon=True)
            self._thread.start()
            return self
        raise LockHeld(self.out, lock_holder(self.out) or {"host": "?", "pid": "?", "started": None})

    def _break_stale(self) -> None:
        # Renaming is atomic: of several runners that all saw the stale lock, one moves it; the others find it gone
        # and race for O_EXCL creation, which again only one wins.
        grave = self.path.with_name(f"{LOCK_NAME}.stale.{self.me['host']}.{self.me['pid']}")
        try:
            os.rename(self.path, grave)
            grave.unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held:
            try:  # only our own lock: a runner that took over a lock we let go stale must keep its own
                holder = json.loads(self.path.read_text())
                if (holder.get("pid"), holder.get("host")) == (self.me["pid"], self.me["host"]):
                    self.path.unlink()
            except (OSError, ValueError):
                pass
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
