"""Decorators of the library's hand-written autograd Functions (the fast paths' forward
and backward passes, the parallel scans, the Triton kernels): ``unmaterialized`` on the
forward and ``first_order`` on the backward. Together they give a backward the outputs
that received no gradient, and refuse what an in-place hand-written backward cannot do
(double backward, batched gradients) with a message naming what supports it."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["first_order", "unmaterialized"]


def unmaterialized(forward):
    """Decorate the ``forward`` of a Function whose backward is ``first_order``: the backward
    learns which outputs received no gradient (None instead of zeros), so that a backward
    that reaches it with none at all, as second derivatives do through
    ``momentumrnn.second_order``, returns at once. ``first_order`` gives the backward zeros
    for the others, as autograd would."""
    @functools.wraps(forward)
    def recorded(ctx, *args):
        ctx.set_materialize_grads(False)
        outputs = forward(ctx, *args)
        listed = outputs if isinstance(outputs, tuple) else (outputs,)
        ctx.first_order = (len(args), [(o.shape, o.dtype, o.device) if isinstance(o, Tensor) else None for o in listed])
        return outputs
    return recorded


def first_order(backward):
    """Decorate a hand-written ``backward``: refuse double backward (``create_graph=True``)
    instead of returning gradients that silently carry no graph, and batched gradients
    (``is_grads_batched=True``), which these in-place backward passes cannot run, naming what
    supports them. The layers never ask them for either: they recompute such calls in plain
    ops (``momentumrnn.second_order``). The backward runs with autocast off (see
    ``momentumrnn.autocast``)."""
    @functools.wraps(backward)
    def checked(ctx, *grads):
        inputs, outputs = ctx.first_order
        if all(g is None for g in grads):
            return (None,) * inputs
        grads = tuple(torch.zeros(o[0], dtype=o[1], device=o[2]) if g is None and o is not None else g
                      for g, o in zip(grads, outputs))
        if torch.is_grad_enabled():
            raise RuntimeError("momentumrnn's fast paths and parallel scans compute first derivatives only: "
                               "double backward (create_graph=True) is not supported. " + _REFERENCE_HINT)
        device_type = next((g.device.type for g in grads if isinstance(g, Tensor)), "cpu")
        try:
            # in the forward's dtype, whatever autocast region the backward is called from
            with torch.autocast(device_type, enabled=False):
                return backward(ctx, *grads)
        except RuntimeError as error:
            if "Batching rule not implemented" not in str(error):
                raise
            raise RuntimeError("momentumrnn's fast paths and parallel scans cannot compute batched gradients "
                               "(torch.autograd.grad with is_grads_batched=True). " + _REFERENCE_HINT) from error
    return checked


_REFERENCE_HINT = ("The layers support it on every path (they recompute the call in plain torch ops for "
                   "it); called directly, linear_scan supports it with method='sequential' or 'matmul', which "
                   "run in plain torch ops")
