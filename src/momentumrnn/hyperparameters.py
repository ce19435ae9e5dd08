"""Fixed or learnable rule hyperparameters.

Fixed hyperparameters are plain floats. With ``learnable=True`` each name in the rule's
``learnable`` tuple becomes one trainable scalar per layer and direction, stored
unconstrained and mapped into its range (the rule's ``ranges``) on every read (beyond the
paper):

    "unit"      (momentum):   value = sigmoid(raw)    in (0, 1)
    "positive"  (step_size):  value = softplus(raw)   in (0, inf)
    "real":                   value = raw
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .rules import Rule

__all__ = ["add_hyperparameters", "reset_hyperparameters", "read_hyperparameters", "RAW_SUFFIX", "RANGES",
           "learnable_range"]

RAW_SUFFIX = "_raw"

#: Each range a learnable hyperparameter may have: the map from the free parameter into it.
RANGES = {"unit": torch.sigmoid, "positive": F.softplus, "real": lambda raw: raw}


def learnable_range(rule: type[Rule], name: str) -> str:
    """The range of the learnable hyperparameter ``name`` of ``rule`` (its ``ranges``)."""
    kind = getattr(rule, "ranges", {}).get(name)
    if kind not in RANGES:
        raise ValueError(f"{rule.__name__}.learnable names {name!r}, whose range is "
                         f"{'not declared' if kind is None else repr(kind)}: {rule.__name__}.ranges must map it to "
                         f"one of {', '.join(map(repr, RANGES))}")
    return kind


def _unconstrain(rule: type[Rule], name: str, value: float) -> float:
    """The free parameter that the map of ``name``'s range takes to ``value``."""
    kind = learnable_range(rule, name)
    if kind == "unit":
        if not 0.0 < value < 1.0:
            raise ValueError(f"a learnable {name} must start in (0, 1), got {value}")
        return math.log(value / (1.0 - value))
    if kind == "positive":
        if not value > 0.0:
            raise ValueError(f"a learnable {name} must start in (0, inf), got {value}")
        # inverse softplus; for large values softplus(x) ~ x
        return value if value > 20.0 else math.log(math.expm1(value))
    return value


def add_hyperparameters(module: nn.Module, rule: type[Rule], values: dict, learnable: bool,
                        suffixes: list[str], device=None, dtype=None) -> None:
    """Store the validated ``values`` on ``module``; register raw parameters if learnable."""
    module.hyperparameter_values = dict(values)
    module.learnable = bool(learnable)
    if not learnable:
        return
    for suffix in suffixes:
        for name in rule.learnable:
            raw = torch.tensor(_unconstrain(rule, name, values[name]), device=device, dtype=dtype)
            module.register_parameter(name + RAW_SUFFIX + suffix, nn.Parameter(raw))


def reset_hyperparameters(module: nn.Module, rule: type[Rule], suffixes: list[str]) -> None:
    """Set learnable raw parameters back to the constructor's values."""
    if not module.learnable:
        return
    with torch.no_grad():
        for suffix in suffixes:
            for name in rule.learnable:
                getattr(module, name + RAW_SUFFIX + suffix).fill_(
                    _unconstrain(rule, name, module.hyperparameter_values[name]))


def read_hyperparameters(module: nn.Module, rule: type[Rule], suffix: str) -> dict:
    """The hyperparameters in force for one layer/direction: floats, or tensors if learnable."""
    values = dict(module.hyperparameter_values)
    if module.learnable:
        for name in rule.learnable:
            # every range was checked when the parameters were added (add_hyperparameters)
            values[name] = RANGES[rule.ranges[name]](getattr(module, name + RAW_SUFFIX + suffix))
    return values
