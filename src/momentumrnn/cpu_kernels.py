"""The CPU step kernels of the LSTM loops and of Adam's states (``csrc/lstm_steps.cpp``),
built on first use.

The loops of ``loops.py`` run each time step as a handful of small torch ops; at small
batches and hidden sizes their dispatch, not their arithmetic, sets the pace. These kernels
run a chunk of steps in one call: for the LSTM, per step ATen's ``addmm`` and one fused pass
over the gates (forward, with the activations vectorized as in torch's own CPU kernels) or
over their gradients (backward); for Adam and RMSProp (``scan.AdamChunks``), one fused pass
per step over the states and the drive, and over their adjoint. They are registered as the
torch ops ``momentumrnn_cpu::*``.

They are compiled by ``torch.utils.cpp_extension`` the first time a loop needs them (about
20 seconds, announced by one line on stderr; the build is cached under torch's extensions
directory, by torch version) and need a C++ compiler and ninja. Where the build fails, the
loops run as torch ops, as they do with ``paths.loop_engine_override("torch")``, and one
warning at the user's line says why (the compiler's error, or the missing tool). Builds in several
processes at once wait for one another; one killed while building does not block the next.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

__all__ = ["available", "ops", "build_directory", "build_seconds"]

SOURCE = Path(__file__).resolve().parent / "csrc" / "lstm_steps.cpp"

_lock = threading.Lock()
_seconds = {"build": 0.0}


def _flags() -> list[str]:
    """Compiler flags: ATen's AVX2 vectors (with SLEEF's exp and tanh, as torch's kernels use)
    where the processor has AVX2, else ATen's portable vectors. ``-fno-math-errno`` lets the
    compiler vectorize loops with ``std::sqrt`` (still IEEE's correctly rounded root)."""
    flags = ["-O3", "-fno-math-errno"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return flags


def _name() -> str:
    version = torch.__version__.replace(".", "_").replace("+", "_").replace("-", "_")
    return f"momentumrnn_cpu_{version}"


def build_directory() -> Path:
    """Where the kernels are built and kept: ``$TORCH_EXTENSIONS_DIR`` or torch's default
    root, then a folder by Python version and the extension's name (with the torch version)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        from torch.utils import cpp_extension
        root = cpp_extension.get_default_build_root()
    return Path(root) / f"py{sys.version_info.major}{sys.version_info.minor}_cpu" / _name()


@contextlib.contextmanager
def _exclusive(directory: Path):
    """Hold an OS lock on ``directory`` (released when the process ends, however it ends) and
    remove the lock file of torch's build that a process killed while building leaves
    behind, on which every later build would wait forever. Every build of these kernels
    takes this lock first, so a lock file of torch's found here is stale."""
    try:
        import fcntl
    except ImportError:             # no flock (Windows): torch's own lock file alone
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "momentumrnn.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (directory / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@functools.lru_cache(maxsize=None)
def _build() -> bool:
    from torch.utils import cpp_extension

    from .checks import stacklevel_outside
    directory = build_directory()
    started = time.perf_counter()
    try:
        with _exclusive(directory):
            if not (directory / f"{_name()}.so").exists():      # the first use on this machine
                print(f"momentumrnn: building the CPU step kernels once (about 20 s; kept in {directory})",
                      file=sys.stderr, flush=True)
            cpp_extension.load(name=_name(), sources=[str(SOURCE)], extra_cflags=_flags(), is_python_module=False,
                               build_directory=str(directory), verbose=False)
    except Exception as error:      # no compiler, no ninja, a failed build: the loops keep their torch ops
        warnings.warn(f"momentumrnn: the CPU step kernels could not be built ({build_failure(error)}); the LSTM "
                      f"loops run as torch ops instead (correct, slower at small batches)", RuntimeWarning,
                      stacklevel=stacklevel_outside(("momentumrnn", "torch", "functools", "contextlib")))
        return False
    finally:
        _seconds["build"] = time.perf_counter() - started
    return True


def build_failure(error: BaseException) -> str:
    """The cause of a failed build in one line: the compiler's first ``error:`` line, or a
    missing tool, rather than the whole compile command the exception starts with."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for pattern in ("error:", "Ninja is required", "command not found", "No such file", "not found"):
        hit = next((line for line in lines if pattern in line), None)
        if hit is not None:
            return hit[hit.index("error:"):] if pattern == "error:" else hit[:300]
    return (lines[0][:300] if lines else type(error).__name__)


def build_seconds() -> float:
    """Seconds this process spent building (or loading a cached build of) the kernels:
    a one-time cost that falls inside the first call that needs them."""
    return _seconds["build"]


def available() -> bool:
    """Whether the kernels are built and loaded (building them on the first call)."""
    with _lock:
        return _build()


def ops():
    """The ops ``lstm_forward_steps``, ``lstm_backward_steps``, ``adam_chunk_forward`` and
    ``adam_chunk_backward`` (after ``available()``)."""
    return torch.ops.momentumrnn_cpu
