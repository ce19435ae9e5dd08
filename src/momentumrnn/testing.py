"""Checks for code written against the library: ``check_rule`` tests a ``Rule`` subclass
against the contract every rule of the library keeps.

    from momentumrnn.testing import check_rule
    check_rule(MyRule)                  # raises AssertionError naming the first broken promise

What it checks, in float64 on the CPU, at small sizes:

1. the declarations: ``name``, ``defaults`` (valid by ``Rule.validate``), ``learnable`` and
   ``neutral`` naming hyperparameters of ``defaults``, ``state_fields`` (names the layers
   carry across calls in ``RuleState``), and ``commutes_with_input_weights`` only with
   ``parallel`` and a single ``velocity`` field;
2. one step (``drive``, or ``preactivation`` for a rule coupled to h): shapes, dtypes, and
   the state fields it returns;
3. masked steps hold the state (``drives_stepwise``), and a rule declared ``parallel``
   gives, through ``state_coefficients``/``state_inputs``/``drive_from_state``, what its
   step gives (``drives`` against ``drives_stepwise``, with and without a mask, to 1e-10);
4. gradients: ``torch.autograd.gradcheck`` of the drives with respect to the input drive
   and the initial state;
5. in a layer (an LSTM, or ``recurrence``): every path the rule's capabilities allow on the
   CPU, ``impl="auto"`` included, equals the reference path on packed sequences of several
   lengths, two layers, both directions and a carried rule state, values and gradients.
"""

from __future__ import annotations

import numbers

import torch

from .hyperparameters import learnable_range
from .paths import allowed_paths
from .recurrences import LSTMRecurrence, Recurrence
from .rules import Rule
from .state import NAMED_FIELDS, RuleState

__all__ = ["check_rule"]

TOLERANCE = 1e-10


def check_rule(rule_type: type[Rule], recurrence: type[Recurrence] = LSTMRecurrence, *, seed: int = 0) -> None:
    """Raise ``AssertionError`` naming the problem where ``rule_type`` breaks the contract
    of a rule (module docstring); return None when it keeps it."""
    name = getattr(rule_type, "__name__", repr(rule_type))
    _check_declarations(rule_type, name)
    generator = torch.Generator().manual_seed(seed)
    rule, hp = rule_type(), rule_type.validate({}, torch.float64)
    batch, gates, time = 3, recurrence.gates * 2, 5
    u = torch.randn(time, batch, gates, dtype=torch.float64, generator=generator)
    state = {f: 0.1 * torch.rand(batch, gates, dtype=torch.float64, generator=generator)
             for f in rule_type.state_fields}
    steps = torch.tensor([0, 2, 5])
    mask = torch.ones(time, batch, dtype=torch.bool)
    mask[3:, 1], mask[:, 2] = False, False
    if rule_type.couples_to_hidden:
        _check_coupled_step(rule, hp, u[0], state, name)
    else:
        _check_step(rule, hp, u[0], state, steps, name)
        _check_masked_steps(rule, hp, u, state, steps, mask, name)
        if rule_type.parallel:
            _check_parallel_form(rule, hp, u, state, steps, mask, name)
        _check_gradients(rule, hp, u, state, steps, mask, name)
    _check_in_layers(rule_type, recurrence, name, generator)


def _check_declarations(rule_type, name: str) -> None:
    assert isinstance(rule_type, type) and issubclass(rule_type, Rule), f"{name} is not a subclass of Rule"
    assert isinstance(getattr(rule_type, "name", None), str) and rule_type.name, f"{name}.name must be a string"
    defaults = getattr(rule_type, "defaults", None)
    assert isinstance(defaults, dict) and all(isinstance(k, str) for k in defaults), \
        f"{name}.defaults must map hyperparameter names to numbers"
    assert all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in defaults.values()), \
        f"{name}.defaults must map hyperparameter names to numbers, got {defaults}"
    try:
        rule_type.validate({}, torch.float64)
    except (TypeError, ValueError) as error:
        raise AssertionError(f"{name}.defaults are not valid hyperparameters: {error}") from None
    learnable = getattr(rule_type, "learnable", None)
    assert isinstance(learnable, tuple) and set(learnable) <= set(defaults), \
        f"{name}.learnable must be a tuple of names in defaults, got {learnable!r}"
    for hyperparameter in learnable:
        try:
            learnable_range(rule_type, hyperparameter)
        except ValueError as error:
            raise AssertionError(str(error)) from None
    assert rule_type.neutral is None or set(rule_type.neutral) <= set(defaults), \
        f"{name}.neutral must name hyperparameters of defaults, got {rule_type.neutral!r}"
    fields = rule_type.state_fields
    assert isinstance(fields, tuple) and all(isinstance(f, str) for f in fields), \
        f"{name}.state_fields must be a tuple of names, got {fields!r}"
    taken = [f for f in fields if not f.isidentifier() or (hasattr(RuleState, f) and f not in NAMED_FIELDS)]
    assert not taken and len(set(fields)) == len(fields), \
        (f"{name}.state_fields {fields!r}: each field needs a distinct identifier that is not an attribute of "
         f"RuleState {taken or ''}".rstrip())
    if rule_type.commutes_with_input_weights:
        assert rule_type.parallel and fields == ("velocity",) and not rule_type.couples_to_hidden, \
            (f"{name}.commutes_with_input_weights needs parallel = True, state_fields = ('velocity',) and a drive "
             f"that is the velocity with input term s * u_t")
    assert not (rule_type.couples_to_hidden and rule_type.parallel), \
        f"{name}: a rule coupled to h cannot be parallel over time"


def _check_step(rule, hp, u, state, steps, name: str) -> None:
    try:
        drive, new = rule.drive(u, state, hp, steps + 1)
    except NotImplementedError:
        raise AssertionError(f"{name} implements neither drive() nor couples_to_hidden = True") from None
    assert isinstance(drive, torch.Tensor) and drive.shape == u.shape and drive.dtype == u.dtype, \
        f"{name}.drive must return a drive shaped and typed as u {tuple(u.shape)} {u.dtype}, got " \
        f"{getattr(drive, 'shape', drive)} {getattr(drive, 'dtype', '')}"
    _check_fields(new, state, name, "drive")


def _check_coupled_step(rule, hp, u, state, name: str) -> None:
    recurrent = torch.randn_like(u)
    try:
        pre, new = rule.preactivation(u, recurrent, state, hp, torch.ones(u.size(0), dtype=torch.long))
    except NotImplementedError:
        raise AssertionError(f"{name} has couples_to_hidden = True but no preactivation()") from None
    assert pre.shape == u.shape and pre.dtype == u.dtype, \
        f"{name}.preactivation must return a pre-activation shaped as u {tuple(u.shape)}, got {tuple(pre.shape)}"
    _check_fields(new, state, name, "preactivation")


def _check_fields(new, state, name: str, method: str) -> None:
    assert isinstance(new, dict) and set(new) == set(state), \
        f"{name}.{method} must return the state fields {sorted(state)}, got {sorted(new) if isinstance(new, dict) else new}"
    for field, value in new.items():
        assert value.shape == state[field].shape and value.dtype == state[field].dtype, \
            f"{name}.{method}: state field {field!r} changed shape or dtype ({tuple(state[field].shape)} -> " \
            f"{tuple(value.shape)}, {value.dtype})"


def _check_masked_steps(rule, hp, u, state, steps, mask, name: str) -> None:
    _, final = rule.drives_stepwise(u, state, hp, steps, mask)
    for field in state:
        assert torch.equal(final[field][2], state[field][2]), \
            f"{name}: a sequence whose steps are all masked changed its state field {field!r}"


def _check_parallel_form(rule, hp, u, state, steps, mask, name: str) -> None:
    for where, given in (("without a mask", None), ("with a mask", mask)):
        expected, expected_state = rule.drives_stepwise(u, state, hp, steps, given)
        try:
            drives, final = rule.drives(u, state, hp, steps, given)
        except NotImplementedError as error:
            raise AssertionError(f"{name} has parallel = True but does not implement {error or 'its linear form'} "
                                 f"(state_coefficients, state_inputs, drive_from_state)") from None
        error = (drives - expected).abs().max().item()
        assert error <= TOLERANCE, (f"{name}'s parallel form (state_coefficients, state_inputs, drive_from_state) "
                                    f"disagrees with its step (drive) {where}: max difference {error:.3g}")
        for field in state:
            error = (final[field] - expected_state[field]).abs().max().item()
            assert error <= TOLERANCE, f"{name}'s parallel form gives another final {field!r} {where} ({error:.3g})"


def _check_gradients(rule, hp, u, state, steps, mask, name: str) -> None:
    fields = list(state)

    def drives(u, *initial):
        return rule.drives(u, dict(zip(fields, initial)), hp, steps, mask[:u.size(0)])[0]

    inputs = (u[:3].clone().requires_grad_(), *(state[f].clone().requires_grad_() for f in fields))
    try:
        ok = torch.autograd.gradcheck(lambda u, *initial: drives(u, *initial), inputs, raise_exception=False)
    except RuntimeError as error:
        raise AssertionError(f"{name}: the drives cannot be differentiated: {error}") from None
    assert ok, f"{name}: the gradient of its drives disagrees with finite differences (gradcheck)"


def _check_in_layers(rule_type, recurrence, name: str, generator) -> None:
    from torch.nn.utils.rnn import pack_padded_sequence

    from .layers import RecurrentLayer

    layer_type = type(f"{name}Layer", (RecurrentLayer,), {"recurrence_type": recurrence, "rule_type": rule_type})
    paths = ["auto"] + allowed_paths(rule_type, recurrence=recurrence.name)
    paths = [p for p in paths if p != "triton-loop"]                  # CUDA only
    x = torch.randn(6, 3, 2, dtype=torch.float64, generator=generator)
    lengths = [6, 4, 2]
    stacks, width = 4, recurrence.gates * 3
    carried = RuleState.of({f: 0.1 * torch.rand(stacks, 3, width, dtype=torch.float64, generator=generator)
                            for f in rule_type.state_fields}, torch.tensor([0, 3, 1]))
    results = {}
    for path in ["reference"] + [p for p in paths if p != "reference"]:
        torch.manual_seed(0)
        layer = layer_type(2, 3, num_layers=2, bidirectional=True, impl=path, dtype=torch.float64)
        try:
            output, _, state = layer(pack_padded_sequence(x, lengths), rule_state=carried, return_rule_state=True)
            output.data.square().sum().backward()
        except Exception as error:                                    # what a user would meet
            raise AssertionError(f"{name} in a layer on impl={path!r} fails: {type(error).__name__}: {error}") \
                from None
        results[path] = (output.data, [getattr(state, f) for f in rule_type.state_fields],
                         [p.grad for p in layer.parameters()])
    reference = results.pop("reference")
    for path, (output, fields, grads) in results.items():
        error = (output - reference[0]).abs().max().item()
        assert error <= TOLERANCE, f"{name} in a layer: impl={path!r} differs from the reference by {error:.3g}"
        for field, value, expected in zip(rule_type.state_fields, fields, reference[1]):
            assert value is not None and (value - expected).abs().max().item() <= TOLERANCE, \
                f"{name} in a layer: impl={path!r} returns another final {field!r} than the reference"
        for grad, expected in zip(grads, reference[2]):
            assert (grad - expected).abs().max().item() <= 1e-8, \
                f"{name} in a layer: impl={path!r} gives other gradients than the reference"
