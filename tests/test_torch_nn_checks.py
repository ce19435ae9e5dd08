"""The checks of torch's RNN tests in ``test/test_nn.py`` that run on a CPU, made on the
momentum classes at neutral settings (``momentum=0, step_size=1``, where they compute
torch's recurrences): what a drop-in for ``nn.RNN``/``LSTM``/``GRU`` and their cells must
do at the edges of the contract."""

import copy
import io
import re

import pytest
import torch
import torch.nn.utils.rnn as rnn_utils
from torch import nn

import momentumrnn as mrnn

NEUTRAL = dict(momentum=0.0, step_size=1.0)
LAYERS = {"RNN": mrnn.MomentumRNN, "LSTM": mrnn.MomentumLSTM, "GRU": mrnn.MomentumGRU}
CELLS = {"RNNCell": mrnn.MomentumRNNCell, "LSTMCell": mrnn.MomentumLSTMCell, "GRUCell": mrnn.MomentumGRUCell}


def make(name, *args, **kwargs):
    return {**LAYERS, **CELLS}[name](*args, **NEUTRAL, **kwargs)


def test_nonlinearity_attribute_argument_and_error():
    assert make("RNN", 1, 10).nonlinearity == "tanh"
    assert make("RNN", 1, 10, nonlinearity="relu").nonlinearity == "relu"
    assert make("RNN", 2, 3, 1, "relu").nonlinearity == "relu"                  # the 4th positional argument
    with pytest.raises(ValueError, match="Unknown nonlinearity"):
        make("RNN", 1, 10, nonlinearity="garbage")


@pytest.mark.parametrize("name, count, kwargs", [("weight_ih_l0", 4, {}), ("weight_hr_l0", 5, {"proj_size": 16})])
def test_weight_norm_shows_in_flat_weights(name, count, kwargs):
    layer = make("LSTM", 32, 32, **kwargs)
    x = torch.randn(3, 2, 32)
    want = layer(x)[0]
    layer = torch.nn.utils.weight_norm(layer, name=name)
    assert sum(isinstance(p, nn.Parameter) for p in layer._flat_weights) == count - 1
    torch.testing.assert_close(layer(x)[0], want)
    layer = torch.nn.utils.remove_weight_norm(layer, name=name)
    assert sum(isinstance(p, nn.Parameter) for p in layer._flat_weights) == count
    assert layer._parameters[name] is not None and name + "_v" not in layer._parameters
    assert name in dict(layer.named_parameters())
    torch.testing.assert_close(layer(x)[0], want)


@pytest.mark.parametrize("bias", [True, False])
def test_cells_feed_back_and_hidden_size_zero(bias):
    x = torch.randn(3, 10)
    for name in ("RNNCell", "GRUCell"):
        cell, hx = make(name, 10, 20, bias=bias), torch.randn(3, 20)
        for _ in range(6):
            hx = cell(x, hx)
        hx.sum().backward()
    lstm, hx, cx = make("LSTMCell", 10, 20, bias=bias), torch.randn(3, 20), torch.randn(3, 20)
    for _ in range(6):
        hx, cx = lstm(x, (hx, cx))
    (hx + cx).sum().backward()
    for cell in (make("RNNCell", 10, 0, nonlinearity="relu"), make("RNNCell", 10, 0), make("GRUCell", 10, 0)):
        assert cell(x, torch.randn(3, 0)).shape == (3, 0)


def test_cells_do_not_broadcast_and_raise_runtime_errors():
    x, good = torch.randn(3, 10), torch.randn(3, 20)
    for bad, inputs in ((torch.randn(1, 20), x), (torch.randn(3, 1), x), (good, torch.randn(3, 1))):
        for call in (lambda: make("RNNCell", 10, 20)(inputs, bad), lambda: make("GRUCell", 10, 20)(inputs, bad),
                     lambda: make("LSTMCell", 10, 20)(inputs, (bad, good)),
                     lambda: make("LSTMCell", 10, 20)(inputs, (good, bad))):
            with pytest.raises(RuntimeError):
                call()


def test_lstm_cell_gradient_through_either_output_alone():
    cell = make("LSTMCell", 2, 3, dtype=torch.float64)
    s = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    for i in range(2):
        s.grad = None
        cell(s)[i].sum().backward()
        assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name, kwargs, hidden", [
    ("LSTM", {}, (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
    ("LSTM", {"proj_size": 10}, (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
    ("GRU", {}, torch.zeros(1, 2, 19)), ("RNN", {}, torch.zeros(1, 2, 19))])
def test_forward_errors_in_torchs_words(name, kwargs, hidden):
    layer = make(name, 10, 20, batch_first=True, **kwargs)
    with pytest.raises(RuntimeError, match="Expected hidden.*size.*got"):
        layer(torch.randn(2, 3, 10), hidden)
    with pytest.raises(RuntimeError, match=re.escape("input.size(-1) must be equal to input_size")):
        layer(torch.randn(2, 3, 3))


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_argument_checks_raise_runtime_errors(name):
    cases = [((6, 7, 3), (2, 4, 5)), ((6, 4, 3), (2, 7, 5)), ((6, 4, 7), (2, 4, 5)), ((6, 4, 3), (2, 4, 7)),
             ((6, 4, 3), (7, 4, 5))]
    for input_shape, hidden_shape in cases:
        x, h = torch.randn(input_shape), torch.randn(hidden_shape)
        if name == "LSTM":
            good = torch.randn(2, 4, 5)
            hxs = [(h, good), (good, h)] if hidden_shape != (2, 4, 5) else [(h, h)]
        else:
            hxs = [h]
        for hx in hxs:
            with pytest.raises(RuntimeError):
                make(name, 3, 5, 2)(x, hx)


def test_projection_argument_checks():
    x, h, c = torch.randn(6, 4, 3), torch.randn(2, 4, 2), torch.randn(2, 4, 5)
    for xi, hi, ci in ((torch.randn(6, 7, 3), h, c), (x, torch.randn(2, 7, 2), torch.randn(2, 7, 5)),
                       (torch.randn(6, 4, 7), h, c), (x, torch.randn(2, 4, 7), torch.randn(2, 4, 7)),
                       (x, torch.randn(7, 4, 2), torch.randn(7, 4, 5)), (x, torch.randn(5, 4, 2), c),
                       (x, torch.randn(7, 4, 2), c), (x, h, torch.randn(7, 4, 5))):
        with pytest.raises(RuntimeError):
            make("LSTM", 3, 5, 2, proj_size=2)(xi, (hi, ci))
    for name in ("RNN", "GRU"):
        with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM, not RNN or GRU"):
            make(name, 30, 20, 2, proj_size=10)


def test_default_hidden_state_is_zero():
    x = torch.randn(10, 32, 30)
    for name in ("RNN", "GRU", "LSTM"):
        layer, h = make(name, 30, 20, 2), torch.zeros(2, 32, 20)
        torch.testing.assert_close(layer(x, (h, h) if name == "LSTM" else h), layer(x))
    for bidirectional in (False, True):
        layer = make("LSTM", 30, 20, 2, bidirectional=bidirectional, proj_size=10)
        d = 2 if bidirectional else 1
        torch.testing.assert_close(layer(x, (torch.zeros(2 * d, 32, 10), torch.zeros(2 * d, 32, 20))), layer(x))


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_empty_batch_and_empty_sequence(name):
    outs = make(name, input_size=3, hidden_size=4)(torch.zeros(5, 0, 3))
    assert outs[0].shape == (5, 0, 4)
    outs[0].sum().backward()
    for bidirectional in (True, False):
        with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0 in RNN"):
            make(name, 5, 6, bidirectional=bidirectional)(torch.ones(0, 10, 5))


def test_set_state_without_proj_size():
    model, x = make("LSTM", 2, 3), torch.randn(32, 5, 2)
    expected = model(x)
    state = model.__dict__
    del state["proj_size"]
    loaded = make("LSTM", 2, 3)
    loaded.__setstate__(state)
    torch.testing.assert_close(loaded(x), expected)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_backward_again_with_retain_graph(name):
    layer = make(name, 10, 20, num_layers=2, dtype=torch.float64)
    x = torch.randn(5, 6, 10, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    out[0].sum().backward(retain_graph=True)
    grads = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    for _ in range(3):
        layer.zero_grad()
        x.grad.zero_()
        out[0].sum().backward(retain_graph=True)
        for a, b in zip(grads, [x.grad] + [p.grad for p in layer.parameters()]):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_gradcheck_and_gradgradcheck(name, batch_first):
    layer = make(name, 2, 3, batch_first=batch_first, dtype=torch.float64)
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: layer(x)[0], (x,))
    assert torch.autograd.gradgradcheck(lambda x: layer(x)[0], (x,))


def test_double_backward_through_a_deep_batch_first_lstm():
    layer = make("LSTM", 10, 20, 20, batch_first=True, dtype=torch.float64)
    results = []
    for _ in range(2):
        x = torch.randn(1, 2, 10, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(0))
        (grad,) = torch.autograd.grad(layer(x)[0].sum(), x, create_graph=True)
        grad.sum().backward()
        results.append((grad.detach(), x.grad))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("proj_size", [0, 2])
@pytest.mark.parametrize("default_hidden", [True, False])
@pytest.mark.parametrize("enforce_sorted, lengths", [(True, [5]), (False, [5]), (True, [10, 10, 6, 2, 2, 1, 1]),
                                                     (False, [10, 10, 6, 2, 2, 1, 1]), (False, [2, 1, 3, 2, 10, 5, 3])])
def test_packed_sequences_equal_one_sequence_at_a_time(proj_size, default_hidden, enforce_sorted, lengths):
    batch, longest = len(lengths), max(lengths)
    x = torch.randn(longest, batch, 3, requires_grad=True)
    lstm = make("LSTM", 3, 4, bidirectional=True, num_layers=2, proj_size=proj_size)
    alone = copy.deepcopy(lstm)
    width = proj_size or 4
    hidden = None if default_hidden else (torch.randn(4, batch, width), torch.randn(4, batch, 4))
    outs, hiddens = [], []
    for i, length in enumerate(lengths):
        hi = None if default_hidden else tuple(h[:, i:i + 1].contiguous() for h in hidden)
        out, h = alone(x[:length, i:i + 1], hi)
        outs.append(torch.cat([out, out.new_zeros(longest - length, 1, out.size(-1))]))
        hiddens.append(h)
    seq_out, seq_hidden = torch.cat(outs, 1), tuple(torch.cat(h, 1) for h in zip(*hiddens))
    packed = rnn_utils.pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    packed_out, packed_hidden = lstm(packed, hidden)
    unpacked, unpacked_lengths = rnn_utils.pad_packed_sequence(packed_out)
    torch.testing.assert_close(packed_hidden, seq_hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(unpacked, seq_out, atol=1e-5, rtol=0)
    assert unpacked_lengths.tolist() == lengths
    seq_out.sum().backward()
    grad_x = x.grad.clone()
    x.grad.zero_()
    unpacked.sum().backward()
    torch.testing.assert_close(x.grad, grad_x, atol=1e-5, rtol=0)
    for p1, p2 in zip(lstm.parameters(), alone.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, atol=2e-4, rtol=0)


@pytest.mark.parametrize("p", [0, 0.276, 0.731, 1])
@pytest.mark.parametrize("train", [True, False])
def test_dropout_acts_between_layers_only(p, train):
    layer = make("RNN", 10, 1000, 2, bias=False, dropout=p, nonlinearity="relu", dtype=torch.float64).train(train)
    for name in ("weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"):
        getattr(layer, name).data.fill_(1)
    output, hy = layer(torch.ones(1, 1, 10, dtype=torch.float64), torch.zeros(2, 1, 1000, dtype=torch.float64))
    value = output[0, 0, 0].item()
    assert output.min() == output.max() and hy[0].min() == hy[0].max() and hy[1].min() == hy[1].max()
    assert hy[0, 0, 0] == 10 and hy[1, 0, 0] == value
    if p == 0 or not train:
        assert value == 10000
    elif p == 1:
        assert value == 0
    else:
        assert 8000 < value < 12000
        remainder = (value * (1 - p)) % 10
        assert min(remainder, 10 - remainder) < 1e-2


@pytest.mark.parametrize("p", [0, 0.1234])
@pytest.mark.parametrize("train", [True, False])
def test_dropout_state_across_calls_and_pickling(p, train):
    layer = make("RNN", 100, 100, 2, bias=False, dropout=p, nonlinearity="relu").train(train)
    x, hx = torch.rand(1, 1, 100), torch.rand(2, 1, 100)
    first, second = layer(x, hx), layer(x, hx)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    loaded.flatten_parameters()
    third = loaded(x, hx)
    same = p == 0 or not train
    assert torch.equal(first[0], second[0]) == same and torch.equal(first[0], third[0]) == same
    assert torch.equal(first[1], second[1]) == same and torch.equal(first[1], third[1]) == same


@pytest.mark.parametrize("train", [True, False])
def test_changing_dropout_takes_effect(train):
    layer = make("RNN", 100, 100, 2, dropout=0, nonlinearity="relu", dtype=torch.float64).train(train)
    x = torch.rand(3, 2, 100, dtype=torch.float64)
    previous = None
    for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
        layer.dropout = p
        first, second = layer(x), layer(x)
        assert torch.equal(first[0], second[0]) == (p in (0, 1) or not train)
        if previous is not None:
            assert torch.equal(first[0], previous) == (not train)
        previous = first[0]


def test_deleted_and_tied_weights():
    layer = make("LSTM", 10, 6, 2)
    x = torch.randn(3, 2, 10)
    want = layer(x)[0]
    weight = layer.weight_hh_l0
    del layer.weight_hh_l0
    assert not hasattr(layer, "weight_hh_l0")
    layer.to(torch.float32)
    layer.weight_hh_l0 = weight
    torch.testing.assert_close(layer(x)[0], want)
    for name in ("LSTM", "GRU", "RNN"):
        layer = make(name, 10, 20, batch_first=True, bidirectional=True)
        layer.bias_ih_l0_reverse = layer.bias_ih_l0
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        layer(torch.randn(5, 4, 10))[0].sum().backward()
        optimizer.step()
        assert layer.bias_ih_l0_reverse is layer.bias_ih_l0
