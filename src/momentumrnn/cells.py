"""Per-step cells, mirroring ``torch.nn.RNNCell``/``LSTMCell``/``GRUCell``.

Each cell is the readable reference of its equation: one call is one time step of
``momentumrnn.step.cell_step``. A cell returns what torch's cell returns; the rule's own
state is taken and given by keyword, as the layers do::

    hx = cell(x_t, hx)                             # torch's convention: the rule starts at zero
    hx, rs = cell(x_t, hx, return_rule_state=True)                  # also return the rule state
    hx, rs = cell(x_t, hx, rule_state=rs, return_rule_state=True)   # continue it

Stepping a cell over a sequence without carrying ``rule_state`` restarts the rule at every
step (zero velocity, step counter 1): carry it to run the rule over time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from .autocast import autocast_boundary
from .base import RuleModule
from .checks import (InputError, check_cell_hidden, check_rule_state, expect_input, expect_like, expect_positive_int,
                     expect_size, expect_tensor, zero_rule_state, cell_bias)
from .recurrences import GRURecurrence, LSTMRecurrence, RNNRecurrence
from .rules import AdamRule, MomentumRule, NesterovRule, RestartRule, RMSPropRule
from .state import RuleState
from .step import cell_step

__all__ = [
    "RecurrentCell",
    "MomentumRNNCell", "AdamRNNCell", "RMSPropRNNCell", "NesterovRNNCell", "RestartRNNCell",
    "MomentumLSTMCell", "AdamLSTMCell", "RMSPropLSTMCell", "NesterovLSTMCell", "RestartLSTMCell",
    "MomentumGRUCell", "AdamGRUCell", "RMSPropGRUCell", "RestartGRUCell",
]


class RecurrentCell(RuleModule):
    """One step of ``recurrence_type`` driven by ``rule_type``.

    Args: ``input_size, hidden_size, bias=True, device=None, dtype=None`` as torch's
    cells (``hidden_size`` may be 0, as there); keyword-only: the rule's hyperparameters
    (``momentum``, ``step_size``, ``beta``, ``restart``: each rule takes its own; the class's
    signature lists them with their defaults), ``learnable``, ``init`` ("torch" or "paper"),
    ``forget_bias`` (LSTM, paper init). Parameters: ``weight_ih``, ``weight_hh``,
    ``bias_ih``, ``bias_hh`` with torch's shapes.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                 nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                 forget_bias: float = 1.0, **hyperparameters: float):
        super().__init__()
        self.input_size = expect_positive_int("input_size", input_size)
        self.hidden_size = expect_size("hidden_size", hidden_size)
        self.bias = cell_bias(type(self).__name__, bias)
        self._configure(nonlinearity=nonlinearity or "tanh", init=init, forget_bias=forget_bias,
                        learnable=learnable, hyperparameters=hyperparameters, suffixes=[""],
                        device=device, dtype=dtype)
        self._register_weights("", self.input_size, self.bias, {"device": device, "dtype": dtype})
        self.reset_parameters()

    def hyperparameters(self) -> dict:
        """Hyperparameters in force (tensors for the learnable ones)."""
        return self._hyperparameters("")

    if TYPE_CHECKING:       # a call's result by return_rule_state (h: Tensor, LSTM (h, c))
        @overload
        def __call__(self, input: Tensor, hx: Any = None, *, rule_state: RuleState | None = None,
                     return_rule_state: Literal[False] = False) -> Any: ...

        @overload
        def __call__(self, input: Tensor, hx: Any = None, *, rule_state: RuleState | None = None,
                     return_rule_state: Literal[True]) -> tuple[Any, RuleState]: ...

        @overload
        def __call__(self, input: Tensor, hx: Any = None, *, rule_state: RuleState | None = None,
                     return_rule_state: bool) -> Any: ...

        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    @autocast_boundary
    def forward(self, input: Tensor, hx=None, *, rule_state: RuleState | None = None,
                return_rule_state: bool = False):
        """One step: ``hx`` as torch's cell returns it (``h`` or ``(h, c)``), and with
        ``return_rule_state=True`` also the rule state after the step, ``(hx, rule_state)``."""
        self.rule_type.check_dtype(self.hyperparameter_values, self.weight_ih.dtype)       # after .half(), .to()
        expect_tensor("input", input)
        if input.dim() not in (1, 2):            # torch's words, and the shape
            raise InputError(f"{type(self).__name__}: Expected input to be 1D or 2D, got {input.dim()}D instead "
                             f"(1-D: unbatched, 2-D: (batch, input_size); shape {tuple(input.shape)})")
        # torch's order: the input's size, the hidden state's batch and size, then dtypes and devices
        expect_input(input, self.input_size, None, cell=True)
        unbatched = input.dim() == 1
        state = None
        if hx is not None:
            state = check_cell_hidden(hx, self.recurrence.state_tensors, None if unbatched else input.size(0),
                                      self.hidden_size, self.weight_ih, type(self).__name__)
        expect_like("input", input, self.weight_ih)
        if unbatched:
            input = input.unsqueeze(0)
            state = None if state is None else tuple(s.unsqueeze(0) for s in state)
        batch = input.size(0)
        gates = self.recurrence.gates * self.hidden_size
        if state is None:
            state = tuple(input.new_zeros(batch, self.hidden_size) for _ in range(self.recurrence.state_tensors))
        if rule_state is None:
            rules, steps = zero_rule_state(self.rule_type.state_fields, (batch, gates), (batch,), input)
        else:
            shape, steps_shape = ((gates,), ()) if unbatched else ((batch, gates), (batch,))
            rules, steps = check_rule_state(rule_state, self.rule_type.state_fields, shape, steps_shape, self.weight_ih)
            if unbatched:
                rules, steps = {k: v.unsqueeze(0) for k, v in rules.items()}, steps.unsqueeze(0)
        u = F.linear(input, self.weight_ih, self.bias_ih)
        state, rules = cell_step(self.recurrence, self.rule, self.hyperparameters(), u, state, rules, steps + 1,
                                 self.weight_hh, self.bias_hh)
        steps = steps + 1
        if unbatched:
            state = tuple(s.squeeze(0) for s in state)
            rules, steps = {k: v.squeeze(0) for k, v in rules.items()}, steps.squeeze(0)
        hx = state if self.recurrence.state_tensors == 2 else state[0]
        if not return_rule_state:
            return hx
        return hx, RuleState.of(rules, steps)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.recurrence.name == "rnn" and self.recurrence.nonlinearity != "tanh":
            s += f", nonlinearity={self.recurrence.nonlinearity!r}"
        return f"{s}, {self._rule_repr()}"


class _RNNCell(RecurrentCell):
    """RNN cells take ``nonlinearity`` ("tanh" or "relu") as ``torch.nn.RNNCell`` does."""

    recurrence_type = RNNRecurrence

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, **kwargs):
        super().__init__(input_size, hidden_size, bias, device, dtype, nonlinearity=nonlinearity, **kwargs)

    @property
    def nonlinearity(self) -> str:
        """"tanh" or "relu" (torch's attribute)."""
        return self.recurrence.nonlinearity


class MomentumRNNCell(_RNNCell):
    """``v_t = mu v_{t-1} + s (W x_t + b_ih)``;  ``h_t = tanh(v_t + U h_{t-1} + b_hh)``."""
    rule_type = MomentumRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     learnable: bool = False, init: str = "torch", forget_bias: float = 1.0, momentum: float = 0.6,
                     step_size: float = 0.6) -> None: ...


class AdamRNNCell(_RNNCell):
    """Adam rule on the RNN drive (see ``AdamRule``)."""
    rule_type = AdamRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     learnable: bool = False, init: str = "torch", forget_bias: float = 1.0, momentum: float = 0.6,
                     step_size: float = 0.6, beta: float = 0.1) -> None: ...


class RMSPropRNNCell(_RNNCell):
    """RMSProp rule on the RNN drive (see ``RMSPropRule``)."""
    rule_type = RMSPropRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     learnable: bool = False, init: str = "torch", forget_bias: float = 1.0, step_size: float = 0.6,
                     beta: float = 0.9) -> None: ...


class NesterovRNNCell(_RNNCell):
    """NAG with restart (see ``NesterovRule``); coupled to h."""
    rule_type = NesterovRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     learnable: bool = False, init: str = "torch", forget_bias: float = 1.0, step_size: float = 1.0,
                     restart: int = 2) -> None: ...


class RestartRNNCell(_RNNCell):
    """Input-only restarted momentum (see ``RestartRule``)."""
    rule_type = RestartRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     learnable: bool = False, init: str = "torch", forget_bias: float = 1.0, step_size: float = 1.0,
                     restart: int = 2) -> None: ...


class MomentumLSTMCell(RecurrentCell):
    """``v_t = mu v_{t-1} + s (W x_t + b_ih)``;  ``gates = v_t + U h_{t-1} + b_hh``; LSTM."""
    recurrence_type, rule_type = LSTMRecurrence, MomentumRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, momentum: float = 0.6, step_size: float = 0.6) -> None: ...


class AdamLSTMCell(RecurrentCell):
    """Adam rule on the four gate drives (see ``AdamRule``)."""
    recurrence_type, rule_type = LSTMRecurrence, AdamRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, momentum: float = 0.6, step_size: float = 0.6,
                     beta: float = 0.1) -> None: ...


class RMSPropLSTMCell(RecurrentCell):
    """RMSProp rule on the four gate drives (see ``RMSPropRule``)."""
    recurrence_type, rule_type = LSTMRecurrence, RMSPropRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, step_size: float = 0.6, beta: float = 0.9) -> None: ...


class NesterovLSTMCell(RecurrentCell):
    """The paper's SRLSTM cell: NAG with scheduled restart (see ``NesterovRule``)."""
    recurrence_type, rule_type = LSTMRecurrence, NesterovRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, step_size: float = 1.0, restart: int = 2) -> None: ...


class RestartLSTMCell(RecurrentCell):
    """The authors' Penn Treebank NesterovLSTM: input-only restarted momentum (``RestartRule``)."""
    recurrence_type, rule_type = LSTMRecurrence, RestartRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, step_size: float = 1.0, restart: int = 2) -> None: ...


class MomentumGRUCell(RecurrentCell):
    """Momentum on the three GRU input drives (see ``MomentumRule``, ``GRURecurrence``)."""
    recurrence_type, rule_type = GRURecurrence, MomentumRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, momentum: float = 0.6, step_size: float = 0.6) -> None: ...


class AdamGRUCell(RecurrentCell):
    """Adam rule on the three GRU input drives."""
    recurrence_type, rule_type = GRURecurrence, AdamRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, momentum: float = 0.6, step_size: float = 0.6,
                     beta: float = 0.1) -> None: ...


class RMSPropGRUCell(RecurrentCell):
    """RMSProp rule on the three GRU input drives."""
    recurrence_type, rule_type = GRURecurrence, RMSPropRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, step_size: float = 0.6, beta: float = 0.9) -> None: ...


class RestartGRUCell(RecurrentCell):
    """Input-only restarted momentum on the three GRU input drives."""
    recurrence_type, rule_type = GRURecurrence, RestartRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, step_size: float = 1.0, restart: int = 2) -> None: ...
