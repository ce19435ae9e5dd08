"""Every layer and cell against tests/paper_reference.py (the paper's equations), float64."""

import pytest
import torch

import momentumrnn as mrnn
from conftest import ACTIVE, CELL_KEYS, LAYER_KEYS, layer_id
from paper_reference import reference_layer

TOL = dict(atol=1e-12, rtol=1e-10)


def compare_layer(key, hp, num_layers, bidirectional, with_h0, init="torch", learnable=False, T=9):
    kind, rule = key
    layer = mrnn.LAYERS[key](3, 4, num_layers, bidirectional=bidirectional, dtype=torch.float64,
                             init=init, learnable=learnable, **hp)
    with torch.no_grad():   # make biases visible even with the paper init's zeros
        for name, p in layer.named_parameters():
            if name.startswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(T, 2, 3, dtype=torch.float64)
    stacks = num_layers * (2 if bidirectional else 1)
    h0 = torch.randn(stacks, 2, 4, dtype=torch.float64) if with_h0 else None
    c0 = torch.randn(stacks, 2, 4, dtype=torch.float64) if with_h0 else None
    hx = None if not with_h0 else ((h0, c0) if kind == "lstm" else h0)
    out, hidden, rule_state = layer(x, hx, return_rule_state=True)
    assert out.shape == (T, 2, 4 * (2 if bidirectional else 1))
    per_stack = {(l, r): {k: (v.item() if torch.is_tensor(v) else v) for k, v in layer.hyperparameters(l, r).items()}
                 for l in range(num_layers) for r in ([False, True] if bidirectional else [False])}
    ref_out, h_n, c_n, v_n, m_n = reference_layer(kind, rule, per_stack, dict(layer.named_parameters()), x,
                                                  num_layers, bidirectional, h0, c0)
    torch.testing.assert_close(out, ref_out, **TOL)
    if kind == "lstm":
        torch.testing.assert_close(hidden[0], h_n, **TOL)
        torch.testing.assert_close(hidden[1], c_n, **TOL)
    else:
        torch.testing.assert_close(hidden, h_n, **TOL)
    torch.testing.assert_close(rule_state.velocity, v_n, **TOL)
    if rule in ("adam", "rmsprop"):
        torch.testing.assert_close(rule_state.second_moment, m_n, **TOL)
    else:
        assert rule_state.second_moment is None
    assert rule_state.steps.tolist() == [T, T]


@pytest.mark.parametrize("key", LAYER_KEYS, ids=layer_id)
@pytest.mark.parametrize("num_layers,bidirectional,with_h0", [(1, False, False), (2, True, True)])
def test_layer_matches_paper_equations(key, num_layers, bidirectional, with_h0):
    compare_layer(key, ACTIVE[key[1]], num_layers, bidirectional, with_h0)


@pytest.mark.parametrize("key", LAYER_KEYS, ids=layer_id)
def test_layer_defaults_and_paper_init_match(key):
    """The default (paper MNIST) hyperparameters, with init='paper'."""
    compare_layer(key, {}, 2, False, False, init="paper")


@pytest.mark.parametrize("key", [k for k in LAYER_KEYS if k[1] in ("nesterov", "restart")], ids=layer_id)
@pytest.mark.parametrize("restart", [0, 1, 2, 5])
def test_restart_schedules(key, restart):
    compare_layer(key, {"step_size": 0.5, "restart": restart}, 1, True, True, T=11)


@pytest.mark.parametrize("key", LAYER_KEYS, ids=layer_id)
def test_learnable_layer_matches_paper_equations(key):
    compare_layer(key, ACTIVE[key[1]], 2, True, False, learnable=True)


def test_nesterov_restart_two_alternates_zero_and_quarter():
    """The paper: with r = 2 the coefficient alternates 0, 1/4."""
    from momentumrnn.rules import restart_coefficient
    k = torch.arange(1, 7)
    assert restart_coefficient(k, 2, torch.float64).squeeze(-1).tolist() == [0.0, 0.25] * 3
    assert restart_coefficient(k, 0, torch.float64).squeeze(-1).tolist() == [(j - 1) / (j + 2) for j in range(1, 7)]


@pytest.mark.parametrize("key", CELL_KEYS, ids=lambda k: mrnn.CELLS[k].__name__)
def test_cell_steps_match_paper_equations(key):
    kind, rule = key
    cell = mrnn.CELLS[key](3, 4, dtype=torch.float64, **ACTIVE[rule])
    x = torch.randn(8, 2, 3, dtype=torch.float64)
    hx, rule_state, outs = None, None, []
    for t in range(x.size(0)):
        hx, rule_state = cell(x[t], hx, rule_state=rule_state, return_rule_state=True)
        outs.append(hx[0] if kind == "lstm" else hx)
    params = {name + "_l0": p for name, p in cell.named_parameters()}
    ref_out, h_n, c_n, v_n, m_n = reference_layer(kind, rule, ACTIVE[rule], params, x, 1, False)
    torch.testing.assert_close(torch.stack(outs), ref_out, **TOL)
    torch.testing.assert_close(rule_state.velocity, v_n[0], **TOL)
    if kind == "lstm":
        torch.testing.assert_close(hx[1], c_n[0], **TOL)
    assert rule_state.steps.tolist() == [8, 8]


@pytest.mark.parametrize("key", CELL_KEYS, ids=lambda k: mrnn.CELLS[k].__name__)
def test_cell_unbatched_equals_batch_of_one(key):
    cell = mrnn.CELLS[key](3, 4, dtype=torch.float64)
    x = torch.randn(3, dtype=torch.float64)
    hx, rs = cell(x, return_rule_state=True)
    hx, rs = cell(x, hx, rule_state=rs, return_rule_state=True)
    hx_b, rs_b = cell(x[None], return_rule_state=True)
    hx_b, rs_b = cell(x[None], hx_b, rule_state=rs_b, return_rule_state=True)
    first = (lambda h: h[0]) if key[0] == "lstm" else (lambda h: h)
    torch.testing.assert_close(first(hx), first(hx_b)[0])
    torch.testing.assert_close(rs.velocity, rs_b.velocity[0])
    assert rs.steps.shape == () and rs.steps.item() == 2
