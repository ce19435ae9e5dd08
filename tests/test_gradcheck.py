"""torch.autograd.gradcheck in float64 for every layer and cell, learnable ones too."""

import pytest
import torch
from torch.func import functional_call

import momentumrnn as mrnn
from conftest import ACTIVE, CELL_KEYS, LAYER_KEYS, layer_id


def check(module, make_args):
    names, params = zip(*module.named_parameters())

    def f(x, *flat):
        out = functional_call(module, dict(zip(names, flat)), make_args(x))
        tensors = [out[0]] + (list(out[1]) if isinstance(out[1], tuple) else [out[1]])
        return tuple(t.data if hasattr(t, "batch_sizes") else t for t in tensors)

    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    inputs = (x, *(p.detach().clone().requires_grad_() for p in params))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("key", LAYER_KEYS, ids=layer_id)
@pytest.mark.parametrize("learnable", [False, True])
def test_layer_gradcheck(key, learnable):
    layer = mrnn.LAYERS[key](3, 2, 2, bidirectional=True, dtype=torch.float64, learnable=learnable,
                             **ACTIVE[key[1]])
    if learnable:
        assert sum("_raw_" in n for n, _ in layer.named_parameters()) == 4 * len(layer.rule_type.learnable)
    check(layer, lambda x: (x,))


@pytest.mark.parametrize("key", CELL_KEYS, ids=lambda k: mrnn.CELLS[k].__name__)
def test_cell_gradcheck(key):
    cell = mrnn.CELLS[key](3, 2, dtype=torch.float64, learnable=True, **ACTIVE[key[1]])

    class Unroll(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = cell

        def forward(self, x):
            hx, rs, outs = None, None, []
            for t in range(x.size(0)):
                hx, rs = self.cell(x[t], hx, rule_state=rs, return_rule_state=True)
                outs.append(hx[0] if isinstance(hx, tuple) else hx)
            return torch.stack(outs), rs.velocity

    check(Unroll(), lambda x: (x,))


@pytest.mark.parametrize("key", [k for k in LAYER_KEYS if not mrnn.LAYERS[k].rule_type.couples_to_hidden],
                         ids=layer_id)
def test_fused_drive_gradcheck(key):
    """The rule's drive through torch's fused kernel with identity input weights."""
    layer = mrnn.LAYERS[key](3, 2, 2, bidirectional=True, dtype=torch.float64, learnable=True, impl="fused-drive",
                             **ACTIVE[key[1]])
    check(layer, lambda x: (x,))
