"""Orthogonal RNNs (DTRIV) and their momentum, Adam, RMSProp and restart variants.

The reference below is written from the paper's equations without the library's rules,
recurrences or step functions: one loop per time step, layer and direction.
"""

import contextlib
import math
import warnings

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import momentumrnn as mrnn

RULES = ["none", "momentum", "adam", "rmsprop", "restart"]

#: Non-neutral hyperparameters for each rule, chosen so that every term matters.
ACTIVE = {
    "none": {},
    "momentum": {"momentum": 0.7, "step_size": 0.4},
    "adam": {"momentum": 0.5, "step_size": 0.3, "beta": 0.6},
    "rmsprop": {"step_size": 0.7, "beta": 0.4},
    "restart": {"step_size": 0.6, "restart": 3},
}

TOL = dict(atol=1e-12, rtol=1e-10)


def make(rule, *args, **kwargs):
    return mrnn.ORTHOGONAL_LAYERS[rule](*args, **{**ACTIVE[rule], **kwargs})


def perturb(layer, scale=0.3):
    """Move every U away from its base (A != 0) and the modReLU biases away from ~0."""
    with torch.no_grad():
        for original in layer.orthogonal_parameters():
            original.add_(scale * torch.randn_like(original))
        for name, p in layer.named_parameters():
            if name.startswith("bias_modrelu"):
                p.copy_(0.2 * torch.randn_like(p))


# --------------------------------------------------------------- the reference
def reference_step(rule, hp, x, h, v, m, k, W, U, b):
    """One step of the equations at time index k (1-based): h, v, m -> h, v, m."""
    u = x @ W.T                                                   # W without bias
    if rule == "none":
        drive = u
    elif rule == "momentum":
        v = hp["momentum"] * v + hp["step_size"] * u
        drive = v
    elif rule in ("adam", "rmsprop"):
        mu = hp["momentum"] if rule == "adam" else 0.0
        v = mu * v + hp["step_size"] * u
        m = hp["beta"] * m + (1.0 - hp["beta"]) * u * u
        drive = v / torch.sqrt(m + 1e-16)
    elif rule == "restart":
        r = hp["restart"]
        kk = (k - 1) % r + 1 if r > 0 else k
        v = (kk - 1.0) / (kk + 2.0) * v + hp["step_size"] * u
        drive = v
    z = h @ U.T + drive
    h = torch.sign(z) * torch.clamp(z.abs() + b, min=0.0)       # modReLU
    return h, v, m


def reference_layer(rule, hp, layer, x, h0=None):
    """(time, batch, features) -> output, h_n, v_n, m_n, reading W, U, b from ``layer``."""
    T, B, _ = x.shape
    H, D = layer.hidden_size, layer.num_directions
    layer_input, hs, vs, ms = x, [], [], []
    for l in range(layer.num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            W = getattr(layer, "weight_ih" + sfx).detach()
            U = getattr(layer, "weight_hh" + sfx).detach()
            b = getattr(layer, "bias_modrelu" + sfx).detach()
            h = x.new_zeros(B, H) if h0 is None else h0[l * D + d]
            v, m = x.new_zeros(B, H), x.new_zeros(B, H)
            seq = layer_input if d == 0 else layer_input.flip(0)
            out = []
            for t in range(T):
                h, v, m = reference_step(rule, hp, seq[t], h, v, m, t + 1, W, U, b)
                out.append(h)
            out = torch.stack(out)
            outs.append(out if d == 0 else out.flip(0))
            hs.append(h), vs.append(v), ms.append(m)
        layer_input = torch.cat(outs, dim=-1)
    return layer_input, torch.stack(hs), torch.stack(vs), torch.stack(ms)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("rule", RULES)
def test_equals_the_reference(rule):
    layer = make(rule, 3, 4, 2, bidirectional=True, dtype=torch.float64)
    perturb(layer)
    x = torch.randn(7, 3, 3, dtype=torch.float64)
    h0 = torch.randn(4, 3, 4, dtype=torch.float64)
    out, h_n, rs = layer(x, h0, return_rule_state=True)
    want_out, want_h, want_v, want_m = reference_layer(rule, {**mrnn.ORTHOGONAL_LAYERS[rule].rule_type.defaults,
                                                              **ACTIVE[rule]}, layer, x, h0)
    torch.testing.assert_close(out, want_out, **TOL)
    torch.testing.assert_close(h_n, want_h, **TOL)
    if rule == "none":
        assert rs.velocity is None and rs.second_moment is None
    else:
        torch.testing.assert_close(rs.velocity, want_v, **TOL)
    if rule in ("adam", "rmsprop"):
        torch.testing.assert_close(rs.second_moment, want_m, **TOL)
    assert rs.steps.tolist() == [7, 7, 7]


def test_momentum_defaults_are_the_papers_dtriv_setting():
    layer = mrnn.MomentumOrthogonalRNN(1, 6)
    assert layer.hyperparameter_values == {"momentum": 0.6, "step_size": 0.9}
    assert layer.trivialization == math.inf and layer.init == "cayley"
    x = torch.randn(5, 2, 1)
    torch.testing.assert_close(layer(x)[0], reference_layer("momentum", layer.hyperparameter_values, layer, x)[0])


@pytest.mark.parametrize("rule", RULES)
def test_gradcheck(rule):
    layer = make(rule, 2, 3, 2, bidirectional=True, dtype=torch.float64, learnable=rule != "none")
    perturb(layer)
    names, params = zip(*layer.named_parameters())
    assert sum(".original" in n for n in names) == 4

    def f(x, *flat):
        out, h_n = functional_call(layer, dict(zip(names, flat)), (x,))
        return out, h_n

    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    inputs = (x, *(p.detach().clone().requires_grad_() for p in params))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


# ------------------------------------------- the authors' coordinates
def authors_matrix(P, base):
    """``U = B^T``, ``B = base exp(A)``, ``A = triu(P, 1) - triu(P, 1)^T`` (the authors' code)."""
    A = P.triu(1) - P.triu(1).T
    return (base @ torch.linalg.matrix_exp(A)).T


def authors_loss(U, x, W, b, hp, weights):
    """modReLU recurrence ``h_t = sign(z) relu(|z| + b)``, ``z = U h_{t-1} + d_t``, with
    ``d_t = W x_t`` (plain) or ``v_t = mu v_{t-1} + s W x_t`` (momentum); sum of outputs x weights."""
    h = v = x.new_zeros(x.size(1), U.size(0))
    outputs = []
    for x_t in x:
        u = x_t @ W.T
        if hp:
            v = hp["momentum"] * v + hp["step_size"] * u
            u = v
        z = h @ U.T + u
        h = torch.sign(z) * torch.relu(z.abs() + b)
        outputs.append(h)
    return (torch.stack(outputs) * weights).sum()


OPTIMIZERS = {"rmsprop": lambda params: torch.optim.RMSprop(params, lr=2e-4, alpha=0.99),
              "sgd": lambda params: torch.optim.SGD(params, lr=0.1)}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("rule", ["none", "momentum"])
@pytest.mark.parametrize("init", ["cayley", "henaff"])
def test_an_optimizer_step_moves_u_as_the_authors(optimizer, rule, init):
    """From the authors' state after their first change of base: ``base = B_0 = U_0^T``, A = 0."""
    layer = mrnn.ORTHOGONAL_LAYERS[rule](3, 6, init=init, dtype=torch.float64)
    hp = layer.hyperparameter_values
    x, weights = torch.randn(7, 4, 3, dtype=torch.float64), torch.randn(7, 4, 6, dtype=torch.float64)
    W, b = layer.weight_ih_l0.detach(), layer.bias_modrelu_l0.detach()
    U0 = layer.weight_hh_l0.detach().clone()
    P = torch.zeros(6, 6, dtype=torch.float64, requires_grad=True)
    base = U0.T.clone()
    torch.testing.assert_close(authors_matrix(P, base).detach(), U0, atol=1e-12, rtol=0)

    reference_optimizer = OPTIMIZERS[optimizer]([P])
    authors_loss(authors_matrix(P, base), x, W, b, hp, weights).backward()
    reference_optimizer.step()
    want = authors_matrix(P, base).detach()

    layer_optimizer = OPTIMIZERS[optimizer](layer.orthogonal_parameters())
    out, _ = layer(x)
    (out * weights).sum().backward()
    layer_optimizer.step()
    got = layer.weight_hh_l0.detach()
    assert (got - U0).abs().max() > 1e-4                                   # the step moved U
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_change_of_base_every_3_steps_follows_the_authors():
    """30 RMSprop steps at lr 0.02 (100x the authors'); K = 3: ``base <- B``, ``A <- 0``."""
    layer = mrnn.MomentumOrthogonalRNN(3, 6, trivialization=3, init="henaff", dtype=torch.float64)
    hp = layer.hyperparameter_values
    x, weights = torch.randn(6, 4, 3, dtype=torch.float64), torch.randn(6, 4, 6, dtype=torch.float64)
    W, b = layer.weight_ih_l0.detach(), layer.bias_modrelu_l0.detach()
    P = torch.zeros(6, 6, dtype=torch.float64, requires_grad=True)
    base = layer.weight_hh_l0.detach().T.clone()
    reference_optimizer = torch.optim.RMSprop([P], lr=0.02)
    optimizer = torch.optim.RMSprop(layer.orthogonal_parameters(), lr=0.02)
    start = layer.weight_hh_l0.detach().clone()
    for step in range(1, 31):
        reference_optimizer.zero_grad()
        authors_loss(authors_matrix(P, base), x, W, b, hp, weights).backward()
        reference_optimizer.step()
        if step % 3 == 0:
            with torch.no_grad():
                base = authors_matrix(P, base).T
                P.zero_()
        optimizer.zero_grad()
        out, _ = layer(x)
        (out * weights).sum().backward()
        optimizer.step()
        before = layer.weight_hh_l0.detach().clone()
        assert layer.trivialization_step() == (step % 3 == 0)
        U = layer.weight_hh_l0.detach()
        torch.testing.assert_close(U, before, atol=1e-12, rtol=0)          # the change keeps U
        assert (U.T @ U - torch.eye(6, dtype=torch.float64)).abs().max() < 1e-5
        torch.testing.assert_close(U, authors_matrix(P, base).detach(), atol=1e-9, rtol=0)
    assert layer.base_changes == 10 and (U - start).abs().max() > 0.1


# ------------------------------------------------------ orthogonality and K
@pytest.mark.parametrize("K", [1, 5, math.inf], ids=["K=1", "K=5", "K=inf"])
def test_orthogonal_after_200_steps_at_a_large_learning_rate(K):
    """RMSprop at lr 0.1 on the orthogonal parameters (500x the authors' 2e-4), float32."""
    layer = mrnn.MomentumOrthogonalRNN(3, 8, bidirectional=True, trivialization=K)
    head = torch.nn.Linear(16, 1)
    model = torch.nn.ModuleDict({"rnn": layer, "head": head})
    orth, other = mrnn.split_orthogonal_parameters(model)
    optimizer_orth = torch.optim.RMSprop(orth, lr=0.1)
    optimizer = torch.optim.RMSprop(other, lr=1e-2)
    mrnn.register_trivialization(optimizer_orth, model)
    x, y = torch.randn(5, 8, 3), torch.randn(8, 1)
    parametrization = layer.parametrizations.weight_hh_l0
    start = layer.weight_hh_l0.detach().clone()
    base = parametrization[0].base.clone()
    for step in range(1, 201):
        out, _ = layer(x)
        loss = (head(out[-1]) - y).pow(2).mean()
        optimizer.zero_grad(), optimizer_orth.zero_grad()
        loss.backward()
        optimizer.step(), optimizer_orth.step()
        new_base = parametrization[0].base.clone()
        assert (not torch.equal(new_base, base)) == (step % K == 0), f"step {step}"
        if step % K == 0:       # the base is the current B = U^T, the unconstrained part is back at A = 0
            torch.testing.assert_close(new_base, layer.weight_hh_l0.detach().T, atol=1e-6, rtol=0)
            assert not parametrization.original.any()                                   # A = 0
        base = new_base
    assert layer.base_changes == (0 if K == math.inf else 200 // K)
    for suffix in ("_l0", "_l0_reverse"):
        U = getattr(layer, "weight_hh" + suffix).detach()
        assert (U.T @ U - torch.eye(8)).abs().max() < 1e-5
        assert (U - start).abs().max() > 0.1 or suffix == "_l0_reverse"          # U did move


def test_change_of_base_keeps_the_matrix_and_the_output():
    layer = mrnn.OrthogonalRNN(2, 5, dtype=torch.float64)
    perturb(layer)
    x = torch.randn(6, 3, 2, dtype=torch.float64)
    before_U, before_out = layer.weight_hh_l0.detach().clone(), layer(x)[0].detach()
    layer.change_base()
    torch.testing.assert_close(layer.weight_hh_l0.detach(), before_U, atol=1e-12, rtol=0)
    torch.testing.assert_close(layer(x)[0], before_out, atol=1e-12, rtol=0)
    assert not layer.parametrizations.weight_hh_l0.original.any()                  # A = 0


def test_trivialization_step_counts_optimizer_steps():
    model = torch.nn.Sequential(mrnn.OrthogonalRNN(2, 4, trivialization=3))
    layer = model[0]
    assert [mrnn.trivialization_step(model) for _ in range(7)] == [0, 0, 1, 0, 0, 1, 0]
    assert layer.base_changes == 2 and layer.steps_since_base_change == 1
    never = mrnn.OrthogonalRNN(2, 4)
    assert not any(never.trivialization_step() for _ in range(50)) and never.base_changes == 0


def test_register_trivialization_hook_and_removal():
    layer = mrnn.OrthogonalRNN(2, 4, trivialization=1)
    optimizer = torch.optim.SGD(layer.orthogonal_parameters(), lr=0.1)
    handle = mrnn.register_trivialization(optimizer, layer)
    layer(torch.randn(3, 1, 2))[0].sum().backward()
    optimizer.step()
    assert layer.base_changes == 1
    handle.remove()
    optimizer.step()
    assert layer.base_changes == 1


def test_u_is_computed_once_per_forward_not_per_step(monkeypatch):
    layer = mrnn.MomentumOrthogonalRNN(2, 4, 2, bidirectional=True)
    calls = []
    matrix_exp = torch.matrix_exp
    monkeypatch.setattr(torch, "matrix_exp", lambda a: calls.append(1) or matrix_exp(a))
    out, _ = layer(torch.randn(30, 2, 2))
    out.sum().backward()
    assert len(calls) == 4                     # one per layer and direction, for 30 time steps


@pytest.mark.parametrize("rule", RULES)
def test_no_per_step_indexing_in_the_graph(rule):
    """``x[t]`` per time step makes backward zero-fill T full-size tensors: O(T^2) time."""
    out, _ = make(rule, 2, 3, 2, bidirectional=True)(torch.randn(20, 2, 2))
    seen, stack, selects = set(), [out.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        selects += type(node).__name__.startswith("SelectBackward")
        stack.extend(next_node for next_node, _ in node.next_functions)
    assert selects < 20                        # 4 stacks x 20 steps would be 80


def test_split_orthogonal_parameters():
    model = torch.nn.ModuleDict({"a": mrnn.OrthogonalRNN(2, 4, 2, bidirectional=True),
                                 "b": mrnn.AdamOrthogonalRNN(8, 3, learnable=True),
                                 "head": torch.nn.Linear(3, 1)})
    orth, other = mrnn.split_orthogonal_parameters(model)
    named = dict(model.named_parameters())
    orth_names = sorted(n for n, p in named.items() if any(p is q for q in orth))
    assert orth_names == sorted(f"{m}.parametrizations.weight_hh_{s}.original" for m, s in
                                [("a", "l0"), ("a", "l0_reverse"), ("a", "l1"), ("a", "l1_reverse"), ("b", "l0")])
    assert len(orth) + len(other) == len(named)
    assert not {id(p) for p in orth} & {id(p) for p in other}
    with pytest.raises(ValueError, match="Linear contains no orthogonal layer"):
        mrnn.split_orthogonal_parameters(torch.nn.Linear(2, 2))


# ------------------------------------------------------------ initialization
@pytest.mark.parametrize("init", ["cayley", "henaff"])
@pytest.mark.parametrize("hidden", [6, 7])
def test_skew_symmetric_initializations(init, hidden):
    from momentumrnn.orthogonal import skew_symmetric_init

    A = skew_symmetric_init(hidden, init, dtype=torch.float64)
    assert torch.equal(A, -A.T)
    angles = A.diagonal(1)[::2]
    assert angles.numel() == hidden // 2
    off_blocks = A.clone()
    idx = torch.arange(hidden // 2) * 2
    off_blocks[idx, idx + 1] = 0
    off_blocks[idx + 1, idx] = 0
    assert torch.all(off_blocks == 0)                                  # 2x2 blocks only
    if init == "henaff":
        assert torch.all(angles.abs() <= math.pi)
    else:
        assert torch.all((angles <= 0) & (angles >= -1))                # -tan(t/2), t in [0, pi/2]
    layer = mrnn.OrthogonalRNN(2, hidden, init=init, dtype=torch.float64)
    U = layer.weight_hh_l0.detach()
    assert (U.T @ U - torch.eye(hidden, dtype=torch.float64)).abs().max() < 1e-12
    # U_0 = exp(A_0)^T: rotations of unit pairs, each 2x2 block [[cos a, -sin a], [sin a, cos a]]
    a = torch.atan2(U[1, 0], U[0, 0])
    assert U[0, 1].item() == pytest.approx(-math.sin(a), abs=1e-12)
    if hidden % 2:
        assert U[-1, -1].item() == pytest.approx(1.0)
    bias = layer.bias_modrelu_l0
    assert torch.all(bias.abs() <= 0.01)
    assert layer.weight_ih_l0.std().item() > 0.3                         # Kaiming normal, relu: std sqrt(2/in) = 1


def test_float32_initial_matrix_is_orthogonal():
    """``U_0 = exp(A_0)^T`` is computed in float64 at initialization and kept as the base."""
    for _ in range(20):
        layer = mrnn.OrthogonalRNN(1, 16, init="henaff")
        U = layer.weight_hh_l0.detach()
        assert (U.T @ U - torch.eye(16)).abs().max() < 1e-6
        assert torch.equal(layer.parametrizations.weight_hh_l0[0].base, U.T)


# ------------------------------------------------- layer conventions
@pytest.mark.parametrize("rule", RULES)
def test_packed_equals_each_sequence_alone(rule):
    layer = make(rule, 3, 4, 2, bidirectional=True, dtype=torch.float64)
    perturb(layer)
    lengths = [4, 9, 1, 6]
    x = torch.randn(9, 4, 3, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    out, h_n, rs = layer(packed, return_rule_state=True)
    padded, out_lengths = pad_packed_sequence(out)
    assert out_lengths.tolist() == lengths and rs.steps.tolist() == lengths
    for b, n in enumerate(lengths):
        alone_out, alone_h, alone_rs = layer(x[:n, b:b + 1], return_rule_state=True)
        torch.testing.assert_close(padded[:n, b:b + 1], alone_out, **TOL)
        assert torch.all(padded[n:, b] == 0)
        torch.testing.assert_close(h_n[:, b:b + 1], alone_h, **TOL)
        if rs.velocity is not None:
            torch.testing.assert_close(rs.velocity[:, b:b + 1], alone_rs.velocity, **TOL)


@pytest.mark.parametrize("rule", RULES)
def test_chunks_with_carried_state_equal_one_run(rule):
    layer = make(rule, 3, 4, 2, batch_first=True, dtype=torch.float64)
    perturb(layer)
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    out, h_n, rs = layer(x, return_rule_state=True)
    out1, h1, rs1 = layer(x[:, :4], return_rule_state=True)
    out2, h2, rs2 = layer(x[:, 4:], h1, rule_state=rs1, return_rule_state=True)
    torch.testing.assert_close(torch.cat([out1, out2], dim=1), out, **TOL)
    torch.testing.assert_close(h2, h_n, **TOL)
    for got, want in zip(rs2, rs):
        if want is not None:
            torch.testing.assert_close(got, want, **TOL)
    assert rs2.steps.tolist() == [9, 9]


def test_unbatched_and_dropout():
    layer = mrnn.RestartOrthogonalRNN(3, 4, 2, bidirectional=True, dropout=0.5, dtype=torch.float64)
    layer.eval()
    x = torch.randn(6, 3, dtype=torch.float64)
    out, h_n, rs = layer(x, return_rule_state=True)
    out_b, h_b, _ = layer(x[:, None], return_rule_state=True)
    torch.testing.assert_close(out, out_b[:, 0], **TOL)
    torch.testing.assert_close(h_n, h_b[:, 0], **TOL)
    assert out.shape == (6, 8) and h_n.shape == (4, 4) and rs.steps.shape == ()
    layer.train()
    assert not torch.allclose(layer(x)[0], layer(x)[0])


def test_state_dict_round_trip():
    layer = mrnn.MomentumOrthogonalRNN(2, 5, trivialization=2)
    perturb(layer)
    layer.change_base()
    perturb(layer)
    fresh = mrnn.MomentumOrthogonalRNN(2, 5, trivialization=2)
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(4, 3, 2)
    torch.testing.assert_close(fresh(x)[0], layer(x)[0], atol=0, rtol=0)


def former_state(layer, generator_seed=1):
    """``layer.state_dict()`` rewritten in the former form ``U = base exp(tril(X) - tril(X)^T)``
    (no ``orthogonal_form``) with random orthogonal bases ``Q`` and trained tensors ``X``;
    returns the state and the ``U`` it means per suffix."""
    g = torch.Generator().manual_seed(generator_seed)
    state = {k: v.clone() for k, v in layer.state_dict().items() if k != "orthogonal_form"}
    H, meant = layer.hidden_size, {}
    for suffix in layer._suffixes:
        Q = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=torch.float64))[0]
        X = torch.randn(H, H, generator=g, dtype=torch.float64)
        state[f"parametrizations.weight_hh{suffix}.0.base"] = Q
        state[f"parametrizations.weight_hh{suffix}.original"] = X
        meant[suffix] = Q @ torch.linalg.matrix_exp(X.tril() - X.tril().T)
    return state, meant


def test_former_state_dict_is_converted_with_a_warning():
    layer = mrnn.MomentumOrthogonalRNN(2, 5, 2, bidirectional=True, dtype=torch.float64)
    state, meant = former_state(layer)
    kept = {k: v.clone() for k, v in state.items()}
    assert mrnn.is_former_orthogonal_state(state)
    with pytest.warns(UserWarning, match="^MomentumOrthogonalRNN: the state_dict was converted from the former "
                                         "parametrization .* optimizer state saved with "
                                         "it no longer matches the orthogonal parameters"):
        layer.load_state_dict(state)
    for suffix, U in meant.items():
        torch.testing.assert_close(getattr(layer, "weight_hh" + suffix).detach(), U, atol=1e-12, rtol=0)
        assert torch.equal(layer.parametrizations["weight_hh" + suffix].original, -torch.eye(5, dtype=torch.float64))
    assert all(torch.equal(state[k], v) for k, v in kept.items()) and state.keys() == kept.keys()
    assert int(layer.orthogonal_form) == mrnn.orthogonal.ORTHOGONAL_FORM == 2
    assert not mrnn.is_former_orthogonal_state(layer.state_dict())

    rnn = mrnn.MomentumOrthogonalRNN(2, 5, 2, bidirectional=True, dtype=torch.float64)
    model = torch.nn.ModuleDict({"head": torch.nn.Linear(2, 2), "rnn": rnn})
    nested = {**{"head." + k: v for k, v in model["head"].state_dict().items()},
              **{"rnn." + k: v for k, v in state.items()}}
    assert mrnn.is_former_orthogonal_state(nested)
    with pytest.warns(UserWarning, match="converted from the former parametrization"):
        model.load_state_dict(nested)
    torch.testing.assert_close(model["rnn"].weight_hh_l1_reverse.detach(), meant["_l1_reverse"], atol=1e-12, rtol=0)
    assert not mrnn.is_former_orthogonal_state(model.state_dict())


def test_former_state_dict_float32():
    layer = mrnn.OrthogonalRNN(2, 8)
    state, meant = former_state(layer)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    with pytest.warns(UserWarning, match="former parametrization"):
        layer.load_state_dict(state)
    U = layer.weight_hh_l0.detach()
    assert (U.double() - meant["_l0"]).abs().max() < 1e-5
    assert (U.T @ U - torch.eye(8)).abs().max() < 1e-6


def test_former_state_dict_without_its_base_is_refused():
    layer = mrnn.OrthogonalRNN(2, 4)
    state, _ = former_state(layer)
    del state["parametrizations.weight_hh_l0.0.base"]
    with pytest.raises(RuntimeError, match="former-form orthogonal state .* needs "
                                           "parametrizations.weight_hh_l0.0.base"):
        layer.load_state_dict(state, strict=False)


def test_current_state_dict_round_trips_without_a_warning():
    layer = mrnn.RestartOrthogonalRNN(2, 5, bidirectional=True, trivialization=2)
    perturb(layer)
    layer.change_base()
    perturb(layer)
    state = layer.state_dict()
    assert not mrnn.is_former_orthogonal_state(state)
    assert not mrnn.is_former_orthogonal_state(torch.nn.Linear(2, 2).state_dict())
    other = mrnn.MomentumLSTM(2, 3)             # another parametrization of weight_hh (DropConnect)
    torch.nn.utils.parametrize.register_parametrization(other, "weight_hh_l0", torch.nn.Identity())
    assert "parametrizations.weight_hh_l0.original" in other.state_dict()
    assert not mrnn.is_former_orthogonal_state(other.state_dict())
    fresh = mrnn.RestartOrthogonalRNN(2, 5, bidirectional=True, trivialization=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.load_state_dict(state)
    for suffix in ("_l0", "_l0_reverse"):
        assert torch.equal(getattr(fresh, "weight_hh" + suffix), getattr(layer, "weight_hh" + suffix))


def test_current_state_dict_round_trips_through_safetensors(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    layer = mrnn.AdamOrthogonalRNN(2, 5, 2)
    perturb(layer)
    safetensors_torch.save_file(layer.state_dict(), tmp_path / "weights.safetensors")
    state = safetensors_torch.load_file(tmp_path / "weights.safetensors")
    assert not mrnn.is_former_orthogonal_state(state) and int(state["orthogonal_form"]) == 2
    fresh = mrnn.AdamOrthogonalRNN(2, 5, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.load_state_dict(state)
    x = torch.randn(4, 3, 2)
    torch.testing.assert_close(fresh(x)[0], layer(x)[0], atol=0, rtol=0)


def test_unknown_orthogonal_form_is_refused():
    layer = mrnn.OrthogonalRNN(2, 4)
    state = layer.state_dict()
    state["orthogonal_form"] = torch.tensor(3)
    with pytest.raises(RuntimeError, match="orthogonal_form: this version reads orthogonal_form 2, got 3"):
        layer.load_state_dict(state)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("K,error,match", [
    (0, ValueError, r"trivialization \(K\) must be a positive int .* or math.inf \(never change it\), got 0"),
    (-3, ValueError, "must be a positive int .* got -3"),
    (2.5, ValueError, "must be a positive int .* got 2.5"),
    (-math.inf, ValueError, "must be a positive int .* got -inf"),
    (float("nan"), ValueError, "must be a positive int .* got nan"),
    ("infty", TypeError, "must be a positive int .* got str 'infty'"),
    (True, TypeError, "must be a positive int .* got bool True"),
    (None, TypeError, "must be a positive int .* got NoneType None"),
])
def test_bad_trivialization(K, error, match):
    with pytest.raises(error, match=match):
        mrnn.OrthogonalRNN(2, 4, trivialization=K)


def test_bad_init_and_hyperparameters():
    with pytest.raises(ValueError, match=r"init must be one of \('cayley', 'henaff'\), got 'paper'"):
        mrnn.MomentumOrthogonalRNN(2, 4, init="paper")
    with pytest.raises(TypeError, match=r"PlainRule takes hyperparameters \[\]; got unexpected \['momentum'\]"):
        mrnn.OrthogonalRNN(2, 4, momentum=0.5)
    with pytest.raises(ValueError, match="hidden_size must be greater than zero, got 0"):
        mrnn.OrthogonalRNN(2, 0)


def test_hidden_size_mismatches():
    layer = mrnn.MomentumOrthogonalRNN(3, 4, 2)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"Expected hidden size \(2, 2, 4\), got \[2, 2, 5\] \(hx\)"):
        layer(x, torch.zeros(2, 2, 5))
    with pytest.raises(ValueError, match=r"input.size\(-1\) must be equal to input_size. Expected 3, got 4"):
        layer(torch.randn(5, 2, 4))
    _, h, rs = layer(x, return_rule_state=True)
    bad = mrnn.RuleState(torch.zeros(2, 2, 5), None, rs.steps)
    with pytest.raises(ValueError, match=r"rule_state.velocity must have shape \(2, 2, 4\), got \(2, 2, 5\)"):
        layer(x, h, rule_state=bad)
    with pytest.raises(ValueError, match="rule_state.velocity must be None for this rule"):
        mrnn.OrthogonalRNN(3, 4, 2)(x, h, rule_state=rs)
    with pytest.raises(ValueError, match=r"Expected a matrix or batch of matrices of shape torch.Size\(\[4, 4\]\)"):
        layer.weight_hh_l0 = torch.eye(5)
    other = mrnn.MomentumOrthogonalRNN(3, 5, 2)
    with pytest.raises(RuntimeError, match="size mismatch for parametrizations.weight_hh_l0.original"):
        layer.load_state_dict(other.state_dict())


def test_impl_is_checked_clearly():
    """The orthogonal layers take "auto" (the reference on every device), "reference" and
    "triton-loop"; the other paths are refused by name."""
    with pytest.raises(ValueError, match=r"MomentumOrthogonalRNN takes impl in \('auto', 'triton-loop', "
                                         r"'reference'\), got 'loop'"):
        mrnn.MomentumOrthogonalRNN(3, 4, impl="loop")
    with pytest.raises(ValueError, match="impl must be one of"):
        mrnn.OrthogonalRNN(3, 4, impl="cudnn")
    assert mrnn.OrthogonalRNN(3, 4).path == "reference"
    assert mrnn.OrthogonalRNN(3, 4, impl="triton-loop").path == "triton-loop"
    assert "impl='triton-loop'" in repr(mrnn.OrthogonalRNN(3, 4, impl="triton-loop"))


@pytest.mark.parametrize("rule", RULES)
def test_double_backward(rule):
    """Second derivatives with every rule (``momentumrnn.second_order`` recomputes the call in
    plain ops where the rule's drive comes from a first-order scan), equal to those of the
    call made in plain ops from the start."""
    from momentumrnn.paths import plain_ops

    layer = make(rule, 3, 4, learnable=rule != "none", dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for plain in (False, True):
        with plain_ops() if plain else contextlib.nullcontext():
            out, _ = layer(x)
        sources = [x, *layer.parameters()]
        first = torch.autograd.grad(out.pow(2).sum(), sources, create_graph=True)
        results.append(torch.autograd.grad(sum(g.pow(2).sum() for g in first), sources, allow_unused=True))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)
