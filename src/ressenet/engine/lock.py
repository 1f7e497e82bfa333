"""One runner per run directory: an exclusive lock file that works across processes and machines.

``DIR/.lock`` is created atomically (``O_CREAT | O_EXCL``, which shared filesystems such as NFSv3+ honour) and
names its holder: host, process id, start time, and the processes of the run that hold it (``procs``: the grid that
took it and the trainer it launched, each with its kernel start time, so a reused process id is not mistaken for the
holder). A thread of each holding process refreshes the file's modification time every ``REFRESH_SECONDS``. Another
runner takes a lock over only when it is provably stale: every process it names is a process of this host that no
longer exists, or (any host) the file has not been refreshed for ``STALE_SECONDS`` (or claims a refresh that far in
the future). Taking over renames the stale file away first, which only one of several contenders can do.

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

from ressenet.errors import RessenetError, not_a_folder
from ressenet.files import atomic_write_text

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
    """A lock holder in words for an error: ``process 123 on host (since 2026-01-01 12:00:00)``."""
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
    except (OverflowError, ValueError):  # not a process id at all
        return False
    return True


def _proc_start(pid: int) -> int | None:
    """The kernel's start time of process ``pid`` (clock ticks since boot), or None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22; the name in (...) may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def _started_after(pid: Any, when: Any) -> bool:
    """Whether process ``pid`` began after wall time ``when``: then it is not the process that took a lock then."""
    ticks = _proc_start(pid) if isinstance(pid, int) and isinstance(when, (int, float)) else None
    try:
        boot = next(float(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                    if ln.startswith("btime "))
        return ticks is not None and boot + ticks / os.sysconf("SC_CLK_TCK") > when + 2.0  # btime has 1 s steps
    except (OSError, ValueError, StopIteration):
        return False


def _procs(holder: dict[str, Any]) -> list[tuple[Any, Any]]:
    """The (pid, start time) pairs a lock names: ``procs``, or just its ``pid`` for a lock without them."""
    procs = holder.get("procs")
    if isinstance(procs, list) and procs:
        return [(p[0], p[1]) if isinstance(p, list) and len(p) == 2 else (p, None) for p in procs]
    pid = holder.get("pid")
    # A lock without start times: a process that began after the lock was taken reuses the holder's id.
    return [] if _started_after(pid, holder.get("started")) else [(pid, None)]


def _alive(pid: Any, start: Any) -> bool:
    """Whether the process of this host that took part in the lock still runs (and is that process, not a later one
    that got the same id)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not _pid_alive(pid):
        return False
    now = _proc_start(pid) if isinstance(start, int) else None
    return now is None or now == start


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
    if not isinstance(holder, dict) or abs(age) > STALE_SECONDS:  # a future mtime is a clock gone wrong, not a life
        return None
    if holder.get("host") == socket.gethostname() and not any(_alive(p, s) for p, s in _procs(holder)):
        return None
    return holder


class RunLock:
    """``with RunLock(out):`` holds ``out/.lock`` for the block (refreshed in the background), or raises LockHeld."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        pid = os.getpid()
        self.proc = [pid, _proc_start(pid)]
        self.me = {"host": socket.gethostname(), "pid": pid, "started": time.time(), "procs": [self.proc]}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def acquire(self) -> RunLock:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if (file := not_a_folder(self.out)) is not None:
                raise file from None
            raise RessenetError(f"cannot create the run directory {self.out}: {e.strerror or e}; choose an --out "
                                f"that is writable, has room and a name of sane length") from None
        if self.path.is_dir() or self.path.is_symlink():
            raise RessenetError(f"{self.path} is a {'link' if self.path.is_symlink() else 'directory'}, not a lock "
                                f"file; remove it and run the same command again")
        holder = lock_holder(self.out)
        parent = os.environ.get(PARENT_ENV)
        if holder is not None and parent and holder.get("host") == self.me["host"] and \
                parent in {str(p) for p, _ in _procs(holder)}:
            return self._join(holder)  # held for us by the process that launched us (the grid)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except OSError as e:
                if not isinstance(e, FileExistsError):
                    raise RessenetError(f"cannot create the lock {self.path}: {e.strerror or e}; make {self.out} "
                                        f"writable (or free space), then run the same command again") from None
                holder = lock_holder(self.out)
                if holder is not None:
                    raise LockHeld(self.out, holder) from None
                self._break_stale()
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(self.me, f)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                self.path.unlink(missing_ok=True)
                raise RessenetError(f"cannot write the lock {self.path}: {e.strerror or e}; free space in "
                                    f"{self.out}, then run the same command again") from None
            return self._hold()
        raise LockHeld(self.out, lock_holder(self.out) or {"host": "?", "pid": "?", "started": None})

    def _hold(self) -> RunLock:
        self.held = True
        self._thread = threading.Thread(target=self._refresh, name=f"lock {self.out.name}", daemon=True)
        self._thread.start()
        return self

    def _join(self, holder: dict[str, Any]) -> RunLock:
        """Adds this process to the lock its launcher holds, so the lock stays valid (and refreshed) while either
        lives: a trainer whose grid was killed keeps its directory to itself until it ends."""
        self._write({**holder, "procs": [list(p) for p in _procs(holder)] + [self.proc]})
        return self._hold()

    def _write(self, holder: dict[str, Any]) -> None:
        atomic_write_text(self.path, json.dumps(holder))

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
        """Leaves the lock: removes the file when no other process of the run still holds it, else takes this
        process off its list."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held:
            try:  # only our own lock: a runner that took over a lock we let go stale must keep its own
                holder = json.loads(self.path.read_text())
                procs = _procs(holder)
                if holder.get("host") == self.me["host"] and self.me["pid"] in [p for p, _ in procs]:
                    others = [[p, s] for p, s in procs if p != self.me["pid"]]
                    if any(_alive(p, s) for p, s in others):
                        self._write({**holder, "procs": others})
                    else:
                        self.path.unlink()
            except (OSError, ValueError, AttributeError, RessenetError):
                pass
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
