"""What cells and layers share: a recurrence, a rule, hyperparameters, initialization."""

from __future__ import annotations

import inspect
from typing import ClassVar

import torch
from torch import nn

from .hyperparameters import add_hyperparameters, read_hyperparameters, reset_hyperparameters
from .initialization import INITS, initialize
from .quantization import QuantizationNotice
from .recurrences import Recurrence, RNNRecurrence
from .rules import Rule

__all__ = ["RuleModule"]


class _ConstructorSignature:
    """``cls.__signature__`` of a concrete cell or layer class: its constructor's arguments
    with the rule's hyperparameters and their defaults (``momentum=0.6, step_size=0.6``) in
    place of ``**hyperparameters``, for ``help()`` and ``inspect.signature``. Base classes
    and instances (whose signature is ``forward``'s) fall back to Python's own."""

    def __get__(self, instance, owner):
        if instance is not None or not hasattr(owner, "rule_type"):
            raise AttributeError("__signature__")
        return constructor_signature(owner)


def constructor_signature(cls) -> inspect.Signature:
    """The arguments ``cls(...)`` takes. By convention an ``__init__``'s ``**kwargs`` go to its
    parent's ``__init__`` (expanded here into the parent's arguments) and its
    ``**hyperparameters`` are the rule's (spelled out with this class's defaults)."""
    parameters: list[inspect.Parameter] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        own = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]     # without self
        names = {p.name for p in parameters}
        if parameters:              # the parent's arguments that the child does not name: keyword-only
            own = [p if p.kind is inspect.Parameter.VAR_KEYWORD else p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                   for p in own if p.name not in names]
        parameters = parameters[:-1] + own
        if parameters[-1].kind is not inspect.Parameter.VAR_KEYWORD or parameters[-1].name != "kwargs":
            break
    if parameters[-1].kind is inspect.Parameter.VAR_KEYWORD:
        parameters = parameters[:-1] + [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value, annotation=type(value).__name__)
            for name, value in cls.hyperparameter_defaults().items()]
    return inspect.Signature(parameters)


class RuleModule(nn.Module):
    """Base of every cell and layer: ``recurrence_type`` combined with ``rule_type``.

    Subclasses set the two class attributes; nothing else differs between variants.
    """

    __signature__ = _ConstructorSignature()
    #: Read by torch's quantization flows, which leave cells and layers in floating point (``momentumrnn.quantization``).
    qconfig = QuantizationNotice()

    recurrence_type: ClassVar[type[Recurrence]]
    rule_type: ClassVar[type[Rule]]
    #: Names ``init`` accepts (subclasses with their own initializations replace it).
    valid_inits: ClassVar[tuple[str, ...]] = INITS

    @classmethod
    def hyperparameter_defaults(cls) -> dict:
        """The rule's hyperparameters with this class's defaults."""
        return dict(cls.rule_type.defaults)

    def _configure(self, *, nonlinearity, init, forget_bias, learnable, hyperparameters,
                   suffixes, device, dtype) -> None:
        if self.recurrence_type is RNNRecurrence:
            self.recurrence = RNNRecurrence(nonlinearity)
        else:
            self.recurrence = self.recurrence_type()
        if self.rule_type.couples_to_hidden and not self.recurrence.additive:
            raise TypeError(f"{self.rule_type.__name__} needs an additive recurrence, not {self.recurrence.name}")
        self.rule = self.rule_type()
        if init not in self.valid_inits:
            raise ValueError(f"init must be one of {self.valid_inits}, got {init!r}")
        self.init = init
        self.forget_bias = float(forget_bias)
        self._suffixes = list(suffixes)
        values = self.rule_type.validate(hyperparameters, dtype or torch.get_default_dtype())
        add_hyperparameters(self, self.rule_type, values, learnable, self._suffixes, device, dtype)

    def _weights(self, suffix: str):
        """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of one layer and direction (biases may be None)."""
        return tuple(getattr(self, f"{name}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def _weight_groups(self):
        """Yield ``(suffix, weight_ih, weight_hh, bias_ih, bias_hh)`` per layer and direction."""
        for suffix in self._suffixes:
            yield (suffix, *self._weights(suffix))

    def _hyperparameters(self, suffix: str) -> dict:
        return read_hyperparameters(self, self.rule_type, suffix)

    def reset_parameters(self) -> None:
        """Re-initialize weights (``init``) and learnable hyperparameters (constructor values)."""
        for _, weight_ih, weight_hh, bias_ih, bias_hh in self._weight_groups():
            initialize(weight_ih, weight_hh, bias_ih, bias_hh, self.recurrence, self.hidden_size,
                       self.init, self.forget_bias)
        reset_hyperparameters(self, self.rule_type, self._suffixes)

    @property
    def output_size(self) -> int:
        """The width of ``h``: ``hidden_size`` (``proj_size`` for LSTM layers with projections)."""
        return self.hidden_size

    def _register_weights(self, suffix: str, input_size: int, bias: bool, factory: dict) -> None:
        rows = self.recurrence.gates * self.hidden_size
        self.register_parameter("weight_ih" + suffix, nn.Parameter(torch.empty(rows, input_size, **factory)))
        self.register_parameter("weight_hh" + suffix, nn.Parameter(torch.empty(rows, self.output_size, **factory)))
        if bias:
            self.register_parameter("bias_ih" + suffix, nn.Parameter(torch.empty(rows, **factory)))
            self.register_parameter("bias_hh" + suffix, nn.Parameter(torch.empty(rows, **factory)))
        else:
            self.register_parameter("bias_ih" + suffix, None)
            self.register_parameter("bias_hh" + suffix, None)

    def _rule_repr(self) -> str:
        values = ", ".join(f"{k}={v}" for k, v in self.hyperparameter_values.items())
        extra = ", learnable=True" if self.learnable else ""
        return f"{values}{extra}, init={self.init!r}"

