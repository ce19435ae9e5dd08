"""The parallel filters (``momentumrnn.ops``) and ``Rule.drives`` against step-by-step loops."""

import pytest
import torch

from momentumrnn.rules import AdamRule, MomentumRule, RestartRule, RMSPropRule
from momentumrnn.ops.adam_drive import adam_drive_ref, adam_scan
from momentumrnn.ops.linear_scan import SCAN_METHODS, linear_scan, linear_scan_ref
from momentumrnn.time_steps import step_indices

TOL = dict(atol=1e-12, rtol=1e-11)
METHODS = [("matmul", 4), ("matmul", None), ("chunked", None), ("chunked", 2), ("chunked", 4), ("loop", None)]


def coefficient(kind, T, B):
    if kind == "number":
        return 0.7
    if kind == "learnable":
        return torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    if kind == "per step":
        return torch.rand(T, 1, dtype=torch.float64)
    return torch.rand(T, B, dtype=torch.float64)       # per step and sequence (restart)


@pytest.mark.parametrize("method,block", METHODS)
@pytest.mark.parametrize("kind", ["number", "learnable", "per step", "per sequence"])
@pytest.mark.parametrize("T", [1, 2, 7, 16, 17, 35])
@pytest.mark.parametrize("initial", [False, True])
def test_linear_scan_equals_the_loop(method, block, kind, T, initial):
    B, F = 3, 2
    x = torch.randn(T, B, F, dtype=torch.float64, requires_grad=True)
    y0 = torch.randn(B, F, dtype=torch.float64, requires_grad=True) if initial else None
    a = coefficient(kind, T, B)
    want = linear_scan_ref(a, x, y0)
    got = linear_scan(a, x, y0, method=method, block=block)
    torch.testing.assert_close(got, want, **TOL)
    w = torch.randn_like(want)
    leaves = [x] + ([y0] if initial else []) + ([a] if kind == "learnable" else [])
    for g, h in zip(torch.autograd.grad((got * w).sum(), leaves, allow_unused=True),
                    torch.autograd.grad((want * w).sum(), leaves, allow_unused=True)):
        if h is None:
            assert g is None or torch.all(g == 0)
        else:
            torch.testing.assert_close(g, h, **TOL)


def test_zero_coefficient_is_the_identity_and_methods_are_checked():
    x = torch.randn(5, 2, 3)
    assert linear_scan(0.0, x) is x
    assert "auto" in SCAN_METHODS
    with pytest.raises(ValueError, match="method must be one of"):
        linear_scan(0.5, x, method="fft")


def test_step_indices():
    steps = torch.tensor([0, 0])
    assert step_indices(steps, 3).tolist() == [[1], [2], [3]]
    assert step_indices(torch.tensor([2, 5]), 2).tolist() == [[3, 6], [4, 7]]
    mask = torch.tensor([[True, True], [False, True], [True, False]])
    assert step_indices(torch.tensor([0, 1]), 3, mask).tolist() == [[1, 2], [2, 3], [2, 4]]


RULES = [
    (MomentumRule(), {"momentum": 0.7, "step_size": 0.4}),
    (AdamRule(), {"momentum": 0.5, "step_size": 0.3, "beta": 0.6}),
    (RMSPropRule(), {"step_size": 0.7, "beta": 0.4}),
    (RestartRule(), {"step_size": 0.6, "restart": 3}),
    (RestartRule(), {"step_size": 0.6, "restart": 0}),
]


@pytest.mark.parametrize("rule,hp", RULES, ids=lambda r: type(r).__name__ if not isinstance(r, dict) else "")
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("shape", [(9, 3, 4), (40, 8, 1000)], ids=["small", "several-chunks"])   # 2^18 / (8 * 1000) < 40
def test_parallel_drives_equal_the_stepwise_loop(rule, hp, masked, learnable, shape):
    """``Rule.drives`` (parallel) against ``Rule.drives_stepwise`` (the reference loop), with a
    carried state, per-sequence step counters and, masked, arbitrary skipped steps."""
    T, B, G = shape
    torch.manual_seed(1)
    u = torch.randn(T, B, G, dtype=torch.float64, requires_grad=True)
    hp = {k: (torch.tensor(v, dtype=torch.float64, requires_grad=True) if learnable and k in rule.learnable else v)
          for k, v in hp.items()}
    state = {f: torch.rand(B, G, dtype=torch.float64, requires_grad=True) for f in rule.state_fields}
    steps = torch.randint(0, 5, (B,))
    mask = torch.rand(T, B) > 0.3 if masked else None
    results = []
    for drives in (rule.drives, rule.drives_stepwise):
        d, final = drives(u, state, hp, steps, mask)
        outs = [d] + [final[f] for f in rule.state_fields]
        weights = [torch.randn_like(o, generator=torch.Generator().manual_seed(i)) for i, o in enumerate(outs)]
        loss = sum((w * o).sum() for w, o in zip(weights, outs))
        leaves = [u] + [state[f] for f in rule.state_fields] + [v for v in hp.values() if torch.is_tensor(v)]
        results.append((outs, torch.autograd.grad(loss, leaves)))
    for got, want in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(got, want, **TOL)
    for got, want in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def adam_case(T, B, G, momentum, seed):
    """Inputs of Adam's drive in float64, with the leaves to differentiate: u, v0, m0, s (and mu)."""
    torch.manual_seed(seed)
    u = torch.randn(T, B, G, dtype=torch.float64, requires_grad=True)
    v0, m0 = (torch.rand(B, G, dtype=torch.float64, requires_grad=True) for _ in range(2))
    mu = torch.tensor(0.5, dtype=torch.float64, requires_grad=True) if momentum == "learnable" else momentum
    s = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    return (u, v0, m0, mu, s), [u, v0, m0, s] + ([mu] if momentum == "learnable" else [])


def stepwise_adam(u, v0, m0, mu, s):
    """Adam's drive by the rule's own step: (d, v_T, m_T)."""
    d, state = AdamRule().drives_stepwise(u, {"velocity": v0, "second_moment": m0},
                                          {"momentum": mu, "step_size": s, "beta": 0.6},
                                          torch.zeros(u.size(1), dtype=torch.long))
    return d, state["velocity"], state["second_moment"]


def assert_drives_close(got, want, leaves):
    """Values to ``TOL`` and the gradients of a random weighting of them to 1e-10."""
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    weights = [torch.randn_like(w) for w in want]
    for a, b in zip(torch.autograd.grad(sum((w * g).sum() for w, g in zip(weights, got)), leaves, retain_graph=True),
                    torch.autograd.grad(sum((w * g).sum() for w, g in zip(weights, want)), leaves, retain_graph=True)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("momentum", [0.0, 0.5, "learnable"])
@pytest.mark.parametrize("cpp", [True, False], ids=["cpp", "torch"])
def test_adam_scan_equals_the_naive_drive(momentum, cpp):
    """Adam's chunked drive (``ops.adam_drive``: C++ chunk kernels or torch ops) against its
    step-by-step reference, values and gradients, in float64; the reference against the
    rule's own step."""
    from momentumrnn import cpu_kernels
    from momentumrnn.paths import loop_engine_override

    if cpp and not cpu_kernels.available():
        pytest.skip("the C++ step kernels are not built here")
    inputs, leaves = adam_case(13, 2, 5, momentum, seed=3)
    with loop_engine_override("cpp" if cpp else "torch"):
        got = adam_scan(*inputs, 0.6, 1e-16)
    want = adam_drive_ref(*inputs, 0.6, 1e-16)
    assert_drives_close(got, want, leaves)
    assert_drives_close(want, stepwise_adam(*inputs), leaves)


def test_adam_scan_keeps_the_initial_state():
    u = torch.randn(20, 2, 3)
    v0, m0 = torch.randn(2, 3), torch.rand(2, 3)
    copies = v0.clone(), m0.clone()
    adam_scan(u, v0, m0, 0.5, 0.3, 0.6, 1e-16)
    assert torch.equal(v0, copies[0]) and torch.equal(m0, copies[1])


@pytest.mark.slow
@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.5, "learnable"])
def test_adam_scan_keeping_or_recomputing_the_states(keep, momentum):
    """Both memory strategies of the Adam kernel against the stepwise rule, over several chunks."""
    inputs, leaves = adam_case(30, 4, 20000, momentum, seed=2)   # 2^18 / (4 * 20000) < 8: chunks of 8 steps
    assert_drives_close(adam_scan(*inputs, 0.6, 1e-16, keep=keep), stepwise_adam(*inputs), leaves)
