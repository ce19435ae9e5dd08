"""One time step of a cell: a base recurrence combined with an optimizer rule."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .recurrences import Recurrence
from .rules import Rule

__all__ = ["cell_step", "masked"]


def cell_step(recurrence: Recurrence, rule: Rule, hp: dict, u: Tensor, state: tuple[Tensor, ...],
              rule_state: dict[str, Tensor], steps: Tensor, weight_hh: Tensor, bias_hh: Tensor | None):
    """Advance one step.

    ``u = W x_t + b_ih`` is the input drive, ``state`` is ``(h,)`` or ``(h, c)``,
    ``steps`` the number of steps already taken (so this is step ``k = steps + 1``).
    With ``r_t = U h_{t-1} + b_hh``: an input-only rule gives ``d_t`` and the cell sees
    ``recurrence.step(d_t, r_t)``; a coupled rule builds the pre-activation from ``u_t``
    and ``r_t`` itself. Returns the new ``state`` and ``rule_state``.
    """
    recurrent = F.linear(state[0], weight_hh, bias_hh)
    k = steps + 1
    if rule.couples_to_hidden:
        pre, rule_state = rule.preactivation(u, recurrent, rule_state, hp, k)
        return recurrence.activate(pre, state), rule_state
    drive, rule_state = rule.drive(u, rule_state, hp, k)
    return recurrence.step(drive, recurrent, state), rule_state


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
