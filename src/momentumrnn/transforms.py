"""How a layer meets ``torch.func``'s transforms: on its fast path, under one ``grad`` or one ``vmap``.

Under one ``torch.func.grad`` (or ``grad_and_value``, ``vjp``, ``jacrev``) or one ``vmap``, a
layer call is one ``torch.autograd.Function`` written the way ``torch.func`` requires
(``setup_context``, ``vmap``). Its forward runs at the level below the transform, where the
layer is plain eager code: it runs the layer op of ``momentumrnn.compiled`` (the layer's
forward on its fast path, with the parameters it was given, its autograd graph kept), and
its backward runs the kept graph backward. The gradients are those of ``loss.backward()`` on
the same path. A backward that comes batched (``jacrev``, ``vmap`` of a ``vjp``) runs the kept
graph once per batch entry. Under ``vmap`` the mapped dimension joins the batch of one call
where the parameters are shared; mapped parameters (an ensemble) make one call per entry.
Mapped buffers (an ensemble of orthogonal layers, whose ``base`` is a buffer) take the
reference path.

Where the call needs more than one transform (``vmap`` of ``grad`` for per-sample gradients,
Hessians, a second ``grad``), forward mode (``jvp``), or dropout under ``vmap`` (whose
randomness ``vmap`` governs), it takes the reference path instead, in plain torch ops that
every transform sees through (``paths.plain_ops_required``). So does packed input, which the
op does not take.
"""

from __future__ import annotations

import torch

from .compiled import _call, _layer, _plain, keep_for_backward, kept_backward, layer_backward, layer_call

__all__ = ["runs_below", "transformed_call"]


def _only_transform():
    """The one ``torch.func`` transform in force (its type), or None (none, or several)."""
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    interpreters = retrieve_all_functorch_interpreters()
    return interpreters[0].key() if len(interpreters) == 1 else None


def runs_below(module, input, hx, rule_state) -> bool:
    """Whether this call runs below the transform, on the layer's path: under one gradient
    transform or one ``vmap`` (not with dropout in training, whose randomness ``vmap``
    governs), with tensor input and state (packed input takes the reference path). Buffers
    that the transform wraps (an orthogonal layer's ``base``, mapped in an ensemble from
    ``torch.func.functional_call``) are not among the op's arguments, so such a call takes the
    reference path, in plain torch ops that the transform sees through."""
    if any(torch._C._functorch.is_functorch_wrapped_tensor(buffer) for buffer in module.buffers()):
        return False
    only = _only_transform()
    if only == torch._C._functorch.TransformType.Vmap:
        if module.training and module.dropout > 0:
            return False
    elif only != torch._C._functorch.TransformType.Grad:
        return False
    return _plain(module, input, hx, rule_state)


def transformed_call(module, input, hx, rule_state, return_rule_state):
    """A layer's call under one ``torch.func.grad`` or ``vmap``: ``_Transformed`` around the layer op."""
    return _call(module, input, hx, rule_state=rule_state, return_rule_state=return_rule_state, op=_apply)


def _apply(key, input, tensors, hx_count, rule_count, return_rule_state, grad_of):
    return _Transformed.apply(key, hx_count, rule_count, return_rule_state, tuple(grad_of), input, *tensors)


class _Transformed(torch.autograd.Function):
    """The layer op under a transform. Forward (at the level below): the op, which keeps the
    forward's graph under a key. Backward: that graph, run backward."""

    @staticmethod
    def forward(key, hx_count, rule_count, return_rule_state, grad_of, input, *tensors):
        return tuple(layer_call(key, input, list(tensors), hx_count, rule_count, return_rule_state, list(grad_of)))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*(t for t in output if not t.is_floating_point()))
        keep_for_backward(ctx, inputs[5:], inputs[4], output)

    @staticmethod
    def vmap(info, in_dims, key, hx_count, rule_count, return_rule_state, grad_of, input, *tensors):
        """Under ``vmap``: with the parameters shared, the mapped dimension joins the batch of
        one call (input, ``hx`` and rule state; shared ones are repeated); with mapped
        parameters, one call per entry."""
        dims, arguments = in_dims[5:], (input, *tensors)
        module = _layer(key)
        # which gradients are wanted, asked here: a tensor under vmap does not tell it
        grad_of = tuple(torch.is_grad_enabled() and t.requires_grad for t in arguments)
        settings = (key, hx_count, rule_count, return_rule_state, grad_of)
        parameters = len(arguments) - 1 - hx_count - rule_count
        if any(dim is not None for dim in dims[len(dims) - parameters:]):
            found = _per_entry(lambda *entry: _Transformed.apply(*settings, *entry), info.batch_size, arguments, dims)
            return found, (0,) * len(found)
        layout = _Layout(module, input.dim() - (dims[0] is not None) == 2, info.batch_size)
        fields = len(module.rule_type.state_fields)
        places = [layout.sequence] + [1] * hx_count + ([1] * fields + [0] if rule_count else [])
        merged = [layout.merge(t, dim, place) for t, dim, place in zip(arguments, dims, places)]
        outputs = _Transformed.apply(*settings, *merged, *arguments[len(places):])
        places = [layout.sequence] + [1] * module.recurrence.state_tensors + ([1] * fields + [0]
                                                                             if return_rule_state else [])
        return (*(layout.split(t, place) for t, place in zip(outputs, places)), outputs[-1]), (*places, None)

    @staticmethod
    def backward(ctx, *grads):
        def below(key, floating, wanted, alive):
            return _KeptBackward.apply(len(floating), len(wanted), key, *floating, *wanted, *alive)
        return (None, None, None, None, None, *kept_backward(ctx, grads, below))


class _KeptBackward(torch.autograd.Function):
    """``layer_backward`` at the level below the transform (a Function's backward runs at the
    transform's own level). Batched gradients (under ``vmap``) run it once per batch entry."""

    @staticmethod
    def forward(grad_count, like_count, key, *tensors):
        grads, like, alive = tensors[:grad_count], tensors[grad_count:grad_count + like_count], \
            tensors[grad_count + like_count:]
        return tuple(layer_backward(key, list(grads), list(like), list(alive)))

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("momentumrnn: a layer call under one torch.func.grad or vmap has first derivatives "
                           "only. For second derivatives nest the transforms (grad of grad, hessian: the layers "
                           "then run in plain torch ops), call the layer outside vmap (its double backward is "
                           "recomputed in plain ops), or use impl='reference'")

    @staticmethod
    def vmap(info, in_dims, grad_count, like_count, key, *tensors):
        return (_per_entry(lambda *entry: _KeptBackward.apply(grad_count, like_count, key, *entry), info.batch_size,
                           tensors, in_dims[3:]), (0,) * like_count)


def _per_entry(function, size, tensors, dims):
    """``function`` of each of the ``size`` entries of ``tensors`` mapped along ``dims`` (None:
    shared), its results stacked along a new first dimension."""
    entries = [function(*(t if dim is None else t.select(dim, index) for t, dim in zip(tensors, dims)))
               for index in range(size)]
    return tuple(torch.stack(found) for found in zip(*entries))


class _Layout:
    """Where the batch is in a layer's tensors, and how a ``vmap`` dimension joins it: the
    sequence tensors (input, output) at ``sequence`` (0 with ``batch_first``, else 1), the
    states at 1 (step counters at 0). An unbatched call's mapped dimension becomes its batch."""

    def __init__(self, module, unbatched: bool, size: int):
        self.sequence = 0 if module.batch_first else 1
        self.unbatched, self.size = unbatched, size

    def merge(self, tensor, dim, place):
        """``tensor`` with its mapped dimension ``dim`` (None: shared) joined to the batch at ``place``."""
        tensor = tensor.unsqueeze(place).expand(*tensor.shape[:place], self.size, *tensor.shape[place:]) \
            if dim is None else tensor.movedim(dim, place)
        return tensor if self.unbatched else tensor.flatten(place, place + 1)

    def split(self, tensor, place):
        """The mapped dimension out of the batch at ``place`` (it stays at ``place``)."""
        return tensor if self.unbatched else tensor.unflatten(place, (self.size, -1))
