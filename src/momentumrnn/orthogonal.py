"""Orthogonal RNNs (DTRIV / expRNN) and their momentum, Adam, RMSProp and restart variants.

The paper's section 2: ``h_t = modReLU(U h_{t-1} + d_t)`` where ``d_t`` is the rule's drive
made from ``u_t = W x_t`` (W without bias), ``U`` is orthogonal and
``modReLU(z) = sign(z) relu(|z| + b)`` with a learnable bias ``b`` per unit.

``U`` is trained in the authors' coordinates: they compute ``h_{t-1} B`` with row vectors
and ``B = base exp(A)``, so ``U = B^T = (base exp(A))^T`` with ``A`` skew-symmetric.
PyTorch's own ``torch.nn.utils.parametrizations.orthogonal`` (matrix exponential, dynamic
trivialization) parametrizes ``B``, with ``A = tril(X) - tril(X)^T`` for the trained tensor
``X``, and a transpose on top gives ``U``. At initialization ``base = B_0 = exp(A_0)`` and
``A = 0`` (``U_0 = exp(A_0)^T``): the authors' DTRIV starts at ``base = I``, ``A = A_0`` and
changes its base at the first forward call, whatever K. Changing the base (``base <- B``,
``A <- 0``) every K optimizer steps is the DTRIV algorithm; K = 1 is close to Riemannian
gradient descent, K = ``math.inf`` never changes it again (the authors' ``K="infty"``).
The layer cannot see optimizer steps, so the user tells it::

    layer.trivialization_step()                     # after each optimizer.step(), or
    register_trivialization(optimizer_orth, model)  # once: an optimizer step hook does it

``U`` is computed once per forward call (per layer and direction), not once per time step.

The gradient on a change-of-base step (``base_change_gradient``). ``"clean"`` (the
default): after a change of base ``A = 0``, so the next step's gradient with respect to
``A`` is the derivative of ``exp`` at 0, ``base^T dL/dB`` made skew. ``"authors"``: the
authors' ``Parametrization`` changes its base inside the forward pass, after the graph of
``B = base exp(A)`` is built, by overwriting ``base`` and zeroing ``A`` in place; their
backward pass then uses the new base but the skew matrix ``A_old`` that the base just
absorbed, i.e. ``d exp`` at ``A_old`` applied to ``base_new^T dL/dB``. Their first forward
always changes the base (from ``base = I``, ``A = A_0``), so with ``"authors"`` the first
step's gradient is taken at ``A_0``, and every step that follows a change of base (every
step at K = 1, step K + 1, 2K + 1, ... otherwise) at the absorbed ``A``. U itself is the
same either way; only the direction of the step on ``A`` differs.

A state_dict of the former parametrization ``U = base exp(A)`` has the same keys but no
``orthogonal_form`` buffer; loading converts it (``is_former_orthogonal_state``).
"""

from __future__ import annotations

import math
import numbers
import re
import warnings
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal

from .hyperparameters import reset_hyperparameters
from .layers import RecurrentLayer
from .paths import plain_ops_required
from .triton_loop import check_device, modrelu_rnn
from .recurrences import Recurrence
from .rules import AdamRule, MomentumRule, PlainRule, RestartRule, RMSPropRule
from .time_steps import masked, step_indices
from .step import over_time

__all__ = [
    "OrthogonalRNN", "MomentumOrthogonalRNN", "AdamOrthogonalRNN", "RMSPropOrthogonalRNN",
    "RestartOrthogonalRNN", "ORTHOGONAL_LAYERS", "SKEW_INITS", "ModReLURecurrence", "modrelu",
    "skew_symmetric_init", "ParameterGroups", "split_orthogonal_parameters", "trivialization_step",
    "register_trivialization", "is_former_orthogonal_state", "ORTHOGONAL_FORM", "BASE_CHANGE_GRADIENTS",
]

#: The gradient on the step after a change of base: "clean" (at A = 0) or "authors" (at the
#: absorbed A, with the new base, as the authors' in-place change of base gives it).
BASE_CHANGE_GRADIENTS = ("clean", "authors")

#: Skew-symmetric initializations of the recurrent matrix (the authors' ``--init``).
SKEW_INITS = ("cayley", "henaff")

#: The value of the layers' ``orthogonal_form`` buffer: ``U = (base exp(A))^T``. A state_dict
#: without the buffer is of the former form ``U = base exp(A)``.
ORTHOGONAL_FORM = 2

_TRAINED_KEY = re.compile(r"^(.*)parametrizations\.weight_hh_l\d+(?:_reverse)?\.original$")


def modrelu(z: Tensor, bias: Tensor) -> Tensor:
    """``sign(z) relu(|z| + b)``; ``bias`` broadcasts over the last dimension."""
    return torch.sign(z) * torch.relu(z.abs() + bias)


class ModReLURecurrence(Recurrence):
    """``h_t = modReLU(d_t + U h_{t-1}; b)``. The bias ``b`` belongs to each layer and
    direction, so it is passed in: ``step(drive, recurrent, state, bias)``."""

    name = "modrelu"
    gates = 1

    def step(self, drive, recurrent, state, bias):
        return self.activate(drive + recurrent, state, bias)

    def activate(self, pre, state, bias):
        return (modrelu(pre, bias),)


def skew_symmetric_init(hidden_size: int, init: str, *, device=None, dtype=None) -> Tensor:
    """A block-diagonal skew-symmetric ``A_0`` (H x H) of the authors' setup.

    ``A_0`` has ``H // 2`` blocks ``[[0, a_i], [-a_i, 0]]`` on its diagonal (a trailing
    zero row and column when H is odd), so ``exp(A_0)`` rotates pairs of units by the
    angles ``a_i``. ``"henaff"``: ``a_i ~ U(-pi, pi)``. ``"cayley"``: ``a_i = -tan(t_i / 2)``
    with ``t_i ~ U(0, pi/2)``, i.e. ``-sqrt((1 - cos t_i) / (1 + cos t_i))``.
    """
    if init not in SKEW_INITS:
        raise ValueError(f"init must be one of {SKEW_INITS}, got {init!r}")
    blocks = hidden_size // 2
    if init == "henaff":
        angles = torch.empty(blocks, device=device, dtype=dtype).uniform_(-math.pi, math.pi)
    else:
        angles = -torch.tan(torch.empty(blocks, device=device, dtype=dtype).uniform_(0.0, math.pi / 2) / 2)
    skew = torch.zeros(hidden_size, hidden_size, device=device, dtype=dtype)
    rows = torch.arange(blocks, device=device) * 2
    skew[rows, rows + 1] = angles
    skew[rows + 1, rows] = -angles
    return skew


def _check_trivialization(value) -> int | float:
    expected = ("trivialization (K) must be a positive int (change the base every K optimizer steps) "
                "or math.inf (never change it)")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{expected}, got {type(value).__name__} {value!r}")
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise ValueError(f"{expected}, got {value}")
        return int(value)
    if value == math.inf:
        return math.inf
    raise ValueError(f"{expected}, got {value!r}")


def _reorthogonalize(matrix: Tensor) -> Tensor:
    """The Q factor of ``matrix = QR`` with ``diag(R) > 0``: for a matrix that rounding has
    moved slightly off the orthogonal group, an orthogonal matrix within that distance."""
    q, r = torch.linalg.qr(matrix)
    return q * torch.sgn(r.diagonal()).unsqueeze(-2)


def _exp_with_gradient_at(skew: Tensor, absorbed: Tensor) -> Tensor:
    """``exp(skew)`` whose gradient is that of ``exp`` at ``skew + absorbed``: the value of the
    current ``A``, the derivative the authors' change of base leaves to the backward pass."""
    shifted = torch.linalg.matrix_exp(skew + absorbed)
    return torch.linalg.matrix_exp(skew.detach()) + (shifted - shifted.detach())


class _Transpose(nn.Module):
    """``U = B^T``: the layer's matrix from the authors' ``B`` (they compute ``h_{t-1} B``)."""

    def forward(self, matrix: Tensor) -> Tensor:
        return matrix.mT

    def right_inverse(self, matrix: Tensor) -> Tensor:
        return matrix.mT.contiguous()


def is_former_orthogonal_state(state_dict) -> bool:
    """Whether ``state_dict`` holds an orthogonal layer of the former parametrization
    ``U = base exp(A)``: a ``parametrizations.weight_hh_l{k}.original`` with its orthogonal
    ``base`` (``...weight_hh_l{k}.0.base``) but without the layer's ``orthogonal_form``
    buffer. Loading such a state_dict converts it, but an optimizer state saved with it no
    longer matches the orthogonal parameters."""
    for key in state_dict:
        match = _TRAINED_KEY.match(key)
        if (match and match.group(1) + "orthogonal_form" not in state_dict
                and key.removesuffix("original") + "0.base" in state_dict):
            return True
    return False


@torch.no_grad()
def _convert_former_state(state_dict, prefix: str, suffix: str) -> str | None:
    """Rewrite one former-form ``(base, X)`` with ``U = base exp(tril(X) - tril(X)^T)`` in
    place as ``base' = U^T`` (re-orthogonalized), ``X' = -I``: the same ``U`` in the current
    form. Returns an error message where the pair cannot be converted, else None."""
    trained_key = f"{prefix}parametrizations.weight_hh{suffix}.original"
    base_key = f"{prefix}parametrizations.weight_hh{suffix}.0.base"
    if trained_key not in state_dict:
        return None
    trained = state_dict[trained_key]
    if base_key not in state_dict:
        return f"{trained_key}: a former-form orthogonal state (no {prefix}orthogonal_form) needs {base_key}"
    base = state_dict[base_key]
    if trained.dim() != 2 or trained.size(0) != trained.size(1) or base.shape != trained.shape:
        return None                    # left as it is: loading reports the size mismatch
    lower = trained.detach().to(device="cpu", dtype=torch.float64).tril()
    recurrent = base.detach().to(device="cpu", dtype=torch.float64) @ torch.linalg.matrix_exp(lower - lower.mT)
    state_dict[base_key] = _reorthogonalize(recurrent.mT).to(device=base.device, dtype=base.dtype)
    state_dict[trained_key] = -torch.eye(trained.size(0), device=trained.device, dtype=trained.dtype)
    return None


class OrthogonalRNN(RecurrentLayer):
    """Orthogonal RNN with modReLU (the paper's DTRIV), over whole sequences.

    ``h_t = modReLU(U h_{t-1} + d_t)``, ``d_t`` the rule's output from ``u_t = W x_t``
    (here the plain rule: ``d_t = u_t``). Per layer and direction: ``weight_ih_l{k}``
    (``W``, H x input, no bias), ``weight_hh_l{k}`` (``U``, H x H), ``bias_modrelu_l{k}``
    (``b``, H). ``U = (base exp(A))^T`` with ``A = tril(X) - tril(X)^T``: torch's
    ``orthogonal`` parametrization of ``B = base exp(A)`` followed by a transpose; the
    trained tensor ``X`` is ``parametrizations.weight_hh_l{k}.original`` and ``base`` the
    buffer ``parametrizations.weight_hh_l{k}.0.base``. The 0-d buffer ``orthogonal_form``
    (``ORTHOGONAL_FORM``) marks this form in ``state_dict``.

    Args: ``input_size, hidden_size, num_layers=1``; keyword-only ``batch_first``,
    ``dropout``, ``bidirectional``, ``device``, ``dtype`` as torch's layers;
    ``trivialization`` K (positive int or ``math.inf``, default ``math.inf``: never change
    the base); ``init`` ("cayley", default, or "henaff": the skew-symmetric ``A_0``, with
    ``base = exp(A_0)`` and ``A = 0``, so ``U_0 = exp(A_0)^T``; ``W`` is Kaiming-normal for relu,
    ``b ~ U(-0.01, 0.01)``, as the authors); ``base_change_gradient`` ("clean", default, or
    "authors": the gradient on the step after each change of base, and on the first step,
    as the authors' in-place change of base gives it; see the module docstring);
    ``learnable`` and the rule's hyperparameters as
    the other layers; ``impl``: "auto" (the per-step reference, on every device),
    "reference", or "triton-loop" (CUDA: one GEMM and one Triton kernel a step, replayed as
    CUDA graphs; ``momentumrnn.triton_loop``). Second derivatives and batched gradients work
    with every rule on every path (``momentumrnn.second_order``).

    Input, output, ``hx``, ``PackedSequence``, unbatched input and the carried rule state
    (``rule_state=``, ``return_rule_state=True``) follow ``RecurrentLayer``; the hidden
    state is ``h`` only. Save with ``state_dict()`` (torch cannot pickle parametrized modules);
    a state_dict of the former form ``U = base exp(A)`` is converted on loading, with a warning.
    """

    recurrence_type = ModReLURecurrence
    rule_type = PlainRule
    valid_inits = SKEW_INITS
    #: Hyperparameter defaults of this layer where the paper gives orthogonal-RNN settings.
    orthogonal_defaults: ClassVar[dict] = {}

    @classmethod
    def hyperparameter_defaults(cls) -> dict:
        return {**cls.rule_type.defaults, **cls.orthogonal_defaults}

    @property
    def _reference_is_plain(self) -> bool:
        """The reference path takes the rules' parallel scans for the drives (plain ops only
        inside ``paths.plain_ops()``); the plain rule has none."""
        return self.rule_type is PlainRule

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False,
                 device: torch.device | str | int | None = None, dtype: torch.dtype | None = None,
                 trivialization: int | float = math.inf, init: str = "cayley", learnable: bool = False,
                 impl: str = "auto", base_change_gradient: str = "clean", **hyperparameters: float):
        if self.rule_type.couples_to_hidden:
            raise TypeError(f"{type(self).__name__}: the orthogonal layers take input-only rules, "
                            f"not {self.rule_type.__name__}")
        trivialization = _check_trivialization(trivialization)
        if base_change_gradient not in BASE_CHANGE_GRADIENTS:
            raise ValueError(f"base_change_gradient must be one of {BASE_CHANGE_GRADIENTS}, "
                             f"got {base_change_gradient!r}")
        # read by reset_parameters, which the base class's constructor calls
        self.__dict__["base_change_gradient"] = base_change_gradient
        super().__init__(input_size, hidden_size, num_layers, False, batch_first, dropout, bidirectional,
                         device, dtype, learnable=learnable, init=init, impl=impl,
                         **{**self.orthogonal_defaults, **hyperparameters})
        self.trivialization = trivialization
        self.register_buffer("orthogonal_form", torch.tensor(ORTHOGONAL_FORM, device=self.weight_ih_l0.device))

    # ------------------------------------------------------------ parameters
    def _register_weights(self, suffix: str, input_size: int, bias: bool, factory: dict) -> None:
        hidden = self.hidden_size
        self.register_parameter("weight_ih" + suffix, nn.Parameter(torch.empty(hidden, input_size, **factory)))
        self.register_parameter("weight_hh" + suffix, nn.Parameter(torch.eye(hidden, **factory)))
        self.register_parameter("bias_modrelu" + suffix, nn.Parameter(torch.empty(hidden, **factory)))
        orthogonal(self, "weight_hh" + suffix, orthogonal_map="matrix_exp", use_trivialization=True)
        parametrize.register_parametrization(self, "weight_hh" + suffix, _Transpose())

    def _weights(self, suffix: str):
        """``(W, U, None, b)``: ``U`` is computed here, once per forward and direction."""
        return (getattr(self, "weight_ih" + suffix), self._recurrent(suffix), None,
                getattr(self, "bias_modrelu" + suffix))

    def _recurrent(self, suffix: str) -> Tensor:
        """``U``; on a step after a change of base with ``base_change_gradient="authors"``, the
        same value with the gradient of ``exp`` taken at the absorbed skew matrix."""
        if not (self.base_change_gradient == "authors" and int(self.base_change_pending)
                and torch.is_grad_enabled()):
            return getattr(self, "weight_hh" + suffix)
        parametrization = self.parametrizations["weight_hh" + suffix]
        lower = parametrization.original.tril()                       # as torch's orthogonal parametrization
        skew = lower - lower.mT
        absorbed = getattr(self, "absorbed_skew" + suffix)
        return (parametrization[0].base @ _exp_with_gradient_at(skew, absorbed.to(skew.dtype))).mT

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw ``W``, ``A_0`` (``base = exp(A_0)``, ``A = 0``: ``U_0 = exp(A_0)^T``) and
        ``b``; learnable hyperparameters back to the constructor's values."""
        authors = self.base_change_gradient == "authors"
        for suffix in self._suffixes:
            weight_ih = getattr(self, "weight_ih" + suffix)
            nn.init.kaiming_normal_(weight_ih, nonlinearity="relu")
            # exp in float64 on the CPU: torch's float32 matrix_exp is orthogonal to ~1e-5 only.
            skew = skew_symmetric_init(self.hidden_size, self.init, dtype=torch.float64)
            # Assigning U_0 = B_0^T sets base = B_0 and A = 0 (the parametrizations' right inverses).
            initial = torch.linalg.matrix_exp(skew).mT.to(device=weight_ih.device, dtype=weight_ih.dtype)
            setattr(self, "weight_hh" + suffix, initial.contiguous())
            getattr(self, "bias_modrelu" + suffix).uniform_(-0.01, 0.01)
            if authors:            # their first forward changes the base from (I, A_0): A_0 is absorbed
                self._set_buffer("absorbed_skew" + suffix, skew.to(device=weight_ih.device, dtype=weight_ih.dtype))
        if authors:
            self._set_buffer("base_change_pending", torch.ones((), dtype=torch.long, device=self.weight_ih_l0.device))
        reset_hyperparameters(self, self.rule_type, self._suffixes)
        # Buffers, so that state_dict (and a resumed training run) keeps the change-of-base schedule.
        for name in ("steps_since_base_change", "base_changes"):
            if name in self._buffers:
                self._buffers[name].zero_()
            else:
                self.register_buffer(name, torch.zeros((), dtype=torch.long, device=self.weight_ih_l0.device))

    def _set_buffer(self, name: str, value: Tensor) -> None:
        if name in self._buffers:
            self._buffers[name].copy_(value)
        else:
            self.register_buffer(name, value)

    def orthogonal_parameters(self) -> list[nn.Parameter]:
        """The trained tensors behind every ``U`` (one per layer and direction)."""
        return [self.parametrizations["weight_hh" + suffix].original for suffix in self._suffixes]

    # ------------------------------------------------------- trivialization
    @torch.no_grad()
    def change_base(self) -> None:
        """Change the base now: ``base <- B = U^T`` and ``A <- 0`` (U itself does not change).

        The new base is re-orthogonalized (QR) first, so rounding errors of ``exp(A)`` never
        accumulate over many changes of base (the authors project every 100 changes).
        """
        authors = self.base_change_gradient == "authors"
        for suffix in self._suffixes:
            parametrization = self.parametrizations["weight_hh" + suffix]
            if authors:                      # the A that the base absorbs: the next step's gradient is taken at it
                lower = parametrization.original.tril()
                getattr(self, "absorbed_skew" + suffix).copy_(lower - lower.mT)
            base = _reorthogonalize(getattr(self, "weight_hh" + suffix).mT)            # B = U^T
            # in place, not through the parametrization's right inverse (which replaces the trained
            # tensor's storage and with it the gradient hooks that DistributedDataParallel holds)
            parametrization[0].base.copy_(base)
            parametrization.original.zero_()                                         # A = 0
        self.steps_since_base_change.zero_()
        self.base_changes += 1
        if authors:
            self.base_change_pending.fill_(1)

    def trivialization_step(self) -> bool:
        """Count one optimizer step; change the base when K steps have passed since the
        last change. Call it after every ``optimizer.step()`` (or use
        ``register_trivialization``). Returns whether the base changed."""
        if self.base_change_gradient == "authors":
            self.base_change_pending.zero_()          # the step after the change of base is done
        self.steps_since_base_change += 1
        if int(self.steps_since_base_change) >= self.trivialization:
            self.change_base()
            return True
        return False

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """A state_dict without ``orthogonal_form`` is of the former form ``U = base exp(A)``:
        each ``(base, X)`` becomes ``base = U^T``, ``A = 0`` (the same ``U``), with a warning.
        torch's ``load_state_dict`` hands the children this (modified) dict."""
        marker = prefix + "orthogonal_form"
        if marker not in state_dict and any(f"{prefix}parametrizations.weight_hh{suffix}.original" in state_dict
                                            for suffix in self._suffixes):
            refusals = [m for m in (_convert_former_state(state_dict, prefix, s) for s in self._suffixes) if m]
            if refusals:
                error_msgs.extend(refusals)
                return
            state_dict[marker] = torch.tensor(ORTHOGONAL_FORM)
            name = parametrize.type_before_parametrizations(self).__name__
            warnings.warn(f"{name}: the state_dict was converted from the former parametrization of the "
                          f"orthogonal matrix (U = base exp(A), now U = (base exp(A))^T; U is unchanged); an "
                          f"optimizer state saved with it no longer matches the orthogonal parameters",
                          UserWarning, stacklevel=4)
        elif marker in state_dict and int(state_dict[marker]) != ORTHOGONAL_FORM:
            error_msgs.append(f"{marker}: this version reads orthogonal_form {ORTHOGONAL_FORM}, "
                              f"got {int(state_dict[marker])}")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # ------------------------------------------------------------- forward
    def _run_reference(self, x, weights, hp, state, rules, steps, mask, lengths, carried, wanted):
        """The input-side rule, then the recurrence ``h_t = modReLU(d_t + U h_{t-1}; b)`` step by
        step (``over_time``). The rule runs over all time steps at once (``Rule.drives``), or,
        where only plain torch ops may run (paths.py), step by step inside the loop. ``weights``
        are ``(W, U, None, b)``: the orthogonal ``U`` and the modReLU bias ``b`` (``_weights``)."""
        weight_ih, weight_hh, _, bias, _ = weights
        u = F.linear(x, weight_ih)
        recurrent_t = weight_hh.t()
        stepwise = plain_ops_required()
        fields = self.rule_type.state_fields if stepwise else ()
        if stepwise:
            inputs = (u, step_indices(steps, x.size(0), mask, per_sequence=True))
        else:
            drives, rules = self.rule.drives(u, rules, hp, steps, mask)
            inputs = (drives,)
        inputs += () if mask is None else (mask,)

        def step(carry, inputs):
            keep = inputs[-1] if mask is not None else None
            h, step_rules = carry[0], dict(zip(fields, carry[1:]))
            drive, new_rules = self.rule.drive(inputs[0], step_rules, hp, inputs[1]) if stepwise else (inputs[0], {})
            (new_h,) = self.recurrence.activate(torch.addmm(drive, h, recurrent_t), (h,), bias)
            h, step_rules = masked(keep, new_h, h), masked(keep, new_rules, step_rules)
            return (h, *(step_rules[f] for f in fields)), h

        carry, outputs = over_time(step, (state[0], *(rules[f] for f in fields)), inputs)
        return outputs, (carry[0],), dict(zip(fields, carry[1:])) if stepwise else rules

    def _run_triton_loop(self, x, weights, hp, state, rules, steps, mask, lengths, carried, wanted):
        """The drives as on the reference path, then ``h_t = modReLU(d_t + U h_{t-1}; b)`` in one
        GEMM and one Triton kernel a step, forward and backward (``momentumrnn.triton_loop``)."""
        weight_ih, weight_hh, _, bias, _ = weights
        check_device(x, parametrize.type_before_parametrizations(self).__name__, cpu_impl="reference")
        drives, rules = self.rule.drives(F.linear(x, weight_ih), rules, hp, steps, mask)
        output, h_n = modrelu_rnn(drives, state[0], weight_hh, bias, mask)
        return output, (h_n,), rules

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        if self.impl != "auto":
            s += f", impl={self.impl!r}"
        if self.base_change_gradient != "clean":
            s += f", base_change_gradient={self.base_change_gradient!r}"
        return ", ".join(part for part in (s, f"trivialization={self.trivialization}", self._rule_repr().lstrip(", "))
                         if part)


class MomentumOrthogonalRNN(OrthogonalRNN):
    """The paper's MomentumDTRIV: ``v_t = mu v_{t-1} + s W x_t``; ``h_t = modReLU(U h_{t-1} + v_t)``.
    Defaults mu 0.6, s 0.9 (the authors' permuted-MNIST setting at H = 170)."""
    rule_type = MomentumRule
    orthogonal_defaults = {"momentum": 0.6, "step_size": 0.9}

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, batch_first: bool = False,
                     dropout: float = 0.0, bidirectional: bool = False, device: torch.device | str | int | None = None,
                     dtype: torch.dtype | None = None, trivialization: int | float = math.inf, init: str = "cayley",
                     learnable: bool = False, impl: str = "auto", base_change_gradient: str = "clean",
                     momentum: float = 0.6, step_size: float = 0.9) -> None: ...


class AdamOrthogonalRNN(OrthogonalRNN):
    """Adam rule (``AdamRule``) on ``W x_t``: ``d_t = v_t / sqrt(m_t + 1e-16)``."""
    rule_type = AdamRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, batch_first: bool = False,
                     dropout: float = 0.0, bidirectional: bool = False, device: torch.device | str | int | None = None,
                     dtype: torch.dtype | None = None, trivialization: int | float = math.inf, init: str = "cayley",
                     learnable: bool = False, impl: str = "auto", base_change_gradient: str = "clean",
                     momentum: float = 0.6, step_size: float = 0.6, beta: float = 0.1) -> None: ...


class RMSPropOrthogonalRNN(OrthogonalRNN):
    """RMSProp rule (``RMSPropRule``, Adam with mu = 0) on ``W x_t``."""
    rule_type = RMSPropRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, batch_first: bool = False,
                     dropout: float = 0.0, bidirectional: bool = False, device: torch.device | str | int | None = None,
                     dtype: torch.dtype | None = None, trivialization: int | float = math.inf, init: str = "cayley",
                     learnable: bool = False, impl: str = "auto", base_change_gradient: str = "clean",
                     step_size: float = 0.6, beta: float = 0.9) -> None: ...


class RestartOrthogonalRNN(OrthogonalRNN):
    """The authors' NesterovDTRIV: input-only restarted momentum (``RestartRule``),
    ``v_t = ((k'-1)/(k'+2)) v_{t-1} + s W x_t``."""
    rule_type = RestartRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, batch_first: bool = False,
                     dropout: float = 0.0, bidirectional: bool = False, device: torch.device | str | int | None = None,
                     dtype: torch.dtype | None = None, trivialization: int | float = math.inf, init: str = "cayley",
                     learnable: bool = False, impl: str = "auto", base_change_gradient: str = "clean",
                     step_size: float = 1.0, restart: int = 2) -> None: ...


#: The orthogonal layers by rule name, e.g. ``ORTHOGONAL_LAYERS["momentum"] is MomentumOrthogonalRNN``.
ORTHOGONAL_LAYERS = {c.rule_type.name: c for c in (OrthogonalRNN, MomentumOrthogonalRNN, AdamOrthogonalRNN,
                                                   RMSPropOrthogonalRNN, RestartOrthogonalRNN)}


# ------------------------------------------------------------------ helpers
class ParameterGroups(NamedTuple):
    """A model's parameters split for the two-optimizer recipe."""

    orthogonal: list[nn.Parameter]
    other: list[nn.Parameter]


def _orthogonal_layers(model: nn.Module) -> list[OrthogonalRNN]:
    return [m for m in model.modules() if isinstance(m, OrthogonalRNN)]


def split_orthogonal_parameters(model: nn.Module) -> ParameterGroups:
    """Split ``model.parameters()`` into the tensors behind the orthogonal matrices of its
    orthogonal layers and everything else (``W``, modReLU biases, learnable
    hyperparameters, other modules)::

        orth, other = split_orthogonal_parameters(model)
        optimizer = torch.optim.RMSprop(other, lr=7e-4)
        optimizer_orth = torch.optim.RMSprop(orth, lr=2e-4)
    """
    layers = _orthogonal_layers(model)
    if not layers:
        raise ValueError(f"split_orthogonal_parameters: {type(model).__name__} contains no orthogonal layer "
                         f"(one of {sorted(c.__name__ for c in ORTHOGONAL_LAYERS.values())})")
    orth = {id(p): p for layer in layers for p in layer.orthogonal_parameters()}
    other = [p for p in model.parameters() if id(p) not in orth]
    return ParameterGroups(list(orth.values()), other)


def trivialization_step(model: nn.Module) -> int:
    """``trivialization_step()`` on every orthogonal layer of ``model`` (call it after each
    optimizer step); returns how many layers changed their base."""
    return sum(layer.trivialization_step() for layer in _orthogonal_layers(model))


def register_trivialization(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Call ``trivialization_step(model)`` after every ``optimizer.step()`` (a step post
    hook; register it on one optimizer only, normally the one for the orthogonal
    parameters). Returns the hook's handle (``handle.remove()`` undoes it)."""
    if not _orthogonal_layers(model):
        raise ValueError(f"register_trivialization: {type(model).__name__} contains no orthogonal layer")
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: trivialization_step(model))
