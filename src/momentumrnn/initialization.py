"""Weight initializations: torch's default and the authors' ("paper")."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .recurrences import Recurrence

__all__ = ["INITS", "initialize"]

INITS = ("torch", "paper")


@torch.no_grad()
def initialize(weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None,
               recurrence: Recurrence, hidden_size: int, init: str, forget_bias: float) -> None:
    """Initialize one cell's weights in place.

    ``"torch"``: every weight and bias uniform in ``[-1/sqrt(H), 1/sqrt(H)]``, as
    ``torch.nn.LSTM``/``GRU``/``RNN``. ``"paper"``: ``W_ih`` orthogonal, ``W_hh`` =
    ``torch.nn.init.eye_`` (identity in the first H rows), biases zero except the forget
    gate block (LSTM) set to ``forget_bias`` and the reset gate block (GRU) set to 1, each
    in both ``b_ih`` and ``b_hh``, as the authors' cells.
    """
    tensors = [t for t in (weight_ih, weight_hh, bias_ih, bias_hh) if t is not None]
    if init == "torch":
        bound = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0     # torch: H = 0 is allowed
        for tensor in tensors:
            torch.nn.init.uniform_(tensor, -bound, bound)
        return
    torch.nn.init.orthogonal_(weight_ih)
    torch.nn.init.eye_(weight_hh)
    for bias in (bias_ih, bias_hh):
        if bias is None:
            continue
        bias.zero_()
        if recurrence.forget_gate is not None:
            start = recurrence.forget_gate * hidden_size
            bias[start:start + hidden_size] = forget_bias
        if recurrence.reset_gate is not None:
            start = recurrence.reset_gate * hidden_size
            bias[start:start + hidden_size] = 1.0
