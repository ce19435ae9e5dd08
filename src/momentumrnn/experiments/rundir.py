"""A run directory held by one process for the whole run.

``RunDirectory(path, resume=...)`` is a context manager around a training run:

* **One process per run directory.** On entry it takes an exclusive lock on
  ``RUN_DIR/.lock`` (``fcntl.flock``; ``msvcrt.locking`` on Windows), before anything else
  is written, and keeps it until the run ends; a second ``train`` on the same directory,
  fresh or ``--resume``, is refused with the holder's pid, host, start time and command.
  The operating system drops the lock when the holder dies, however it dies.
* **Only directories of ours.** A fresh start takes a new or empty directory (a lone
  ``.lock`` of a start that died counts as empty), or one that holds a run (then it is
  refused as a run to ``--resume``); a non-empty directory that holds no run, and a sweep
  directory (``sweep.json``), are refused untouched. ``--out`` naming a file, or a path
  below a file or where the directory cannot be created, is refused with the reason.
* **No links followed.** A run directory with a symbolic link among its files is refused
  (the run would write through it, to a file outside), and the lock file is opened with
  ``O_NOFOLLOW``.
* **No leftovers of a failed start.** Until ``started()`` (called once the first checkpoint
  is on disk), an exception removes what the start wrote: the directory itself when this
  start created it, else its new entries. A failed resume removes nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from datetime import datetime, timezone
from pathlib import Path

try:
    import fcntl
except ImportError:                                   # Windows
    fcntl = None
    import msvcrt

__all__ = ["RunDirectory", "RunError", "LockHeld", "LOCK_NAME", "holds_run", "hold_lock", "refuse_links", "safe_name"]

LOCK_NAME = ".lock"


class RunError(RuntimeError):
    """A run directory that cannot be started or resumed as asked."""


class LockHeld(RunError):
    """Another process holds the lock of the directory."""


def holds_run(path: Path) -> bool:
    """Whether ``path`` holds a run of ours (a configuration or checkpoints; a lock file
    alone is not a run)."""
    return any(os.path.lexists(Path(path) / name) for name in ("config.json", "checkpoints"))


def refuse_links(path: Path) -> None:
    """Raise ``RunError`` when ``path`` has a symbolic link anywhere below it (not followed)."""
    for folder, directories, files in os.walk(path):
        for name in directories + files:
            entry = Path(folder) / name
            if entry.is_symlink():
                raise RunError(f"{entry} is a symbolic link (to {os.readlink(entry)}); a run writes its files "
                               f"only in place: replace the link by the file, or choose another --out")


class RunDirectory:
    """The lock, ownership check and cleanup of one run directory (module docstring)."""

    def __init__(self, path, *, resume: bool, command: list | None = None):
        self.path, self.resume, self.command = Path(path), resume, command
        self._fd: int | None = None
        self._created = False
        self._before: set[str] = set()
        self._started = resume                          # a resume never cleans up

    def __enter__(self) -> "RunDirectory":
        path = self.path
        if path.exists() and not path.is_dir():
            raise RunError(f"--out {path} is a file, not a directory")
        if self.resume and not path.is_dir():
            raise RunError(f"nothing to resume: {path} does not exist")
        if path.is_dir():
            entries = sorted(os.listdir(path))
            if os.path.lexists(path / "sweep.json"):
                raise RunError(f"--out {path} is a sweep directory: its runs are the folders inside it "
                               f"(momentumrnn train --out {path / 'NAME'}), or continue it with momentumrnn sweep "
                               f"... --resume")
            refuse_links(path)
            if set(entries) - {LOCK_NAME} and not self.resume and not holds_run(path):
                shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
                raise RunError(f"--out {path} is a non-empty directory that holds no momentumrnn run "
                               f"({len(entries)} entries: {shown}); choose a new or empty directory")
            self._before = set(entries)
        else:
            try:
                path.mkdir(parents=True)
                self._created = True
            except FileExistsError:                     # made by another process just now
                self._before = set(os.listdir(path))
            except OSError as error:
                raise RunError(f"cannot create run directory {path}: {error.strerror or error}") from None
        self._lock()
        return self

    def started(self) -> None:
        """The run is on disk (its first checkpoint): from now on nothing is cleaned up."""
        self._started = True

    def __exit__(self, kind, error, traceback) -> bool:
        try:
            if kind is not None and not self._started:
                self._remove_new_entries()
        finally:
            if self._fd is not None:
                os.close(self._fd)                       # releases the lock
                self._fd = None
        return False

    # -------------------------------------------------------------------------- internals
    def _lock(self) -> None:
        try:
            self._fd = hold_lock(self.path, resume=self.resume, command=self.command)
        except RunError:
            if self._created and not any(self.path.iterdir()):       # left empty: remove it again
                self.path.rmdir()
            raise

    def _remove_new_entries(self) -> None:
        if self._created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for name in set(os.listdir(self.path)) - self._before:
            entry = self.path / name
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def safe_name(text) -> str:
    """``text`` as one file name: characters other than letters, digits, ``.``, ``_``, ``-``,
    ``=`` and ``+`` become ``_``, and it cannot start with a dot (no ``..``, no hidden file).
    Every name of a written file that comes from a run's records goes through here."""
    name = re.sub(r"[^A-Za-z0-9._=+-]", "_", str(text))[:200]
    return "_" + name[1:] if name.startswith(".") else (name or "_")


#: Where the holder's record starts in the lock file (Windows locks byte 0 itself).
_HOLDER_OFFSET = 0 if fcntl is not None else 1


def hold_lock(folder: Path, *, resume: bool = False, command: list | None = None) -> int:
    """Take the exclusive lock on ``folder/.lock`` and write this process as its holder;
    return the file descriptor (closing it releases the lock). Raises ``RunError`` naming
    the holder when another process has it, or why the file cannot be written."""
    lock = Path(folder) / LOCK_NAME
    if lock.is_symlink():
        raise RunError(f"{lock} is a symbolic link (to {os.readlink(lock)}); remove it, a lock file is never "
                       f"followed")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as error:
        raise RunError(f"cannot use the lock file {lock}: {error.strerror or error}") from None
    if not _try_lock(fd):
        holder = _read_holder(lock)
        os.close(fd)
        raise LockHeld(f"{folder} is in use by another momentumrnn process ({holder}); wait for it to end, "
                       f"or choose another --out")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "resume": resume,
              "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), _HOLDER_OFFSET)
    return fd


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:                                     # BlockingIOError, PermissionError: held
        return False


def _read_holder(lock: Path) -> str:
    try:
        holder = json.loads(lock.read_bytes()[_HOLDER_OFFSET:].decode())
        command = " ".join(holder.get("command") or [])
        return (f"pid {holder['pid']} on {holder['host']}, "
                f"{'resuming' if holder.get('resume') else 'started'} {holder['since']}"
                + (f": {command}" if command else ""))
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or unreadable
        return "its details are not readable yet"
