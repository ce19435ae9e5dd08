"""Learnable momentum and step size; the two initializations."""

import math

import pytest
import torch

import momentumrnn as mrnn
from conftest import LAYER_KEYS, layer_id


def test_learnable_parameters_are_named_and_start_at_the_given_values():
    layer = mrnn.AdamLSTM(3, 4, 2, bidirectional=True, learnable=True, momentum=0.3, step_size=2.0)
    raw = {n for n, _ in layer.named_parameters() if "_raw" in n}
    assert raw == {f"{h}_raw_l{l}{r}" for h in ("momentum", "step_size") for l in (0, 1) for r in ("", "_reverse")}
    hp = layer.hyperparameters(1, reverse=True)
    assert hp["momentum"].item() == pytest.approx(0.3)
    assert hp["step_size"].item() == pytest.approx(2.0)
    assert hp["beta"] == 0.1    # beta stays fixed


@pytest.mark.parametrize("key", LAYER_KEYS, ids=layer_id)
def test_learnable_hyperparameters_get_gradients_and_stay_in_range(key):
    layer = mrnn.LAYERS[key](3, 4, learnable=True)
    raw = [p for n, p in layer.named_parameters() if "_raw" in n]
    assert len(raw) == len(layer.rule_type.learnable)
    optimizer = torch.optim.SGD(raw, lr=5.0)
    x = torch.randn(6, 2, 3)
    for step in range(5):
        optimizer.zero_grad()
        layer(x)[0].pow(2).sum().backward()
        if step == 0:
            assert all(p.grad is not None and p.grad.abs().item() > 0 for p in raw)
        optimizer.step()
    hp = layer.hyperparameters()
    if "momentum" in layer.rule_type.learnable:
        assert 0.0 < hp["momentum"].item() < 1.0
    assert hp["step_size"].item() > 0.0
    assert all(torch.isfinite(p).all() for p in raw)


def test_fixed_hyperparameters_add_no_parameters_and_reset_restores_learnable():
    fixed = mrnn.MomentumLSTM(3, 4)
    assert all("_raw" not in n for n, _ in fixed.named_parameters())
    layer = mrnn.MomentumLSTM(3, 4, learnable=True, momentum=0.4, step_size=0.9)
    with torch.no_grad():
        layer.momentum_raw_l0.fill_(3.0)
    layer.reset_parameters()
    assert layer.hyperparameters()["momentum"].item() == pytest.approx(0.4)


def test_learnable_state_dict_still_loads_torch_weights_non_strictly():
    layer = mrnn.MomentumLSTM(3, 4, learnable=True)
    result = layer.load_state_dict(torch.nn.LSTM(3, 4).state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["momentum_raw_l0", "step_size_raw_l0"]
    assert result.unexpected_keys == []


@pytest.mark.parametrize("cls", [mrnn.MomentumLSTM, mrnn.NesterovLSTM, mrnn.AdamLSTM])
def test_paper_init(cls):
    layer = cls(3, 5, 2, bidirectional=True, init="paper", forget_bias=-4.0)
    for suffix in ("_l0", "_l1_reverse"):
        w_ih = getattr(layer, "weight_ih" + suffix)
        torch.testing.assert_close(w_ih.T @ w_ih, torch.eye(w_ih.size(1)), atol=1e-5, rtol=0)
        w_hh = getattr(layer, "weight_hh" + suffix)
        torch.testing.assert_close(w_hh[:5], torch.eye(5))
        assert torch.all(w_hh[5:] == 0)
        for bias in ("bias_ih", "bias_hh"):
            b = getattr(layer, bias + suffix)
            assert torch.all(b[5:10] == -4.0)
            assert torch.all(b[:5] == 0) and torch.all(b[10:] == 0)


def test_paper_init_of_the_gru_sets_the_reset_gate_biases_to_one():
    """As the authors' GRU: the reset gate's block (the first H rows) of both biases is 1,
    the update and candidate blocks 0; the RNN has no gate and zero biases."""
    gru = mrnn.MomentumGRU(3, 5, init="paper")
    for bias in (gru.bias_ih_l0, gru.bias_hh_l0):
        assert torch.all(bias[:5] == 1) and torch.all(bias[5:] == 0)
    rnn = mrnn.MomentumRNN(3, 5, init="paper")
    assert torch.all(rnn.bias_ih_l0 == 0) and torch.all(rnn.bias_hh_l0 == 0)


def test_torch_init_bounds_and_defaults():
    layer = mrnn.MomentumLSTM(3, 16, 2)
    bound = 1 / math.sqrt(16)
    for p in layer.parameters():
        assert p.abs().max() <= bound
        assert p.std() > bound / 4      # not constant
    assert layer.hyperparameter_values == {"momentum": 0.6, "step_size": 0.6}
    assert mrnn.AdamLSTM(1, 2).hyperparameter_values == {"momentum": 0.6, "step_size": 0.6, "beta": 0.1}
    assert mrnn.RMSPropLSTM(1, 2).hyperparameter_values == {"step_size": 0.6, "beta": 0.9}
    assert mrnn.NesterovLSTM(1, 2).hyperparameter_values == {"step_size": 1.0, "restart": 2}


def test_registry_covers_every_rule_and_recurrence():
    assert mrnn.LAYERS["lstm", "adam"] is mrnn.AdamLSTM
    assert mrnn.CELLS["gru", "restart"] is mrnn.RestartGRUCell
    assert len(mrnn.LAYERS) == len(mrnn.CELLS) == 14
    assert ("gru", "nesterov") not in mrnn.LAYERS


def test_repr_mentions_the_rule():
    assert "momentum=0.6, step_size=0.6" in repr(mrnn.MomentumLSTM(1, 2, 2))
    assert "nonlinearity='relu'" in repr(mrnn.MomentumRNN(1, 2, nonlinearity="relu"))
