"""How a layer meets ``torch.compile``: each call is one opaque custom op.

When dynamo traces a model, a layer's call becomes ``momentumrnn::layer`` (a
``torch.library.custom_op``) with a fake kernel that gives the output shapes, so the graph
holds the whole recurrence as one node, as it would hold a kernel: no graph break, no graph
of the per-step work, and one graph for every sequence length once the length is dynamic.
At run time the op runs the layer's eager forward on its fast path (with the parameters it
was given) and keeps that forward's autograd graph, under a key that the op returns as a
small CPU tensor; ``momentumrnn::layer_backward`` runs the kept graph backward. The compiled
model therefore computes exactly what eager computes, with the layer's own eager code, and
keeps the tensors that the layer's own backward saves. The op's backward takes the forward
op's inputs and outputs, so that the compiled graph keeps them, unchanged, until it has run:
the kept graph may have saved them, and the compiled graph would otherwise reuse their
memory for its own results.

The kept graph is released when the key tensor is: after the backward (or when the
compiled graph that would run it is dropped). A call without gradients keeps nothing.
The op names its layer by a number that dynamo takes as a constant, guarding on the
layer's identity, so each layer gets its own graph. Packed input (and arguments of other
types, which the layer refuses with its own message) runs the layer eagerly behind a graph
break (``torch.compiler.disable``). This module is imported when dynamo first traces a
layer: importing momentumrnn does not import dynamo.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import weakref

import torch
from torch import Tensor
from torch.nn.utils.stateless import _reparametrize_module

from .autocast import autocast_boundary
from .state import RuleState

__all__ = ["compiled_call", "layer_call", "layer_backward", "kept_graphs"]

#: Layers by ``id``, registered while dynamo traces them (weakly: the op does not keep a layer alive).
_LAYERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
#: Autograd graphs kept for the backward, by key: ``(leaves, outputs)``.
_GRAPHS: dict[int, tuple[list[Tensor], list[Tensor]]] = {}
_keys = itertools.count(1)


_KEY = torch._C.DispatchKey
#: The dispatcher's thread-local state of plain eager code with autocast off (as the op
#: runs the layer: its inputs are already in the parameters' dtype).
_EAGER_INCLUDE = torch._C.DispatchKeySet(_KEY.BackendSelect) | torch._C.DispatchKeySet(_KEY.ADInplaceOrView)
_EAGER_EXCLUDE = functools.reduce(operator.or_, [torch._C.DispatchKeySet(getattr(_KEY, name))
                                                 for name in dir(_KEY) if name.startswith("Autocast")])


def _eager():
    """Run as plain eager code: a custom op's implementation runs with autograd dispatch
    turned off (it is below the autograd key), and the layer's forward must record its graph."""
    return torch._C._ForceDispatchKeyGuard(_EAGER_INCLUDE, _EAGER_EXCLUDE)


def kept_graphs() -> int:
    """How many forward graphs are kept for a backward that has not run yet."""
    return len(_GRAPHS)


@torch.compiler.assume_constant_result
def _register(module) -> int:
    """Make ``module`` known to the op by a number (run once per trace, a constant in the
    graph; dynamo guards on ``module``'s identity)."""
    _LAYERS[id(module)] = module
    return id(module)


def _layer(key: int):
    module = _LAYERS.get(key)
    if module is None:
        raise RuntimeError("momentumrnn::layer: the layer this compiled graph was made for no longer exists; "
                           "compile the model again")
    return module


#: The ops run Python and keep state between calls: Inductor's CUDA graphs must not capture them.
_TAGS = tuple(tag for tag in (getattr(torch.Tag, "cudagraph_unsafe", None),) if tag is not None)


@torch.library.custom_op("momentumrnn::layer", mutates_args=(), tags=_TAGS)
def layer_call(key: int, input: Tensor, tensors: list[Tensor], hx_count: int, rule_count: int,
               return_rule_state: bool, grad_of: list[bool]) -> list[Tensor]:
    """The layer ``key`` on ``input``; ``tensors`` are ``hx`` (``hx_count`` of them), the rule
    state's tensors and step counter (``rule_count``) and the parameters in
    ``named_parameters`` order. Returns the output, the final hidden state, the final rule
    state (with ``return_rule_state``), and a key tensor: where ``grad_of`` (for ``input``,
    then ``tensors``) asks for a gradient, the forward's graph is kept under that key."""
    module = _layer(key)
    named = list(module.named_parameters())
    # A tensor whose gradient is wanted enters the kept graph as itself where it records
    # (the module's own parameters do), else as a new leaf on its values.
    leaves = [t.detach().requires_grad_(True) if wanted and not t.requires_grad else t
              for t, wanted in zip([input, *tensors], grad_of)]
    x, hidden = leaves[0], leaves[1:1 + hx_count]
    rule = leaves[1 + hx_count:1 + hx_count + rule_count]
    parameters = leaves[1 + hx_count + rule_count:]
    hx = None if not hidden else hidden[0] if len(hidden) == 1 else tuple(hidden)
    rule_state = None
    if rule:
        fields = dict(zip(module.rule_type.state_fields, rule))
        rule_state = RuleState.of(fields, rule[-1])
    keep = any(grad_of)
    own = all(given is parameter for given, (_, parameter) in zip(parameters, named))
    with contextlib.ExitStack() as stack:
        stack.enter_context(_eager())
        stack.enter_context(torch.enable_grad() if keep else torch.no_grad())
        stack.enter_context(torch.autocast(x.device.type, enabled=False))
        if not own:                 # other parameters than the module's own (torch.func.functional_call)
            stack.enter_context(_reparametrize_module(module, {name: p for (name, _), p in zip(named, parameters)}))
        result = module._forward(x, hx, rule_state=rule_state, return_rule_state=return_rule_state)
    outputs = module._flatten_outputs(result)           # output, hidden state(s), rule state's tensors
    key_tensor = torch.tensor(0)
    if keep:
        graph_key = next(_keys)
        _GRAPHS[graph_key] = ([leaf for leaf, wanted in zip(leaves, grad_of) if wanted],
                              [t for t in outputs if t.is_floating_point()])
        key_tensor = torch.tensor(graph_key)
        weakref.finalize(key_tensor, _GRAPHS.pop, graph_key, None)
    return [t.detach().contiguous() for t in outputs] + [key_tensor]


@layer_call.register_fake
def _(key, input, tensors, hx_count, rule_count, return_rule_state, grad_of):
    module = _layer(key)
    return [torch.empty(shape, dtype=dtype, device=input.device) for shape, dtype in
            module._output_shapes(input, return_rule_state)] + [torch.empty((), dtype=torch.long)]


@torch.library.custom_op("momentumrnn::layer_backward", mutates_args=(), tags=_TAGS)
def layer_backward(key: Tensor, grads: list[Tensor], like: list[Tensor], alive: list[Tensor]) -> list[Tensor]:
    """The gradients for the tensors ``like`` (those ``grad_of`` asked for) from the graph
    kept under ``key``, given the gradients of the layer's floating outputs. ``alive``: the
    forward op's tensors, which the kept graph may hold; taking them here keeps the compiled
    graph from reusing their memory for its own results before this op has run."""
    leaves, outputs = _GRAPHS[int(key)]
    pairs = [(output, grad) for output, grad in zip(outputs, grads) if output.requires_grad]
    found = [None] * len(leaves)
    if pairs:
        with _eager():
            found = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True,
                                        retain_graph=True)       # a second backward may come (retain_graph)
    return [torch.zeros_like(leaf) if grad is None else grad.contiguous() for grad, leaf in zip(found, like)]


@layer_backward.register_fake
def _(key, grads, like, alive):
    return [torch.empty_like(t) for t in like]


def keep_for_backward(ctx, arguments, grad_of, output) -> None:
    """Save on ``ctx`` what the backward of one layer op call needs: its key, the
    ``arguments`` (input, then ``tensors``) whose gradient ``grad_of`` asks for, and all of
    its arguments and outputs (``alive`` of ``layer_backward``)."""
    ctx.grad_of = grad_of
    ctx.floating = [t.is_floating_point() for t in output[:-1]]
    ctx.wanted = sum(grad_of)
    ctx.save_for_backward(output[-1], *[t for t, wanted in zip(arguments, grad_of) if wanted],
                          *arguments, *output[:-1])


def kept_backward(ctx, grads, backward) -> list:
    """The gradients of the arguments saved by ``keep_for_backward`` (None where not asked
    for), from ``grads`` of the op's outputs by ``backward`` (``layer_backward``'s signature)."""
    key, *saved = ctx.saved_tensors
    wanted, alive = saved[:ctx.wanted], saved[ctx.wanted:]
    floating = [grad for grad, is_floating in zip(grads[:-1], ctx.floating) if is_floating]
    found = iter(backward(key, floating, wanted, alive) if wanted else ())
    return [next(found) if wanted else None for wanted in ctx.grad_of]


def _setup_context(ctx, inputs, output):
    key, input, tensors, hx_count, rule_count, return_rule_state, grad_of = inputs
    keep_for_backward(ctx, [input, *tensors], grad_of, output)


def _backward(ctx, grads):
    flat = kept_backward(ctx, grads, layer_backward)
    return None, flat[0], flat[1:], None, None, None, None


layer_call.register_autograd(_backward, setup_context=_setup_context)


def compiled_call(module, input, hx, rule_state, return_rule_state):
    """A layer's call while dynamo traces it: one ``momentumrnn::layer`` node for tensor
    input and state; packed input, and arguments of other types (which the layer's own
    checks refuse, with their messages), run eagerly behind ``torch.compiler.disable``."""
    if not _plain(module, input, hx, rule_state):
        return torch.compiler.disable(type(module)._forward)(module, input, hx, rule_state=rule_state,
                                                            return_rule_state=return_rule_state)
    return _call(module, input, hx, rule_state=rule_state, return_rule_state=return_rule_state)


def _plain(module, input, hx, rule_state) -> bool:
    """Whether the arguments are tensors where the op takes tensors: the input, ``hx`` and
    the rule state's tensors, exactly those of the layer's rule."""
    hidden = () if hx is None else hx if isinstance(hx, (tuple, list)) else (hx,)
    if rule_state is not None:
        if not isinstance(rule_state, RuleState):
            return False
        fields = module.rule_type.state_fields
        if not isinstance(rule_state.extra, (dict, type(None))):
            return False
        given = rule_state.fields()
        if set(given) != set(fields) or not all(isinstance(t, Tensor) for t in (*given.values(), rule_state.steps)):
            return False
    return isinstance(input, Tensor) and all(isinstance(h, Tensor) for h in hidden)


@autocast_boundary
def _call(module, input, hx=None, *, rule_state=None, return_rule_state=False, op=layer_call):
    """The layer's call as ``op`` (``layer_call`` or what takes its arguments) on flat tensors."""
    hidden = [] if hx is None else list(hx) if isinstance(hx, (tuple, list)) else [hx]
    rule = [] if rule_state is None else [getattr(rule_state, field) for field in module.rule_type.state_fields]
    rule += [] if rule_state is None else [rule_state.steps]
    tensors = [*hidden, *rule, *(p for _, p in module.named_parameters())]
    grading = torch.is_grad_enabled()
    grad_of = [grading and t.requires_grad for t in [input, *tensors]]
    flat = op(_register(module), input, tensors, len(hidden), len(rule), return_rule_state, grad_of)
    return module._pack_outputs(flat[:-1], return_rule_state)
