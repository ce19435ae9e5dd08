"""torch.compile: dynamo runs the layers eagerly (as it does torch's own RNN modules), so a
compiled model equals eager, compiles in seconds and does not recompile per sequence length."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

import momentumrnn as mrnn
from conftest import ACTIVE

MODELS = [("lstm", "momentum"), ("lstm", "adam"), ("lstm", "nesterov"), ("gru", "restart"),
          mrnn.MomentumOrthogonalRNN]


@pytest.mark.parametrize("which", MODELS, ids=lambda w: mrnn.LAYERS[w].__name__ if isinstance(w, tuple) else w.__name__)
def test_compiled_model_equals_eager_without_recompiling_per_length(which):
    torch._dynamo.reset()
    layer = mrnn.LAYERS[which](8, 16, **ACTIVE[which[1]]) if isinstance(which, tuple) else which(8, 16)
    before, after = torch.nn.Linear(8, 8), torch.nn.Linear(16, 1)

    def model(x):
        return after(layer(torch.tanh(before(x)))[0]).sum()

    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    frames = []
    for time in (20, 30, 40, 50, 60):
        x = torch.randn(time, 4, 8)
        got = compiled(x)
        got.backward()
        grads = [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad()
        want = model(x)
        want.backward()
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        for a, p in zip(grads, layer.parameters()):
            torch.testing.assert_close(a, p.grad, rtol=1e-6, atol=1e-6)
        layer.zero_grad()
        frames.append(counter.frame_count)
    # the first new length marks the dimension dynamic (one recompile); later lengths reuse it
    assert frames[1] == frames[2] == frames[3] == frames[4], frames


def test_fullgraph_stops_at_the_layer_loudly_as_at_torchs_lstm():
    torch._dynamo.reset()
    layer = mrnn.NesterovLSTM(8, 16)
    compiled = torch.compile(lambda x: layer(x)[0].sum(), backend="eager", fullgraph=True)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="disable"):
        compiled(torch.randn(10, 2, 8))
