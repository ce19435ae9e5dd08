"""Optimizer rules: how the input drive enters a recurrent cell.

The paper reads a recurrent cell ``h_t = sigma(U h_{t-1} + W x_t + b)`` as one gradient
step on the hidden state with ``-(W x_t + b_ih)`` playing the gradient. A *rule* replaces
that plain step by an accelerated optimizer step. Every rule here sees the input drive

    u_t = W x_t + b_ih            (all gates at once: G*H entries, G = 4 for LSTM)

and either returns the *drive* ``d_t`` that replaces ``u_t`` in the cell (input-only
rules: momentum, Adam, RMSProp, restart), or the whole pre-activation (``NesterovRule``,
the only rule coupled to the hidden state). A rule object holds no tensors: its
hyperparameters arrive at every step as ``hp`` (floats, or tensors when learnable), so
one rule serves every recurrence (RNN, LSTM, GRU, orthogonal) without copies.

Rule state per sequence: ``velocity`` v (and ``second_moment`` m for Adam/RMSProp);
``k`` is the 1-based index of the current time step since the state was zero, used by
the restarted rules.
"""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

import torch
from torch import Tensor

__all__ = [
    "Rule",
    "MomentumRule",
    "AdamRule",
    "RMSPropRule",
    "NesterovRule",
    "RestartRule",
    "restart_coefficient",
]

#: Added to the second moment inside the square root, as in the authors' code.
ADAM_EPS = 1e-16


def restart_coefficient(k: Tensor, restart: int, dtype: torch.dtype) -> Tensor:
    """Nesterov coefficient ``(k' - 1) / (k' + 2)`` with the scheduled restart.

    ``k`` counts time steps 1, 2, ...; with ``restart = r > 0`` the counter restarts at 1
    every r steps, ``k' = ((k - 1) mod r) + 1``; ``restart = 0`` never restarts. Returns a
    tensor shaped like ``k`` with a trailing unit dimension, ready to broadcast over units.
    """
    if restart > 0:
        k = torch.remainder(k - 1, restart) + 1
    k = k.to(dtype)
    return ((k - 1.0) / (k + 2.0)).unsqueeze(-1)


class Rule:
    """An optimizer rule. Subclasses set the class attributes and one step method."""

    #: Short name used in registries and command lines ("momentum", "adam", ...).
    name: ClassVar[str]
    #: Hyperparameters the rule takes, with the paper's pixel-MNIST defaults.
    defaults: ClassVar[dict[str, float | int]]
    #: Hyperparameters that ``learnable=True`` turns into trainable parameters.
    learnable: ClassVar[tuple[str, ...]]
    #: Names of the state tensors the rule carries from step to step.
    state_fields: ClassVar[tuple[str, ...]] = ("velocity",)
    #: True when the rule needs ``U h_{t-1} + b_hh`` (only additive recurrences allow it).
    couples_to_hidden: ClassVar[bool] = False
    #: Hyperparameters for which the rule reduces to the plain cell, where such exist.
    neutral: ClassVar[dict[str, float | int] | None] = None

    # Input-only rules implement drive(); coupled rules implement preactivation().
    def drive(self, u: Tensor, state: dict[str, Tensor], hp: dict, k: Tensor):
        """Return ``(d_t, new_state)``; ``d_t`` replaces ``u_t`` in the cell."""
        raise NotImplementedError

    def preactivation(self, u: Tensor, recurrent: Tensor, state: dict[str, Tensor], hp: dict, k: Tensor):
        """Return ``(pre_t, new_state)`` from ``u_t`` and ``recurrent = U h_{t-1} + b_hh``."""
        raise NotImplementedError

    def drives(self, u: Tensor, state: dict[str, Tensor], hp: dict, steps: Tensor, mask: Tensor | None = None):
        """All time steps of an input-only rule at once: ``u`` (T, B, G*H) -> ``d`` (T, B, G*H)
        and the final state. ``steps`` (B,) counts steps already taken; where ``mask``
        (T, B) is False the state is left unchanged. Step by step here."""
        from .step import masked

        out = []
        for t, u_t in enumerate(u.unbind(0)):        # unbind: linear-time backward (not u[t])
            d, new_state = self.drive(u_t, state, hp, steps + 1)
            keep = None if mask is None else mask[t]
            state = masked(keep, new_state, state)
            steps = steps + (1 if keep is None else keep.long())
            out.append(d)
        return torch.stack(out), state

    @classmethod
    def validate(cls, hyperparameters: dict) -> dict:
        """Check names and ranges; return the full set with defaults filled in."""
        unknown = sorted(set(hyperparameters) - set(cls.defaults))
        if unknown:
            raise TypeError(
                f"{cls.__name__} takes hyperparameters {sorted(cls.defaults)}; got unexpected {unknown}"
            )
        values = {**cls.defaults, **hyperparameters}
        for name, value in values.items():
            values[name] = _check_hyperparameter(name, value)
        return values


def _check_hyperparameter(name: str, value):
    if name == "restart":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"restart must be a non-negative int (0 = never restart), got {value!r}")
        if value < 0:
            raise ValueError(f"restart must be >= 0 (0 = never restart), got {value}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got nan")
    if name in ("momentum", "beta") and not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    if name == "step_size" and not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"step_size must be a finite number > 0, got {value}")
    return value


class MomentumRule(Rule):
    """Heavy ball: ``v_t = mu v_{t-1} + s u_t``;  ``d_t = v_t``."""

    name = "momentum"
    defaults = {"momentum": 0.6, "step_size": 0.6}
    learnable = ("momentum", "step_size")
    neutral = {"momentum": 0.0, "step_size": 1.0}

    def drive(self, u, state, hp, k):
        v = hp["momentum"] * state["velocity"] + hp["step_size"] * u
        return v, {"velocity": v}


class AdamRule(Rule):
    """Adam: ``v_t = mu v_{t-1} + s u_t``;  ``m_t = beta m_{t-1} + (1 - beta) u_t^2``;
    ``d_t = v_t / sqrt(m_t + 1e-16)`` (eps inside the square root, as the authors)."""

    name = "adam"
    defaults = {"momentum": 0.6, "step_size": 0.6, "beta": 0.1}
    learnable = ("momentum", "step_size")
    state_fields = ("velocity", "second_moment")

    def drive(self, u, state, hp, k):
        v = hp.get("momentum", 0.0) * state["velocity"] + hp["step_size"] * u
        beta = hp["beta"]
        m = beta * state["second_moment"] + (1.0 - beta) * (u * u)
        return v / torch.sqrt(m + ADAM_EPS), {"velocity": v, "second_moment": m}


class RMSPropRule(AdamRule):
    """RMSProp: the Adam rule with ``mu = 0``:  ``d_t = s u_t / sqrt(m_t + 1e-16)``."""

    name = "rmsprop"
    defaults = {"step_size": 0.6, "beta": 0.9}
    learnable = ("step_size",)


class NesterovRule(Rule):
    """Nesterov accelerated gradient with scheduled restart (the paper's SRLSTM cell).

    ``v_t = U h_{t-1} + b_hh - s u_t``;  ``pre_t = v_t + ((k-1)/(k+2)) (v_t - v_{t-1})``,
    k = 1, 2, ... restarting at 1 every ``restart`` steps (0 = never). Coupled to h.
    """

    name = "nesterov"
    defaults = {"step_size": 1.0, "restart": 2}
    learnable = ("step_size",)
    couples_to_hidden = True

    def preactivation(self, u, recurrent, state, hp, k):
        v = recurrent - hp["step_size"] * u
        coefficient = restart_coefficient(k, hp["restart"], v.dtype)
        return v + coefficient * (v - state["velocity"]), {"velocity": v}


class RestartRule(Rule):
    """Input-only momentum with the restarted Nesterov coefficient (the authors' Penn
    Treebank NesterovLSTM and NesterovDTRIV): ``v_t = ((k-1)/(k+2)) v_{t-1} + s u_t``;
    ``d_t = v_t``."""

    name = "restart"
    defaults = {"step_size": 1.0, "restart": 2}
    learnable = ("step_size",)
    neutral = {"step_size": 1.0, "restart": 1}

    def drive(self, u, state, hp, k):
        coefficient = restart_coefficient(k, hp["restart"], u.dtype)
        v = coefficient * state["velocity"] + hp["step_size"] * u
        return v, {"velocity": v}
