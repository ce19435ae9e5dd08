"""The CPU step kernels (``momentumrnn.cpu_kernels``) against the per-step reference and the
loops' torch ops, and how the loops fall back where the kernels cannot be built.

Both loop engines are compared with ``impl="reference"`` (tolerances of ``test_fast_paths``:
float64 ``atol=1e-10, rtol=1e-9``; float32 ``atol=1e-5, rtol=1e-4``) and with each other in
float64 to ``atol=1e-12``.
"""

import pathlib
import tempfile
import warnings

import pytest
import torch

import momentumrnn as mrnn
from momentumrnn import cpu_kernels, loops
from momentumrnn.ops import adam_drive
from momentumrnn.paths import LOOP_ENGINES, loop_engine, loop_engine_override
from conftest import ACTIVE, layer_id
from test_fast_paths import assert_same_values_and_gradients, pair

if not cpu_kernels.available():
    pytest.skip("the CPU step kernels cannot be built here (no C++ compiler or ninja)", allow_module_level=True)

#: The layers whose loop the kernels run: every LSTM (its steps) and every Adam/RMSProp layer (its states).
KEYS = sorted(k for k in mrnn.LAYERS if k[0] == "lstm" or k[1] in ("adam", "rmsprop"))


@pytest.mark.parametrize("engine", LOOP_ENGINES)
@pytest.mark.parametrize("key", KEYS, ids=layer_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_both_engines_equal_the_reference(key, engine, dtype):
    """Two layers, both directions, carried hidden and rule state, learnable hyperparameters."""
    fast, ref = pair(key, "loop", 3, 5, 2, bidirectional=True, learnable=True, dtype=dtype)
    x = torch.randn(11, 2, 3, dtype=dtype, requires_grad=True)
    h0 = torch.randn(4, 2, 5, dtype=dtype, requires_grad=True)
    hx = (h0, torch.randn(4, 2, 5, dtype=dtype)) if key[0] == "lstm" else h0
    with torch.no_grad():
        _, _, state = ref(x, hx, return_rule_state=True)
    with loop_engine_override(engine):
        assert_same_values_and_gradients(
            fast, ref, lambda m: m(x, hx, rule_state=state, return_rule_state=True), [x, h0], dtype)


def assert_engines_agree(layer, x):
    """The layer's outputs, final rule state and gradients (of the input and every parameter)
    with its steps in the C++ kernels equal those in torch ops to 1e-12."""
    results = []
    for engine in LOOP_ENGINES:
        layer.zero_grad()
        leaf = x.clone().requires_grad_()
        with loop_engine_override(engine):
            out, _, state = layer(leaf, return_rule_state=True)
            loss = out.sin().sum() + sum(t.sum() for t in (state.velocity, state.second_moment) if t is not None)
            loss.backward()
        results.append([out.detach(), leaf.grad] + [p.grad.clone() for p in layer.parameters()])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("key", KEYS, ids=layer_id)
def test_the_engines_agree_over_several_chunks(key):
    """T = 300 at batch 2 and hidden 6: the loops' chunks of steps meet in the kernels' calls."""
    layer = mrnn.LAYERS[key](2, 6, impl="loop", learnable=True, dtype=torch.float64, **ACTIVE[key[1]])
    assert_engines_agree(layer, torch.randn(300, 2, 2, dtype=torch.float64))


@pytest.mark.parametrize("key", [("lstm", "adam"), ("lstm", "nesterov")], ids=layer_id)
def test_gradcheck_through_the_kernels(key):
    layer = mrnn.LAYERS[key](2, 3, impl="loop", learnable=True, dtype=torch.float64, **ACTIVE[key[1]])
    x = torch.randn(6, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    with loop_engine_override("cpp"):
        assert torch.autograd.gradcheck(lambda *t: layer(t[0], (t[1], t[2]))[0], (x, h0, c0))


def test_the_loops_run_their_steps_in_the_kernels(monkeypatch):
    """With the kernels available, the LSTM loop and Adam's states never take the torch ops."""
    def refuse(*args, **kwargs):
        raise AssertionError("a loop took its torch ops")
    monkeypatch.setattr(loops._LSTMActivations, "forward", refuse)
    monkeypatch.setattr(loops._LSTMActivations, "backward", refuse)
    monkeypatch.setattr(adam_drive.AdamChunks, "_states", refuse)
    for key in [("lstm", "adam"), ("lstm", "nesterov"), ("lstm", "momentum"), ("gru", "adam")]:
        layer = mrnn.LAYERS[key](3, 4, impl="loop", **ACTIVE[key[1]])
        layer(torch.randn(9, 2, 3))[0].sum().backward()


def test_where_the_kernels_do_not_apply_the_loops_take_torch_ops():
    x = torch.randn(3, 2)
    assert loop_engine(x) == "cpp"
    assert loop_engine(x, supported=False) == "torch"
    assert loop_engine(x.half()) == "torch"
    assert loop_engine(x.to(torch.bfloat16)) == "torch"
    with loop_engine_override("torch"):
        assert loop_engine(x) == "torch"
    with pytest.raises(ValueError, match="engine must be one of"):
        with loop_engine_override("numba"):
            pass


def test_a_failed_build_warns_once_and_the_loops_take_torch_ops(monkeypatch):
    def fail(**kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")
    monkeypatch.setattr(torch.utils.cpp_extension, "load", fail)
    with pytest.warns(RuntimeWarning, match="could not be built .*Ninja is required"):
        assert cpu_kernels._build.__wrapped__() is False
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    x = torch.randn(3, 2)
    assert loop_engine(x) == "torch"
    with pytest.raises(RuntimeError, match="could not be built"):
        with loop_engine_override("cpp"):
            loop_engine(x)
    layer = mrnn.AdamLSTM(2, 3, impl="loop")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.randn(5, 1, 2))[0].sum().backward()


@pytest.mark.parametrize("moving", [True, False], ids=["adam", "rmsprop"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_adam_backward_is_the_same_with_and_without_the_hyperparameter_sums(dtype, moving):
    """The adjoint of Adam's states runs channel by channel where it sums dL/dmu and dL/ds and
    vectorized where it does not: dL/du and what reaches the entering state are the same bits."""
    generator = torch.Generator().manual_seed(0)
    u, grad = (torch.randn(9, 3, 37, dtype=dtype, generator=generator) for _ in range(2))
    v_prev, to_v, to_h = (torch.randn(3, 37, dtype=dtype, generator=generator) for _ in range(3))
    m_prev = torch.rand(3, 37, dtype=dtype, generator=generator)
    momentum, step_size = torch.tensor(0.6, dtype=dtype), torch.tensor(0.7, dtype=dtype)
    results = []
    for need in (False, True):
        out = torch.empty_like(u)
        reach_v, reach_h, d_mu, d_s = cpu_kernels.ops().adam_chunk_backward(
            u, v_prev, m_prev, grad, out, to_v, to_h, momentum, step_size, 0.1, 1e-8, moving, need, need)
        results.append((out, reach_v, reach_h))
        assert (d_s != 0).item() is need
    for without, with_sums in zip(*results):
        assert torch.equal(without, with_sums)


def test_the_kernels_refuse_buffers_that_do_not_match():
    ops = cpu_kernels.ops()
    block, h = torch.randn(4, 2, 12), torch.randn(2, 3)
    outs, acts, cells = torch.empty(4, 2, 3), torch.empty(4, 2, 12), torch.empty(5, 2, 3)
    tanh_cells = torch.empty(4, 2, 3)
    with pytest.raises(RuntimeError, match="does not match the outputs' shape"):
        ops.lstm_forward_steps(block, h, torch.randn(3, 12), outs, acts, cells, tanh_cells, torch.empty(2, 12), 1,
                               None, None)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.lstm_forward_steps(block, h, torch.randn(3, 12), outs.double(), acts, cells, tanh_cells,
                               torch.empty(2, 12), 0, None, None)


def test_a_build_lock_left_by_a_killed_build_is_cleared(tmp_path):
    """torch's build waits while its lock file exists; a process killed while building leaves
    it behind. The kernels' own OS lock, held around every build, clears it."""
    (tmp_path / "lock").touch()
    with cpu_kernels._exclusive(tmp_path):
        assert not (tmp_path / "lock").exists()
    assert cpu_kernels.build_directory().name.startswith("momentumrnn_cpu_")


@pytest.mark.parametrize("key", [("lstm", "adam"), ("lstm", "nesterov")], ids=layer_id)
def test_the_engines_agree_on_several_threads(key):
    """Large enough steps (batch 40, 4H = 1024) that the kernels split rows and channels among
    two threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        layer = mrnn.LAYERS[key](3, 256, impl="loop", learnable=True, dtype=torch.float64, **ACTIVE[key[1]])
        assert_engines_agree(layer, torch.randn(5, 40, 3, dtype=torch.float64))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("time", [1, 2, 7, 300])
@pytest.mark.parametrize("key", [("lstm", "adam"), ("lstm", "nesterov"), ("lstm", "momentum")], ids=layer_id)
def test_without_a_backward_the_kernels_keep_one_step(key, time):
    """Under no_grad the LSTM kernels keep one step's activations and two cell states; the
    results are those of a call that records its graph, bit for bit."""
    layer = mrnn.LAYERS[key](3, 5, impl="loop", **ACTIVE[key[1]])
    x = torch.randn(time, 2, 3)
    hx = (torch.randn(1, 2, 5), torch.randn(1, 2, 5))
    recorded = layer(x, hx, return_rule_state=True)
    with torch.no_grad():
        kept = layer(x, hx, return_rule_state=True)
    for got, want in zip(kept[:2], recorded[:2]):
        for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
            assert torch.equal(a, b)
    for field in ("velocity", "second_moment", "steps"):
        a, b = getattr(kept[2], field), getattr(recorded[2], field)
        assert (a is None and b is None) or torch.equal(a, b)


def test_a_failed_build_names_its_cause_at_the_users_line(monkeypatch):
    command = ("Error building extension 'momentumrnn_cpu': [1/2] c++ -MMD -MF lstm_steps.o.d -O3 -fno-math-errno "
               "-c lstm_steps.cpp -o lstm_steps.o\nFAILED: lstm_steps.o\n/bin/sh: 1: c++: not found\n")

    def fail(**kwargs):
        raise RuntimeError(command)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", fail)
    monkeypatch.setattr(cpu_kernels, "build_directory", lambda: pathlib.Path(tempfile.mkdtemp()))
    cpu_kernels._build.cache_clear()
    try:
        with pytest.warns(RuntimeWarning) as caught:
            mrnn.AdamLSTM(2, 3, impl="loop")(torch.randn(5, 1, 2))                # this line
    finally:
        cpu_kernels._build.cache_clear()
    warning = next(w for w in caught if "could not be built" in str(w.message))
    assert warning.filename == __file__
    assert "(/bin/sh: 1: c++: not found)" in str(warning.message) and "-MMD" not in str(warning.message)


def test_the_first_build_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **kwargs: None)
    monkeypatch.setattr(cpu_kernels, "build_directory", lambda: pathlib.Path(tempfile.mkdtemp()))
    assert cpu_kernels._build.__wrapped__() is True
    assert "momentumrnn: building the CPU step kernels once (about 20 s" in capsys.readouterr().err
