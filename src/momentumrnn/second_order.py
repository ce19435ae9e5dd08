"""Second derivatives and batched gradients on every path: recomputed on the reference path.

The fast paths' hand-written backward passes compute first derivatives. A layer call that
records gradients on a fast path therefore passes its outputs through one more autograd
node (``_Switch``), whose inputs are both the outputs of the call's own graph and the call's
arguments and parameters. A plain backward goes through the switch to the call's graph,
at the cost of one pass-through node. When the backward must itself be differentiable
(``create_graph=True``: second derivatives, Hessian-vector products, gradient penalties) or
its gradients come batched (``autograd.grad(..., is_grads_batched=True)``), the switch
instead recomputes the call on the reference path (plain torch ops: twice differentiable
and batchable) from its arguments, under the forward's autocast and random state (the same
dropout masks), and sends the gradients of that to the arguments and parameters directly.
Only those backward passes pay for the recomputation.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .paths import plain_ops, plain_ops_required

__all__ = ["differentiable_twice", "flatten_tensors"]


def differentiable_twice(module, forward, *args):
    """``forward(*args)``, a layer's call, with second derivatives and batched gradients on
    every path. Calls without gradients, calls under a tool that needs plain ops (where the
    call takes the reference path) and calls on a reference path in plain ops run
    ``forward`` as it is."""
    if (not torch.is_grad_enabled() or plain_ops_required()
            or (module.path == "reference" and module._reference_is_plain)):
        return forward(*args)
    arguments, rebuild_arguments = flatten_tensors(args)
    parameters = list(module.parameters())
    if not any(t.requires_grad for t in (*arguments, *parameters)):
        return forward(*args)
    call = _Call(module, forward, rebuild_arguments, len(arguments))           # before the forward draws
    outputs, rebuild_result = flatten_tensors(forward(*args))
    switched = call.switched = [i for i, t in enumerate(outputs) if t.requires_grad]
    through = _Switch.apply(call, len(switched), *(outputs[i] for i in switched), *arguments, *parameters)
    for i, tensor in zip(switched, through):
        outputs[i] = tensor
    return rebuild_result(outputs)


def flatten_tensors(value):
    """The tensors in ``value`` (a tensor, None, or a tuple, NamedTuple, PackedSequence, list
    or dict of these), in order, and a function that rebuilds ``value`` from replacements for
    them."""
    if isinstance(value, Tensor):
        return [value], lambda tensors: tensors[0]
    if isinstance(value, dict):
        found, rebuild_values = flatten_tensors(tuple(value.values()))
        return found, lambda tensors: dict(zip(value, rebuild_values(tensors)))
    if not isinstance(value, (tuple, list)):
        return [], lambda tensors: value
    parts = [flatten_tensors(item) for item in value]

    def rebuild(tensors):
        items, start = [], 0
        for found, build in parts:
            items.append(build(tensors[start:start + len(found)]))
            start += len(found)
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)

    return [t for found, _ in parts for t in found], rebuild


class _Call:
    """One layer call: its forward, how to rebuild its arguments, and the state to recompute
    it in."""

    def __init__(self, module, forward, rebuild_arguments, count):
        self.module, self.forward, self.rebuild_arguments, self.count = module, forward, rebuild_arguments, count
        self.switched: list[int] = []               # which of the call's output tensors pass the switch
        device = next(module.parameters()).device
        self.autocast = (device.type, torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        self.devices = [device] if device.type == "cuda" else []
        self.rng = None
        if module.training and module.dropout > 0:                     # the same masks when recomputed
            self.rng = (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self.devices])

    def recompute(self, arguments):
        """The call's outputs that passed the switch, recomputed in plain ops."""
        device_type, enabled, dtype = self.autocast
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled))
            stack.enter_context(plain_ops())
            stack.enter_context(torch.enable_grad())
            if self.rng is not None:
                stack.enter_context(torch.random.fork_rng(devices=self.devices))
                torch.set_rng_state(self.rng[0])
                for device, state in zip(self.devices, self.rng[1]):
                    torch.cuda.set_rng_state(state, device)
            outputs, _ = flatten_tensors(self.forward(*self.rebuild_arguments(arguments)))
        return [outputs[i] for i in self.switched]


def _batched() -> bool:
    """Whether the backward runs under vmap: ``is_grads_batched=True`` (autograd's own vmap
    mode) or a ``torch.func`` transform."""
    # autograd's vmap mode sets the VmapMode key, which DispatchKey does not name in Python
    return ("VmapMode" in str(torch._C._dispatch_tls_local_include_set())
            or torch._C._functorch.peek_interpreter_stack() is not None)


class _Switch(torch.autograd.Function):
    """The outputs of a call, unchanged. Backward: to the call's own graph, or, for second
    derivatives and batched gradients, to the arguments and parameters through the call
    recomputed on the reference path."""

    @staticmethod
    def forward(ctx, call, count, *tensors):
        ctx.call, ctx.count = call, count
        ctx.wanted = [t.requires_grad for t in tensors[count:]]
        ctx.save_for_backward(*tensors[count:count + call.count])
        return tuple(t.detach() for t in tensors[:count])

    @staticmethod
    def backward(ctx, *grads):
        call, count = ctx.call, ctx.count
        if not (torch.is_grad_enabled() or _batched()):
            return (None, None, *grads, *[None] * len(ctx.wanted))
        # one node per argument (a tensor passed twice, as h and c, gets each gradient once),
        # connected to the argument where the gradients must be differentiable
        separate = (lambda t: t.view_as(t)) if torch.is_grad_enabled() else (lambda t: t.detach().requires_grad_())
        arguments = [separate(t) if t.requires_grad else t for t in ctx.saved_tensors]
        outputs = call.recompute(arguments)
        sources = [t for t, wanted in zip((*arguments, *call.module.parameters()), ctx.wanted) if wanted]
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
        found = iter(torch.autograd.grad([o for o, _ in pairs], sources, [g for _, g in pairs], allow_unused=True,
                                         create_graph=torch.is_grad_enabled())
                     if pairs else [None] * len(sources))
        return (None, None, *[None] * count, *[next(found) if wanted else None for wanted in ctx.wanted])
