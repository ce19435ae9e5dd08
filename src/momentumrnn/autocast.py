"""Mixed precision: how the layers and cells meet ``torch.autocast``.

Inside an autocast region a layer computes in its parameters' dtype (float32 as a rule)
with autocast turned off: the input drive, the rule's running sums (velocity, Adam's and
RMSProp's second moment, the Nesterov extrapolation) and the recurrence. Running sums in
bfloat16 or float16 would round away the small updates ``(1 - beta) u_t^2`` and ``s u_t``
that they accumulate over hundreds of steps, and the fast paths' hand-written backward
passes need one dtype throughout. At the boundary the layer behaves as torch's: it takes
input and ``hx`` in either dtype (a Linear before it returns the autocast dtype), and returns
the output and hidden state in the autocast dtype; the rule state it returns stays in the
parameters' dtype, to be carried without loss. Autocast therefore changes the dtypes at the
layer's boundary, not its arithmetic: values equal float32's, at float32's speed.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from .state import RuleState

__all__ = ["autocast_boundary"]


def _cast(value, dtype: torch.dtype, keep_rule_state: bool = False):
    """``value`` with its floating tensors in ``dtype``: tensors, packed sequences, tuples."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, PackedSequence):
        return value.to(dtype)
    if isinstance(value, RuleState):
        return value if keep_rule_state else RuleState(*(_cast(t, dtype) for t in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype, keep_rule_state) for v in value)
    return value


def autocast_boundary(forward):
    """Decorate a layer's or cell's ``forward(input, hx=None, *, rule_state=None, ...)``:
    under autocast for the parameters' device, run it in the parameters' dtype with autocast
    off and return output and hidden state in the autocast dtype (the rule state unchanged)."""
    @functools.wraps(forward)
    def wrapped(self, input, hx=None, **kwargs):
        parameter = next(self.parameters())
        device_type = parameter.device.type
        if not torch.is_autocast_enabled(device_type):
            return forward(self, input, hx, **kwargs)
        if "rule_state" in kwargs:
            kwargs["rule_state"] = _cast(kwargs["rule_state"], parameter.dtype)
        with torch.autocast(device_type, enabled=False):
            result = forward(self, _cast(input, parameter.dtype), _cast(hx, parameter.dtype), **kwargs)
        return _cast(result, torch.get_autocast_dtype(device_type), keep_rule_state=True)
    return wrapped
