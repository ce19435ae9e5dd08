"""Base recurrences: what a cell does with its drive and its recurrent term.

A recurrence receives the drive ``d_t`` (``W x_t + b_ih`` for the plain cell, or what an
optimizer rule made of it) and ``r_t = U h_{t-1} + b_hh``, and returns the new state.
Gate order and equations are exactly those of ``torch.nn.RNN``/``LSTM``/``GRU``.

*Additive* recurrences (RNN, LSTM) only ever use ``d_t + r_t``; they expose
``activate(pre, state)`` so that rules coupled to h (Nesterov) can supply the whole
pre-activation. GRU gates ``r_t`` with its reset gate and is not additive.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

__all__ = ["Recurrence", "RNNRecurrence", "LSTMRecurrence", "GRURecurrence"]


class Recurrence:
    #: Short name ("rnn", "lstm", "gru").
    name: ClassVar[str]
    #: Number of gate blocks G: weights are (G*H, input) and (G*H, H).
    gates: ClassVar[int]
    #: Number of state tensors: 1 (h) or 2 (h, c).
    state_tensors: ClassVar[int] = 1
    #: Whether the cell depends on ``d_t + r_t`` only.
    additive: ClassVar[bool] = True
    #: Index of the forget gate block, for ``init="paper"``'s forget bias (None: no such gate).
    forget_gate: ClassVar[int | None] = None
    #: Index of the reset gate block, whose biases ``init="paper"`` sets to 1 (None: no such gate).
    reset_gate: ClassVar[int | None] = None

    def step(self, drive: Tensor, recurrent: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return self.activate(drive + recurrent, state)

    def activate(self, pre: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        raise NotImplementedError


class RNNRecurrence(Recurrence):
    """``h_t = tanh(pre_t)`` or ``relu(pre_t)``."""

    name = "rnn"
    gates = 1

    def __init__(self, nonlinearity: str = "tanh"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.")     # torch's words
        self.nonlinearity = nonlinearity
        self._function = torch.tanh if nonlinearity == "tanh" else torch.relu

    def activate(self, pre, state):
        return (self._function(pre),)


class LSTMRecurrence(Recurrence):
    """``i, f, g, o = pre_t`` split in four; ``c_t = sigma(f) c_{t-1} + sigma(i) tanh(g)``;
    ``h_t = sigma(o) tanh(c_t)``."""

    name = "lstm"
    gates = 4
    state_tensors = 2
    forget_gate = 1

    def activate(self, pre, state):
        c = state[1]
        i, f, g, o = pre.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class GRURecurrence(Recurrence):
    """``r = sigma(d_r + r_r)``; ``z = sigma(d_z + r_z)``; ``n = tanh(d_n + r * r_n)``;
    ``h_t = (1 - z) n + z h_{t-1}`` (torch's GRU, with the drive in place of W x + b_ih)."""

    name = "gru"
    gates = 3
    additive = False
    reset_gate = 0

    def step(self, drive, recurrent, state):
        h = state[0]
        d_r, d_z, d_n = drive.chunk(3, dim=-1)
        r_r, r_z, r_n = recurrent.chunk(3, dim=-1)
        reset = torch.sigmoid(d_r + r_r)
        update = torch.sigmoid(d_z + r_z)
        candidate = torch.tanh(d_n + reset * r_n)
        return ((1.0 - update) * candidate + update * h,)

    def activate(self, pre, state):
        raise TypeError("GRU is not an additive recurrence: rules coupled to h do not apply to it")
