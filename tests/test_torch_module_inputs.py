"""The inputs torch's own module tests use for its RNN layers and cells, through ours.

``torch.testing._internal.common_modules.module_db`` holds, for ``nn.LSTM``, ``GRU``,
``RNN`` and their cells, the constructor arguments, forward inputs (packed sequences,
unbatched input, initial states, projections, ...) and error inputs that torch's
``test/test_modules.py`` runs. Here the momentum classes at neutral settings
(``momentum=0, step_size=1``) take them: outputs, gradients and second derivatives must
equal torch's module with the same parameters, and each error input must raise the same kind of error with a
message torch's pattern matches. The module is internal to torch (it needs ``expecttest``):
without it these tests skip.
"""

import re

import pytest
import torch

import momentumrnn as mrnn

common_modules = pytest.importorskip("torch.testing._internal.common_modules",
                                     reason="torch's module test inputs need expecttest")

OURS = {torch.nn.LSTM: mrnn.MomentumLSTM, torch.nn.GRU: mrnn.MomentumGRU, torch.nn.RNN: mrnn.MomentumRNN,
        torch.nn.LSTMCell: mrnn.MomentumLSTMCell, torch.nn.GRUCell: mrnn.MomentumGRUCell,
        torch.nn.RNNCell: mrnn.MomentumRNNCell}
NEUTRAL = {"momentum": 0.0, "step_size": 1.0}
INFOS = [info for info in common_modules.module_db if info.module_cls in OURS]


def _flat(value):
    return [t for t in torch.utils._pytree.tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("info", INFOS, ids=lambda info: info.name)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_torch_inputs_give_torch_results(info, training):
    """Every forward input of torch's tests, in float64: outputs and the gradients of a random
    projection of them (inputs that require grad and every parameter) equal torch's."""
    theirs_type, ours_type = info.module_cls, OURS[info.module_cls]
    inputs = info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True, training=training)
    assert inputs
    for module_input in inputs:
        if module_input.forward_input is None:
            continue
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        ours = ours_type(*args, **kwargs, **NEUTRAL).double().train(training)
        theirs = theirs_type(*args, **kwargs).double().train(training)
        theirs.load_state_dict(ours.state_dict())
        forward_args, forward_kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
        got, want = (_flat(m(*forward_args, **forward_kwargs)) for m in (ours, theirs))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)
        leaves = [t for t in _flat((forward_args, forward_kwargs)) if t.requires_grad]
        weights = [torch.randn_like(w) for w in want]
        grads = [torch.autograd.grad(sum((c * o).sum() for c, o in zip(weights, outs)), leaves + list(m.parameters()),
                                     allow_unused=True)
                 for outs, m in ((got, ours), (want, theirs))]
        for g, w in zip(*grads, strict=True):
            if w is None:
                assert g is None or not g.any()
                continue
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)
            assert g.is_contiguous()


@pytest.mark.parametrize("info", INFOS, ids=lambda info: info.name)
def test_torch_inputs_give_torch_second_derivatives(info):
    """Every forward input of torch's tests, in float64: the gradients of a function of the
    first gradients (taken with create_graph=True) equal torch's."""
    theirs_type, ours_type = info.module_cls, OURS[info.module_cls]
    inputs = info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True, training=True)
    for module_input in inputs:
        if module_input.forward_input is None:
            continue
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        ours = ours_type(*args, **kwargs, **NEUTRAL).double()
        theirs = theirs_type(*args, **kwargs).double()
        theirs.load_state_dict(ours.state_dict())
        forward_args, forward_kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
        leaves = [t for t in _flat((forward_args, forward_kwargs)) if t.requires_grad]
        results = []
        for module in (ours, theirs):
            outs = _flat(module(*forward_args, **forward_kwargs))
            sources = leaves + list(module.parameters())
            torch.manual_seed(0)
            first = torch.autograd.grad(sum((torch.randn_like(o) * o).sum() for o in outs), sources,
                                        create_graph=True, allow_unused=True)
            penalty = sum(g.pow(2).sum() for g in first if g is not None)
            results.append(torch.autograd.grad(penalty, sources, allow_unused=True))
        for g, w in zip(*results, strict=True):
            if w is None:
                assert g is None or not g.any()
                continue
            torch.testing.assert_close(g, w, atol=1e-9, rtol=1e-9)


@pytest.mark.filterwarnings("ignore:.*is not a bool; taken as bias")     # RNNCell(10, 20, "relu"), as torch builds it
@pytest.mark.parametrize("info", [i for i in INFOS if i.module_error_inputs_func is not None],
                         ids=lambda info: info.name)
def test_torch_error_inputs_raise_torch_errors(info):
    ours_type = OURS[info.module_cls]
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32, requires_grad=False,
                                           training=True)
    assert errors
    for error in errors:
        module_input = error.module_error_input
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        with pytest.raises(error.error_type) as raised:
            module = ours_type(*args, **kwargs, **NEUTRAL)
            if error.error_on == common_modules.ModuleErrorEnum.FORWARD_ERROR:
                module(*module_input.forward_input.args, **module_input.forward_input.kwargs)
        assert re.search(error.error_regex, str(raised.value)), (error.error_regex, str(raised.value))
