"""The rule state that a layer carries across calls (truncated backpropagation)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["RuleState"]


class RuleState(NamedTuple):
    """Optimizer state of a layer or cell, returned with ``return_rule_state=True``.

    For a layer, ``velocity`` and ``second_moment`` are ``(num_layers * num_directions,
    batch, G * hidden_size)`` (G = 4 for LSTM, 3 for GRU, 1 for RNN), laid out like
    ``h_n``; for a cell they are ``(batch, G * hidden_size)``. ``second_moment`` is None
    except for Adam and RMSProp; ``velocity`` is None for the plain rule (``PlainRule``).
    ``steps`` (int64, ``(batch,)``) counts the time steps each sequence has taken, which
    the restarted rules need. Unbatched inputs drop the batch dimension.
    """

    velocity: Tensor | None
    second_moment: Tensor | None
    steps: Tensor

    def detach(self) -> "RuleState":
        """The same state cut from the autograd graph (between truncated-BPTT chunks)."""
        return RuleState(*(None if t is None else t.detach() for t in self))
