"""Argument checks that name the argument, what was expected and what came."""

from __future__ import annotations

import numbers
import sys
import warnings

import torch
from torch import Tensor

__all__ = ["InputError", "InputDtypeError", "EmptyPackedSequenceError", "expect_tensor", "expect_shape", "expect_like", "expect_positive_int",
           "expect_size", "expect_input", "zero_rule_state", "check_hidden", "check_cell_hidden",
           "check_rule_state", "check_packed_sequence", "cell_bias", "stacklevel_outside"]


class InputError(ValueError, RuntimeError):
    """A call argument of the wrong shape, length or device.

    Both a ``ValueError`` and a ``RuntimeError``: torch's RNNs raise ``RuntimeError`` for
    most of these, so code written against them catches ours too.
    """


class InputDtypeError(TypeError, InputError):
    """A call argument whose dtype differs from the module's parameters (torch's RNNs raise
    ``ValueError`` here; this is also a ``TypeError``, a ``RuntimeError`` and an ``InputError``)."""


class EmptyPackedSequenceError(IndexError, InputError):
    """A ``PackedSequence`` without time steps (empty ``batch_sizes``): torch's RNNs raise
    ``IndexError`` there; this is also an ``InputError``."""


def expect_tensor(name: str, value) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def expect_shape(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise InputError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")


def expect_like(name: str, tensor: Tensor, reference: Tensor) -> None:
    """``tensor`` must share the parameters' floating dtype and device."""
    if tensor.dtype != reference.dtype:
        raise InputDtypeError(f"{name} must have dtype {reference.dtype} (the module's parameters), "
                              f"got {tensor.dtype}")
    if tensor.device != reference.device:
        raise InputError(f"{name} must be on device {reference.device} (the module's parameters), got {tensor.device}")


def expect_input(x: Tensor, input_size: int, weight: Tensor | None, cell: bool = False) -> None:
    """A layer's or ``cell``'s input: ``input_size`` features (in torch's words for each), and
    unless ``weight`` is None (the cells check it after the hidden state, as torch) the
    weights' dtype and device."""
    if x.size(-1) != input_size:
        if cell:
            raise InputError(f"input has inconsistent input_size: got {x.size(-1)} expected {input_size}")
        raise InputError(f"input.size(-1) must be equal to input_size. Expected {input_size}, got {x.size(-1)}")
    if weight is None:
        return
    if x.dtype != weight.dtype:                                             # torch's layers' words
        raise InputDtypeError(f"RNN input dtype ({x.dtype}) does not match weight dtype ({weight.dtype}). Convert "
                              f"input: input.to({weight.dtype}), or convert model: model.to({x.dtype})")
    expect_like("input", x, weight)


def cell_bias(cell: str, bias) -> bool:
    """A cell's ``bias`` argument as torch's cells take it, by its truth value; one that is
    not a bool is taken so with a warning, since it usually is a misplaced argument
    (``RNNCell(10, 20, "relu")`` sets ``bias="relu"``, that is True, and keeps tanh)."""
    if isinstance(bias, bool):
        return bias
    taken = bool(bias)
    hint = " (an RNN cell takes its nonlinearity as nonlinearity=)" if isinstance(bias, str) and "RNN" in cell else ""
    warnings.warn(f"{cell}: bias={bias!r} is not a bool; taken as bias={taken}, as torch's cells take it{hint}",
                  stacklevel=stacklevel_outside(("momentumrnn",)))
    return taken


def stacklevel_outside(modules: tuple[str, ...]) -> int:
    """The ``stacklevel`` with which the function calling this one warns at the first caller
    whose module's name does not start with one of ``modules`` (the user's line)."""
    frame, level = sys._getframe(2), 2
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(modules):
        frame, level = frame.f_back, level + 1
    return level


def expect_positive_int(name: str, value) -> int:
    return expect_size(name, value, minimum=1)


def expect_size(name: str, value, minimum: int = 0) -> int:
    """An int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__} ({value!r})")   # torch's words
    if value < minimum:
        bound = "greater than zero" if minimum == 1 else f">= {minimum}"      # torch's words for > 0
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def zero_rule_state(fields: tuple[str, ...], shape: tuple[int, ...], steps_shape: tuple[int, ...],
                    like: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Zero rule-state tensors of ``shape`` for ``fields`` and a zero step counter."""
    state = {field: like.new_zeros(shape) for field in fields}
    return state, torch.zeros(steps_shape, dtype=torch.long, device=like.device)


def _state_tensors(hx, state_tensors: int) -> tuple[tuple[str, ...], tuple]:
    """``hx`` as a tuple with its names: ``(h,)`` or, for an LSTM, the pair ``(h, c)``."""
    if state_tensors == 2:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"hx must be a tuple (h_0, c_0) for an LSTM, got {type(hx).__name__}")
        return ("h_0", "c_0"), tuple(hx)
    return ("hx",), (hx,)


def check_hidden(hx, state_tensors: int, shape: tuple[int, ...], like: Tensor,
                 cell_shape: tuple[int, ...] | None = None) -> tuple[Tensor, ...]:
    """Validate ``hx``: a tensor ``h`` (RNN, GRU) or a tuple ``(h, c)`` (LSTM) of ``shape``
    (``c`` of ``cell_shape`` where given: LSTM projections make ``h`` narrower)."""
    names, hx = _state_tensors(hx, state_tensors)
    for index, (name, tensor, expected) in enumerate(zip(names, hx, (shape, cell_shape or shape))):
        expect_tensor(name, tensor)
        if tuple(tensor.shape) != tuple(expected):                   # torch's words, then our name
            which = f"hidden[{index}]" if state_tensors == 2 else "hidden"
            raise InputError(f"Expected {which} size {tuple(expected)}, got {list(tensor.shape)} ({name})")
        expect_like(name, tensor, like)
    return tuple(hx)


def check_cell_hidden(hx, state_tensors: int, batch: int | None, hidden_size: int, like: Tensor,
                      cell_name: str) -> tuple[Tensor, ...]:
    """Validate a cell's ``hx`` (``h``, or ``(h, c)`` for the LSTM cell) for ``batch``
    sequences (None: unbatched) of ``hidden_size``: its rank, batch size and hidden size in
    the words of torch's cells, then dtype and device."""
    names, hx = _state_tensors(hx, state_tensors)
    shape = (hidden_size,) if batch is None else (batch, hidden_size)
    for index, (name, tensor) in enumerate(zip(names, hx)):
        expect_tensor(name, tensor)
        if tensor.dim() not in (1, 2):
            which = f"hx[{index}]" if state_tensors == 2 else "hidden"
            raise InputError(f"{cell_name}: Expected {which} to be 1D or 2D, got {tensor.dim()}D instead")
        if tensor.dim() != len(shape):
            expect_shape(name, tensor, shape)
        if batch is not None and tensor.size(0) != batch:
            raise InputError(f"Input batch size {batch} doesn't match hidden{index} batch size {tensor.size(0)}")
        if tensor.size(-1) != hidden_size:
            raise InputError(f"hidden{index} has inconsistent hidden_size: got {tensor.size(-1)}, "
                             f"expected {hidden_size}")
    for name, tensor in zip(names, hx):
        expect_like(name, tensor, like)
    return tuple(hx)


def check_rule_state(rule_state, fields: tuple[str, ...], shape: tuple[int, ...],
                     steps_shape: tuple[int, ...], like: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Validate a carried ``RuleState``; return its tensors as a dict and the step counter."""
    from .state import NAMED_FIELDS, RuleState

    if not isinstance(rule_state, RuleState):
        raise TypeError(f"rule_state must be a momentumrnn.RuleState, got {type(rule_state).__name__}")
    extra = rule_state.extra
    if extra is not None and not (isinstance(extra, dict) and all(isinstance(k, str) for k in extra)):
        raise TypeError(f"rule_state.extra must be None or a dict of tensors by field name, got {type(extra).__name__}")
    given = rule_state.fields()
    for field in given:
        if field not in fields:
            where = f"rule_state.{field}" if field in NAMED_FIELDS else f"rule_state.extra[{field!r}]"
            raise InputError(f"{where} must be None for this rule (its state fields: {', '.join(fields) or 'none'}), "
                             f"got a tensor")
    state = {}
    for field in fields:
        tensor = given.get(field)
        expect_tensor(f"rule_state.{field}", tensor)
        expect_shape(f"rule_state.{field}", tensor, shape)
        expect_like(f"rule_state.{field}", tensor, like)
        state[field] = tensor
    steps = expect_tensor("rule_state.steps", rule_state.steps)
    expect_shape("rule_state.steps", steps, steps_shape)
    if steps.dtype != torch.long:
        raise InputDtypeError(f"rule_state.steps must have dtype torch.int64, got {steps.dtype}")
    if steps.device != like.device:
        raise InputError(f"rule_state.steps must be on device {like.device}, got {steps.device}")
    return state, steps


def check_packed_sequence(packed) -> None:
    """A ``PackedSequence`` as ``pack_padded_sequence`` makes it, checked before anything
    unpacks it (a malformed one makes torch's unpacking write out of bounds): ``data`` 2-D;
    ``batch_sizes`` a non-empty 1-D CPU int64 tensor, positive (all zero only for a batch of
    no sequences), non-increasing and summing to ``data.size(0)``; ``sorted_indices`` and
    ``unsorted_indices`` both None, or inverse permutations of the batch on ``data``'s device.
    A fixed number of tensor ops, whatever the lengths."""
    data = expect_tensor("PackedSequence.data", packed.data)
    batch_sizes = expect_tensor("PackedSequence.batch_sizes", packed.batch_sizes)
    if batch_sizes.dim() != 1 or batch_sizes.dtype != torch.long or batch_sizes.device.type != "cpu":
        raise InputError(f"PackedSequence.batch_sizes must be a 1-D CPU int64 tensor, got a {batch_sizes.dim()}-D "
                         f"{batch_sizes.device.type} {batch_sizes.dtype} tensor")
    if batch_sizes.numel() == 0:
        raise EmptyPackedSequenceError("PackedSequence.batch_sizes is empty: the packed input has no time steps")
    if data.dim() != 2:
        raise InputError(f"PackedSequence.data must be 2-D (the steps of all sequences, input_size), got shape "
                         f"{tuple(data.shape)}")
    first, last = int(batch_sizes[0]), int(batch_sizes[-1])
    increases = bool((batch_sizes[1:] > batch_sizes[:-1]).any())
    if increases or last < 0 or (last == 0 and first != 0):          # all zero: a batch of no sequences
        _explain_batch_sizes(batch_sizes)
    total = int(batch_sizes.sum())
    if total != data.size(0):
        raise InputError(f"PackedSequence.batch_sizes must sum to data.size(0) = {data.size(0)} (one row per step "
                         f"of each sequence), got {total}")
    _check_packed_indices(packed.sorted_indices, packed.unsorted_indices, first, data.device)


def _explain_batch_sizes(batch_sizes: Tensor) -> None:
    """Raise the error that names what is wrong with ``batch_sizes``: an entry that is not
    positive (unless all are zero), else the first increase."""
    not_positive = batch_sizes <= 0 if int(batch_sizes[0]) > 0 else batch_sizes != 0
    if bool(not_positive.any()):
        step = int(not_positive.nonzero()[0])
        raise InputError(f"PackedSequence.batch_sizes must be positive (all zero only for a batch of no sequences), "
                         f"got batch_sizes[{step}] = {int(batch_sizes[step])}")
    step = int((batch_sizes[1:] > batch_sizes[:-1]).nonzero()[0])
    raise InputError(f"PackedSequence.batch_sizes must be non-increasing (the sequences sorted by decreasing length), "
                     f"got batch_sizes[{step}] = {int(batch_sizes[step])} < batch_sizes[{step + 1}] = "
                     f"{int(batch_sizes[step + 1])}")


def _check_packed_indices(sorted_indices, unsorted_indices, batch: int, device: torch.device) -> None:
    """``sorted_indices`` and ``unsorted_indices`` of a ``PackedSequence`` of ``batch``
    sequences: both None, or 1-D int64 tensors on ``device``, a permutation and its inverse."""
    if sorted_indices is None and unsorted_indices is None:
        return
    if sorted_indices is None or unsorted_indices is None:
        raise InputError(f"PackedSequence.sorted_indices and unsorted_indices must be both None or both tensors, "
                         f"got {type(sorted_indices).__name__} and {type(unsorted_indices).__name__}")
    for name, indices in (("sorted_indices", sorted_indices), ("unsorted_indices", unsorted_indices)):
        expect_tensor(f"PackedSequence.{name}", indices)
        if indices.shape != (batch,) or indices.dtype != torch.long or indices.device != device:
            raise InputError(f"PackedSequence.{name} must be an int64 tensor of shape ({batch},) (batch_sizes[0] "
                             f"sequences) on {device} (data's device), got a {indices.dtype} tensor of shape "
                             f"{tuple(indices.shape)} on {indices.device}")
    if batch == 0:
        return
    low, high = torch.aminmax(sorted_indices)
    if not (0 <= int(low) and int(high) < batch and torch.equal(unsorted_indices.index_select(0, sorted_indices),
                                                                torch.arange(batch, device=device))):
        raise InputError(f"PackedSequence.sorted_indices must be a permutation of range({batch}) and "
                         f"unsorted_indices its inverse, got {_preview(sorted_indices)} and {_preview(unsorted_indices)}")


def _preview(tensor: Tensor, count: int = 8) -> str:
    """The first ``count`` values of a 1-D tensor, for a message."""
    values = ", ".join(str(v) for v in tensor[:count].tolist())
    return f"[{values}{', ...' if tensor.numel() > count else ''}]"
