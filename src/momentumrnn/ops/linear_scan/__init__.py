"""The linear scan ``y_t = a_t y_{t-1} + x_t`` over time (momentum's filter, the states of
the parallel rules): ``naive.py`` the step-by-step reference, ``parallel.py`` the methods in
torch ops (``linear_scan`` chooses among them and the Triton kernel), ``triton.py`` the
Triton kernel (imported on CUDA only)."""

from .naive import linear_scan_ref
from .parallel import SCAN_METHODS, default_block, linear_scan, scan_

__all__ = ["linear_scan", "linear_scan_ref", "scan_", "default_block", "SCAN_METHODS"]
