"""A sweep point's run directory: where it is, how far its run got, and the command that
brings it on. The local launcher (``sweep.py``) and the submitit launcher
(``submitit_launcher.py``) share these, so that a point runs by one rule whichever runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from .checkpoint import has_checkpoint

__all__ = ["run_directory", "run_status", "sort_points", "start_command", "die_with_parent"]


def run_directory(out, name: str) -> Path:
    """The run directory of point ``name`` in sweep directory ``out``."""
    return Path(out) / name


def run_status(run_dir: Path) -> str:
    """``finished``, ``diverged``, ``resume`` (a checkpoint to continue), ``stale`` (a run
    directory without a checkpoint: a start that died) or ``new``."""
    summary = run_dir / "summary.json"
    if summary.exists():
        try:
            status = json.loads(summary.read_text()).get("status")
        except ValueError:
            status = None
        if status in ("finished", "diverged"):
            return status
    if has_checkpoint(run_dir):
        return "resume"
    return "stale" if run_dir.exists() else "new"


def sort_points(out, points) -> tuple[list[str], list[str], list]:
    """The names of the points whose runs finished and diverged, and the other points."""
    done, failed, rest = [], [], []
    for point in points:
        status = run_status(run_directory(out, point.name))
        if status == "finished":
            done.append(point.name)
        elif status == "diverged":
            failed.append(point.name)
        else:
            rest.append(point)
    return done, failed, rest


def start_command(run_dir: Path, fresh: list[str]) -> list[str] | None:
    """The ``momentumrnn train`` command that brings a point's run on (without placement
    flags): None when it finished or diverged, ``--resume`` when it has a checkpoint, else
    ``fresh``, after removing what a start that died before its first checkpoint left."""
    status = run_status(run_dir)
    if status in ("finished", "diverged"):
        return None
    if status == "stale":                                # a start that died before its first checkpoint
        shutil.rmtree(run_dir)
    if status == "resume":
        return ["momentumrnn", "train", "--out", str(run_dir), "--resume"]
    return list(fresh)


def die_with_parent() -> None:
    """In a child process, before exec (Linux): a session of its own, and SIGTERM when its
    parent dies, so that a run checkpoints and stops with the sweep or job that started it."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)    # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
