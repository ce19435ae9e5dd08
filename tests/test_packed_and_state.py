"""Packed sequences, carried state across chunks (truncated BPTT), unbatched input."""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import momentumrnn as mrnn
from conftest import ACTIVE, LAYER_IMPLS, LAYER_KEYS, layer_id, layer_impl_id

TOL = dict(atol=1e-12, rtol=1e-10)


def hidden_list(hidden):
    return list(hidden) if isinstance(hidden, tuple) else [hidden]


@pytest.mark.parametrize("key", LAYER_KEYS, ids=layer_id)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_equals_each_sequence_alone(key, bidirectional):
    layer = mrnn.LAYERS[key](3, 4, 2, bidirectional=bidirectional, dtype=torch.float64, **ACTIVE[key[1]])
    lengths = [4, 9, 1, 6]
    x = torch.randn(9, 4, 3, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    out, hidden, rs = layer(packed, return_rule_state=True)
    padded, out_lengths = pad_packed_sequence(out)
    assert out_lengths.tolist() == lengths
    assert rs.steps.tolist() == lengths
    for b, n in enumerate(lengths):
        alone_out, alone_hidden, alone_rs = layer(x[:n, b:b + 1], return_rule_state=True)
        torch.testing.assert_close(padded[:n, b:b + 1], alone_out, **TOL)
        assert torch.all(padded[n:, b] == 0)
        for got, want in zip(hidden_list(hidden), hidden_list(alone_hidden)):
            torch.testing.assert_close(got[:, b:b + 1], want, **TOL)
        torch.testing.assert_close(rs.velocity[:, b:b + 1], alone_rs.velocity, **TOL)
        if rs.second_moment is not None:
            torch.testing.assert_close(rs.second_moment[:, b:b + 1], alone_rs.second_moment, **TOL)


@pytest.mark.parametrize("key", LAYER_KEYS, ids=layer_id)
@pytest.mark.parametrize("split", [1, 4, 5])
def test_two_chunks_with_carried_state_equal_one_run(key, split):
    layer = mrnn.LAYERS[key](3, 4, 2, batch_first=True, dtype=torch.float64, **ACTIVE[key[1]])
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    out, hidden, rs = layer(x, return_rule_state=True)
    out1, hidden1, rs1 = layer(x[:, :split], return_rule_state=True)
    out2, hidden2, rs2 = layer(x[:, split:], hidden1, rule_state=rs1, return_rule_state=True)
    torch.testing.assert_close(torch.cat([out1, out2], dim=1), out, **TOL)
    for got, want in zip(hidden_list(hidden2), hidden_list(hidden)):
        torch.testing.assert_close(got, want, **TOL)
    for got, want in zip(rs2, rs):
        if want is not None:
            torch.testing.assert_close(got, want, **TOL)
    assert rs2.steps.tolist() == [9, 9]


def test_chunks_without_rule_state_differ():
    """Dropping the rule state between chunks restarts momentum: the carry matters."""
    layer = mrnn.MomentumLSTM(3, 4, dtype=torch.float64)
    x = torch.randn(8, 2, 3, dtype=torch.float64)
    out, _ = layer(x)
    _, hidden1 = layer(x[:4])
    out2, _ = layer(x[4:], hidden1)
    assert not torch.allclose(out2, out[4:], atol=1e-6)


@pytest.mark.parametrize("key", LAYER_KEYS, ids=layer_id)
def test_packed_chunks_with_carried_state(key):
    """Carrying state works per sequence with packed chunks of different lengths."""
    layer = mrnn.LAYERS[key](3, 4, dtype=torch.float64, **ACTIVE[key[1]])
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    first = pack_padded_sequence(x[:3], torch.tensor([3, 2]), enforce_sorted=False)
    _, hidden1, rs1 = layer(first, return_rule_state=True)
    assert rs1.steps.tolist() == [3, 2]
    # sequence 0 continues from step 4, sequence 1 from step 3 (it had 2 valid steps so far)
    rest = [x[3:, 0], x[2:, 1]]
    out0, _ = layer(x[:, 0:1])
    out1, _ = layer(x[:, 1:2])
    padded = torch.nn.utils.rnn.pad_sequence(rest)
    second = pack_padded_sequence(padded, torch.tensor([4, 5]), enforce_sorted=False)
    out, hidden2, rs2 = layer(second, hidden1, rule_state=rs1, return_rule_state=True)
    padded_out, _ = pad_packed_sequence(out)
    torch.testing.assert_close(padded_out[:4, 0], out0[3:, 0], **TOL)
    torch.testing.assert_close(padded_out[:5, 1], out1[2:, 0], **TOL)
    assert rs2.steps.tolist() == [7, 7]


TORCH_LAYERS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


@pytest.mark.parametrize("case", LAYER_IMPLS, ids=layer_impl_id)
def test_packed_batch_of_no_sequences_as_torch(case):
    """``batch_sizes`` all zero (steps of no sequences): empty output, hidden and rule state on
    every path, with the shapes and ``batch_sizes`` of ``torch.nn.LSTM``'s (the fused paths
    used to refuse to pack it)."""
    key, impl = case
    layer = mrnn.LAYERS[key](3, 4, 2, bidirectional=True, impl=impl, **ACTIVE[key[1]])
    theirs = TORCH_LAYERS[key[0]](3, 4, 2, bidirectional=True)
    sequence = PackedSequence(torch.randn(0, 3), torch.tensor([0, 0]))
    out, hidden, rs = layer(sequence, return_rule_state=True)
    want_out, want_hidden = theirs(sequence)
    assert out.data.shape == want_out.data.shape == (0, 8)
    assert torch.equal(out.batch_sizes, want_out.batch_sizes)
    assert out.sorted_indices is want_out.sorted_indices is None
    for got, want in zip(hidden_list(hidden), hidden_list(want_hidden)):
        assert got.shape == want.shape == (4, 0, 4)
    assert rs.velocity.shape == (4, 0, layer.recurrence.gates * 4) and rs.steps.shape == (0,)
    (out.data.sum() + sum(h.sum() for h in hidden_list(hidden))).backward()
    assert layer(sequence, hidden, rule_state=rs)[0].data.shape == (0, 8)


@pytest.mark.parametrize("key", LAYER_KEYS, ids=layer_id)
def test_packed_input_without_steps_raises_as_torch(key):
    """Empty ``batch_sizes`` (no steps): torch's layers raise ``IndexError``; ours too, in words."""
    sequence = PackedSequence(torch.randn(0, 3), torch.tensor([], dtype=torch.long))
    with pytest.raises(IndexError):
        TORCH_LAYERS[key[0]](3, 4)(sequence)
    for kind in (IndexError, mrnn.InputError):
        with pytest.raises(kind, match="PackedSequence.batch_sizes is empty: the packed input has no time steps"):
            mrnn.LAYERS[key](3, 4)(sequence)


@pytest.mark.parametrize("key", LAYER_KEYS, ids=layer_id)
def test_unbatched_equals_batch_of_one(key):
    layer = mrnn.LAYERS[key](3, 4, 2, bidirectional=True, dtype=torch.float64, **ACTIVE[key[1]])
    x = torch.randn(6, 3, dtype=torch.float64)
    out, hidden, rs = layer(x, return_rule_state=True)
    out_b, hidden_b, rs_b = layer(x[:, None], return_rule_state=True)
    torch.testing.assert_close(out, out_b[:, 0], **TOL)
    for got, want in zip(hidden_list(hidden), hidden_list(hidden_b)):
        torch.testing.assert_close(got, want[:, 0], **TOL)
    torch.testing.assert_close(rs.velocity, rs_b.velocity[:, 0], **TOL)
    assert rs.steps.shape == ()
    out2, _, rs2 = layer(x, hidden, rule_state=rs, return_rule_state=True)   # unbatched state carries too
    assert rs2.steps.item() == 12 and out2.shape == out.shape


def test_rule_state_detach_cuts_the_graph():
    layer = mrnn.AdamLSTM(3, 4)
    _, hidden, rs = layer(torch.randn(5, 2, 3), return_rule_state=True)
    assert rs.velocity.requires_grad
    detached = rs.detach()
    assert not detached.velocity.requires_grad and not detached.second_moment.requires_grad
    assert torch.equal(detached.steps, rs.steps)


def test_dropout_between_layers_only_in_training():
    layer = mrnn.MomentumLSTM(3, 8, 2, dropout=0.5)
    x = torch.randn(5, 2, 3)
    layer.eval()
    assert torch.equal(layer(x)[0], layer(x)[0])
    layer.train()
    torch.manual_seed(1)
    a = layer(x)[0]
    torch.manual_seed(2)
    b = layer(x)[0]
    assert not torch.allclose(a, b)
