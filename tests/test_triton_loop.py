"""The ``"triton-loop"`` path (``momentumrnn.triton_loop``) under Triton's interpreter, on the CPU.

On CUDA the kernels are compiled and the windows replayed as CUDA graphs (``tests/test_cuda.py``
checks that with ``--device cuda``); here ``TRITON_INTERPRET=1`` runs the same kernel code,
so CI checks the algorithm: values and gradients against the CPU loops (Nesterov) and a
step-by-step autograd recurrence (modReLU), over several windows (4 steps each here) with a
remainder, masks, both coefficient shapes, float64 and float32; whole layers against the
reference path; and the CUDA graph bookkeeping with the capture replaced by a recorder.
"""

import pathlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import momentumrnn as mrnn
from conftest import ACTIVE
from momentumrnn import cuda_graphs
from momentumrnn.loops import lstm_loop, rnn_loop
from momentumrnn.orthogonal import ORTHOGONAL_LAYERS, modrelu

pytest.importorskip("triton")

TOL = {torch.float64: dict(atol=1e-12, rtol=1e-11), torch.float32: dict(atol=2e-5, rtol=1e-4)}
WINDOW = 4


@pytest.fixture()
def engine(request, monkeypatch):
    """``momentumrnn.triton_loop`` in interpreter mode, with windows of ``WINDOW`` steps."""
    if request.config.getoption("--device") == "cuda":
        pytest.skip("the interpreter tests run on the CPU; with --device cuda test_cuda.py checks the compiled path")
    import triton

    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if runtime is not None and not runtime.interpret:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set")
    from momentumrnn import triton_loop

    monkeypatch.setattr(triton_loop, "WINDOW_STEPS", WINDOW)
    triton_loop.clear_windows()
    yield triton_loop
    triton_loop.clear_windows()


@pytest.fixture(params=["windows", "persistent"])
def engine_name(request, engine):
    """Each engine of the path (``triton_loop.use_engine``) in turn."""
    with engine.use_engine(request.param):
        yield request.param


def _mask(time, batch):
    """Trailing padding of different lengths (the first sequence full)."""
    lengths = torch.tensor([time] + [max(1, time - 3 * i - 2) for i in range(1, batch)])
    return torch.arange(time)[:, None] < lengths[None, :]


def _compare(got, want, leaves, dtype):
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL[dtype])
    weights = [torch.randn_like(w) for w in want]
    grads = [torch.autograd.grad(sum((c * o).sum() for c, o in zip(weights, outs)), leaves) for outs in (got, want)]
    for index, (g, w) in enumerate(zip(*grads, strict=True)):
        torch.testing.assert_close(g, w, **TOL[dtype], msg=lambda m: f"leaf {index}: {m}")


@pytest.mark.parametrize("cell", ["lstm", "tanh", "relu"])
@pytest.mark.parametrize("time", [1, 4, 11])
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
@pytest.mark.parametrize("per_sequence", [False, True], ids=["shared-c", "per-sequence-c"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_nesterov_equals_the_cpu_loop(engine, engine_name, cell, time, masked, per_sequence, dtype):
    """Every output (h of all steps, h_T, c_T, v_T) and the gradients of terms, h0, c0, U, v0;
    19 sequences: two programs of the persistent kernels, the second one partly empty."""
    batch, hidden = 19, 5
    gates = 4 * hidden if cell == "lstm" else hidden
    leaf = lambda *shape, scale=1.0: (scale * torch.randn(*shape, dtype=dtype)).requires_grad_()  # noqa: E731
    terms, h0, c0 = leaf(time, batch, gates), leaf(batch, hidden), leaf(batch, hidden)
    weight, v0 = leaf(gates, hidden, scale=0.5), leaf(batch, gates)
    coefficient = torch.rand(time, batch if per_sequence else 1, dtype=dtype)
    mask = _mask(time, batch) if masked else None
    one = torch.tensor(1.0, dtype=dtype)
    if cell == "lstm":
        got = engine.nesterov_lstm(terms, h0, c0, weight, coefficient, v0, mask)
        want = lstm_loop(terms, h0, c0, weight, None, mask, coefficient, v0, one)
        leaves = [terms, h0, c0, weight, v0]
    else:
        got = engine.nesterov_rnn(terms, h0, weight, coefficient, v0, cell, mask)
        want = rnn_loop(terms, h0, weight, None, cell, mask, coefficient, v0, one)
        leaves = [terms, h0, weight, v0]
    _compare(got, want, leaves, dtype)


def _modrelu_steps(drives, h0, weight, bias, mask):
    h, outs = h0, []
    for t in range(drives.size(0)):
        new = modrelu(drives[t] + h @ weight.t(), bias)
        h = new if mask is None else torch.where(mask[t, :, None], new, h)
        outs.append(h)
    return torch.stack(outs), h


@pytest.mark.parametrize("time", [1, 4, 11])
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_modrelu_equals_the_steps(engine, engine_name, time, masked, dtype):
    """modReLU with a bias that switches units off (``|z| + b <= 0``): values and the
    gradients of drives, h0, U and b."""
    batch, hidden = 17, 6
    drives = torch.randn(time, batch, hidden, dtype=dtype, requires_grad=True)
    h0 = torch.randn(batch, hidden, dtype=dtype, requires_grad=True)
    weight = torch.linalg.qr(torch.randn(hidden, hidden, dtype=dtype))[0].requires_grad_()
    bias = torch.linspace(-0.8, 0.3, hidden, dtype=dtype).requires_grad_()
    mask = _mask(time, batch) if masked else None
    got = engine.modrelu_rnn(drives, h0, weight, bias, mask)
    _compare(got, _modrelu_steps(drives, h0, weight, bias, mask), [drives, h0, weight, bias], dtype)


NESTEROV_LAYERS = [(mrnn.NesterovLSTM, {}), (mrnn.NesterovRNN, {}), (mrnn.NesterovRNN, {"nonlinearity": "relu"})]


def _pair(cls, hp, **kwargs):
    ref = cls(3, 4, 2, dtype=torch.float64, impl="reference", **hp, **kwargs)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    fast = cls(3, 4, 2, dtype=torch.float64, impl="triton-loop", **hp, **kwargs)
    fast.load_state_dict(ref.state_dict())
    assert fast.path == "triton-loop"
    return fast, ref


def _layer_cases():
    cases = [(cls, {**ACTIVE["nesterov"], **kw}) for cls, kw in NESTEROV_LAYERS]
    return cases + [(cls, dict(ACTIVE.get(rule, {}))) for rule, cls in ORTHOGONAL_LAYERS.items()]


def _case_id(case):
    cls, hp = case
    return cls.__name__ + ("-relu" if hp.get("nonlinearity") == "relu" else "")


@pytest.mark.parametrize("case", _layer_cases(), ids=_case_id)
def test_layers_equal_the_reference(engine, engine_name, case):
    """Two layers, both directions, learnable hyperparameters; padded input, packed input of
    three lengths, and a carried state (hidden and rule state, step counters that differ)."""
    from test_fast_paths import assert_same_values_and_gradients

    cls, hp = case
    fast, ref = _pair(cls, hp, bidirectional=True, learnable=True)
    x = torch.randn(9, 3, 3, dtype=torch.float64, requires_grad=True)
    assert_same_values_and_gradients(fast, ref, lambda m: m(x, return_rule_state=True), [x], torch.float64)
    lengths = torch.tensor([9, 6, 2])
    assert_same_values_and_gradients(
        fast, ref, lambda m: m(pack_padded_sequence(x, lengths, enforce_sorted=False), return_rule_state=True), [x],
        torch.float64)
    _, hidden, rs = ref(pack_padded_sequence(x[:5], torch.tensor([5, 2, 4]), enforce_sorted=False),
                        return_rule_state=True)
    hidden = tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()
    velocity = None if rs.velocity is None else rs.velocity.detach().requires_grad_()
    moment = None if rs.second_moment is None else rs.second_moment.detach().requires_grad_()
    state = mrnn.RuleState(velocity, moment, rs.steps)
    leaves = [x] + [t for t in (velocity, moment) if t is not None]
    assert_same_values_and_gradients(fast, ref, lambda m: m(x, hidden, rule_state=state, return_rule_state=True),
                                     leaves, torch.float64)


@pytest.mark.parametrize("cls", [mrnn.NesterovLSTM, mrnn.NesterovRNN])
def test_nesterov_layers_without_bias_batch_first_unbatched(engine, engine_name, cls):
    from test_fast_paths import assert_same_values_and_gradients

    fast, ref = _pair(cls, ACTIVE["nesterov"], bias=False, batch_first=True)
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    assert_same_values_and_gradients(fast, ref, lambda m: m(x), [x], torch.float64)
    assert_same_values_and_gradients(fast, ref, lambda m: m(x[0]), [x], torch.float64)


def test_inference_mode_then_training(engine):
    """A window made under inference mode serves later calls outside it."""
    layer = mrnn.NesterovLSTM(3, 4, dtype=torch.float64, impl="triton-loop")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with torch.inference_mode():
        first = layer(x)[0]
    out = layer(x)[0]
    out.sum().backward()
    torch.testing.assert_close(out, first)


def test_the_engine_is_chosen_per_call(engine):
    """"persistent" where the hidden size fits its kernels, else the windows; the backward
    takes the forward's engine whatever is in force when it runs."""
    from momentumrnn import persistent_kernels

    assert engine.chosen_engine("lstm", 5) == "windows"
    with engine.use_engine("persistent"):
        assert engine.chosen_engine("lstm", 64) == "persistent"
        assert engine.chosen_engine("lstm", 65) == "windows"           # padded to 128 > 64
        assert engine.chosen_engine("lstm", 64, torch.float64) == "windows"
        assert engine.chosen_engine("modrelu", 128) == "persistent"
        assert not persistent_kernels.fits("tanh", 200, 4)
        out, *_ = engine.nesterov_rnn(torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True),
                                      torch.zeros(2, 3, dtype=torch.float64),
                                      torch.eye(3, dtype=torch.float64), torch.rand(6, 1, dtype=torch.float64),
                                      torch.zeros(2, 3, dtype=torch.float64), "tanh")
    assert out.grad_fn.engine == "persistent"
    out.sum().backward()                                             # outside the block: still persistent
    assert not engine._windows                                       # no window was made
    with pytest.raises(ValueError, match="engine must be one of"):
        with engine.use_engine("cudnn"):
            pass


def test_a_persistent_kernel_the_gpu_refuses_falls_back_to_the_windows(engine, monkeypatch):
    """Too little shared memory (``OutOfResources`` at launch): this call and later ones of
    the same size take the windows engine, with the same numbers."""
    from triton.runtime.errors import OutOfResources

    calls = []

    def refuse(*args):
        calls.append(args[0])
        raise OutOfResources(300000, 232448, "shared memory")
    monkeypatch.setattr(engine, "_forward_persistent", refuse)
    monkeypatch.setattr(engine, "_refused", set())
    args = [torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True), torch.zeros(2, 3, dtype=torch.float64),
            torch.eye(3, dtype=torch.float64), torch.rand(6, 1, dtype=torch.float64),
            torch.zeros(2, 3, dtype=torch.float64), "tanh"]
    want = engine.nesterov_rnn(*args)[0]
    with engine.use_engine("persistent"):
        got = engine.nesterov_rnn(*args)[0]
        assert got.grad_fn.engine == "windows" and len(calls) == 1
        assert engine.chosen_engine("tanh", 3, torch.float64, torch.device("cpu")) == "windows"
        engine.nesterov_rnn(*args)
        assert len(calls) == 1
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.autograd.grad(got.sum(), args[0])


def test_double_backward_recomputes_on_the_reference_path(engine):
    layer = mrnn.NesterovLSTM(3, 4, dtype=torch.float64, impl="triton-loop")
    reference = mrnn.NesterovLSTM(3, 4, dtype=torch.float64, impl="reference")
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for module in (layer, reference):
        out, _ = module(x)
        first = torch.autograd.grad(out.pow(2).sum(), [x, *module.parameters()], create_graph=True)
        results.append(torch.autograd.grad(sum(g.pow(2).sum() for g in first), x))
    torch.testing.assert_close(results[0], results[1], atol=1e-10, rtol=1e-9)


def test_the_path_is_refused_where_it_cannot_run(engine, monkeypatch):
    with pytest.raises(ValueError, match="impl='triton-loop' runs the rule coupled to h"):
        mrnn.MomentumLSTM(3, 4, impl="triton-loop")
    with pytest.raises(ValueError, match="impl='triton-loop' has no LSTM projections"):
        mrnn.NesterovLSTM(3, 4, proj_size=2, impl="triton-loop")
    layer = mrnn.NesterovLSTM(3, 4, impl="triton-loop")
    with pytest.raises(mrnn.InputError, match="float32 or float64, got torch.bfloat16; use impl='reference'"):
        layer.to(torch.bfloat16)(torch.randn(5, 2, 3, dtype=torch.bfloat16))
    monkeypatch.setattr(engine, "_interpreting", lambda: False)
    with pytest.raises(mrnn.InputError, match=r"NesterovLSTM: impl='triton-loop' runs on CUDA tensors, got a cpu "
                                              r"tensor; on the CPU use impl='loop'"):
        mrnn.NesterovLSTM(3, 4, impl="triton-loop")(torch.randn(5, 2, 3))
    with pytest.raises(mrnn.InputError, match="MomentumOrthogonalRNN: impl='triton-loop' runs on CUDA tensors, .* "
                                              "on the CPU use impl='reference'"):
        mrnn.MomentumOrthogonalRNN(3, 4, impl="triton-loop")(torch.randn(5, 2, 3))


def test_func_grad_equals_autograd(engine):
    """Under one torch.func.grad the path runs below the transform (``momentumrnn.transforms``):
    the gradients of ``backward()``."""
    layer = mrnn.NesterovRNN(3, 4, dtype=torch.float64, impl="triton-loop")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    params = dict(layer.named_parameters())
    grads = torch.func.grad(lambda p: torch.func.functional_call(layer, p, (x,))[0].sum())(params)
    want = torch.autograd.grad(layer(x)[0].sum(), list(params.values()))
    for got, expected in zip(grads.values(), want, strict=True):
        torch.testing.assert_close(got, expected, **TOL[torch.float64])


class _Recorder:
    """Stands in for ``cuda_graphs.capture``: records the program, runs nothing at capture
    (as a CUDA capture), and runs it again at each ``replay``."""

    def __init__(self, fail=False):
        self.captures, self.replays, self.fail = 0, 0, fail

    def __call__(self, run):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures += 1
        recorder = self

        class Graph:
            def replay(self):
                recorder.replays += 1
                run()
        return Graph()


@pytest.fixture()
def recorder(engine, monkeypatch):
    record = _Recorder()
    monkeypatch.setattr(cuda_graphs, "capture", record)
    monkeypatch.setattr(cuda_graphs, "graphs_apply", lambda device: cuda_graphs._enabled[-1])
    return record


def _run_lstm(engine, time, batch=2, hidden=3):
    torch.manual_seed(3)
    terms = torch.randn(time, batch, 4 * hidden, dtype=torch.float64, requires_grad=True)
    h0, c0 = torch.randn(batch, hidden, dtype=torch.float64), torch.randn(batch, hidden, dtype=torch.float64)
    weight = torch.randn(4 * hidden, hidden, dtype=torch.float64, requires_grad=True)
    out, h_n, c_n, v_n = engine.nesterov_lstm(terms, h0, c0, weight, torch.rand(time, 1, dtype=torch.float64),
                                              torch.zeros(batch, 4 * hidden, dtype=torch.float64))
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
                                + c_n.sum(), [terms, weight])
    return [out, h_n, c_n, v_n, *grads]


def test_graphs_are_captured_once_per_step_count_and_replayed(engine, recorder):
    """11 steps in windows of 4: the first full window runs eagerly and is captured, the second
    replays, the remainder of 3 steps runs eagerly and is captured; the same in the backward.
    A second call replays only. Results equal the run without graphs."""
    with cuda_graphs.use_cuda_graphs(False):
        want = _run_lstm(engine, 11)
    assert (recorder.captures, recorder.replays) == (0, 0)
    got = _run_lstm(engine, 11)
    assert (recorder.captures, recorder.replays) == (4, 2)             # (4 and 3 steps) x (forward, backward)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=0, rtol=0)
    got = _run_lstm(engine, 11)
    assert (recorder.captures, recorder.replays) == (4, 8)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=0, rtol=0)
    _run_lstm(engine, 3)                                              # a step count seen before: replays
    assert (recorder.captures, recorder.replays) == (4, 10)


def test_a_new_shape_captures_anew_and_the_caches_are_bounded(engine, recorder, monkeypatch):
    _run_lstm(engine, 8, batch=2)
    assert recorder.captures == 2
    _run_lstm(engine, 12, batch=2)                                    # same window and step count
    assert recorder.captures == 2
    _run_lstm(engine, 8, batch=3)                                     # another batch size: new window
    assert recorder.captures == 4
    assert len(engine._windows) == 2
    monkeypatch.setattr(engine, "MAX_WINDOWS", 2)
    _run_lstm(engine, 4, batch=4)
    assert len(engine._windows) == 2 and all(key[1] != 2 for key in engine._windows)  # least recent dropped
    monkeypatch.setattr(cuda_graphs, "MAX_GRAPHS", 3)
    for time in (1, 2, 3):
        _run_lstm(engine, time, batch=4)
    window = next(w for key, w in engine._windows.items() if key[1] == 4)
    assert list(window.programs.graphs) == [("backward", 2), ("forward", 3), ("backward", 3)]


def test_a_failed_capture_falls_back_with_one_warning(engine, monkeypatch):
    monkeypatch.setattr(cuda_graphs, "capture", _Recorder(fail=True))
    monkeypatch.setattr(cuda_graphs, "graphs_apply", lambda device: cuda_graphs._enabled[-1])
    with cuda_graphs.use_cuda_graphs(False):
        want = _run_lstm(engine, 9)
    with pytest.warns(RuntimeWarning, match="could not be captured as a CUDA graph") as caught:
        got = _run_lstm(engine, 9)
    assert len(caught) == 2                                           # forward and backward, once each
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=0, rtol=0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run_lstm(engine, 9)                                          # not tried again


def test_graphs_apply_only_on_cuda_outside_a_capture():
    assert not cuda_graphs.graphs_apply(torch.device("cpu"))
    with cuda_graphs.use_cuda_graphs(False):
        assert not cuda_graphs._enabled[-1]
    assert cuda_graphs._enabled[-1]


_COMPILE = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from momentumrnn import step_kernels

from momentumrnn import persistent_kernels

constants = ("CELL", "HAS_MASK", "FP32", "BLOCK", "BB", "HP")
kernels = (step_kernels.forward_kernel, step_kernels.backward_kernel,
           persistent_kernels.persistent_forward_kernel, persistent_kernels.persistent_backward_kernel)
for kernel in kernels:
    names = list(kernel.arg_names)
    for cell in step_kernels.CELLS.values():
        for dtype in ("fp32", "fp64"):
            for has_mask in (False, True):
                signature = {n: "constexpr" if n in constants else ("*u8" if n == "keep_ptr" else f"*{dtype}")
                             if n.endswith("_ptr") else "i32" for n in names}
                values = {"CELL": cell, "HAS_MASK": has_mask, "FP32": dtype == "fp32", "BLOCK": 128, "BB": 16,
                          "HP": 32}
                values = {k: v for k, v in values.items() if k in names}
                source = ASTSource(fn=kernel, signature=signature,
                                   constexprs={(names.index(k),): v for k, v in values.items()})
                assert "cubin" in triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm
# the largest persistent kernels taken fit in an H100/H200's shared memory
for kernel in kernels[2:]:
    names = list(kernel.arg_names)
    for name, cell in step_kernels.CELLS.items():
        for dtype, size in (("fp32", 4), ("fp64", 8)):
            signature = {n: "constexpr" if n in constants else ("*u8" if n == "keep_ptr" else f"*{dtype}")
                         if n.endswith("_ptr") else "i32" for n in names}
            units = persistent_kernels.MAX_UNITS[name][size]
            values = {"CELL": cell, "HAS_MASK": True, "FP32": size == 4, "BB": 16, "HP": units}
            source = ASTSource(fn=kernel, signature=signature,
                               constexprs={(names.index(k),): v for k, v in values.items()})
            options = {"num_warps": persistent_kernels._warps(name, units)}
            shared = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).metadata.shared
            assert shared <= persistent_kernels.SHARED_MEMORY, (kernel, name, dtype, shared)
print("compiled")
"""


def test_the_step_kernels_compile_for_a_gpu(tmp_path):
    """The interpreter accepts code the compiler refuses (globals that are not constexpr,
    for one): compile every kernel variant to a cubin for an sm_90 GPU, with no GPU needed."""
    import os
    import subprocess
    import sys

    import triton
    if not (pathlib.Path(triton.__file__).parent / "backends" / "nvidia").is_dir():
        pytest.skip("Triton has no NVIDIA backend here")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
