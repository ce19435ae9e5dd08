"""At their neutral settings the layers are torch's own layers (float32, 1e-5)."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import momentumrnn as mrnn
from conftest import layer_id

TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
# Adam and RMSProp have no neutral setting (they divide by sqrt(m)): see test_reference.py.
NEUTRAL = {
    "momentum": {"momentum": 0.0, "step_size": 1.0},
    "restart": {"step_size": 1.0, "restart": 1},          # coefficient (k-1)/(k+2) is 0 at k = 1
    "nesterov": {"step_size": 1.0, "restart": 1},         # pre = U h + b_hh - u: torch with -W_ih, -b_ih
}
NEUTRAL_KEYS = [k for k in sorted(mrnn.LAYERS) if k[1] in NEUTRAL]
ATOL = 1e-5


def make_pair(key, num_layers=1, bidirectional=False, batch_first=False, bias=True, nonlinearity="tanh"):
    kind, rule = key
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    if kind == "rnn":
        kwargs["nonlinearity"] = nonlinearity
    ours = mrnn.LAYERS[key](3, 5, **kwargs, **NEUTRAL[rule])
    theirs = TORCH[kind](3, 5, **kwargs)
    state = ours.state_dict()
    if rule == "nesterov":
        state = {k: -v if "_ih_" in k else v for k, v in state.items()}
    theirs.load_state_dict(state)
    return ours, theirs


def assert_same(a, b):
    if isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


CONFIGS = list(itertools.product([1, 2], [False, True], [False, True]))


@pytest.mark.parametrize("key", NEUTRAL_KEYS, ids=layer_id)
@pytest.mark.parametrize("num_layers,bidirectional,batch_first", CONFIGS)
def test_batched_equals_torch(key, num_layers, bidirectional, batch_first):
    ours, theirs = make_pair(key, num_layers, bidirectional, batch_first)
    x = torch.randn(4, 7, 3) if batch_first else torch.randn(7, 4, 3)
    stacks = num_layers * (2 if bidirectional else 1)
    h0 = torch.randn(stacks, 4, 5)
    hx = (h0, torch.randn(stacks, 4, 5)) if key[0] == "lstm" else h0
    assert_same(ours(x), theirs(x))
    assert_same(ours(x, hx), theirs(x, hx))


@pytest.mark.parametrize("key", NEUTRAL_KEYS, ids=layer_id)
def test_unbatched_equals_torch(key):
    ours, theirs = make_pair(key, 2, True)
    x = torch.randn(6, 3)
    assert_same(ours(x), theirs(x))


@pytest.mark.parametrize("key", NEUTRAL_KEYS, ids=layer_id)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_equals_torch(key, bidirectional):
    ours, theirs = make_pair(key, 2, bidirectional)
    lengths = torch.tensor([3, 7, 1, 5])
    packed = pack_padded_sequence(torch.randn(7, 4, 3), lengths, enforce_sorted=False)
    out, hidden = ours(packed)
    ref_out, ref_hidden = theirs(packed)
    assert torch.equal(out.batch_sizes, ref_out.batch_sizes)
    assert torch.equal(out.sorted_indices, ref_out.sorted_indices)
    assert_same(out.data, ref_out.data)
    assert_same(hidden, ref_hidden)
    assert_same(pad_packed_sequence(out)[0], pad_packed_sequence(ref_out)[0])


@pytest.mark.parametrize("key", [("rnn", "momentum"), ("rnn", "nesterov")], ids=layer_id)
def test_relu_rnn_equals_torch(key):
    ours, theirs = make_pair(key, 2, True, nonlinearity="relu")
    x = torch.randn(5, 2, 3)
    assert_same(ours(x), theirs(x))


@pytest.mark.parametrize("key", [("lstm", "momentum"), ("gru", "restart")], ids=layer_id)
def test_no_bias_equals_torch(key):
    ours, theirs = make_pair(key, 2, False, bias=False)
    x = torch.randn(5, 2, 3)
    assert_same(ours(x), theirs(x))


@pytest.mark.parametrize("key", sorted(mrnn.LAYERS), ids=layer_id)
def test_state_dict_loads_both_ways(key):
    kind = key[0]
    theirs = TORCH[kind](3, 5, 2, batch_first=True, bidirectional=True)
    ours = mrnn.LAYERS[key](3, 5, 2, batch_first=True, bidirectional=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor)
    fresh = TORCH[kind](3, 5, 2, batch_first=True, bidirectional=True)
    fresh.load_state_dict(mrnn.LAYERS[key](3, 5, 2, batch_first=True, bidirectional=True).state_dict())
