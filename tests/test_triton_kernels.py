"""The Triton kernels (``triton.py`` of ``momentumrnn.ops.linear_scan`` and ``ops.adam_drive``) under Triton's interpreter, on CPU tensors.

On CUDA they are compiled (``tests/test_cuda.py`` checks them there with ``--device cuda``);
here ``TRITON_INTERPRET=1`` runs the same kernel code with numpy, so CI exercises the
algorithm: values and gradients against step-by-step loops, tile boundaries (tiles of 8
steps and 16 channels here), masks, learnable coefficients, float64 and float32, and whole
layers with the scans forced onto the kernels (``paths.scan_backend_override``).
"""


import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import momentumrnn as mrnn
from conftest import ACTIVE, layer_id
from momentumrnn.paths import scan_backend_override
from momentumrnn.rules import ADAM_EPS, AdamRule
from momentumrnn.ops.linear_scan import linear_scan

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def kernels(request):
    """The Triton kernels in interpreter mode (conftest sets ``TRITON_INTERPRET=1`` for
    CPU runs before anything imports triton)."""
    if request.config.getoption("--device") == "cuda":
        pytest.skip("the interpreter tests run on the CPU; with --device cuda test_cuda.py checks the compiled kernels")
    import triton

    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if runtime is not None and not runtime.interpret:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set")
    from types import SimpleNamespace

    from momentumrnn.ops.adam_drive import triton as adam
    from momentumrnn.ops.linear_scan import triton as scans

    # Small tiles keep the interpreter quick while the shapes below still cross tile boundaries.
    saved = scans.TILE_STEPS, scans.TILE_CHANNELS
    scans.TILE_STEPS, scans.TILE_CHANNELS = 8, 16
    yield SimpleNamespace(linear_scan=scans.linear_scan, adam_drive=adam.adam_drive,
                          adam_drive_of_inputs=adam.adam_drive_of_inputs)
    scans.TILE_STEPS, scans.TILE_CHANNELS = saved


TOL = {torch.float64: dict(atol=1e-12, rtol=1e-11), torch.float32: dict(atol=1e-5, rtol=1e-4)}


def compare(got, want, leaves, dtype):
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL[dtype])
    weights = [torch.randn_like(w) for w in want]
    grads = [torch.autograd.grad(sum((c * o).sum() for c, o in zip(weights, outs)), leaves)
             for outs in (got, want)]
    for name, g, w in zip([f"leaf {i}" for i in range(len(leaves))], *grads, strict=True):
        torch.testing.assert_close(g, w, **TOL[dtype], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind", ["learnable", "per step", "per sequence"])
@pytest.mark.parametrize("T", [1, 9, 20])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_linear_scan_kernel_equals_the_loop(kernels, kind, T, dtype):
    B, F = 3, 7                                    # 21 channels: two programs, the second partial
    x = torch.randn(T, B, F, dtype=dtype, requires_grad=True)
    y0 = torch.randn(B, F, dtype=dtype, requires_grad=True)
    if kind == "learnable":
        a = torch.tensor(0.7, dtype=dtype, requires_grad=True)
    else:
        a = torch.rand(T, 1 if kind == "per step" else B, dtype=dtype)
        a[T // 2] = 0.0                              # a restart: an exact zero coefficient
        a.requires_grad_(kind == "per sequence")     # as a learnable momentum held by a mask
    leaves = [x, y0] + ([a] if a.requires_grad else [])
    compare([kernels.linear_scan(a, x, y0)], [linear_scan(a, x, y0, method="sequential")], leaves, dtype)
    compare([kernels.linear_scan(a, x)], [linear_scan(a, x, None, method="sequential")], leaves[:1], dtype)


@pytest.mark.parametrize("rule", ["adam", "rmsprop"])
@pytest.mark.parametrize("T,lengths", [(1, None), (9, None), (20, [20, 7, 0, 9])])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_adam_kernel_equals_the_step_by_step_rule(kernels, rule, T, lengths, dtype):
    """States, drive and every gradient (u, v0, m0, learnable mu and s); with lengths the
    padded steps hold the state (the drive there is not compared: the layers never read it)."""
    B, G = 4 if lengths else 2, 5
    u = torch.randn(T, B, G, dtype=dtype, requires_grad=True)
    v0 = torch.randn(B, G, dtype=dtype, requires_grad=True)
    m0 = torch.rand(B, G, dtype=dtype, requires_grad=True)
    s = torch.tensor(0.4, dtype=dtype, requires_grad=True)
    mu = torch.tensor(0.6, dtype=dtype, requires_grad=True) if rule == "adam" else 0.0
    hp = {"momentum": mu, "step_size": s, "beta": 0.3}
    lengths = None if lengths is None else torch.tensor(lengths)
    mask = None if lengths is None else torch.arange(T)[:, None] < lengths[None, :]
    d, v, m = kernels.adam_drive(u, v0, m0, mu, s, 0.3, ADAM_EPS, lengths)
    want, state = AdamRule().drives_stepwise(u, {"velocity": v0, "second_moment": m0}, hp,
                                             torch.zeros(B, dtype=torch.long), mask)
    keep = 1.0 if mask is None else mask[..., None].to(dtype)
    leaves = [u, v0, m0, s] + ([mu] if rule == "adam" else [])
    compare([d * keep, v, m], [want * keep, state["velocity"], state["second_moment"]], leaves, dtype)


@pytest.mark.parametrize("bias", [True, False])
def test_adam_drive_of_inputs_equals_the_step_by_step_rule(kernels, bias):
    """The input GEMM inside, its output made again in the backward: every gradient (x, W, b,
    v0, m0, mu, s), with lengths."""
    T, B, I, G = 20, 3, 4, 6
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(G, I, dtype=torch.float64, requires_grad=True)
    b = torch.randn(G, dtype=torch.float64, requires_grad=True) if bias else None
    v0 = torch.randn(B, G, dtype=torch.float64, requires_grad=True)
    m0 = torch.rand(B, G, dtype=torch.float64, requires_grad=True)
    mu = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([20, 9, 1])
    mask = torch.arange(T)[:, None] < lengths[None, :]
    d, v, m = kernels.adam_drive_of_inputs(x, weight, b, v0, m0, mu, s, 0.3, ADAM_EPS, lengths)
    want, state = AdamRule().drives_stepwise(torch.nn.functional.linear(x, weight, b),
                                             {"velocity": v0, "second_moment": m0},
                                             {"momentum": mu, "step_size": s, "beta": 0.3},
                                             torch.zeros(B, dtype=torch.long), mask)
    keep = mask[..., None].double()
    leaves = [x, weight, v0, m0, mu, s] + ([b] if bias else [])
    compare([d * keep, v, m], [want * keep, state["velocity"], state["second_moment"]], leaves, torch.float64)


def test_adam_kernel_gradcheck(kernels):
    u = torch.randn(3, 1, 2, dtype=torch.float64, requires_grad=True)
    v0 = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    m0 = torch.rand(1, 2, dtype=torch.float64, requires_grad=True)
    mu = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: kernels.adam_drive(*a, 0.3, ADAM_EPS), (u, v0, m0, mu, s),
                                    fast_mode=True)


def test_adam_on_the_kernel_refuses_a_mask_with_holes(kernels):
    u = torch.randn(4, 2, 3, dtype=torch.float64)
    state = {"velocity": torch.zeros(2, 3, dtype=torch.float64), "second_moment": torch.zeros(2, 3, dtype=torch.float64)}
    mask = torch.tensor([[True, True], [False, True], [True, True], [False, False]])
    with scan_backend_override("triton"), pytest.raises(ValueError, match="trailing padding"):
        AdamRule().drives(u, state, ACTIVE["adam"], torch.zeros(2, dtype=torch.long), mask)


LAYER_CASES = [(("lstm", "adam"), "fused-drive"), (("gru", "rmsprop"), "fused-drive"), (("rnn", "adam"), "loop"),
               (("lstm", "momentum"), "fused"), (("gru", "restart"), "fused"), (("rnn", "momentum"), "loop")]


@pytest.mark.parametrize("key,impl", LAYER_CASES, ids=lambda v: layer_id(v) if isinstance(v, tuple) else v)
def test_layers_with_the_scans_on_the_kernels(kernels, key, impl):
    """Whole layers with the scans forced onto the kernels (as on CUDA): two layers, both
    directions, packed input, a carried rule state with step counters that differ, learnable."""
    from test_fast_paths import assert_same_values_and_gradients, carried_state, pair

    fast, ref = pair(key, impl, 3, 4, 2, bidirectional=True, learnable=True)
    x, hidden, state, leaves = carried_state(ref)
    with scan_backend_override("triton"):
        assert_same_values_and_gradients(
            fast, ref, lambda m: m(x, hidden, rule_state=state, return_rule_state=True), leaves, torch.float64)
        lengths = torch.tensor([6, 1, 4])
        assert_same_values_and_gradients(
            fast, ref, lambda m: m(pack_padded_sequence(x, lengths, enforce_sorted=False), return_rule_state=True),
            [x], torch.float64)


def test_orthogonal_layer_with_the_scans_on_the_kernels(kernels):
    from test_fast_paths import tensors

    torch.manual_seed(1)
    layer = mrnn.AdamOrthogonalRNN(3, 4, dtype=torch.float64, bidirectional=True)
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    with scan_backend_override("triton"):
        got = tensors(layer(x, return_rule_state=True))
    want = tensors(layer(x, return_rule_state=True))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL[torch.float64])


_COMPILE_DEFAULT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from momentumrnn.ops.adam_drive import triton as adam
from momentumrnn.ops.linear_scan import triton as scans

cases = []
for dtype in ("fp32", "fp64"):
    for reverse in (False, True):
        for has_init in (False, True):
            cases.append((scans._scan_kernel, dtype, {"REVERSE": reverse, "HAS_INIT": has_init}))
    for lengths in (False, True):
        cases.append((adam._adam_forward_kernel, dtype, {"HAS_LENGTHS": lengths, "FP32": dtype == "fp32"}))
        for mu in (False, True):
            for s in (False, True):
                cases.append((adam._adam_backward_kernel, dtype,
                              {"HAS_LENGTHS": lengths, "NEED_MU": mu, "NEED_S": s, "FP32": dtype == "fp32"}))
for capability in (80, 90):
    for kernel, dtype, values in cases:
        names = list(kernel.arg_names)
        values = {**values, "BT": scans.TILE_STEPS, "BC": scans.TILE_CHANNELS}
        signature = {n: "constexpr" if n in values else ("*i64" if n == "len_ptr" else f"*{dtype}")
                     if n.endswith("_ptr") else "i32" for n in names}
        source = ASTSource(fn=kernel, signature=signature, constexprs={(names.index(k),): v for k, v in values.items()})
        assert "cubin" in triton.compile(source, target=GPUTarget("cuda", capability, 32)).asm, (kernel, values)
print("compiled", len(cases) * 2)
"""


def test_the_default_cuda_kernels_compile_for_sm80_and_sm90(tmp_path):
    """The Triton kernels of the default CUDA paths (momentum's scans, Adam's and RMSProp's
    states) compile to cubins for A100 (sm_80) and H100/H200 (sm_90), every variant, with no
    GPU needed: a change that no longer compiles fails here, not first on a GPU."""
    import os
    import pathlib
    import subprocess
    import sys

    import triton
    if not (pathlib.Path(triton.__file__).parent / "backends" / "nvidia").is_dir():
        pytest.skip("Triton has no NVIDIA backend here")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", _COMPILE_DEFAULT], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "compiled 56" in result.stdout, result.stderr[-3000:]
