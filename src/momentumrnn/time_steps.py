"""The time steps of a call: the index of each step per sequence, and the padded steps of
packed sequences, which change no state."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["step_indices", "masked"]


def step_indices(steps: Tensor, time: int, mask: Tensor | None = None, per_sequence: bool = False) -> Tensor:
    """The 1-based index ``k`` of every step, shaped (T, B) or (T, 1).

    ``steps`` (B,) counts the steps each sequence took before this call. Where ``mask``
    (T, B) is False a step is skipped and the count does not advance. Without a mask and
    with all sequences at the same count the result is (T, 1), shared by the batch, unless
    ``per_sequence`` (always (T, B), without looking at the counts' values).
    """
    if mask is not None:
        taken = mask.long()
        return steps[None, :] + torch.cumsum(taken, 0) - taken + 1
    t = torch.arange(1, time + 1, device=steps.device)[:, None]
    if per_sequence:
        return t + steps[None, :]
    if steps.numel() == 0 or bool((steps == steps[:1]).all()):
        return t + steps[:1][None, :] if steps.numel() else t
    return t + steps[None, :]


def masked(keep: Tensor | None, new, old):
    """Where ``keep`` (batch,) is False keep ``old``: padded steps of packed sequences
    change no state. ``new``/``old`` are tensors, tuples of tensors or dicts of tensors."""
    if keep is None:
        return new
    keep = keep.unsqueeze(-1)
    if isinstance(new, dict):
        return {k: torch.where(keep, new[k], old[k]) for k in new}
    if isinstance(new, tuple):
        return tuple(torch.where(keep, n, o) for n, o in zip(new, old))
    return torch.where(keep, new, old)
