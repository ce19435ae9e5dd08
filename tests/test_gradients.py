"""gradient_norms against finite differences; vanishing gradients of a plain tanh RNN."""

import pytest
import torch

import momentumrnn as mrnn
from momentumrnn.gradients import gradient_norms


def loss_fn(out):
    return (out[-1] ** 2).sum() + 0.5 * torch.sin(out[2]).sum()


def unrolled_loss(cell, x, perturb_step=None, perturbation=None):
    """Loss of the unrolled cell with ``perturbation`` added to h at ``perturb_step``."""
    hx, rs, outs = None, None, []
    for t in range(x.size(0)):
        hx, rs = cell(x[t], hx, rule_state=rs, return_rule_state=True)
        if t == perturb_step:
            hx = (hx[0] + perturbation, hx[1]) if isinstance(hx, tuple) else hx + perturbation
        outs.append(hx[0] if isinstance(hx, tuple) else hx)
    return loss_fn(torch.stack(outs))


@pytest.mark.parametrize("layer_cls,cell_cls", [(mrnn.MomentumRNN, mrnn.MomentumRNNCell),
                                                (mrnn.NesterovLSTM, mrnn.NesterovLSTMCell),
                                                (mrnn.AdamGRU, mrnn.AdamGRUCell)])
def test_hidden_gradient_norms_match_finite_differences(layer_cls, cell_cls):
    torch.manual_seed(0)
    layer = layer_cls(2, 3, dtype=torch.float64)
    cell = cell_cls(2, 3, dtype=torch.float64)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in layer.state_dict().items()})
    x = torch.randn(6, 2, 2, dtype=torch.float64)
    measured = gradient_norms(layer, x, loss_fn)
    eps = 1e-6
    for t in range(6):
        grad = torch.zeros(2, 3, dtype=torch.float64)
        for b in range(2):
            for i in range(3):
                e = torch.zeros(2, 3, dtype=torch.float64)
                e[b, i] = eps
                with torch.no_grad():
                    grad[b, i] = (unrolled_loss(cell, x, t, e) - unrolled_loss(cell, x, t, -e)) / (2 * eps)
        norms = grad.norm(dim=1)
        assert measured.hidden_mean[t].item() == pytest.approx(norms.mean().item(), rel=1e-6, abs=1e-9)
        assert measured.hidden_std[t].item() == pytest.approx(norms.std(unbiased=False).item(), rel=1e-5, abs=1e-8)


def test_input_gradient_norms_match_finite_differences_batch_first():
    torch.manual_seed(1)
    layer = mrnn.MomentumLSTM(2, 3, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 5, 2, dtype=torch.float64)

    def loss_bf(out):
        return loss_fn(out.transpose(0, 1))

    measured = gradient_norms(layer, x, loss_bf)
    eps = 1e-6
    grad = torch.zeros_like(x)
    with torch.no_grad():
        for idx in torch.cartesian_prod(*(torch.arange(n) for n in x.shape)):
            e = torch.zeros_like(x)
            e[tuple(idx)] = eps
            grad[tuple(idx)] = (loss_bf(layer(x + e)[0]) - loss_bf(layer(x - e)[0])) / (2 * eps)
    torch.testing.assert_close(measured.input_mean, grad.norm(dim=-1).mean(0), rtol=1e-6, atol=1e-9)


def test_plain_tanh_rnn_with_small_recurrent_weights_vanishes():
    torch.manual_seed(0)
    rnn = torch.nn.RNN(1, 16, 2, dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.1)
        rnn.weight_hh_l1.mul_(0.1)
    x = torch.randn(40, 4, 1, dtype=torch.float64)
    norms = gradient_norms(rnn, x, lambda out: out[-1].pow(2).sum())
    assert norms.hidden_mean[-1] > 0
    assert 0 < norms.first_to_last("hidden") < 1e-20        # many orders of magnitude, not underflow
    assert 0 < norms.first_to_last("input") < 1e-20
    assert bool(torch.all(norms.hidden_mean[1:] >= norms.hidden_mean[:-1]))   # grows towards the loss


def test_gradient_norms_rejects_bidirectional():
    with pytest.raises(ValueError, match="unidirectional"):
        gradient_norms(mrnn.MomentumLSTM(2, 3, bidirectional=True), torch.randn(4, 1, 2), loss_fn)
