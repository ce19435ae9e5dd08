"""Every fast path equals the per-step reference (impl="reference"), values and gradients.

Tolerances: float64 ``atol=1e-10, rtol=1e-9`` (the paths sum the same terms in another
order: the observed differences are ~1e-15); float32 ``atol=1e-5, rtol=1e-4``.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import momentumrnn as mrnn
from conftest import ACTIVE, LAYER_KEYS, layer_id

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-9), torch.float32: dict(atol=1e-5, rtol=1e-4)}
FUSED_KEYS = [k for k in LAYER_KEYS if mrnn.LAYERS[k].rule_type.commutes_with_input_weights]
INPUT_ONLY_KEYS = [k for k in LAYER_KEYS if not mrnn.LAYERS[k].rule_type.couples_to_hidden]
PATHS = [(key, impl) for key in LAYER_KEYS for impl in ("loop", "fused", "fused-drive")
         if impl == "loop" or (impl == "fused" and key in FUSED_KEYS) or (impl == "fused-drive" and key in INPUT_ONLY_KEYS)]


def path_id(item):
    key, impl = item
    return f"{mrnn.LAYERS[key].__name__}-{impl}"


def pair(key, impl, *args, dtype=torch.float64, hp=None, device=None, fast_dtype=None, **kwargs):
    """The same layer twice: ``impl`` (on ``device`` in ``fast_dtype``, default the CPU and
    ``dtype``) and the reference on the CPU, with biases made visible."""
    hp = ACTIVE[key[1]] if hp is None else hp
    ref = mrnn.LAYERS[key](*args, dtype=dtype, impl="reference", **hp, **kwargs)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    fast = mrnn.LAYERS[key](*args, dtype=fast_dtype or dtype, device=device, impl=impl, **hp, **kwargs)
    fast.load_state_dict(ref.state_dict())
    return fast, ref


def tensors(result):
    """The floating tensors of a layer's result, flattened (PackedSequence -> data)."""
    out = []
    for item in result:
        if isinstance(item, torch.nn.utils.rnn.PackedSequence):
            out.append(item.data)
        elif isinstance(item, tuple):
            out += tensors(item)
        elif isinstance(item, torch.Tensor) and item.is_floating_point():
            out.append(item)
    return out


def assert_same_values_and_gradients(fast, ref, call, inputs, dtype):
    """``call(module)`` -> result; compare all outputs, then the gradients of a random
    projection of them with respect to ``inputs`` and every parameter."""
    results = [tensors(call(m)) for m in (fast, ref)]
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, **TOL[dtype])
    weights = [torch.randn_like(t) for t in results[1]]
    grads = []
    for module, outs in zip((fast, ref), results):
        loss = sum((w * o).sum() for w, o in zip(weights, outs))
        leaves = list(inputs) + list(module.parameters())
        grads.append(torch.autograd.grad(loss, leaves, allow_unused=True))
    names = [f"input{i}" for i in range(len(inputs))] + [n for n, _ in fast.named_parameters()]
    for name, got, want in zip(names, *grads, strict=True):
        if want is None:
            assert got is None or torch.all(got == 0), name
            continue
        assert got is not None, f"no gradient for {name}"
        torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("item", PATHS, ids=path_id)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_path_equals_reference(item, num_layers, bidirectional, dtype):
    key, impl = item
    fast, ref = pair(key, impl, 3, 4, num_layers, bidirectional=bidirectional, dtype=dtype)
    x = torch.randn(9, 2, 3, dtype=dtype, requires_grad=True)
    stacks = num_layers * (2 if bidirectional else 1)
    h0 = torch.randn(stacks, 2, 4, dtype=dtype, requires_grad=True)
    hx = (h0, torch.randn(stacks, 2, 4, dtype=dtype)) if key[0] == "lstm" else h0
    assert_same_values_and_gradients(fast, ref, lambda m: m(x, hx, return_rule_state=True), [x, h0], dtype)


@pytest.mark.parametrize("item", PATHS, ids=path_id)
def test_path_equals_reference_learnable(item):
    """Learnable momentum and step size get the reference's gradients on every path."""
    key, impl = item
    fast, ref = pair(key, impl, 3, 4, 2, bidirectional=True, learnable=True)
    x = torch.randn(7, 2, 3, dtype=torch.float64, requires_grad=True)
    assert_same_values_and_gradients(fast, ref, lambda m: m(x, return_rule_state=True), [x], torch.float64)
    raw = [p for n, p in fast.named_parameters() if "_raw_" in n]
    assert raw and all(p.grad is None for p in raw)        # autograd.grad above, not .backward
    fast(x)[0].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in raw)


@pytest.mark.parametrize("item", PATHS, ids=path_id)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_path_equals_reference(item, bidirectional):
    key, impl = item
    fast, ref = pair(key, impl, 3, 4, 2, bidirectional=bidirectional)
    x = torch.randn(8, 4, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 8, 1, 3])

    def call(m):
        return m(pack_padded_sequence(x, lengths, enforce_sorted=False), return_rule_state=True)

    assert_same_values_and_gradients(fast, ref, call, [x], torch.float64)
    out, _, rs = fast(pack_padded_sequence(x, lengths, enforce_sorted=False), return_rule_state=True)
    assert pad_packed_sequence(out)[1].tolist() == lengths.tolist()
    assert rs.steps.tolist() == lengths.tolist()


@pytest.mark.parametrize("item", PATHS, ids=path_id)
def test_carried_state_path_equals_reference(item):
    """A nonzero carried rule state (and, for the restart rules, step counters that differ
    between sequences) with a nonzero hidden state."""
    key, impl = item
    fast, ref = pair(key, impl, 3, 4, 2, bidirectional=True)
    x, hidden, state, leaves = carried_state(ref)
    assert_same_values_and_gradients(
        fast, ref, lambda m: m(x, hidden, rule_state=state, return_rule_state=True), leaves, torch.float64)


def carried_state(ref):
    """A second call's input, hidden state and rule state (leaves requiring grad) after a
    packed first call of ``ref`` whose step counters differ (5, 2, 4); returns
    ``(x, hidden, rule_state, [x, velocity(, second moment)])``."""
    x0 = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    _, hidden, rs = ref(pack_padded_sequence(x0, lengths, enforce_sorted=False), return_rule_state=True)
    velocity = rs.velocity.detach().requires_grad_()
    moment = None if rs.second_moment is None else rs.second_moment.detach().requires_grad_()
    state = mrnn.RuleState(velocity, moment, rs.steps)
    hidden = tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()
    x = torch.randn(6, 3, 3, dtype=torch.float64, requires_grad=True)
    return x, hidden, state, [x, velocity] + ([moment] if moment is not None else [])


@pytest.mark.parametrize("item", PATHS, ids=path_id)
def test_chunks_with_carried_state_equal_one_run(item):
    key, impl = item
    layer = mrnn.LAYERS[key](3, 4, 2, batch_first=True, dtype=torch.float64, impl=impl, **ACTIVE[key[1]])
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    out, hidden, rs = layer(x, return_rule_state=True)
    out1, hidden1, rs1 = layer(x[:, :4], return_rule_state=True)
    out2, hidden2, rs2 = layer(x[:, 4:], hidden1, rule_state=rs1, return_rule_state=True)
    torch.testing.assert_close(torch.cat([out1, out2], dim=1), out, **TOL[torch.float64])
    for got, want in zip(rs2, rs):
        if want is not None:
            torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("item", PATHS, ids=path_id)
def test_unbatched_batch_first_and_no_bias(item):
    key, impl = item
    for kwargs in ({"batch_first": True}, {"bias": False}):
        fast, ref = pair(key, impl, 3, 4, 2, bidirectional=True, **kwargs)
        x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
        assert_same_values_and_gradients(fast, ref, lambda m: m(x, return_rule_state=True), [x], torch.float64)
    fast, ref = pair(key, impl, 3, 4, 2)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert_same_values_and_gradients(fast, ref, lambda m: m(x, return_rule_state=True), [x], torch.float64)


@pytest.mark.parametrize("key", [("rnn", "momentum"), ("rnn", "nesterov"), ("rnn", "adam")], ids=layer_id)
def test_relu_rnn_paths(key):
    impls = {"momentum": ("loop", "fused", "fused-drive"), "adam": ("loop", "fused-drive")}.get(key[1], ("loop",))
    for impl in impls:
        fast, ref = pair(key, impl, 3, 4, 2, nonlinearity="relu")
        x = torch.randn(7, 2, 3, dtype=torch.float64, requires_grad=True)
        assert_same_values_and_gradients(fast, ref, lambda m: m(x), [x], torch.float64)


@pytest.mark.parametrize("key", [k for k in LAYER_KEYS if k[1] in ("nesterov", "restart")], ids=layer_id)
@pytest.mark.parametrize("restart", [0, 1, 5])
def test_restart_schedules_on_fast_paths(key, restart):
    for impl in ("loop", "fused", "fused-drive") if key in FUSED_KEYS else ("loop",):
        fast, ref = pair(key, impl, 3, 4, hp={"step_size": 0.5, "restart": restart})
        x = torch.randn(11, 2, 3, dtype=torch.float64, requires_grad=True)
        assert_same_values_and_gradients(fast, ref, lambda m: m(x, return_rule_state=True), [x], torch.float64)


@pytest.mark.parametrize("key", FUSED_KEYS, ids=layer_id)
def test_zero_momentum_and_dropout_match_reference(key):
    """The PTB setting (momentum 0: no filter) and dropout between layers (same RNG use)."""
    hp = {"momentum": 0.0, "step_size": 0.6} if key[1] == "momentum" else None
    fast, ref = pair(key, "fused", 3, 4, 3, hp=hp, dropout=0.3)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.manual_seed(5)
    got = fast(x)[0]
    torch.manual_seed(5)
    torch.testing.assert_close(got, ref(x)[0], **TOL[torch.float64])


def test_auto_picks_the_path_of_the_table():
    """One table (paths.AUTO) decides impl="auto" by device and rule; layer.path reports it."""
    from momentumrnn.paths import AUTO, choose_path

    assert mrnn.MomentumLSTM(2, 3).path == "fused"
    assert mrnn.RestartGRU(2, 3).path == "fused"
    assert mrnn.AdamLSTM(2, 3).path == "loop"
    assert mrnn.NesterovRNN(2, 3).path == "loop"
    assert mrnn.MomentumLSTM(2, 3, impl="reference").path == "reference"
    assert mrnn.AdamGRU(2, 3, impl="fused-drive").path == "fused-drive"
    assert AUTO["cuda"] == {"momentum": "fused", "restart": "fused", "adam": "fused-drive",
                            "rmsprop": "fused-drive", "nesterov": "loop"}
    for (_, rule), cls in mrnn.LAYERS.items():
        for device in ("cpu", "cuda", "mps"):
            assert choose_path("auto", cls.rule_type, device) == AUTO["cuda" if device == "cuda" else "cpu"][rule]
        assert choose_path("loop", cls.rule_type, "cuda") == "loop"
    with pytest.raises(ValueError, match="impl='fused' needs a rule that commutes with the input weights"):
        mrnn.AdamLSTM(2, 3, impl="fused")
    with pytest.raises(ValueError, match="impl='fused-drive' needs an input-only rule.*'auto', 'loop', 'triton-loop', 'reference'"):
        mrnn.NesterovLSTM(2, 3, impl="fused-drive")
    with pytest.raises(ValueError, match="impl must be one of"):
        mrnn.MomentumLSTM(2, 3, impl="cudnn")


def test_momentum_commutes_with_the_input_weights():
    """The key fact: with x~_t = mu x~_{t-1} + s x_t and beta_t = s (1 - mu^t) / (1 - mu),
    the momentum state is v_t = W x~_t + beta_t b_ih (float64, to ~1e-15)."""
    mu, s = 0.7, 0.4
    T, B, I, G = 30, 3, 5, 8
    W, b = torch.randn(G, I, dtype=torch.float64), torch.randn(G, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    v = torch.zeros(B, G, dtype=torch.float64)
    filtered = torch.zeros(B, I, dtype=torch.float64)
    for t in range(T):
        v = mu * v + s * (x[t] @ W.T + b)
        filtered = mu * filtered + s * x[t]
        beta = s * (1 - mu ** (t + 1)) / (1 - mu)
        torch.testing.assert_close(filtered @ W.T + beta * b, v, atol=1e-13, rtol=1e-13)
    from momentumrnn.fused import filter_inputs
    both = filter_inputs(mu, s, x, True)
    torch.testing.assert_close(both[-1, :, :I], filtered, atol=1e-14, rtol=1e-14)
    torch.testing.assert_close(both[:, 0, I], torch.tensor([s * (1 - mu ** (t + 1)) / (1 - mu) for t in range(T)],
                                                           dtype=torch.float64), atol=1e-14, rtol=1e-14)


@pytest.mark.parametrize("key", LAYER_KEYS, ids=layer_id)
def test_auto_path_float32_at_pixel_mnist_length(key):
    """A long sequence (T = 784) in float32: the fast path stays with the reference."""
    fast, ref = pair(key, "loop" if key not in FUSED_KEYS else "fused", 1, 8, dtype=torch.float32)
    x = torch.rand(784, 2, 1)
    out, _ = fast(x)
    want, _ = ref(x)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("key", [("lstm", "momentum"), ("gru", "adam"), ("rnn", "nesterov")], ids=layer_id)
def test_modifying_the_output_in_place_is_detected(key):
    """The loops save their outputs for the backward; modifying them in place raises
    autograd's error (as torch.nn.LSTM does) rather than giving a wrong gradient."""
    out, _ = mrnn.LAYERS[key](3, 4, impl="loop")(torch.randn(5, 2, 3))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.mul_(2.0).sum().backward()


@pytest.mark.slow
@pytest.mark.parametrize("key", [("lstm", "adam"), ("lstm", "nesterov"), ("rnn", "nesterov"), ("gru", "rmsprop")],
                         ids=layer_id)
def test_loop_backward_over_several_chunks(key):
    """Wide enough that the loop's backward and the Adam kernel work in several time chunks
    (2^18 elements each: B * G * 8 > 2^18), with a mask."""
    hidden = 1024 if key[0] == "lstm" else 1400
    fast, ref = pair(key, "loop", 3, hidden, batch_first=False)
    x = torch.randn(21, 32, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([21, 13] * 16)

    def call(m):
        return m(pack_padded_sequence(x, lengths, enforce_sorted=False), return_rule_state=True)

    assert_same_values_and_gradients(fast, ref, lambda m: m(x, return_rule_state=True), [x], torch.float64)
    assert_same_values_and_gradients(fast, ref, call, [x], torch.float64)


def second_derivatives(layer, x, hx, call=None):
    """Gradients of a function of the first gradients (a gradient penalty), with respect to
    the parameters, the input and the initial state."""
    sources = [x, *hx, *layer.parameters()]
    out = (call or (lambda: layer(x, hx, return_rule_state=True)))()
    loss = sum(t.pow(2).sum() for t in tensors(out))
    first = torch.autograd.grad(loss, sources, create_graph=True)
    penalty = sum(g.pow(2).sum() for g in first)
    return torch.autograd.grad(penalty, sources, allow_unused=True)


@pytest.mark.parametrize("item", PATHS, ids=path_id)
def test_second_derivatives_on_every_path_equal_the_references(item):
    """Double backward (create_graph=True) recomputes the call on the reference path
    (``momentumrnn.second_order``): the second derivatives equal the reference layer's."""
    key, impl = item
    fast, ref = pair(key, impl, 3, 4, num_layers=2, bidirectional=True, learnable=True)
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    count = mrnn.LAYERS[key].recurrence_type.state_tensors
    hx = tuple(torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(count))
    hx_arg = hx if count == 2 else hx[0]
    got = second_derivatives(fast, x, hx, lambda: fast(x, hx_arg, return_rule_state=True))
    want = second_derivatives(ref, x, hx, lambda: ref(x, hx_arg, return_rule_state=True))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("key", [("lstm", "adam"), ("lstm", "nesterov"), ("gru", "momentum"), ("rnn", "restart")],
                         ids=layer_id)
def test_gradgradcheck_on_the_default_path(key):
    layer = mrnn.LAYERS[key](2, 3, dtype=torch.float64, **ACTIVE[key[1]])
    assert layer.path != "reference"
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: layer(x)[0], (x,))


def test_second_derivatives_reuse_the_forwards_dropout_masks_and_autocast():
    fast, ref = pair(("lstm", "adam"), "loop", 3, 4, num_layers=3, dropout=0.5)
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    hx = (torch.zeros(3, 2, 4, dtype=torch.float64, requires_grad=True),) * 2
    results = []
    for layer in (fast, ref):
        torch.manual_seed(3)
        results.append(second_derivatives(layer, x, hx, lambda: layer(x, hx)))
        torch.rand(5)                                   # the recomputation restores the forward's state
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    fast, ref = pair(("lstm", "nesterov"), "loop", 3, 4, dtype=torch.float32)
    x = torch.randn(6, 2, 3, requires_grad=True)
    results = []
    for layer in (fast, ref):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(torch.nn.functional.linear(x, torch.eye(3)))[0]
        first = torch.autograd.grad(out.float().pow(2).sum(), [x, *layer.parameters()], create_graph=True)
        results.append(torch.autograd.grad(sum(g.pow(2).sum() for g in first), x))
    # the output is rounded to bfloat16, where float32 rounding differences between the paths
    # can flip one bfloat16 step (2^-7 relative)
    torch.testing.assert_close(results[0], results[1], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("key", [("lstm", "adam"), ("gru", "momentum"), ("rnn", "nesterov")], ids=layer_id)
def test_batched_gradients_on_the_default_path(key):
    """``autograd.grad(..., is_grads_batched=True)`` (a Jacobian one row batch at a time)
    equals one backward per row."""
    layer = mrnn.LAYERS[key](3, 4, dtype=torch.float64, **ACTIVE[key[1]])
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    out = layer(x)[0]
    rows = torch.randn(3, *out.shape, dtype=torch.float64)
    batched = torch.autograd.grad(out, x, rows, is_grads_batched=True, retain_graph=True)[0]
    for row, got in zip(rows, batched):
        torch.testing.assert_close(got, torch.autograd.grad(out, x, row, retain_graph=True)[0], **TOL[torch.float64])


def test_first_derivatives_take_the_paths_own_backward(monkeypatch):
    """Without create_graph the reference path is not recomputed."""
    from momentumrnn import paths

    layer = mrnn.AdamLSTM(3, 4, impl="loop")
    out = layer(torch.randn(5, 2, 3))[0]
    monkeypatch.setattr(paths, "plain_ops", None)              # a recomputation would call it
    out.sum().backward()
    assert layer.weight_hh_l0.grad is not None


@pytest.mark.parametrize("key", FUSED_KEYS, ids=layer_id)
@pytest.mark.parametrize("input_size", [1, 10, 11, 15])
def test_fused_input_widths(key, input_size):
    """Fused GRU/RNN inputs of 2-11 channels (input + beta) are padded with zero channels
    (fused.NARROW, a GEMM speed cliff), wider ones are not: both equal the reference."""
    fast, ref = pair(key, "fused", input_size, 5, batch_first=False)
    x = torch.randn(6, 3, input_size, dtype=torch.float64, requires_grad=True)
    assert_same_values_and_gradients(fast, ref, lambda m: m(x, return_rule_state=True), [x], torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize("key", [("lstm", "adam"), ("lstm", "rmsprop"), ("gru", "adam"), ("gru", "rmsprop"),
                                 ("rnn", "adam")], ids=layer_id)
def test_adam_loop_over_several_chunks_learnable_and_carried(key):
    """Adam's drive made chunk by chunk inside the loop (loops.adam_loop; 3 chunks of 8 steps
    here): learnable momentum and step size and a carried nonzero state get their gradients
    across chunk boundaries."""
    fast, ref = pair(key, "loop", 3, 1024, learnable=True)
    assert fast.rule.name in ("adam", "rmsprop")
    width = {"lstm": 4, "gru": 3, "rnn": 1}[key[0]] * 1024
    velocity = (0.1 * torch.randn(1, 32, width, dtype=torch.float64)).requires_grad_()
    moment = (0.1 * torch.rand(1, 32, width, dtype=torch.float64)).requires_grad_()
    state = mrnn.RuleState(velocity, moment, torch.full((32,), 3))
    x = torch.randn(21, 32, 3, dtype=torch.float64, requires_grad=True)
    assert_same_values_and_gradients(fast, ref, lambda m: m(x, rule_state=state, return_rule_state=True),
                                     [x, velocity, moment], torch.float64)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("item", PATHS + [(key, "reference") for key in LAYER_KEYS], ids=path_id)
def test_a_non_finite_sequence_leaves_the_others_alone(item, bad):
    """A nan or inf in one sequence's carried rule state or input reaches no other sequence,
    on every path, as in ``torch.nn.LSTM``: the other sequences equal the reference run
    without it. (Within the sequence the result is not finite for most rules; README.)"""
    key, impl = item
    fast, ref = pair(key, impl, 3, 4, 2, bidirectional=True)
    x, hidden, state, _ = carried_state(ref)
    x = x.detach()
    with torch.no_grad():
        want = tensors(ref(x, hidden, rule_state=state, return_rule_state=True))
        velocity = state.velocity.clone()
        velocity[:, 0, 1] = bad
        poisoned = mrnn.RuleState(velocity, state.second_moment, state.steps)
        x_bad = x.clone()
        x_bad[2, 0, 0] = bad
        for args, kwargs in (((x, hidden), {"rule_state": poisoned}), ((x_bad, hidden), {"rule_state": state})):
            got = tensors(fast(*args, **kwargs, return_rule_state=True))
            for g, w in zip(got, want, strict=True):
                if g.dim() == 1:                          # step counters are per sequence, (B,)
                    continue
                torch.testing.assert_close(g[..., 1:, :], w[..., 1:, :], **TOL[torch.float64])


@pytest.mark.parametrize("key", [k for k in LAYER_KEYS if k[0] == "lstm"], ids=layer_id)
def test_an_inf_input_within_its_sequence(key):
    """What the README documents for an inf input in one sequence (reference path): the rules
    that divide by a running magnitude (inf / inf) give nan from that step on, those that
    difference two velocities (inf - inf) from a later step; the momentum rule (mu > 0) saturates the gates and stays
    finite, as torch.nn.LSTM does."""
    layer = mrnn.LAYERS[key](3, 4, dtype=torch.float64, impl="reference", **ACTIVE[key[1]])
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    x[2, 0, 0] = float("inf")
    with torch.no_grad():
        out, _ = layer(x)
    assert torch.isfinite(out[:2]).all() and torch.isfinite(out[:, 1]).all()
    if key[1] == "momentum":
        assert torch.isfinite(out).all()
    elif key[1] in ("nesterov", "restart"):    # nan once a nonzero coefficient meets inf - inf
        assert torch.isnan(out[2:, 0]).any()
    else:
        assert torch.isnan(out[2:, 0]).all()


@pytest.mark.parametrize("bias", [True, False])
def test_input_drive_equals_linear(bias):
    """The loops' input drive: ``F.linear`` with the weight gradient in another order;
    float64 gradcheck, and float32 values and contiguous gradients as ``F.linear``'s."""
    from momentumrnn.projection import input_drive

    x = torch.randn(7, 3, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True) if bias else None
    torch.autograd.gradcheck(input_drive, (x, weight, b))
    inputs = [t.detach().float().requires_grad_() for t in (x, weight, *([b] if bias else []))]
    ours = input_drive(*inputs, *([] if bias else [None]))
    theirs = torch.nn.functional.linear(*inputs)
    torch.testing.assert_close(ours, theirs, **TOL[torch.float32])
    seed = torch.randn_like(ours)
    for a, b_ in zip(torch.autograd.grad(ours, inputs, seed), torch.autograd.grad(theirs, inputs, seed), strict=True):
        torch.testing.assert_close(a, b_, **TOL[torch.float32])
        assert a.is_contiguous()


def test_experimental_paths_warn_and_auto_never_takes_them():
    import warnings

    from momentumrnn import LAYERS, ORTHOGONAL_LAYERS
    from momentumrnn.paths import EXPERIMENTAL_IMPLS, choose_path

    with pytest.warns(UserWarning, match=r"NesterovLSTM\(impl='triton-loop'\) is experimental"):
        mrnn.NesterovLSTM(3, 4, impl="triton-loop")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mrnn.NesterovLSTM(3, 4)
    for layer in [*LAYERS.values(), *ORTHOGONAL_LAYERS.values()]:
        for device in ("cpu", "cuda"):
            for projections in (False, True) if layer.recurrence_type.name == "lstm" else (False,):
                path = choose_path("auto", layer.rule_type, device, projections, layer.recurrence_type.name)
                assert path not in EXPERIMENTAL_IMPLS, (layer.__name__, device, path)


def test_the_plan_says_what_runs_and_why():
    from momentumrnn.paths import Plan, plain_ops

    layer = mrnn.MomentumLSTM(3, 4)
    assert layer.last_plan is None                        # no call yet
    assert layer.plan.path == layer.path == "fused"
    assert "measured path of rule 'momentum' on CPU" in layer.plan.reason
    assert mrnn.AdamLSTM(3, 4, proj_size=2).plan.reason.endswith("with LSTM projections")
    assert mrnn.MomentumLSTM(3, 4, impl="loop").plan == Plan("loop", "impl='loop' chosen")
    with plain_ops():
        assert layer.plan == Plan("reference", "paths.plain_ops() needs plain torch ops")
    layer(torch.randn(5, 2, 3))
    assert layer.last_plan == layer.plan


@pytest.mark.parametrize("proj_size, instead", [(0, "loop"), (2, "reference")])
def test_last_plan_tells_a_call_that_left_the_planned_path(proj_size, instead):
    """A non-finite carried velocity keeps a call off torch's fused kernel (it would spread
    to every sequence); ``last_plan`` says where the call went and why."""
    layer = mrnn.MomentumLSTM(3, 4, proj_size=proj_size)
    velocity = torch.zeros(1, 2, 16)
    velocity[0, 1, 0] = float("nan")
    layer(torch.randn(5, 2, 3), rule_state=mrnn.RuleState(velocity, None, torch.zeros(2, dtype=torch.long)))
    assert layer.path == "fused" and layer.last_plan.path == instead
    assert "carried velocity has non-finite entries" in layer.last_plan.reason
    layer(torch.randn(5, 2, 3))
    assert layer.last_plan == layer.plan


def test_path_overrides_hold_in_their_own_thread_only():
    import threading

    from momentumrnn.paths import loop_engine, loop_engine_override, scan_backend, scan_backend_override

    probe, seen = torch.zeros(1), {}
    expected = {"scan": scan_backend(probe), "engine": loop_engine(probe)}
    with scan_backend_override("triton"), loop_engine_override("torch"):
        other = threading.Thread(target=lambda: seen.update(scan=scan_backend(probe), engine=loop_engine(probe)))
        other.start()
        other.join()
        assert (scan_backend(probe), loop_engine(probe)) == ("triton", "torch")
    assert seen == expected
