"""Training as the authors' scripts train, checked against plain re-implementations of
their procedures written here (not the library's code): the DTRIV step after a change of
base, the permuted-MNIST permutation, and the NT-ASGD switch and averaging.

Everything runs in float64; tolerances are stated per test.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from momentumrnn.experiments.config import resolve_config
from momentumrnn.experiments.models import build_model
from momentumrnn.experiments.train import build_optimizer
from toolkit_helpers import HAVE_MNIST, SHARED_DATA, cli


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------ DTRIV: the change of base
class AuthorsDTRIV:
    """The authors' momentum-DTRIV training loop, step by step, from their description:

    * ``B = base exp(S)``, ``S = triu(A, 1) - triu(A, 1)^T``, ``h_t = modReLU(v_t + h_{t-1} B)``
      with ``v_t = mu v_{t-1} + s W x_t``; logits from the last ``h``;
    * a counter k (0 at the start): at a forward with ``k == 0`` the base changes *after* B
      is computed (``base <- B``, ``A <- 0`` in place), then ``k <- (k + 1) mod K`` (K = inf:
      k becomes 1 and stays);
    * the backward pass of that step sees the overwritten base but the skew matrix S of
      the forward: ``dL/dS = dexp_S^*(base_new^T dL/dB)`` (``dexp^*`` the adjoint of the
      derivative of ``exp`` at S), ``dL/dA = triu(dL/dS - dL/dS^T, 1)``;
    * clip the norm of all gradients to ``clip``, then RMSprop(lr) on W, b and the head,
      RMSprop(lr_orth) on A (torch's alpha 0.99).
    """

    def __init__(self, W, b, head_w, head_b, A0, mu, s, K, lr, lr_orth, clip):
        leaf = lambda t: t.detach().clone().requires_grad_()   # noqa: E731
        self.W, self.b, self.head_w, self.head_b = leaf(W), leaf(b), leaf(head_w), leaf(head_b)
        self.A = leaf(A0)                                       # their A holds A_0 (skew) at the start
        self.base = torch.eye(A0.size(0), dtype=A0.dtype)
        self.mu, self.s, self.K, self.clip, self.k = mu, s, K, clip, 0
        self.optimizer = torch.optim.RMSprop([self.W, self.b, self.head_w, self.head_b], lr=lr)
        self.optimizer_orth = torch.optim.RMSprop([self.A], lr=lr_orth)

    def skew(self):
        upper = self.A.detach().triu(1)
        return upper - upper.T

    def B(self):
        return self.base @ torch.linalg.matrix_exp(self.skew())

    def loss(self, B, x, y):
        h = v = x.new_zeros(x.size(0), B.size(0))
        for t in range(x.size(1)):
            v = self.mu * v + self.s * (x[:, t, None] @ self.W.T)
            z = v + h @ B
            h = torch.sign(z) * torch.relu(z.abs() + self.b)
        return F.cross_entropy(h @ self.head_w.T + self.head_b, y)

    def step(self, x, y):
        S = self.skew()
        B = (self.base @ torch.linalg.matrix_exp(S)).requires_grad_()
        if self.k == 0:                                          # change of base inside the forward
            self.base = B.detach().clone()
            with torch.no_grad():
                self.A.zero_()
        self.k = 1 if self.K == math.inf else (self.k + 1) % self.K
        for p in (self.W, self.b, self.head_w, self.head_b, self.A):
            p.grad = None
        self.loss(B, x, y).backward()
        cotangent = self.base.T @ B.grad                         # the base as it is now
        _, grad_S = torch.autograd.functional.vjp(torch.linalg.matrix_exp, S, cotangent)
        self.A.grad = (grad_S - grad_S.T).triu(1)
        params = [self.W, self.b, self.head_w, self.head_b, self.A]
        total = torch.sqrt(sum(p.grad.pow(2).sum() for p in params))
        for p in params:                                         # torch's clip_grad_norm_
            p.grad.mul_(torch.clamp(self.clip / (total + 1e-6), max=1.0))
        self.optimizer.step()
        self.optimizer_orth.step()

    def U(self):
        return self.B().T


def paper_dtriv(trivialization=None, hidden=6):
    overrides = {"hidden_size": hidden, "trivialization": trivialization}
    config = resolve_config("psmnist", "momentum-dtriv", overrides, preset="paper")
    torch.manual_seed(0)
    model = build_model(config, 1, 10, per_step=False).double()
    torch.manual_seed(1)
    model.rnn.reset_parameters()        # U_0 drawn again in float64 (build_model's is float32)
    return config, model


def library_step(model, optimizer, config, x, y):
    """One step of the training loop (train.py): loss, backward, clip, step."""
    loss = F.cross_entropy(model(x.unsqueeze(-1)), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config["clip"])
    optimizer.step()


@pytest.mark.parametrize("K, steps", [(0, 3), (1, 6), (100, 102)], ids=["K=inf", "K=1", "K=100"])
def test_paper_preset_dtriv_steps_equal_the_authors(K, steps):
    """Every step of ``--preset paper`` momentum-DTRIV moves U, W, b and the head as the
    authors' loop does, to 1e-9 of the step (K = inf: the first step is at A_0; K = 1: every
    step follows a change of base; K = 100: step 101 does)."""
    config, model = paper_dtriv(None if K == 1 else K)
    assert config["trivialization"] == K and config["base_change_gradient"] == "authors"
    rnn = model.rnn
    absorbed = rnn.absorbed_skew_l0.detach().clone()
    reference = AuthorsDTRIV(rnn.weight_ih_l0.detach(), rnn.bias_modrelu_l0.detach(), model.head.weight.detach(),
                             model.head.bias.detach(), absorbed, config["momentum"], config["step_size"],
                             math.inf if K == 0 else K, config["lr"], config["lr_orth"], config["clip"])
    torch.testing.assert_close(rnn.weight_hh_l0.detach(), reference.U(), atol=1e-14, rtol=0)
    optimizer = build_optimizer(config, model)
    generator = torch.Generator().manual_seed(2)
    worst = 0.0
    for step in range(1, steps + 1):
        x = torch.rand(4, 5, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 10, (4,), generator=generator)
        before = reference.U().detach()
        reference.step(x, y)
        library_step(model, optimizer, config, x, y)
        want, got = reference.U().detach(), rnn.weight_hh_l0.detach()
        moved = (want - before).abs().max()
        assert moved > 1e-6
        worst = max(worst, float((got - want).abs().max() / moved))
        for mine, theirs in ((rnn.weight_ih_l0, reference.W), (rnn.bias_modrelu_l0, reference.b),
                             (model.head.weight, reference.head_w), (model.head.bias, reference.head_b)):
            torch.testing.assert_close(mine.detach(), theirs.detach(), atol=1e-12, rtol=1e-12)
    assert worst < 1e-9


def test_the_clean_gradient_differs_from_the_authors_on_a_change_of_base():
    """The two semantics give the same U before the step and different steps after it."""
    config, model = paper_dtriv()
    clean_config = {**config, "base_change_gradient": "clean"}
    torch.manual_seed(0)
    clean = build_model(clean_config, 1, 10, per_step=False).double()
    clean.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith(("rnn.absorbed_skew", "rnn.base_change_pending"))})
    x, y = torch.rand(4, 5, dtype=torch.float64), torch.tensor([1, 2, 3, 4])
    torch.testing.assert_close(model(x.unsqueeze(-1)), clean(x.unsqueeze(-1)), atol=0, rtol=0)
    start = model.rnn.weight_hh_l0.detach().clone()
    library_step(model, build_optimizer(config, model), config, x, y)
    library_step(clean, build_optimizer(clean_config, clean), clean_config, x, y)
    step = (model.rnn.weight_hh_l0.detach() - start).abs().max()
    assert (model.rnn.weight_hh_l0 - clean.rnn.weight_hh_l0).abs().max() > 0.01 * step


def test_base_change_gradient_is_an_option_and_the_default_is_clean():
    from momentumrnn.experiments.config import ConfigError

    assert resolve_config("psmnist", "dtriv")["base_change_gradient"] == "clean"
    assert resolve_config("timit", "dtriv", preset="paper")["base_change_gradient"] == "authors"
    assert resolve_config("psmnist", "dtriv", {"base_change_gradient": "clean"},
                          preset="paper")["base_change_gradient"] == "clean"
    with pytest.raises(ConfigError, match="base_change_gradient must be one of"):
        resolve_config("psmnist", "dtriv", {"base_change_gradient": "theirs"})
    with pytest.raises(ConfigError, match="applies to the orthogonal models"):
        resolve_config("psmnist", "lstm", {"base_change_gradient": "authors"})



def test_the_absorbed_matrix_travels_with_the_state_dict():
    """A checkpoint taken after a change of base resumes with the authors' gradient pending:
    the restored layer's next gradient equals the original's."""
    import momentumrnn as mrnn

    torch.manual_seed(0)
    layer = mrnn.MomentumOrthogonalRNN(2, 5, trivialization=1, base_change_gradient="authors", dtype=torch.float64)
    optimizer = torch.optim.RMSprop(layer.orthogonal_parameters(), lr=0.01)
    mrnn.register_trivialization(optimizer, layer)
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    layer(x)[0].sum().backward()
    optimizer.step()                                                 # K = 1: the base changes
    assert int(layer.base_change_pending) == 1 and layer.absorbed_skew_l0.abs().max() > 0
    torch.manual_seed(1)
    restored = mrnn.MomentumOrthogonalRNN(2, 5, trivialization=1, base_change_gradient="authors",
                                          dtype=torch.float64)
    restored.load_state_dict(layer.state_dict())
    for module in (layer, restored):
        module.zero_grad()
        module(x)[0].pow(2).sum().backward()
    torch.testing.assert_close(restored.orthogonal_parameters()[0].grad, layer.orthogonal_parameters()[0].grad,
                               atol=0, rtol=0)
    clean = mrnn.MomentumOrthogonalRNN(2, 5, trivialization=1, dtype=torch.float64)
    assert "absorbed_skew_l0" not in clean.state_dict() and "base_change_pending" not in clean.state_dict()
    with pytest.raises(ValueError, match="base_change_gradient must be one of"):
        mrnn.OrthogonalRNN(2, 5, base_change_gradient="theirs")

# ------------------------------------------------------- the permuted-MNIST permutation
def authors_permutation(seed):
    """Their script: ``np.random.RandomState(manualSeed).permutation(784)``, applied as
    ``inputs[:, permutation]``."""
    return np.random.RandomState(seed).permutation(784).tolist()


@pytest.mark.parametrize("model", ["lstm", "momentum-dtriv"])
def test_paper_preset_draws_the_authors_permutation_from_the_run_seed(model):
    from momentumrnn.experiments.tasks import draw_permutation

    for seed in (0, 3):
        config = resolve_config("psmnist", model, {"seed": seed}, preset="paper")
        assert config["permutation"] == "authors" and config["permutation_seed"] is None
        assert draw_permutation(config).tolist() == authors_permutation(seed)
    config = resolve_config("psmnist", model, {"seed": 3, "permutation_seed": 5}, preset="paper")
    assert draw_permutation(config).tolist() == authors_permutation(5)


def test_the_library_permutation_stays_the_default():
    from momentumrnn.experiments.tasks import draw_permutation, generator

    config = resolve_config("psmnist", "lstm")
    assert config["permutation"] == "library" and config["permutation_seed"] == 0
    want = torch.randperm(784, generator=generator(0, 2)).tolist()
    assert draw_permutation(config).tolist() == want != authors_permutation(0)
    # a run recorded before the option existed has no "permutation" key: the library's
    del config["permutation"]
    assert draw_permutation(config).tolist() == want


@pytest.mark.skipif(not HAVE_MNIST, reason="needs ../shared/data/mnist")
def test_psmnist_paper_preset_writes_the_authors_permutation(tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--task", "psmnist", "--model", "lstm", "--preset", "paper", "--seed", 0, "--data-dir",
               SHARED_DATA, "--train-subset", 8, "--val-subset", 4, "--test-subset", 4, "--batch-size", 4,
               "--hidden-size", 4, "--max-steps", 1, "--out", run) == 0
    assert json.loads((run / "permutation.json").read_text()) == authors_permutation(0)
    assert cli("train", "--out", run, "--resume", "--max-steps", 2) == 0


def test_permutation_option_is_checked():
    from momentumrnn.experiments.config import ConfigError

    with pytest.raises(ConfigError, match="permutation must be one of"):
        resolve_config("psmnist", "lstm", {"permutation": "numpy"})
    with pytest.raises(ConfigError, match="does not apply to task 'smnist'"):
        resolve_config("smnist", "lstm", {"permutation": "authors"})


# ------------------------------------------------------------------- NT-ASGD
#: A recorded validation curve: validation loss of results/adding-sweep (lstm, seed 0), its
#: first ten validations.
RECORDED_VALIDATION = [0.167571, 0.167676, 0.167574, 0.168843, 0.167644, 0.172519, 0.169789, 0.171113, 0.167842,
                       0.168983]


def authors_switch(values, nonmono):
    """The AWD-LSTM loop: after each validation, switch when ``len(best_val_loss) > nonmono
    and val_loss > min(best_val_loss[:-nonmono])``, then append ``val_loss``."""
    best_val_loss = []
    for epoch, val_loss in enumerate(values, 1):
        if len(best_val_loss) > nonmono and val_loss > min(best_val_loss[:-nonmono]):
            return epoch
        best_val_loss.append(val_loss)
    return None


def test_ntasgd_switches_at_the_authors_epoch_on_a_recorded_curve():
    from momentumrnn.experiments.optim import NTASGD

    want = authors_switch(RECORDED_VALIDATION, 5)
    assert want == 7
    opt = NTASGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, nonmono=5)
    switched = [epoch for epoch, value in enumerate(RECORDED_VALIDATION, 1) if opt.observe(value)]
    assert switched == [want] and opt.averaging


def test_ntasgd_averages_as_torch_asgd_with_the_rate_one_step_late():
    """After the switch: ``p_k = p_{k-1} - eta_k (g_k + wd p_{k-1})`` with ``eta_1`` the rate at
    the first step and ``eta_k`` the rate at step k - 1; the average restarts at ``p_2``:
    ``a_1 = p_1``, ``a_k = a_{k-1} + (p_k - a_{k-1}) / (k - 1)``, the mean of ``p_2 .. p_k``.
    The rate changes every step, as the AWD-LSTM's variable bptt scales it. Torch's ASGD
    keeps ``eta`` and ``1 / (k - 1)`` as float32 scalars; so does this reference."""
    from momentumrnn.experiments.optim import NTASGD

    f32 = lambda value: float(torch.tensor(value, dtype=torch.float32))   # noqa: E731
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(4, generator=generator, dtype=torch.float64)
    w = torch.nn.Parameter(start.clone())
    opt = NTASGD([w], lr=0.3, weight_decay=0.01, nonmono=1)
    for value in (3.0, 2.0, 3.5):
        opt.observe(value)
    assert opt.averaging and isinstance(opt.inner, torch.optim.ASGD)
    rates = [0.3 * s for s in (1.0, 0.7, 1.3, 0.9, 1.1)]
    grads = [torch.randn(4, generator=generator, dtype=torch.float64) for _ in rates]
    p, iterates, previous, average = start.clone(), [], None, None
    for k, (rate, grad) in enumerate(zip(rates, grads), 1):
        eta = f32(rate if previous is None else previous)
        p = p - eta * (grad + 0.01 * p)
        iterates.append(p)
        average = p if k <= 2 else average + (p - average) * f32(1.0 / (k - 1))
        previous = rate
        w.grad = grad.clone()
        opt.param_groups[0]["lr"] = rate
        opt.step()
        opt.param_groups[0]["lr"] = 0.3
        torch.testing.assert_close(w.detach(), p, atol=1e-15, rtol=1e-14)
        trained = w.detach().clone()
        restore = opt.swap_in_average()
        torch.testing.assert_close(w.detach(), average, atol=1e-15, rtol=1e-14)
        mean = iterates[0] if k == 1 else torch.stack(iterates[1:]).mean(0)
        torch.testing.assert_close(w.detach(), mean, atol=0, rtol=1e-7)
        restore()
        assert torch.equal(w.detach(), trained)


def test_ntasgd_state_round_trips_and_reads_the_former_format():
    from momentumrnn.experiments.optim import NTASGD

    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    former = {"state": {0: {"average": torch.tensor([1.0, 2.0], dtype=torch.float64)}},
              "param_groups": [{"lr": 0.5, "weight_decay": 0.0, "nonmono": 2, "history": [3.0, 2.0, 4.0],
                                "averaging": True, "averaged_steps": 3, "params": [0]}]}
    opt = NTASGD([w], lr=0.5, nonmono=2)
    opt.load_state_dict(former)
    assert opt.averaging and opt.history == [3.0, 2.0, 4.0]
    w.grad = torch.tensor([-2.0, 4.0], dtype=torch.float64)
    opt.step()                                                    # w = (1, -2): the mean of 3 + 1 iterates
    restore = opt.swap_in_average()
    torch.testing.assert_close(w.detach(), torch.tensor([(3 * 1.0 + 1.0) / 4, (3 * 2.0 - 2.0) / 4],
                                                         dtype=torch.float64), atol=1e-15, rtol=0)
    restore()
    again = NTASGD([torch.nn.Parameter(w.detach().clone())], lr=0.5, nonmono=2)
    again.load_state_dict(opt.state_dict())
    assert again.averaging and again.history == opt.history
    torch.testing.assert_close(again.state[again.params[0]]["ax"], opt.state[w]["ax"], atol=0, rtol=0)
    fresh = NTASGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
    fresh.load_state_dict({"state": {}, "param_groups": [{"lr": 0.5, "weight_decay": 0.0, "nonmono": 5,
                                                          "history": [1.0], "averaging": False,
                                                          "averaged_steps": 0, "params": [0]}]})
    assert not fresh.averaging and fresh.history == [1.0]


def test_paper_preset_ptb_chunks_have_no_cap(monkeypatch):
    """AWD-LSTM caps a chunk at bptt + 40 tokens, the authors' script does not. Gaussian
    noise of sd 5 reaches the cap 8 sd above the mean only: the draw is forced to +10 sd."""
    from momentumrnn.experiments.ptb import PTB

    config = resolve_config("ptb", "lstm", preset="paper")
    assert config["bptt_cap"] is False and resolve_config("ptb", "lstm")["bptt_cap"] is True
    monkeypatch.setattr(torch, "randn", lambda *args, **kwargs: torch.tensor(10.0))
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: torch.tensor(0.0))     # bptt, not bptt / 2
    lengths = {}
    for cap in (True, False):
        task = PTB.__new__(PTB)
        task.config = {**config, "bptt_cap": cap, "batch_size": 2}
        task.splits, task._columns = {"train": (torch.arange(2000),)}, {}
        task.plan_epoch(0)
        lengths[cap] = {n for _, n in task.plan[:-1]}
    assert lengths == {True: {110}, False: {120}}
