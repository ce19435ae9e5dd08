"""The CPU step kernels of the LSTM loops (``csrc/lstm_steps.cpp``), built on first use.

The loops of ``loops.py`` run each time step as a handful of small torch ops; at small
batches and hidden sizes their dispatch, not their arithmetic, sets the pace. These kernels
run a chunk of steps in one call: per step ATen's ``addmm`` and one fused pass over the
gates (forward, with the activations vectorized as in torch's own CPU kernels) or over their
gradients (backward). They are registered as the torch ops ``momentumrnn_cpu::*``.

They are compiled by ``torch.utils.cpp_extension`` the first time a loop needs them (about
20 seconds; the build is cached under torch's extensions directory, by torch version) and
need a C++ compiler and ninja. Where the build fails, the loops run as torch ops, as they do
with ``paths.loop_engine_override("torch")``, and one warning says why.
"""

from __future__ import annotations

import functools
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["available", "ops"]

SOURCE = Path(__file__).resolve().parent / "csrc" / "lstm_steps.cpp"

_lock = threading.Lock()


def _flags() -> list[str]:
    """Compiler flags: ATen's AVX2 vectors (with SLEEF's exp and tanh, as torch's kernels use)
    where the processor has AVX2, else ATen's portable vectors."""
    flags = ["-O3"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return flags


def _name() -> str:
    version = torch.__version__.replace(".", "_").replace("+", "_").replace("-", "_")
    return f"momentumrnn_cpu_{version}"


@functools.lru_cache(maxsize=None)
def _build() -> bool:
    from torch.utils import cpp_extension
    try:
        cpp_extension.load(name=_name(), sources=[str(SOURCE)], extra_cflags=_flags(), is_python_module=False,
                           verbose=False)
    except Exception as error:      # no compiler, no ninja, a failed build: the loops keep their torch ops
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(f"momentumrnn: the CPU step kernels could not be built ({first_line}); the LSTM loops run "
                      f"as torch ops instead (correct, slower at small batches)", RuntimeWarning, stacklevel=3)
        return False
    return True


def available() -> bool:
    """Whether the kernels are built and loaded (building them on the first call)."""
    with _lock:
        return _build()


def ops():
    """The ops ``lstm_forward_steps`` and ``lstm_backward_steps`` (after ``available()``)."""
    return torch.ops.momentumrnn_cpu
