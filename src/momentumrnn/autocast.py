"""Mixed precision: how the layers and cells meet ``torch.autocast``.

Inside an autocast region a layer computes in its parameters' dtype (float32 as a rule)
with autocast turned off: the input drive, the rule's running sums (velocity, Adam's and
RMSProp's second moment, the Nesterov extrapolation) and the recurrence. Running sums in
bfloat16 or float16 would round away the small updates ``(1 - beta) u_t^2`` and ``s u_t``
that they accumulate over hundreds of steps, and the fast paths' hand-written backward
passes need one dtype throughout. The rule state it returns stays in the parameters'
dtype, to be carried without loss.

At the boundary the layer takes input and ``hx`` in any of autocast's dtypes (a Linear
before it returns the autocast dtype) and returns output and hidden state in the dtype
torch's layer of the same recurrence returns under the same autocast (measured against
torch's ``nn.RNN``/``LSTM``/``GRU`` and their cells, ``tests/test_autocast.py``):

* RNN (and the orthogonal RNNs): the autocast dtype. The state enters only through a
  matrix product, which autocast casts.
* LSTM: the autocast dtype promoted with the cell state's dtype, ``c_t = f c_{t-1} + ...``
  (float32 when ``c_0`` is float32, or when no state is given and the input is float32,
  since the zero state takes the input's dtype).
* GRU: the autocast dtype promoted with the hidden state's dtype, ``h_t = (1 - z) n + z h_{t-1}``.

(torch's CPU ``nn.LSTM`` on float32 input takes oneDNN's path: on a processor without
bfloat16 instructions (AVX2) it raises "could not create a primitive descriptor" in torch
2.13 (measured); its dtype elsewhere was not measured. The dtypes above are those of
torch's LSTMCell and of nn.LSTM's path without oneDNN.) A model whose parameters autocast
leaves alone (float64) is left alone too, as torch's are: it computes and returns its own
dtype. Autocast therefore changes the dtypes at the layer's boundary, not its arithmetic:
values equal float32's, at float32's speed.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from .state import RuleState

__all__ = ["autocast_boundary", "autocast_output_dtype"]

#: The dtypes autocast casts (torch leaves float64 alone).
_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)

#: Which tensor of the hidden state torch's recurrence adds to the new state outside any
#: matrix product, so that its dtype takes part in the result's: LSTM's ``c``, GRU's ``h``.
_CARRIED = {"lstm": 1, "gru": 0}


def _cast(value, dtype: torch.dtype, keep_rule_state: bool = False):
    """``value`` with its floating tensors of autocast's dtypes in ``dtype``: tensors, packed
    sequences, tuples (float64 stays, for the forward's dtype check to report, as torch does)."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.dtype in _ELIGIBLE else value
    if isinstance(value, PackedSequence):
        return value.to(dtype) if value.data.dtype in _ELIGIBLE else value
    if isinstance(value, RuleState):
        if keep_rule_state:
            return value
        return RuleState.of({name: _cast(t, dtype) for name, t in value.fields().items()}, value.steps)
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype, keep_rule_state) for v in value)
    return value


def autocast_output_dtype(recurrence: str, autocast_dtype: torch.dtype, input, hx=None) -> torch.dtype:
    """The dtype of the output and hidden state of torch's layer or cell of ``recurrence``
    (``"rnn"``, ``"lstm"``, ``"gru"``, ...) under autocast to ``autocast_dtype`` for this
    ``input`` and ``hx`` (float32 parameters)."""
    index = _CARRIED.get(recurrence)
    if index is None:
        return autocast_dtype
    if hx is None:
        state = input.data if isinstance(input, PackedSequence) else input
    elif isinstance(hx, (tuple, list)):
        state = hx[index] if len(hx) > index else None
    else:
        state = hx
    if not isinstance(state, Tensor) or state.dtype not in _ELIGIBLE:
        return autocast_dtype                       # the forward reports what is wrong
    return torch.promote_types(autocast_dtype, state.dtype)


def autocast_boundary(forward):
    """Decorate a layer's or cell's ``forward(input, hx=None, *, rule_state=None, ...)``:
    under autocast for the parameters' device, run it in the parameters' dtype with autocast
    off and return output and hidden state in the dtype torch's layer returns (the rule
    state unchanged); parameters autocast does not cast (float64) run as without autocast."""
    @functools.wraps(forward)
    def wrapped(self, input, hx=None, **kwargs):
        parameter = next(self.parameters())
        device_type = parameter.device.type
        if not torch.is_autocast_enabled(device_type):
            return forward(self, input, hx, **kwargs)
        if parameter.dtype not in _ELIGIBLE:
            with torch.autocast(device_type, enabled=False):
                return forward(self, input, hx, **kwargs)
        out_dtype = autocast_output_dtype(self.recurrence.name, torch.get_autocast_dtype(device_type), input, hx)
        if "rule_state" in kwargs:
            kwargs["rule_state"] = _cast(kwargs["rule_state"], parameter.dtype)
        with torch.autocast(device_type, enabled=False):
            result = forward(self, _cast(input, parameter.dtype), _cast(hx, parameter.dtype), **kwargs)
        return _cast(result, out_dtype, keep_rule_state=True)
    return wrapped
