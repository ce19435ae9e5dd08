"""Autocast: the layers compute in float32 inside (``momentumrnn.autocast``), forward and
backward, on every path, and return the dtypes torch's layers and cells return under the
same autocast (measured here against torch, side by side)."""

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
    computation on the same values, with the boundary cast to the dtype torch returns."""
    params = list(layer.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n, rs = layer(x, hx, return_rule_state=True)
        loss = out.float().pow(2).sum() + (h_n[1] if lstm else h_n).float().sum()
    grads = torch.autograd.grad(loss, params)            # backward outside the region, as torch advises
    dtype = out.dtype
    h_cast = tuple(h.float() for h in hx) if lstm else hx.float()
    out32, h32, rs32 = layer(x.float(), h_cast, return_rule_state=True)
    loss32 = out32.to(dtype).float().pow(2).sum() + (h32[1] if lstm else h32).to(dtype).float().sum()
    grads32 = torch.autograd.grad(loss32, params)
    assert torch.equal(out, out32.to(dtype))
    for got, want in zip(h_n if lstm else (h_n,), h32 if lstm else (h32,)):
        assert got.dtype == dtype and torch.equal(got, want.to(dtype))
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
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x, hx)[0].dtype == (torch.float32 if lstm else torch.bfloat16)     # torch's: c_0 is float32


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


# ---------------------------------------------------------------- the dtypes torch returns

LAYER_CLASSES = [c for c in (getattr(mrnn, n) for n in mrnn.__all__)
                 if isinstance(c, type) and issubclass(c, mrnn.RecurrentLayer) and c is not mrnn.RecurrentLayer]
CELL_CLASSES = [c for c in (getattr(mrnn, n) for n in mrnn.__all__)
                if isinstance(c, type) and issubclass(c, mrnn.RecurrentCell) and c is not mrnn.RecurrentCell]
AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]         # torch autocasts CPU to either
TORCH_KIND = {"rnn": "RNN", "modrelu": "RNN", "lstm": "LSTM", "gru": "GRU"}   # the orthogonal RNNs are RNNs


def _ours(cls, dtype=None):
    if cls in CELL_CLASSES:
        return cls(3, 4, dtype=dtype, **ACTIVE.get(cls.rule_type.name, {}))
    if cls.recurrence_type.name == "modrelu":
        return cls(3, 4, num_layers=2).to(dtype or torch.float32)
    return cls(3, 4, num_layers=2, bidirectional=True, dtype=dtype, **ACTIVE.get(cls.rule_type.name, {}))


def _torch_twin(cls, dtype=None):
    name = TORCH_KIND[cls.recurrence_type.name]
    if cls in CELL_CLASSES:
        return getattr(torch.nn, name + "Cell")(3, 4, dtype=dtype)
    return getattr(torch.nn, name)(3, 4, num_layers=2, bidirectional=cls.recurrence_type.name != "modrelu",
                                   dtype=dtype)


def _dtypes(result):
    """The dtypes of ``(output, h)`` or ``(output, (h, c))`` or a cell's ``h`` / ``(h, c)``."""
    if isinstance(result, torch.Tensor):
        return result.dtype
    return tuple(_dtypes(r) for r in result)


def _cases(cls, low):
    """``(input dtype, hx dtypes or None)``: every dtype autocast takes, the state absent,
    in float32, in the autocast dtype, in the other half dtype, and LSTM's h and c apart."""
    other = torch.float16 if low == torch.bfloat16 else torch.bfloat16
    cases = [(x, None) for x in (torch.float32, low, other)]
    states = 2 if cls.recurrence_type.name == "lstm" else 1
    for x in (torch.float32, low):
        cases += [(x, (h,) * states) for h in (torch.float32, low, other)]
    if states == 2:
        cases += [(low, (low, torch.float32)), (low, (torch.float32, low)), (torch.float32, (other, low))]
    return cases


def _run(module, x_dtype, hx_dtypes, autocast_dtype, cell):
    x = torch.randn((2, 3) if cell else (5, 2, 3), dtype=x_dtype)
    hx = None
    if hx_dtypes is not None:
        shape = (2, 4) if cell else (module.num_layers * (2 if module.bidirectional else 1), 2, 4)
        hx = tuple(torch.randn(shape, dtype=d) for d in hx_dtypes)
        hx = hx if len(hx) == 2 else hx[0]
    with torch.autocast("cpu", dtype=autocast_dtype):
        return module(x, hx) if hx is not None else module(x)


@pytest.mark.parametrize("autocast_dtype", AUTOCAST_DTYPES, ids=str)
@pytest.mark.parametrize("cls", LAYER_CLASSES + CELL_CLASSES, ids=lambda c: c.__name__)
def test_output_dtypes_are_torchs(cls, autocast_dtype):
    """Each layer and cell returns, for every combination of input and state dtypes, the
    dtypes torch's layer or cell of the same recurrence returns under the same autocast.
    torch's CPU nn.LSTM on float32 input takes oneDNN's path, which raises on a processor
    without bfloat16 instructions; the reference is torch's path without oneDNN (that of
    its LSTMCell too)."""
    cell = cls in CELL_CLASSES
    ours, twin = _ours(cls), _torch_twin(cls)
    for x_dtype, hx_dtypes in _cases(cls, autocast_dtype):
        with torch.backends.mkldnn.flags(enabled=False):
            want = _dtypes(_run(twin, x_dtype, hx_dtypes, autocast_dtype, cell))
        got = _dtypes(_run(ours, x_dtype, hx_dtypes, autocast_dtype, cell))
        assert got == want, (x_dtype, hx_dtypes)


@pytest.mark.parametrize("cls", LAYER_CLASSES + CELL_CLASSES, ids=lambda c: c.__name__)
def test_a_float64_model_stays_float64_under_autocast(cls):
    """Autocast leaves float64 alone, torch's layers and ours: the output, hidden state and
    rule state are float64 and equal the computation without autocast."""
    cell = cls in CELL_CLASSES
    ours, twin = _ours(cls, torch.float64), _torch_twin(cls, torch.float64)
    x = torch.randn((2, 3) if cell else (5, 2, 3), dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _dtypes(twin(x))
        *got, rs = ours(x, return_rule_state=True)
    *plain, _ = ours(x, return_rule_state=True)
    got = got[0] if cell else tuple(got)
    assert _dtypes(got) == want
    assert all(d == torch.float64 for d in torch.utils._pytree.tree_leaves(want))
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(plain), strict=True):
        assert torch.equal(a, b)
    assert rs.velocity is None or rs.velocity.dtype == torch.float64
