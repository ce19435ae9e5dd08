"""One time step of a cell, a base recurrence combined with an optimizer rule, and the
steps of a sequence in order."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .paths import is_exporting
from .recurrences import Recurrence
from .rules import Rule

__all__ = ["cell_step", "over_time"]


def cell_step(recurrence: Recurrence, rule: Rule, hp: dict, u: Tensor, state: tuple[Tensor, ...],
              rule_state: dict[str, Tensor], k: Tensor, weight_hh: Tensor, bias_hh: Tensor | None):
    """Advance one step.

    ``u = W x_t + b_ih`` is the input drive, ``state`` is ``(h,)`` or ``(h, c)``,
    ``k`` (B,) the 1-based index of this step for each sequence.
    With ``r_t = U h_{t-1} + b_hh``: an input-only rule gives ``d_t`` and the cell sees
    ``recurrence.step(d_t, r_t)``; a coupled rule builds the pre-activation from ``u_t``
    and ``r_t`` itself. Returns the new ``state`` and ``rule_state``.
    """
    recurrent = F.linear(state[0], weight_hh, bias_hh)
    if rule.couples_to_hidden:
        pre, rule_state = rule.preactivation(u, recurrent, rule_state, hp, k)
        return recurrence.activate(pre, state), rule_state
    drive, rule_state = rule.drive(u, rule_state, hp, k)
    return recurrence.step(drive, recurrent, state), rule_state


def over_time(step, carry: tuple[Tensor, ...], inputs: tuple[Tensor, ...]):
    """``carry, y_t = step(carry, (x[t] for x in inputs))`` for t = 0 .. T-1 (``inputs``:
    tensors (T, ...)); returns the last ``carry`` and the ``y_t`` stacked (T, ...).

    A Python loop; while exporting (``torch.export``, the ONNX exporter's default mode), torch's
    ``scan``, so that the exported program holds one loop over time (ONNX: one ``Scan``
    node) and takes any sequence length."""
    if is_exporting():
        from torch._higher_order_ops.scan import scan

        def traced(carry, inputs):
            carry, output = step(carry, inputs)
            return carry, output.clone()               # scan's outputs may not alias its carry
        _forget_earlier_scans()
        return scan(traced, carry, inputs)
    outputs = []
    # unbind, not x[t]: the backward of T selects would zero-fill T full-size tensors (O(T^2))
    for inputs_t in zip(*(x.unbind(0) for x in inputs)):
        carry, output = step(carry, inputs_t)
        outputs.append(output)
    return carry, torch.stack(outputs)


def _forget_earlier_scans() -> None:
    """Clear the compile cache of torch's scan loop before an export uses it. ``scan`` compiles
    its loop with dynamo, which caches it by code object; a later export checks the cached
    entries' guards against its own symbolic sizes, and a guard on an earlier export's
    sequence length then fixes the length of the new one (torch 2.13: "You marked T as dynamic
    but your code specialized it"). Where torch names the loop otherwise, nothing is cleared."""
    import importlib
    import types

    module = importlib.import_module("torch._higher_order_ops.scan")
    for code in getattr(getattr(module, "scan", None), "__code__", types.SimpleNamespace(co_consts=())).co_consts:
        if isinstance(code, types.CodeType) and code.co_name == "run_flattened_scan":
            torch._dynamo.reset_code(code)
