"""torch.compile: a layer's call is one opaque custom op (``momentumrnn::layer``), so a model
compiles with ``fullgraph=True``, equals eager (values and gradients) and does not recompile
per sequence length."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torch.nn.utils.rnn import pack_padded_sequence

import momentumrnn as mrnn
from conftest import ACTIVE
from momentumrnn.compiled import kept_graphs, layer_call

MODELS = [("lstm", "momentum"), ("lstm", "adam"), ("lstm", "nesterov"), ("gru", "restart"), ("rnn", "rmsprop"),
          mrnn.MomentumOrthogonalRNN]


def make(which, *args, **kwargs):
    if isinstance(which, tuple):
        return mrnn.LAYERS[which](*args, **ACTIVE[which[1]], **kwargs)
    return which(*args, **kwargs)


def name(which):
    return mrnn.LAYERS[which].__name__ if isinstance(which, tuple) else which.__name__


def leaves(result):
    return [t for t in torch.utils._pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]


def loss_of(result):
    return sum(t.double().pow(2).sum() for t in leaves(result) if t.is_floating_point())


def compare(compiled, eager, module, inputs, rtol=1e-6, atol=1e-6):
    """Run both on ``inputs`` (a tuple), forward and backward; their results, the module's
    parameter gradients and the inputs' gradients must agree."""
    results, grads = [], []
    for run in (compiled, eager):
        module.zero_grad()
        for t in inputs:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.grad = None
        result = run(*inputs)
        loss_of(result).backward()
        results.append(leaves(result))
        grads.append([p.grad for p in module.parameters()] +
                     [t.grad for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad])
    for got, want in zip(results[0], results[1]):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    for got, want in zip(grads[0], grads[1]):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("which", MODELS, ids=name)
def test_fullgraph_model_equals_eager_without_recompiling_per_length(which):
    torch._dynamo.reset()
    layer = make(which, 8, 16)
    before, after = torch.nn.Linear(8, 8), torch.nn.Linear(16, 1)

    def model(x):
        return after(layer(torch.tanh(before(x)))[0]).sum()

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    frames = []
    for time in (20, 30, 40, 50, 60):
        compare(compiled, model, layer, (torch.randn(time, 4, 8),))
        frames.append(counter.frame_count)
    # the first new length marks the dimension dynamic (one recompile); later lengths reuse it
    assert frames == [1, 2, 2, 2, 2], frames
    assert kept_graphs() == 0


def test_dynamic_lengths_compile_once_with_inductor():
    torch._dynamo.reset()
    layer = mrnn.NesterovLSTM(8, 16, step_size=0.7, restart=5)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(lambda x: layer(x), backend=counter, fullgraph=True, dynamic=True)
    for time in (7, 12, 30):
        compare(compiled, lambda x: layer(x), layer, (torch.randn(time, 3, 8),))
    assert counter.frame_count == 1


def test_a_length_of_one_compiles_one_graph_more():
    """torch specializes a size of 1 even where the dimension is dynamic: with
    ``dynamic=True`` lengths 5 and 9 share a graph and length 1 compiles its own; later
    lengths reuse the dynamic one."""
    torch._dynamo.reset()
    layer = mrnn.MomentumLSTM(3, 8)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=counter, fullgraph=True, dynamic=True)
    frames = []
    for time in (5, 9, 1, 3):
        compiled(torch.randn(time, 2, 3))
        frames.append(counter.frame_count)
    assert frames == [1, 1, 2, 2], frames


@pytest.mark.parametrize("which", [("lstm", "adam"), ("gru", "momentum"), mrnn.AdamOrthogonalRNN], ids=name)
def test_arguments_and_layouts(which):
    """Two layers, both directions, batch_first; unbatched; hx and a carried rule state that
    take gradients, the rule state returned."""
    torch._dynamo.reset()
    wide = make(which, 5, 6, num_layers=2, bidirectional=True, batch_first=True)
    compare(torch.compile(lambda x: wide(x), backend="aot_eager", fullgraph=True), lambda x: wide(x), wide,
            (torch.randn(3, 7, 5),))

    layer = make(which, 5, 6)
    compare(torch.compile(lambda x: layer(x, return_rule_state=True), backend="aot_eager", fullgraph=True),
            lambda x: layer(x, return_rule_state=True), layer, (torch.randn(7, 5),))

    _, hx, state = layer(torch.randn(4, 3, 5), return_rule_state=True)
    hx = tuple(h.detach().requires_grad_() for h in hx) if isinstance(hx, tuple) else hx.detach().requires_grad_()
    state = mrnn.RuleState(*(None if t is None else t.detach().requires_grad_(t.is_floating_point())
                             for t in state))

    def carry(x, *tensors):
        return layer(x, hx, rule_state=state, return_rule_state=True)

    compare(torch.compile(carry, backend="aot_eager", fullgraph=True), carry, layer,
            (torch.randn(7, 3, 5), *leaves(hx), *leaves(state)))


@pytest.mark.parametrize("which", [("lstm", "momentum"), ("lstm", "adam"), ("lstm", "nesterov"), ("gru", "adam"),
                                   ("rnn", "nesterov")], ids=name)
def test_the_compiled_graph_keeps_what_the_kept_graph_saved(which):
    """Inductor writes its own results into the memory of buffers it no longer needs: here
    into the layer's input (a frozen Linear's output, dead after the op in the forward graph)
    and into the layer's output (in the backward graph). The kept graph saved both for its
    backward, so the compiled graph must keep them until the op's backward has run."""
    torch._dynamo.reset()
    layer = make(which, 8, 8, dtype=torch.float64)
    linear = torch.nn.Linear(8, 8, dtype=torch.float64).requires_grad_(False)

    def model(x):
        return torch.cos(layer(torch.sin(linear(x)))[0]) * 2 + 1

    def square(x):
        return model(x).pow(2).sum()

    x = torch.randn(30, 4, 8, dtype=torch.float64)
    compare(torch.compile(model, fullgraph=True), model, layer, (x,), rtol=1e-12, atol=1e-12)
    compare(torch.compile(square, fullgraph=True, mode="reduce-overhead"), square, layer, (x,),
            rtol=1e-12, atol=1e-12)


def test_packed_input_runs_eagerly_inside_a_compiled_model():
    torch._dynamo.reset()
    layer = mrnn.AdamLSTM(4, 6)
    lengths = torch.tensor([5, 3, 2])

    def model(x):
        return layer(pack_padded_sequence(x, lengths))[1]

    compare(torch.compile(model, backend="aot_eager"), model, layer, (torch.randn(5, 3, 4),))


def test_the_kept_graph_is_released_without_a_backward_and_not_kept_without_gradients():
    torch._dynamo.reset()
    layer = mrnn.MomentumLSTM(4, 6)
    compiled = torch.compile(lambda x: layer(x)[0].sum(), backend="aot_eager", fullgraph=True)
    out = compiled(torch.randn(5, 2, 4))
    assert kept_graphs() == 1
    del out
    assert kept_graphs() == 0
    with torch.no_grad():
        compiled(torch.randn(5, 2, 4))
    assert kept_graphs() == 0


def test_a_second_backward_with_retain_graph():
    torch._dynamo.reset()
    layer = mrnn.AdamLSTM(4, 6)
    out = torch.compile(lambda x: layer(x)[0].pow(2).sum(), backend="aot_eager", fullgraph=True)(
        torch.randn(5, 2, 4))
    out.backward(retain_graph=True)
    first = layer.weight_hh_l0.grad.clone()
    out.backward()
    torch.testing.assert_close(layer.weight_hh_l0.grad, 2 * first)
    del out
    assert kept_graphs() == 0


def test_each_layer_runs_itself_through_one_compiled_function():
    """The op names its layer by number; dynamo guards on the layer's identity, so a second
    layer of the same class and shape gets its own graph, not the first layer's."""
    torch._dynamo.reset()
    first, second = mrnn.MomentumLSTM(4, 6, momentum=0.2), mrnn.MomentumLSTM(4, 6, momentum=0.9)
    compiled = torch.compile(lambda layer, x: layer(x)[0], backend="aot_eager", fullgraph=True)
    x = torch.randn(5, 2, 4)
    for layer in (first, second, first):
        torch.testing.assert_close(compiled(layer, x), layer(x)[0])


def test_autocast_inside_a_compiled_model():
    torch._dynamo.reset()
    layer = mrnn.NesterovLSTM(4, 6)
    linear = torch.nn.Linear(4, 4)

    def model(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return layer(linear(x))

    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(9, 2, 4)
    got, want = compiled(x), model(x)
    assert got[0].dtype == got[1][0].dtype == torch.bfloat16
    for a, b in zip(leaves(got), leaves(want)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_functional_call_with_other_parameters():
    torch._dynamo.reset()
    layer = mrnn.RestartLSTM(4, 6)
    other = {name: torch.randn_like(p) for name, p in layer.named_parameters()}
    compiled = torch.compile(lambda x: torch.func.functional_call(layer, other, (x,))[0], backend="aot_eager",
                             fullgraph=True)
    x = torch.randn(5, 2, 4)
    torch.testing.assert_close(compiled(x), torch.func.functional_call(layer, other, (x,))[0])
    assert not torch.equal(compiled(x), layer(x)[0])


def test_errors_are_the_layers_own():
    torch._dynamo.reset()
    layer = mrnn.AdamLSTM(4, 6)
    compiled = torch.compile(lambda x, hx=None: layer(x, hx), backend="aot_eager")
    with pytest.raises(mrnn.InputError, match="input.size\\(-1\\) must be equal to input_size"):
        compiled(torch.randn(5, 2, 3))
    with pytest.raises(TypeError, match="hx must be a tuple"):
        compiled(torch.randn(5, 2, 4), torch.zeros(1, 2, 6))
    with pytest.raises(mrnn.InputError, match=r"Expected hidden\[0\] size"):
        compiled(torch.randn(5, 2, 4), (torch.zeros(1, 3, 6), torch.zeros(1, 3, 6)))
    momentum = mrnn.MomentumLSTM(4, 6)
    compiled = torch.compile(lambda x, state: momentum(x, rule_state=state), backend="aot_eager")
    velocity, steps = torch.zeros(1, 2, 24), torch.zeros(2, dtype=torch.long)
    with pytest.raises(mrnn.InputError, match="rule_state.second_moment must be None"):
        compiled(torch.randn(5, 2, 4), mrnn.RuleState(velocity, velocity, steps))
    with pytest.raises(TypeError, match="rule_state.velocity must be a torch.Tensor"):
        compiled(torch.randn(5, 2, 4), mrnn.RuleState(None, None, steps))


def test_the_op_passes_torchs_op_checks():
    layer = mrnn.AdamLSTM(4, 6)
    from momentumrnn.compiled import _register
    arguments = (_register(layer), torch.randn(5, 2, 4, requires_grad=True), list(layer.parameters()), 0, 0,
                 True, [True] * 5)
    # the AOT checks compare two runs' outputs, and the key tensor differs by design
    result = torch.library.opcheck(layer_call, arguments,
                                   test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    assert set(result.values()) == {"SUCCESS"}
