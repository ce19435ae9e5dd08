"""Adam's drive, step by step: the reference of its backends (``chunked.py``, ``triton.py``).

    v_t = mu v_{t-1} + s u_t,   m_t = beta m_{t-1} + (1 - beta) u_t^2,   d_t = v_t / sqrt(m_t + eps)

(RMSProp: ``mu = 0``.) Steps ``t >= lengths[b]`` hold the state of sequence b.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["adam_drive_ref"]


def adam_drive_ref(u: Tensor, v0: Tensor, m0: Tensor, momentum, step_size, beta: float, eps: float,
                   lengths: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(d, v_T, m_T)`` for ``u`` (T, B, G) from ``v0``, ``m0`` (B, G); ``momentum``,
    ``step_size`` numbers or 0-d tensors; the drive at a held step is the held state's."""
    v, m, drives = v0, m0, []
    for t, u_t in enumerate(u.unbind(0)):
        v_new = momentum * v + step_size * u_t
        m_new = beta * m + (1.0 - beta) * u_t * u_t
        if lengths is not None:
            keep = (t < lengths.to(u.device))[:, None]
            v_new, m_new = torch.where(keep, v_new, v), torch.where(keep, m_new, m)
        v, m = v_new, m_new
        drives.append(v / torch.sqrt(m + eps))
    return torch.stack(drives), v, m
