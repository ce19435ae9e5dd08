"""The linear scan ``y_t = a_t y_{t-1} + x_t``, step by step: the reference of its backends
(``parallel.py`` in torch ops, ``triton.py`` on CUDA)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["linear_scan_ref"]


def linear_scan_ref(coefficient, inputs: Tensor, initial: Tensor | None = None) -> Tensor:
    """All states of ``y_t = a_t y_{t-1} + x_t`` (t = 1..T) with ``y_0 = initial``, one step
    at a time. ``coefficient``: a number, a 0-d tensor, or (T, B) or (T, 1); ``inputs``
    (T, B, F); ``initial`` (B, F) or None (zero)."""
    per_step = isinstance(coefficient, Tensor) and coefficient.dim() == 2
    coefficients = coefficient.to(inputs.dtype)[..., None].unbind(0) if per_step else None
    out = []
    y = initial
    for t, x in enumerate(inputs.unbind(0)):     # unbind: one backward node, not T selects
        a = coefficients[t] if per_step else coefficient
        y = x if y is None else a * y + x
        out.append(y)
    return torch.stack(out)
