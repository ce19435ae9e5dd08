"""Adam's (and RMSProp's) drive over time, ``d_t = v_t / sqrt(m_t + eps)`` with its two
linear states: ``naive.py`` the step-by-step reference, ``chunked.py`` cache-sized chunks of
time (torch ops, or the C++ step kernels on the CPU), ``triton.py`` one kernel pass (CUDA,
imported there only)."""

from .chunked import AdamChunks, adam_arguments, adam_scan
from .naive import adam_drive_ref

__all__ = ["adam_scan", "adam_drive_ref", "AdamChunks", "adam_arguments"]
