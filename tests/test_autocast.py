"""Autocast: the layers take and return the autocast dtype at their boundary and compute in
float32 inside (``momentumrnn.autocast``), forward and backward, on every path."""

import pytest
import torch

import momentumrnn as mrnn
from conftest import ACTIVE, CELL_KEYS, LAYER_KEYS, layer_id

PATHS = ["auto", "fused", "fused-drive", "loop", "triton-loop", "reference"]


def _needs_interpreter(impl):
    """The triton-loop path runs CPU tensors only under Triton's interpreter (conftest sets it)."""
    from momentumrnn.paths import triton_available
    from momentumrnn.triton_loop import _interpreting

    if impl == "triton-loop" and not (triton_available() and _interpreting()):
        pytest.skip("triton-loop runs CPU tensors under Triton's interpreter only")


def _layer(key, impl):
    _needs_interpreter(impl)
    try:
        return mrnn.LAYERS[key](3, 4, num_layers=2, bidirectional=True, impl=impl, **ACTIVE[key[1]])
    except ValueError:
        pytest.skip(f"{impl} is not a path of this rule")


def _check(layer, x, hx, lstm):
    """Under bfloat16 autocast: the output, hidden state and gradients equal the float32
    computation on the same values, with the boundary cast to bfloat16."""
    params = list(layer.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n, rs = layer(x, hx, return_rule_state=True)
        loss = out.float().pow(2).sum() + (h_n[1] if lstm else h_n).float().sum()
    grads = torch.autograd.grad(loss, params)            # backward outside the region, as torch advises
    h_cast = tuple(h.float() for h in hx) if lstm else hx.float()
    out32, h32, rs32 = layer(x.float(), h_cast, return_rule_state=True)
    loss32 = out32.bfloat16().float().pow(2).sum() + (h32[1] if lstm else h32).bfloat16().float().sum()
    grads32 = torch.autograd.grad(loss32, params)
    assert out.dtype == torch.bfloat16 and torch.equal(out, out32.bfloat16())
    for got, want in zip(h_n if lstm else (h_n,), h32 if lstm else (h32,)):
        assert got.dtype == torch.bfloat16 and torch.equal(got, want.bfloat16())
    assert rs.velocity.dtype == torch.float32                     # carried without loss
    torch.testing.assert_close(rs.velocity, rs32.velocity, rtol=0, atol=0)
    for got, want in zip(grads, grads32):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("key", LAYER_KEYS, ids=layer_id)
def test_layers_under_autocast_after_a_linear(key, impl):
    layer = _layer(key, impl)
    lstm = key[0] == "lstm"
    x = torch.nn.Linear(3, 3)(torch.randn(6, 2, 3)).bfloat16().detach()      # what a Linear gives under autocast
    h0 = torch.randn(4, 2, 4)
    hx = (h0.bfloat16(), h0.float()) if lstm else h0.bfloat16()               # either dtype is taken
    _check(layer, x, hx, lstm)


@pytest.mark.parametrize("impl", ["auto", "triton-loop"])
@pytest.mark.parametrize("cls", [mrnn.MomentumOrthogonalRNN, mrnn.AdamOrthogonalRNN])
def test_orthogonal_layers_under_autocast(cls, impl):
    _needs_interpreter(impl)
    _check(cls(3, 4, num_layers=2, impl=impl), torch.randn(6, 2, 3).bfloat16(), torch.randn(2, 2, 4).bfloat16(),
           False)


def test_a_model_trains_a_step_under_autocast():
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), mrnn.NesterovLSTM(8, 16, batch_first=True))
    head = torch.nn.Linear(16, 2)
    optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = model(torch.randn(4, 10, 3))
        loss = torch.nn.functional.cross_entropy(head(out[:, -1]), torch.tensor([0, 1, 0, 1]))
        loss.backward()                 # inside the region too: the hand-written backward passes turn it off
    optimizer.step()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("key", CELL_KEYS, ids=lambda k: mrnn.CELLS[k].__name__)
def test_cells_under_autocast(key):
    cell = mrnn.CELLS[key](3, 4, **ACTIVE[key[1]])
    x = torch.randn(2, 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hx, rs = cell(x, return_rule_state=True)
        hx, rs = cell(x, hx, rule_state=rs, return_rule_state=True)
    h32, rs32 = cell(x.float(), return_rule_state=True)
    h32, _ = cell(x.float(), tuple(h.bfloat16().float() for h in h32) if key[0] == "lstm" else h32.bfloat16().float(),
                  rule_state=rs32, return_rule_state=True)
    for got, want in zip(hx if key[0] == "lstm" else (hx,), h32 if key[0] == "lstm" else (h32,)):
        assert got.dtype == torch.bfloat16 and torch.equal(got, want.bfloat16())
    assert rs.velocity.dtype == torch.float32
