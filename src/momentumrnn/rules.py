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
import torch.nn.functional as F
from torch import Tensor

from .paths import scan_backend
from .ops.adam_drive import adam_scan
from .ops.linear_scan import linear_scan
from .time_steps import masked, step_indices

__all__ = [
    "Rule",
    "MomentumRule",
    "AdamRule",
    "RMSPropRule",
    "NesterovRule",
    "RestartRule",
    "PlainRule",
    "restart_coefficient",
]

#: Added to the second moment inside the square root, as in the authors' code.
ADAM_EPS = 1e-16
#: The largest restart period: the step counters are int64.
MAX_RESTART = 2**63 - 1


def largest_step_size(dtype: torch.dtype) -> float:
    """The largest step size of a module computing in ``dtype``: the dtype's largest finite
    value (3.4e38 in float32, 65504 in float16); a larger one is inf there, and the outputs nan."""
    return float(torch.finfo(dtype).max)


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
    #: The range of each hyperparameter a layer can learn, into which ``learnable=True``
    #: maps a free parameter (``momentumrnn.hyperparameters.RANGES``): "unit" (0, 1),
    #: "positive" (0, inf) or "real". A rule that learns others adds them.
    ranges: ClassVar[dict[str, str]] = {"momentum": "unit", "step_size": "positive"}
    #: Names of the state tensors the rule carries from step to step.
    state_fields: ClassVar[tuple[str, ...]] = ("velocity",)
    #: True when the rule needs ``U h_{t-1} + b_hh`` (only additive recurrences allow it).
    couples_to_hidden: ClassVar[bool] = False
    #: Hyperparameters for which the rule reduces to the plain cell, where such exist.
    neutral: ClassVar[dict[str, float | int] | None] = None
    #: True when every state field is a linear recurrence with input-independent
    #: coefficients (see ``state_coefficients``): ``drives`` then runs in parallel over time.
    parallel: ClassVar[bool] = False
    #: True when moreover the drive is the velocity and its input term is ``s * u_t``
    #: (momentum, restart): the rule then commutes with the input weights,
    #: ``v_t = W x~_t + beta_t b_ih`` with ``x~`` the same filter applied to the inputs x,
    #: which the fused path (``momentumrnn.fused``) exploits.
    commutes_with_input_weights: ClassVar[bool] = False

    # Input-only rules implement drive(); coupled rules implement preactivation().
    def drive(self, u: Tensor, state: dict[str, Tensor], hp: dict, k: Tensor):
        """Return ``(d_t, new_state)``; ``d_t`` replaces ``u_t`` in the cell."""
        raise NotImplementedError

    def preactivation(self, u: Tensor, recurrent: Tensor, state: dict[str, Tensor], hp: dict, k: Tensor):
        """Return ``(pre_t, new_state)`` from ``u_t`` and ``recurrent = U h_{t-1} + b_hh``."""
        raise NotImplementedError

    def chunk_kernel_settings(self, hp: dict, u: Tensor, mask: Tensor | None) -> dict | None:
        """The keyword arguments of the loops' chunked kernel for Adam's states
        (``loops.adam_loop``) where this rule runs on it; None (the default) where it does not."""
        return None

    def drives(self, u: Tensor, state: dict[str, Tensor], hp: dict, steps: Tensor, mask: Tensor | None = None):
        """All time steps of an input-only rule at once: ``u`` (T, B, G*H) -> ``d`` (T, B, G*H)
        and the final state. ``steps`` (B,) counts steps already taken; where ``mask``
        (T, B) is False the state is left unchanged (and ``d`` there is what the step-by-step
        loop gives: one step from the held state). Rules with linear state recurrences
        (``parallel = True``) compute it with ``ops.linear_scan``, without a loop over time;
        ``drives_stepwise`` is the step-by-step reference, equal to rounding."""
        if not self.parallel:
            return self.drives_stepwise(u, state, hp, steps, mask)
        time = u.size(0)
        coefficients = self.state_coefficients(hp, steps, time, mask, u.dtype)
        terms = self.state_inputs(u, hp)
        if mask is None:
            states = {f: linear_scan(coefficients[f], terms[f], state[f]) for f in self.state_fields}
            return self.drive_from_state(states, hp), {f: states[f][-1] for f in self.state_fields}
        keep = mask[..., None]
        states = {}
        for f in self.state_fields:     # a skipped step holds the state: coefficient 1, input 0
            held = torch.where(mask, coefficients[f], torch.ones((), dtype=u.dtype, device=u.device))
            states[f] = linear_scan(held, torch.where(keep, terms[f], torch.zeros((), dtype=u.dtype,
                                                                                      device=u.device)), state[f])
        before = {f: torch.cat([state[f][None], states[f][:-1]]) for f in self.state_fields}
        drive, _ = self.drive(u, before, hp, step_indices(steps, time, mask))
        return drive, {f: states[f][-1] for f in self.state_fields}

    def drives_of_inputs(self, x: Tensor, weight: Tensor, bias: Tensor | None, state: dict[str, Tensor], hp: dict,
                         steps: Tensor, mask: Tensor | None = None):
        """``drives`` of the input drive ``u = W x + b`` (``x`` (T, B, I)); a rule may avoid
        keeping ``u`` for the backward (``AdamRule`` on the Triton backend does)."""
        return self.drives(F.linear(x, weight, bias), state, hp, steps, mask)

    def drives_stepwise(self, u: Tensor, state: dict[str, Tensor], hp: dict, steps: Tensor,
                        mask: Tensor | None = None):
        """``drives`` one step at a time with ``drive`` (the reference the parallel version
        is tested against; ``impl="reference"`` layers use it)."""
        out = []
        # unbind, not u[t]: the backward of T selects zero-fills T full-size tensors (O(T^2))
        for t, u_t in enumerate(u.unbind(0)):
            d, new_state = self.drive(u_t, state, hp, steps + 1)
            keep = None if mask is None else mask[t]
            state = masked(keep, new_state, state)
            steps = steps + (1 if keep is None else keep.long())
            out.append(d)
        return torch.stack(out), state

    # Rules with ``parallel = True``: each state field f follows
    #     state_t[f] = a_t[f] * state_{t-1}[f] + b_t[f](u_t)
    # with a coefficient a_t that does not depend on the inputs.
    def state_coefficients(self, hp: dict, steps: Tensor, time: int, mask: Tensor | None = None,
                           dtype: torch.dtype = torch.float64) -> dict:
        """Per state field: the coefficient a_t (a number, a 0-d tensor, or a (T, B) or (T, 1)
        tensor of ``dtype``) for the steps after ``steps`` (B,), skipping where ``mask`` is False."""
        raise NotImplementedError

    def state_inputs(self, u: Tensor, hp: dict) -> dict[str, Tensor]:
        """Per state field: the input term b_t(u_t) of all steps, (T, B, G*H)."""
        raise NotImplementedError

    def drive_from_state(self, states: dict[str, Tensor], hp: dict) -> Tensor:
        """The drive d_t from the new state (all steps at once)."""
        raise NotImplementedError

    @classmethod
    def validate(cls, hyperparameters: dict, dtype: torch.dtype = torch.float32) -> dict:
        """Check names and ranges (for a module computing in ``dtype``); return the full set
        with defaults filled in."""
        unknown = sorted(set(hyperparameters) - set(cls.defaults))
        if unknown:
            raise TypeError(
                f"{cls.__name__} takes hyperparameters {sorted(cls.defaults)}; got unexpected {unknown}"
            )
        values = {**cls.defaults, **hyperparameters}
        for name, value in values.items():
            values[name] = _check_hyperparameter(name, value, dtype)
        return values

    @classmethod
    def check_dtype(cls, values: dict, dtype: torch.dtype) -> None:
        """``values`` (validated) must be finite in ``dtype``, the dtype the module computes in
        now (``.half()`` or ``.to()`` may have changed it since). Only the step size's range
        depends on the dtype: momentum and beta lie in [0, 1), the restart period is an int."""
        if "step_size" in values:
            _check_step_size(values["step_size"], dtype)


def _check_step_size(value: float, dtype: torch.dtype) -> None:
    """A step size in (0, largest finite value of ``dtype``]."""
    if not (dtype.is_floating_point or dtype.is_complex):      # no such parameters: torch refuses integer ones
        return
    largest = largest_step_size(dtype)
    if not 0.0 < value <= largest:
        raise ValueError(f"step_size must be a number in (0, {largest:.4g}] (finite in "
                         f"{str(dtype).removeprefix('torch.')}), got {value}")


def _check_hyperparameter(name: str, value, dtype: torch.dtype):
    if name == "restart":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"restart must be a non-negative int (0 = never restart), got {value!r}")
        if not 0 <= value <= MAX_RESTART:
            raise ValueError(f"restart must be in [0, 2**63 - 1] (0 = never restart; the step counters are "
                             f"int64), got {value}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got nan")
    if name in ("momentum", "beta") and not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    if name == "step_size":
        _check_step_size(value, dtype)
    return value


class MomentumRule(Rule):
    """Heavy ball: ``v_t = mu v_{t-1} + s u_t``;  ``d_t = v_t``."""

    name = "momentum"
    defaults = {"momentum": 0.6, "step_size": 0.6}
    learnable = ("momentum", "step_size")
    neutral = {"momentum": 0.0, "step_size": 1.0}

    parallel = True
    commutes_with_input_weights = True

    def drive(self, u, state, hp, k):
        v = hp["momentum"] * state["velocity"] + hp["step_size"] * u
        return v, {"velocity": v}

    def state_coefficients(self, hp, steps, time, mask=None, dtype=torch.float64):
        return {"velocity": hp["momentum"]}

    def state_inputs(self, u, hp):
        return {"velocity": hp["step_size"] * u}

    def drive_from_state(self, states, hp):
        return states["velocity"]


class AdamRule(Rule):
    """Adam: ``v_t = mu v_{t-1} + s u_t``;  ``m_t = beta m_{t-1} + (1 - beta) u_t^2``;
    ``d_t = v_t / sqrt(m_t + 1e-16)`` (eps inside the square root, as the authors)."""

    name = "adam"
    defaults = {"momentum": 0.6, "step_size": 0.6, "beta": 0.1}
    learnable = ("momentum", "step_size")
    state_fields = ("velocity", "second_moment")

    parallel = True

    def drive(self, u, state, hp, k):
        v = hp.get("momentum", 0.0) * state["velocity"] + hp["step_size"] * u
        beta = hp["beta"]
        m = beta * state["second_moment"] + (1.0 - beta) * (u * u)
        return v / torch.sqrt(m + ADAM_EPS), {"velocity": v, "second_moment": m}

    def chunk_kernel_settings(self, hp: dict, u: Tensor, mask: Tensor | None) -> dict | None:
        """The arguments of the chunk kernel (``ops.adam_drive.adam_scan``, ``loops.adam_loop``)
        where it applies, on the CPU without a mask; else None (the parallel scans apply)."""
        if mask is not None or u.device.type != "cpu":
            return None
        return {"momentum": hp.get("momentum", 0.0), "step_size": hp["step_size"], "beta": hp["beta"],
                "eps": ADAM_EPS}

    def drives(self, u, state, hp, steps, mask=None):
        """As ``Rule.drives``. With the Triton backend (``paths.scan_backend``: CUDA), one
        kernel for the states and the drive (``ops.adam_drive.triton``; a mask must be the
        trailing padding of packed sequences, ``t < lengths``, and the drive at its steps is
        the held state's); on the CPU without a mask, the chunk kernel
        (``ops.adam_drive.adam_scan``) that keeps each time chunk in cache; else the parallel
        scans of the base class."""
        if scan_backend(u) == "triton":
            from .ops.adam_drive import triton as kernels

            drive, v, m = kernels.adam_drive(u, state["velocity"], state["second_moment"], hp.get("momentum", 0.0),
                                             hp["step_size"], hp["beta"], ADAM_EPS, _trailing_lengths(mask, u))
            return drive, {"velocity": v, "second_moment": m}
        settings = self.chunk_kernel_settings(hp, u, mask)
        if settings is None:
            return super().drives(u, state, hp, steps, mask)
        drive, v, m = adam_scan(u, state["velocity"], state["second_moment"], **settings)
        return drive, {"velocity": v, "second_moment": m}

    def drives_of_inputs(self, x, weight, bias, state, hp, steps, mask=None):
        """As ``Rule.drives_of_inputs``; on the Triton backend ``u`` is made again in the
        backward instead of kept (``ops.adam_drive.triton.adam_drive_of_inputs``)."""
        if scan_backend(x) != "triton":
            return super().drives_of_inputs(x, weight, bias, state, hp, steps, mask)
        from .ops.adam_drive import triton as kernels

        drive, v, m = kernels.adam_drive_of_inputs(x, weight, bias, state["velocity"], state["second_moment"],
                                                   hp.get("momentum", 0.0), hp["step_size"], hp["beta"], ADAM_EPS,
                                                   _trailing_lengths(mask, x))
        return drive, {"velocity": v, "second_moment": m}

    def state_coefficients(self, hp, steps, time, mask=None, dtype=torch.float64):
        return {"velocity": hp.get("momentum", 0.0), "second_moment": hp["beta"]}

    def state_inputs(self, u, hp):
        return {"velocity": hp["step_size"] * u, "second_moment": (1.0 - hp["beta"]) * (u * u)}

    def drive_from_state(self, states, hp):
        return states["velocity"] / torch.sqrt(states["second_moment"] + ADAM_EPS)


def _trailing_lengths(mask: Tensor | None, like: Tensor) -> Tensor | None:
    """The lengths of a mask that is trailing padding (``t < lengths``); anything else is refused."""
    if mask is None:
        return None
    lengths = mask.sum(0)
    trailing = torch.arange(like.size(0), device=mask.device)[:, None] < lengths[None, :]
    if not torch.equal(mask, trailing):
        raise ValueError("AdamRule.drives on the Triton backend takes only trailing padding as mask "
                         "(steps t < lengths of each sequence)")
    return lengths


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

    def extrapolation(self, hp, steps, time, dtype):
        """The coefficient ``(k'-1)/(k'+2)`` of every step, (T, B) or (T, 1)."""
        return restart_coefficient(step_indices(steps, time), hp["restart"], dtype).squeeze(-1)


class RestartRule(Rule):
    """Input-only momentum with the restarted Nesterov coefficient (the authors' Penn
    Treebank NesterovLSTM and NesterovDTRIV): ``v_t = ((k-1)/(k+2)) v_{t-1} + s u_t``;
    ``d_t = v_t``."""

    name = "restart"
    defaults = {"step_size": 1.0, "restart": 2}
    learnable = ("step_size",)
    neutral = {"step_size": 1.0, "restart": 1}

    parallel = True
    commutes_with_input_weights = True

    def drive(self, u, state, hp, k):
        coefficient = restart_coefficient(k, hp["restart"], u.dtype)
        v = coefficient * state["velocity"] + hp["step_size"] * u
        return v, {"velocity": v}

    def state_coefficients(self, hp, steps, time, mask=None, dtype=torch.float64):
        k = step_indices(steps, time, mask)
        return {"velocity": restart_coefficient(k, hp["restart"], dtype).squeeze(-1)}

    def state_inputs(self, u, hp):
        return {"velocity": hp["step_size"] * u}

    def drive_from_state(self, states, hp):
        return states["velocity"]

class PlainRule(Rule):
    """No rule: ``d_t = u_t``, the plain cell (one gradient-descent step in the paper's
    reading). Carries no state; the orthogonal RNN without momentum (DTRIV) uses it."""

    name = "none"
    defaults = {}
    learnable = ()
    state_fields = ()
    neutral = {}

    def drive(self, u, state, hp, k):
        return u, state

    def drives(self, u, state, hp, steps, mask=None):
        return u, state
