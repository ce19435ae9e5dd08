"""Bad input gets a clear error naming the argument, with what was expected and what came."""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

import momentumrnn as mrnn
from conftest import CELL_KEYS, LAYER_IMPLS, LAYER_KEYS, layer_id, layer_impl_id


@pytest.mark.parametrize("kwargs,error,match", [
    ({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\), got 1.0"),
    ({"momentum": -0.1}, ValueError, r"momentum must be in \[0, 1\), got -0.1"),
    ({"momentum": float("nan")}, ValueError, "momentum must be a number"),
    ({"momentum": "0.5"}, TypeError, "momentum must be a real number"),
    ({"step_size": 0.0}, ValueError, r"step_size must be a number in \(0, 3.403e\+38\] \(finite in float32\), got 0.0"),
    ({"step_size": -1}, ValueError, r"step_size must be a number in \(0, "),
    ({"step_size": float("inf")}, ValueError, r"step_size must be a number in \(0, "),
    ({"step_size": 1e300}, ValueError, r"finite in float32\), got 1e\+300"),
    ({"beta": 0.5}, TypeError, "MomentumRule takes hyperparameters .* got unexpected \\['beta'\\]"),
])
def test_momentum_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        mrnn.MomentumLSTM(2, 3, **kwargs)


FINITE_IN_FLOAT16 = r"step_size must be a number in \(0, 6.55e\+04\] \(finite in float16\), got 70000.0"


@pytest.mark.parametrize("key", LAYER_KEYS, ids=layer_id)
def test_step_size_must_be_finite_in_the_layers_dtype(key):
    """7e4 is inf in float16 (every output nan): refused at construction in float16, and at the
    call once ``.half()`` has made the parameters float16; finite in bfloat16 and float32."""
    cls = mrnn.LAYERS[key]
    with pytest.raises(ValueError, match=FINITE_IN_FLOAT16):
        cls(3, 4, step_size=7e4, dtype=torch.float16)
    layer = cls(3, 4, step_size=7e4).half()
    with pytest.raises(ValueError, match=FINITE_IN_FLOAT16):
        layer(torch.randn(5, 2, 3, dtype=torch.float16))
    layer.to(torch.bfloat16)(torch.randn(5, 2, 3, dtype=torch.bfloat16))
    wide = cls(3, 4, step_size=1e300, dtype=torch.float64)                 # finite in float64, not in float32
    wide(torch.randn(5, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(finite in float32\), got 1e\+300"):
        wide.float()(torch.randn(5, 2, 3))


@pytest.mark.parametrize("key", CELL_KEYS, ids=lambda key: mrnn.CELLS[key].__name__)
def test_cells_step_size_must_be_finite_in_their_dtype(key):
    cls = mrnn.CELLS[key]
    with pytest.raises(ValueError, match=FINITE_IN_FLOAT16):
        cls(3, 4, step_size=7e4, dtype=torch.float16)
    cell = cls(3, 4, step_size=7e4).half()
    with pytest.raises(ValueError, match=FINITE_IN_FLOAT16):
        cell(torch.randn(2, 3, dtype=torch.float16))


@pytest.mark.parametrize("cls,kwargs,error,match", [
    (mrnn.AdamLSTM, {"beta": 1.0}, ValueError, r"beta must be in \[0, 1\), got 1.0"),
    (mrnn.RMSPropGRU, {"beta": -0.5}, ValueError, r"beta must be in \[0, 1\)"),
    (mrnn.RMSPropLSTM, {"momentum": 0.5}, TypeError, "got unexpected \\['momentum'\\]"),
    (mrnn.NesterovLSTM, {"restart": -1}, ValueError, r"restart must be in \[0, 2\*\*63 - 1\] \(0 = never restart.*got -1"),
    (mrnn.RestartLSTM, {"restart": 10**30}, ValueError, r"restart must be in \[0, 2\*\*63 - 1\].*got 10{30}"),
    (mrnn.NesterovRNN, {"restart": 2.5}, TypeError, "restart must be a non-negative int"),
    (mrnn.RestartGRU, {"restart": True}, TypeError, "restart must be a non-negative int"),
    (mrnn.MomentumLSTM, {"init": "xavier"}, ValueError, "init must be one of \\('torch', 'paper'\\), got 'xavier'"),
    (mrnn.MomentumLSTM, {"impl": "cuda"}, ValueError, "impl must be one of"),
    (mrnn.MomentumLSTM, {"dropout": 1.5}, ValueError, r"dropout must be a number in \[0, 1\], got 1.5"),
    (mrnn.MomentumLSTM, {"num_layers": 0}, ValueError, "num_layers must be greater than zero, got 0"),
    (mrnn.MomentumRNN, {"nonlinearity": "sigmoid"}, ValueError, "Unknown nonlinearity 'sigmoid'. Select from 'tanh' or 'relu'"),
    (mrnn.MomentumLSTM, {"momentum": 0.0, "learnable": True}, ValueError, r"learnable momentum must start in \(0, 1\)"),
])
def test_constructor_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(2, 3, **kwargs)


def test_sizes_must_be_positive_ints():
    with pytest.raises(ValueError, match="hidden_size must be greater than zero, got 0"):
        mrnn.MomentumGRU(2, 0)
    with pytest.raises(TypeError, match=r"input_size should be of type int, got: float \(2.0\)"):
        mrnn.MomentumGRUCell(2.0, 3)


@pytest.fixture
def lstm():
    return mrnn.MomentumLSTM(3, 4, num_layers=2)


def test_input_rank(lstm):
    with pytest.raises(ValueError, match=r"input must be 2-D \(unbatched.*got 4-D of shape \(1, 2, 3, 3\)"):
        lstm(torch.randn(1, 2, 3, 3))
    with pytest.raises(ValueError, match="got 1-D"):
        lstm(torch.randn(3))


def test_input_features(lstm):
    with pytest.raises(ValueError, match=r"input.size\(-1\) must be equal to input_size. Expected 3, got 5"):
        lstm(torch.randn(7, 2, 5))


def test_input_type_dtype_and_length(lstm):
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        lstm([[1.0, 2.0, 3.0]])
    with pytest.raises(TypeError, match=r"RNN input dtype \(torch.float64\) does not match weight dtype "
                                        r"\(torch.float32\). Convert input: input.to\(torch.float32\)"):
        lstm(torch.randn(7, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="sequence length to be larger than 0"):
        lstm(torch.randn(0, 2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_input_device(lstm):
    with pytest.raises(ValueError, match="input must be on device cpu"):
        lstm(torch.randn(7, 2, 3, device="cuda"))


def test_device_mismatch_is_named_for_hidden_state(lstm):
    h = torch.zeros(2, 2, 4, device="meta")
    with pytest.raises(ValueError, match="h_0 must be on device cpu .* got meta"):
        lstm(torch.randn(7, 2, 3), (h, h))


def test_hidden_shapes(lstm):
    x = torch.randn(7, 2, 3)
    good = torch.zeros(2, 2, 4)
    with pytest.raises(ValueError, match=r"Expected hidden\[0\] size \(2, 2, 4\), got \[1, 2, 4\] \(h_0\)"):
        lstm(x, (torch.zeros(1, 2, 4), good))
    with pytest.raises(ValueError, match=r"Expected hidden\[1\] size \(2, 2, 4\), got \[2, 3, 4\] \(c_0\)"):
        lstm(x, (good, torch.zeros(2, 3, 4)))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\) for an LSTM, got Tensor"):
        lstm(x, good)
    with pytest.raises(TypeError, match="h_0 must have dtype torch.float32"):
        lstm(x, (good.double(), good))
    gru = mrnn.MomentumGRU(3, 4)
    with pytest.raises(ValueError, match=r"Expected hidden size \(1, 2, 4\), got \[1, 2, 5\] \(hx\)"):
        gru(x, torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match=r"Expected hidden size \(1, 4\)"):
        gru(torch.randn(7, 3), torch.zeros(1, 2, 4))


def test_rule_state_checks(lstm):
    x = torch.randn(7, 2, 3)
    _, _, rs = lstm(x, return_rule_state=True)
    with pytest.raises(TypeError, match="rule_state must be a momentumrnn.RuleState, got tuple"):
        lstm(x, rule_state=tuple(rs))
    with pytest.raises(ValueError, match=r"rule_state.velocity must have shape \(2, 3, 16\), got \(2, 2, 16\)"):
        lstm(torch.randn(7, 3, 3), rule_state=rs)
    with pytest.raises(ValueError, match="rule_state.second_moment must be None for this rule"):
        lstm(x, rule_state=rs._replace(second_moment=rs.velocity))
    with pytest.raises(TypeError, match="rule_state.steps must have dtype torch.int64, got torch.float32"):
        lstm(x, rule_state=rs._replace(steps=rs.steps.float()))
    adam = mrnn.AdamLSTM(3, 4, num_layers=2)
    with pytest.raises(TypeError, match="rule_state.second_moment must be a torch.Tensor, got NoneType"):
        adam(x, rule_state=rs)


def test_cell_checks():
    cell = mrnn.MomentumLSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"MomentumLSTMCell: Expected input to be 1D or 2D, got 3D instead"):
        cell(torch.randn(2, 2, 3))
    with pytest.raises(ValueError, match=r"MomentumLSTMCell: Expected hx\[1\] to be 1D or 2D, got 3D instead"):
        cell(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(2, 1, 4)))
    with pytest.raises(ValueError, match="input has inconsistent input_size: got 2 expected 3"):
        cell(torch.randn(2, 2))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 4\), got \(4,\)"):
        cell(torch.randn(2, 3), (torch.zeros(4), torch.zeros(4)))


def test_gru_rejects_coupled_rule():
    from momentumrnn.layers import RecurrentLayer
    from momentumrnn.recurrences import GRURecurrence
    from momentumrnn.rules import NesterovRule

    class NesterovGRU(RecurrentLayer):
        recurrence_type, rule_type = GRURecurrence, NesterovRule

    with pytest.raises(TypeError, match="NesterovRule needs an additive recurrence, not gru"):
        NesterovGRU(2, 3)


@pytest.mark.parametrize("name, value", [("bias", "x"), ("batch_first", "False"), ("bias", 1)])
def test_bias_and_batch_first_must_be_bools_as_in_torch(name, value):
    """A string "False" must not silently mean True (torch raises the same TypeError)."""
    with pytest.raises(TypeError, match=f"{name} should be of type bool, got: {type(value).__name__}"):
        mrnn.MomentumLSTM(2, 3, **{name: value})
    with pytest.raises(TypeError, match=f"{name} should be of type bool"):
        torch.nn.LSTM(2, 3, **{name: value})


def test_torch_attributes_proj_size_and_repr():
    assert mrnn.MomentumLSTM(2, 3, proj_size=0).proj_size == 0                 # torch's default is accepted
    assert mrnn.MomentumLSTM(2, 3, proj_size=2).proj_size == 2
    with pytest.raises(ValueError, match=r"proj_size must be an int >= 0 \(0: no projections\), got -1"):
        mrnn.AdamLSTM(2, 3, proj_size=-1)
    pairs = [(mrnn.MomentumLSTM(2, 3), torch.nn.LSTM(2, 3)), (mrnn.AdamGRU(2, 3), torch.nn.GRU(2, 3)),
             (mrnn.MomentumRNN(2, 3), torch.nn.RNN(2, 3)),
             (mrnn.NesterovRNN(2, 3, nonlinearity="relu"), torch.nn.RNN(2, 3, nonlinearity="relu"))]
    for ours, theirs in pairs:
        assert ours.mode == theirs.mode
    assert mrnn.NesterovRNN(2, 3, nonlinearity="relu").nonlinearity == "relu"
    assert "impl='loop'" in repr(mrnn.MomentumLSTM(2, 3, impl="loop")) and "impl" not in repr(mrnn.MomentumLSTM(2, 3))


def test_the_package_declares_its_types():
    from importlib.resources import files

    assert files("momentumrnn").joinpath("py.typed").is_file()


def packed(batch_sizes, rows=None, sorted_indices=None, unsorted_indices=None, dtype=torch.long):
    """A hand-made ``PackedSequence`` of 3 features (``rows``: ``data``'s rows, else the sum)."""
    batch_sizes = torch.tensor(batch_sizes, dtype=dtype)
    data = torch.randn(int(batch_sizes.sum()) if rows is None else rows, 3)
    indices = [None if i is None else torch.tensor(i) for i in (sorted_indices, unsorted_indices)]
    return PackedSequence._make((data, batch_sizes, *indices))


MALFORMED_PACKED = {
    "a zero step": (packed([2, 0, 1]), r"batch_sizes must be positive .*got batch_sizes\[1\] = 0"),
    "a trailing zero": (packed([2, 1, 0]), r"batch_sizes must be positive .*got batch_sizes\[2\] = 0"),
    "a negative size": (packed([2, -1, 2]), r"batch_sizes must be positive .*got batch_sizes\[1\] = -1"),
    "an increase": (packed([1, 2]), r"batch_sizes must be non-increasing .*got batch_sizes\[0\] = 1 < "
                                    r"batch_sizes\[1\] = 2"),
    "too few rows": (packed([2, 2], rows=3), r"batch_sizes must sum to data.size\(0\) = 3 .*got 4"),
    "too many rows": (packed([2, 1], rows=5), r"batch_sizes must sum to data.size\(0\) = 5 .*got 3"),
    "int32 sizes": (packed([2, 1], dtype=torch.int32), "batch_sizes must be a 1-D CPU int64 tensor, got a 1-D cpu "
                                                       "torch.int32 tensor"),
    "2-D sizes": (PackedSequence._make((torch.randn(3, 3), torch.tensor([[2, 1]]), None, None)),
                  "batch_sizes must be a 1-D CPU int64 tensor, got a 2-D"),
    "3-D data": (PackedSequence._make((torch.randn(3, 1, 3), torch.tensor([2, 1]), None, None)),
                 r"PackedSequence.data must be 2-D .*got shape \(3, 1, 3\)"),
    "an index out of range": (packed([2, 1], sorted_indices=[0, 5], unsorted_indices=[0, 1]),
                              r"sorted_indices must be a permutation of range\(2\) and unsorted_indices its "
                              r"inverse, got \[0, 5\] and \[0, 1\]"),
    "indices not inverse": (packed([2, 1], sorted_indices=[1, 0], unsorted_indices=[1, 1]),
                            r"permutation of range\(2\) .*got \[1, 0\] and \[1, 1\]"),
    "indices of another batch": (packed([2, 1], sorted_indices=[0, 1, 2], unsorted_indices=[0, 1, 2]),
                                 r"sorted_indices must be an int64 tensor of shape \(2,\) .*shape \(3,\)"),
    "one index tensor": (packed([2, 1], sorted_indices=[1, 0]),
                         "sorted_indices and unsorted_indices must be both None or both tensors, got Tensor and "
                         "NoneType"),
}


@pytest.mark.parametrize("case", MALFORMED_PACKED)
def test_malformed_packed_sequences_are_named(case):
    """Hand-made packed input that ``pack_padded_sequence`` never makes is refused before torch
    unpacks it (a zero or negative batch size made its unpacking write out of bounds: a heap error)."""
    sequence, message = MALFORMED_PACKED[case]
    for kind in (ValueError, RuntimeError, mrnn.InputError):
        with pytest.raises(kind, match=message):
            mrnn.MomentumLSTM(3, 4)(sequence)


@pytest.mark.parametrize("case", LAYER_IMPLS, ids=layer_impl_id)
def test_malformed_packed_sequences_are_refused_on_every_path(case):
    key, impl = case
    layer = mrnn.LAYERS[key](3, 4, 2, bidirectional=True, impl=impl)
    for name in ("a zero step", "a negative size", "indices not inverse"):
        sequence, message = MALFORMED_PACKED[name]
        with pytest.raises(mrnn.InputError, match=message):
            layer(sequence)
