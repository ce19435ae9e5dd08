"""Fixed or learnable rule hyperparameters.

Fixed hyperparameters are plain floats. With ``learnable=True`` each name in the rule's
``learnable`` tuple becomes one trainable scalar per layer and direction, stored
unconstrained and mapped into range on every read (beyond the paper):

    momentum  = sigmoid(momentum_raw)      in (0, 1)
    step_size = softplus(step_size_raw)    in (0, inf)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .rules import Rule

__all__ = ["add_hyperparameters", "reset_hyperparameters", "read_hyperparameters", "RAW_SUFFIX"]

RAW_SUFFIX = "_raw"

_CONSTRAIN = {"momentum": torch.sigmoid, "step_size": F.softplus}


def _unconstrain(name: str, value: float) -> float:
    if name == "momentum":
        if not 0.0 < value < 1.0:
            raise ValueError(f"a learnable momentum must start in (0, 1), got {value}")
        return math.log(value / (1.0 - value))
    if name == "step_size":
        # inverse softplus; for large values softplus(x) ~ x
        return value if value > 20.0 else math.log(math.expm1(value))
    raise ValueError(f"{name} cannot be learnable")


def add_hyperparameters(module: nn.Module, rule: type[Rule], values: dict, learnable: bool,
                        suffixes: list[str], device=None, dtype=None) -> None:
    """Store the validated ``values`` on ``module``; register raw parameters if learnable."""
    module.hyperparameter_values = dict(values)
    module.learnable = bool(learnable)
    if not learnable:
        return
    for suffix in suffixes:
        for name in rule.learnable:
            raw = torch.tensor(_unconstrain(name, values[name]), device=device, dtype=dtype)
            module.register_parameter(name + RAW_SUFFIX + suffix, nn.Parameter(raw))


def reset_hyperparameters(module: nn.Module, rule: type[Rule], suffixes: list[str]) -> None:
    """Set learnable raw parameters back to the constructor's values."""
    if not module.learnable:
        return
    with torch.no_grad():
        for suffix in suffixes:
            for name in rule.learnable:
                getattr(module, name + RAW_SUFFIX + suffix).fill_(
                    _unconstrain(name, module.hyperparameter_values[name]))


def read_hyperparameters(module: nn.Module, rule: type[Rule], suffix: str) -> dict:
    """The hyperparameters in force for one layer/direction: floats, or tensors if learnable."""
    values = dict(module.hyperparameter_values)
    if module.learnable:
        for name in rule.learnable:
            values[name] = _CONSTRAIN[name](getattr(module, name + RAW_SUFFIX + suffix))
    return values
