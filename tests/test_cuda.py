"""Every path on CUDA against the per-step reference on the CPU (``pytest --device cuda``).

Skipped without ``--device cuda``. float64: to 1e-9 (the paths sum the same terms in
another order); float32 with TF32 off in cuDNN and cuBLAS: against the float64 reference,
``||got - want|| / ||want|| <= 1e-4`` for every output and gradient (1e-3 for the
gradients of learnable hyperparameters, single sums with cancellation). Covered: all 14
layers on every path their rule allows (auto, fused, fused-drive, loop, triton-loop) and
the 5 orthogonal layers (reference and triton-loop), with two layers, both directions, an
initial state, packed input, a carried rule state with step counters that differ,
learnable momentum and step size, and no bias; the Triton kernels at pixel-MNIST length;
the triton-loop path over windows replayed as CUDA graphs, and its persistent engine; the
torch scans (no Triton) on CUDA; ``torch.compile``, ``torch.func.grad`` and ``torch.export``
with a dynamic length on CUDA.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import momentumrnn as mrnn
from conftest import LAYER_KEYS
from test_fast_paths import pair, tensors
from test_torch_contract import TIME, Outputs
from momentumrnn.paths import choose_path, scan_backend_override

TOL = {torch.float64: dict(atol=1e-9, rtol=1e-9), torch.float32: dict(atol=1e-5, rtol=1e-4)}
#: float32 against the float64 reference: ||got - want|| / ||want|| per tensor. Measured on an
#: H200 with TF32 off, over two runs: up to 6.9e-5 (a weight gradient through the Adam drive,
#: whose division by sqrt(m) amplifies float32 rounding; float64 agrees to 1e-9 everywhere);
#: the float32 results of cuDNN's kernels also vary from run to run.
FLOAT32_RELATIVE = 1e-4
#: The gradient of a learnable hyperparameter is one sum over every element, with
#: cancellation: float32 paths on the CPU already differ from float64 there by up to 2.4e-4.
FLOAT32_SCALAR_RELATIVE = 1e-3


def assert_close(got, want, dtype, name=""):
    got = got.double().cpu()
    if dtype == torch.float64:
        torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda m: f"{name}: {m}")
        return
    assert torch.isfinite(got).all(), name
    error = ((got - want).norm() / want.norm().clamp_min(1e-30)).item()
    bound = FLOAT32_SCALAR_RELATIVE if want.numel() == 1 else FLOAT32_RELATIVE
    assert error <= bound, f"{name}: relative error {error:.2e} > {bound}"


@pytest.fixture(autouse=True)
def _cuda_only(request):
    if request.config.getoption("--device") != "cuda":
        pytest.skip("CUDA tests run with --device cuda")
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def impls(cls):
    rule = cls.rule_type
    out = ["auto", "loop"]
    if rule.couples_to_hidden:
        out.append("triton-loop")
    else:
        out.append("fused-drive")
    if rule.commutes_with_input_weights:
        out.append("fused")
    return out


CASES = [(key, impl) for key in LAYER_KEYS for impl in impls(mrnn.LAYERS[key])]


def case_id(case):
    key, impl = case
    return f"{mrnn.LAYERS[key].__name__}-{impl}"


def to(value, device, dtype):
    if isinstance(value, tuple):
        return type(value)(*(to(v, device, dtype) for v in value)) if hasattr(value, "_fields") else \
            tuple(to(v, device, dtype) for v in value)
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype if value.is_floating_point() else value.dtype)
    return value


def check(fast, ref, call, leaves, dtype):
    """``call(module, leaves, device, dtype)`` -> result. Outputs and the gradients of a
    random projection of them (inputs and parameters): ``fast`` on CUDA in ``dtype``,
    ``ref`` on the CPU in float64."""
    cuda_leaves = [leaf.detach().to("cuda", dtype).requires_grad_() for leaf in leaves]
    got = tensors(call(fast, cuda_leaves, "cuda", dtype))
    want = tensors(call(ref, leaves, "cpu", torch.float64))
    assert len(got) == len(want)
    weights = [torch.randn_like(w) for w in want]
    got_grads = torch.autograd.grad(sum((w.to("cuda", dtype) * g).sum() for w, g in zip(weights, got)),
                                    cuda_leaves + list(fast.parameters()), allow_unused=True)
    want_grads = torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, want)),
                                     leaves + list(ref.parameters()), allow_unused=True)
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, dtype, f"output {i}")
    names = [f"input{i}" for i in range(len(leaves))] + [n for n, _ in ref.named_parameters()]
    for name, g, w in zip(names, got_grads, want_grads, strict=True):
        if w is None:
            assert g is None or torch.all(g == 0), name
            continue
        assert g is not None, name
        assert_close(g, w, dtype, name)


def plain(module, leaves, device, dtype):
    return module(leaves[0], return_rule_state=True)


def packed_call(lengths):
    def call(module, leaves, device, dtype):
        return module(pack_padded_sequence(leaves[0], lengths, enforce_sorted=False), return_rule_state=True)
    return call


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_layer_on_cuda_equals_the_reference(case, dtype):
    key, impl = case
    cls = mrnn.LAYERS[key]
    fast, ref = pair(key, impl, 3, 5, 2, bidirectional=True, learnable=True, device="cuda", fast_dtype=dtype)
    if impl == "auto":
        assert fast.path == choose_path("auto", cls.rule_type, "cuda")
    x = torch.randn(40, 3, 3, dtype=torch.float64, requires_grad=True)      # 40 steps: two time tiles
    h0 = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    lstm = key[0] == "lstm"

    def with_state(module, leaves, device, dtype_):
        x, h0 = leaves
        return module(x, (h0, h0 * 0.5) if lstm else h0, return_rule_state=True)

    check(fast, ref, with_state, [x, h0], dtype)
    # packed input, then a second call carrying the rule state of the first (counters 40, 7, 23)
    lengths = torch.tensor([40, 7, 23])
    check(fast, ref, packed_call(lengths), [x], dtype)
    _, hidden, rs = ref(pack_padded_sequence(x.detach(), lengths, enforce_sorted=False), return_rule_state=True)
    velocity = rs.velocity.detach().requires_grad_()
    moment = None if rs.second_moment is None else rs.second_moment.detach().requires_grad_()
    hidden = tuple(h.detach() for h in hidden) if lstm else hidden.detach()
    x2 = torch.randn(9, 3, 3, dtype=torch.float64, requires_grad=True)

    def carried(module, leaves, device, dtype_):
        x, v, *m = leaves
        state = mrnn.RuleState(v, m[0] if m else None, rs.steps.to(device))
        return module(x, to(hidden, device, dtype_), rule_state=state, return_rule_state=True)

    check(fast, ref, carried, [x2, velocity] + ([moment] if moment is not None else []), dtype)


@pytest.mark.parametrize("key", [k for k in LAYER_KEYS if k[1] != "nesterov"], ids=lambda k: mrnn.LAYERS[k].__name__)
def test_no_bias_on_cuda(key):
    fast, ref = pair(key, "auto", 3, 5, bias=False, device="cuda")
    x = torch.randn(33, 2, 3, dtype=torch.float64, requires_grad=True)
    check(fast, ref, plain, [x], torch.float64)


@pytest.mark.parametrize("impl", ["auto", "triton-loop"])
@pytest.mark.parametrize("rule", ["none", "momentum", "adam", "rmsprop", "restart"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_orthogonal_on_cuda(rule, dtype, impl):
    cls = mrnn.ORTHOGONAL_LAYERS[rule]
    torch.manual_seed(3)
    ref = cls(3, 6, 2, bidirectional=True, dtype=torch.float64, learnable=bool(cls.rule_type.learnable))
    fast = cls(3, 6, 2, bidirectional=True, dtype=dtype, device="cuda", learnable=bool(cls.rule_type.learnable),
               impl=impl)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(37, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([37, 5, 20])
    check(fast, ref, packed_call(lengths), [x], dtype)


@pytest.mark.parametrize("key", [("lstm", "adam"), ("gru", "momentum"), ("rnn", "restart")],
                         ids=lambda k: mrnn.LAYERS[k].__name__)
def test_torch_scans_on_cuda(key):
    """Without Triton (``scan_backend_override("torch")``) the CUDA paths still equal the reference."""
    fast, ref = pair(key, "auto", 3, 5, 2, learnable=True, device="cuda")
    x = torch.randn(30, 2, 3, dtype=torch.float64, requires_grad=True)
    with scan_backend_override("torch"):
        check(fast, ref, plain, [x], torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_kernels_at_pixel_mnist_length(dtype):
    """The compiled kernels over 784 steps and 2,000 channels (partial last tiles) against
    the step-by-step loops on the CPU in float64."""
    from momentumrnn.ops.adam_drive import triton as kernels
    from momentumrnn.rules import ADAM_EPS, AdamRule
    from momentumrnn.ops.linear_scan import linear_scan

    T, B, G = 784, 4, 500
    u = torch.randn(T, B, G, dtype=torch.float64)
    v0, m0 = torch.randn(B, G, dtype=torch.float64), torch.rand(B, G, dtype=torch.float64)
    lengths = torch.tensor([784, 300, 1, 0])
    mask = torch.arange(T)[:, None] < lengths[None, :]
    want, state = AdamRule().drives_stepwise(u, {"velocity": v0, "second_moment": m0},
                                             {"momentum": 0.6, "step_size": 0.6, "beta": 0.1},
                                             torch.zeros(B, dtype=torch.long), mask)
    d, v, m = kernels.adam_drive(*(t.to("cuda", dtype) for t in (u, v0, m0)), 0.6, 0.6, 0.1, ADAM_EPS,
                                 lengths.cuda())
    tol = TOL[dtype] if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    keep = mask[..., None].double()
    torch.testing.assert_close(d.double().cpu() * keep, want * keep, **tol)
    torch.testing.assert_close(v.double().cpu(), state["velocity"], **tol)
    torch.testing.assert_close(m.double().cpu(), state["second_moment"], **tol)
    a = torch.rand(T, B, dtype=torch.float64)
    torch.testing.assert_close(kernels.linear_scan(a.to("cuda", dtype), u.to("cuda", dtype), v0.to("cuda", dtype))
                               .double().cpu(), linear_scan(a, u, v0, method="sequential"), **tol)


@pytest.mark.parametrize("key", LAYER_KEYS, ids=lambda k: mrnn.LAYERS[k].__name__)
def test_float16_autocast_on_cuda(key):
    """Under CUDA autocast (float16) a layer returns float16 output and hidden state equal to
    its float32 computation, and float32 gradients (``momentumrnn.autocast``)."""
    from conftest import ACTIVE

    for impl in impls(mrnn.LAYERS[key]):
        layer = mrnn.LAYERS[key](3, 8, impl=impl, device="cuda", **ACTIVE[key[1]])
        x = torch.randn(20, 4, 3, device="cuda").half()
        with torch.autocast("cuda", dtype=torch.float16):
            out = layer(x)[0]
        want = layer(x.float())[0]
        assert out.dtype == torch.float16 and torch.equal(out, want.half()), impl
        out.float().sum().backward()
        assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("rule", ["momentum", "adam", "nesterov"])
def test_projections_on_cuda(rule):
    """LSTM projections (proj_size) on CUDA, every path the rule takes with them, in float64
    against the CPU reference."""
    from conftest import ACTIVE

    reference = mrnn.LAYERS["lstm", rule](3, 6, proj_size=4, num_layers=2, bidirectional=True, impl="reference",
                                          dtype=torch.float64, **ACTIVE[rule])
    x = torch.randn(9, 3, 3, dtype=torch.float64)
    want = reference(x)[0]
    for impl in ("auto", "fused", "fused-drive"):
        try:
            layer = mrnn.LAYERS["lstm", rule](3, 6, proj_size=4, num_layers=2, bidirectional=True, impl=impl,
                                              dtype=torch.float64, device="cuda", **ACTIVE[rule])
        except ValueError:
            continue
        layer.load_state_dict(reference.state_dict())
        assert_close(layer(x.cuda())[0], want.detach(), torch.float64, f"{rule} {impl}")


TRITON_LOOP_LAYERS = [(mrnn.NesterovLSTM, {}), (mrnn.NesterovRNN, {}), (mrnn.NesterovRNN, {"nonlinearity": "relu"}),
                      (mrnn.MomentumOrthogonalRNN, {}), (mrnn.AdamOrthogonalRNN, {})]


@pytest.mark.parametrize("case", TRITON_LOOP_LAYERS,
                         ids=lambda c: c[0].__name__ + ("-relu" if c[1] else ""))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_triton_loop_over_captured_windows(case, dtype):
    """150 steps: two full windows, captured as CUDA graphs and replayed, and a remainder
    launched step by step; packed input of three lengths; both directions. Against the CPU
    reference, then a second call (replays only) against the first, and the launch-by-launch
    run (``use_cuda_graphs(False)``) against the replayed one."""
    from conftest import ACTIVE
    from momentumrnn import cuda_graphs, triton_loop

    cls, kwargs = case
    hp = ACTIVE["nesterov"] if cls.rule_type.name == "nesterov" else ACTIVE.get(cls.rule_type.name, {})
    torch.manual_seed(5)
    ref = cls(3, 8, 2, bidirectional=True, dtype=torch.float64, impl="reference", **hp, **kwargs)
    fast = cls(3, 8, 2, bidirectional=True, dtype=dtype, device="cuda", impl="triton-loop", **hp, **kwargs)
    fast.load_state_dict(ref.state_dict())
    triton_loop.clear_windows()
    x = torch.randn(150, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([150, 70, 129])
    check(fast, ref, packed_call(lengths), [x], dtype)
    graphs = [g for w in triton_loop._windows.values() for g in w.programs.graphs.values()]
    assert graphs and all(isinstance(g, torch.cuda.CUDAGraph) for g in graphs), graphs
    xc = x.detach().to("cuda", dtype)
    first = tensors(fast(xc, return_rule_state=True))
    second = tensors(fast(xc, return_rule_state=True))
    with cuda_graphs.use_cuda_graphs(False):
        eager = tensors(fast(xc, return_rule_state=True))
    for a, b, c in zip(first, second, eager, strict=True):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
        torch.testing.assert_close(c, a, **TOL[dtype])


@pytest.mark.parametrize("engine", ["windows", "persistent"])
@pytest.mark.parametrize("cls", [mrnn.NesterovLSTM, mrnn.NesterovRNN, mrnn.MomentumOrthogonalRNN])
def test_triton_loop_at_pixel_mnist_length(cls, engine):
    """784 steps (12 windows and a remainder, or one persistent launch) in float32 against the
    float64 reference; 20 sequences (two programs of the persistent kernels)."""
    from momentumrnn import triton_loop

    torch.manual_seed(6)
    ref = cls(1, 32, dtype=torch.float64, impl="reference")
    fast = cls(1, 32, device="cuda", impl="triton-loop")
    fast.load_state_dict(ref.state_dict())
    x = torch.rand(784, 20, 1, dtype=torch.float64, requires_grad=True)
    with triton_loop.use_engine(engine):
        check(fast, ref, plain, [x], torch.float32)
        lengths = torch.tensor([784, 5, 300] + [700] * 17)
        check(fast, ref, packed_call(lengths), [x], torch.float32)


def test_triton_kernels_on_a_device_that_is_not_the_current_one():
    """Triton launches on the current device: the paths make the tensors' device current."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    from conftest import ACTIVE

    for cls, impl, hp in ((mrnn.NesterovLSTM, "triton-loop", ACTIVE["nesterov"]),
                          (mrnn.AdamLSTM, "fused-drive", ACTIVE["adam"]),
                          (mrnn.MomentumOrthogonalRNN, "triton-loop", {})):
        ref = cls(3, 5, dtype=torch.float64, impl="reference", **hp)
        fast = cls(3, 5, dtype=torch.float64, device="cuda:1", impl=impl, **hp)
        fast.load_state_dict(ref.state_dict())
        x = torch.randn(70, 2, 3, dtype=torch.float64, requires_grad=True)
        with torch.cuda.device(0):
            check(fast, ref, lambda m, leaves, device, dtype: m(leaves[0].to("cuda:1") if device == "cuda"
                                                                else leaves[0]), [x], torch.float64)


@pytest.mark.parametrize("cls", [mrnn.MomentumLSTM, mrnn.AdamLSTM, mrnn.NesterovLSTM, mrnn.MomentumOrthogonalRNN],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_fullgraph_on_cuda(cls, mode):
    """``torch.compile(fullgraph=True)`` with inductor on CUDA equals eager in float64, values
    and gradients, over three lengths; under ``mode="reduce-overhead"`` the op stays out of
    Inductor's CUDA graphs."""
    import torch._dynamo

    torch._dynamo.reset()
    layer = cls(3, 8, dtype=torch.float64, device="cuda")
    linear = torch.nn.Linear(3, 3, dtype=torch.float64, device="cuda")

    def model(x):
        return layer(linear(x))[0].pow(2).sum()

    compiled = torch.compile(model, fullgraph=True, mode=None if mode == "default" else mode)
    for time in (30, 40, 50):
        x = torch.randn(time, 4, 3, dtype=torch.float64, device="cuda")
        grads = []
        for run in (compiled, model):
            layer.zero_grad()
            linear.zero_grad()
            loss = run(x)
            loss.backward()
            grads.append([loss.detach().clone()] + [p.grad.clone() for p in (*layer.parameters(), *linear.parameters())])
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("cls, impl", [(mrnn.AdamLSTM, "auto"), (mrnn.NesterovLSTM, "auto"),
                                       (mrnn.NesterovLSTM, "triton-loop"), (mrnn.MomentumOrthogonalRNN, "triton-loop")],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_torch_func_grad_on_cuda(cls, impl):
    """One ``torch.func.grad`` runs the layer's CUDA path below the transform and equals
    ``backward()`` on that path, float64."""
    layer = cls(3, 8, dtype=torch.float64, device="cuda", impl=impl)
    x = torch.randn(40, 4, 3, dtype=torch.float64, device="cuda")
    params = {name: p.detach() for name, p in layer.named_parameters()}
    got = torch.func.grad(lambda p: torch.func.functional_call(layer, p, (x,))[0].pow(2).sum())(params)
    want = torch.autograd.grad(layer(x)[0].pow(2).sum(), list(layer.parameters()))
    for a, b in zip(got.values(), want, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("cls", [mrnn.AdamLSTM, mrnn.NesterovRNN, mrnn.MomentumOrthogonalRNN],
                         ids=lambda c: c.__name__)
def test_torch_export_with_a_dynamic_length_on_cuda(cls):
    """``torch.export`` of a CUDA layer with a dynamic time dimension equals eager at other lengths."""
    layer = cls(3, 8, dtype=torch.float64, device="cuda").eval()
    program = torch.export.export(Outputs(layer), (torch.randn(6, 2, 3, dtype=torch.float64, device="cuda"),),
                                  dynamic_shapes={"x": {0: TIME}})
    for time in (1, 17):
        x = torch.randn(time, 2, 3, dtype=torch.float64, device="cuda")
        torch.testing.assert_close(program.module()(x), layer(x)[0], **TOL[torch.float64])
