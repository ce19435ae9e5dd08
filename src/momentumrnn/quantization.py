"""How the cells and layers meet torch's quantization flows: they stay in floating point, and say so.

``torch.ao.quantization``'s flows (``quantize_dynamic``, ``prepare``, ``quantize``) swap the
module types they have a mapping for (``torch.nn.LSTM`` among them) and pass over every
other module. momentumrnn's cells and layers have no quantized form (one of torch's would
run torch's recurrence and drop the rule), so a flow passes over them. Each flow first
reads every module's ``qconfig`` attribute; the cells' and layers' ``qconfig`` warns, when
a flow reads it before any is set, that the module stays in floating point: where the
flow's settings would quantize it were it one of torch's recurrent modules (the default of
``quantize_dynamic``, a ``qconfig`` given to a module that holds it, or its own class named),
not where they name other types only (``quantize_dynamic(model, {nn.Linear})``).
"""

from __future__ import annotations

import sys
import warnings

from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

from .checks import stacklevel_outside

__all__ = ["QuantizationNotice"]

#: The modules of the flows whose look at ``qconfig`` warns.
_FLOWS = ("torch.ao.quantization", "torch.quantization")
#: The callers between a flow's user and the ``qconfig`` read: torch, momentumrnn and the
#: wrapper of torch's deprecated functions (``typing_extensions``).
_WRAPPERS = ("torch.", "momentumrnn.", "typing_extensions")
#: torch's recurrent modules (nn.LSTM, GRU, RNN and their cells), which the flows quantize by default.
_TORCH_RECURRENT = (nn.RNNBase, nn.RNNCellBase)


class QuantizationNotice:
    """The ``qconfig`` attribute of cells and layers: a quantization flow's ``qconfig``, kept
    as set; read by a flow before it is set, a warning that the module stays in floating
    point (then, as for any module without one, ``AttributeError``)."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        if self.name in instance.__dict__:
            return instance.__dict__[self.name]
        caller = sys._getframe(1)
        if caller.f_globals.get("__name__", "").startswith(_FLOWS) and _asked_to_quantize(instance, caller.f_locals):
            name = type_before_parametrizations(instance).__name__
            warnings.warn(f"{name} stays in floating point: torch.ao.quantization has no "
                          "quantized form of momentumrnn's cells and layers (it swaps only the module types it "
                          "maps, such as torch.nn.LSTM, whose recurrence has no rule)", stacklevel=stacklevel_outside(_WRAPPERS))
        raise AttributeError(f"{type(instance).__name__!r} object has no attribute {self.name!r}")

    def __set__(self, instance, value):
        instance.__dict__[self.name] = value

    def __delete__(self, instance):
        if self.name not in instance.__dict__:
            raise AttributeError(self.name)
        del instance.__dict__[self.name]


def _asked_to_quantize(module, flow: dict) -> bool:
    """Whether the flow's settings (its ``qconfig_dict``, ``qconfig_parent`` and ``prefix``, where
    the caller has them) would quantize ``module`` were it one of torch's recurrent modules."""
    spec = flow.get("qconfig_dict")
    if not isinstance(spec, dict):
        return True                               # a flow whose settings are not known here
    if flow.get("qconfig_parent") is not None or spec.get(flow.get("prefix")) is not None:
        return True
    kinds = type_before_parametrizations(module).__mro__
    return any(value is not None and isinstance(key, type) and (issubclass(key, _TORCH_RECURRENT) or key in kinds)
               for key, value in spec.items())
