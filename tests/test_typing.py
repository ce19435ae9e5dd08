"""Signatures and types: each class shows its own hyperparameters, and typical use
type-checks with mypy against the shipped types (``py.typed``)."""

import inspect
import pathlib
import subprocess
import sys

import pytest
import torch

import momentumrnn as mrnn

CLASSES = [*mrnn.LAYERS.values(), *mrnn.CELLS.values(), *mrnn.ORTHOGONAL_LAYERS.values()]
USAGE = pathlib.Path(__file__).parent / "typing" / "usage.py"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_signature_lists_the_rules_hyperparameters_with_defaults(cls):
    signature = inspect.signature(cls)
    parameters = signature.parameters
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for name, default in cls.hyperparameter_defaults().items():
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY and parameters[name].default == default
    assert list(parameters)[:2] == ["input_size", "hidden_size"]
    # every argument the signature shows is one the constructor takes, with that default
    arguments = {name: p.default for name, p in parameters.items()
                 if p.default is not inspect.Parameter.empty and name not in ("device", "dtype")}
    built = cls(3, 4, **arguments)
    assert built.hyperparameter_values == cls.hyperparameter_defaults()
    assert str(signature) in _help(cls)


def _help(cls) -> str:
    import pydoc
    return pydoc.plain(pydoc.render_doc(cls))


def test_torchs_positional_order_is_kept():
    torch_rnn = ["input_size", "hidden_size", "num_layers", "nonlinearity", "bias", "batch_first", "dropout",
                 "bidirectional", "device", "dtype"]                    # torch.nn.RNN's documented order
    assert list(inspect.signature(mrnn.MomentumRNN).parameters)[:10] == torch_rnn
    torch_lstm = [n for n in torch_rnn if n != "nonlinearity"]
    assert list(inspect.signature(mrnn.AdamLSTM).parameters)[:9] == torch_lstm
    assert list(inspect.signature(mrnn.MomentumLSTMCell).parameters)[:5] == list(
        inspect.signature(torch.nn.LSTMCell.__init__).parameters)[1:6]


def test_instances_keep_their_call_signature():
    assert "momentum" not in str(inspect.signature(mrnn.MomentumLSTM(3, 4)))


def _mypy(path: pathlib.Path):
    pytest.importorskip("mypy", reason="mypy is not installed")
    return subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", "--hide-error-context",
                           "--cache-dir", str(pathlib.Path(__file__).parent.parent / ".mypy_cache"), str(path)],
                          capture_output=True, text=True, timeout=600)


def test_typical_use_type_checks_with_mypy(tmp_path):
    result = _mypy(USAGE)
    assert result.returncode == 0, result.stdout + result.stderr
    wrong = tmp_path / "wrong.py"
    wrong.write_text('import momentumrnn as mrnn\nmrnn.MomentumLSTM(3, 4, momentum="high")\n')
    result = _mypy(wrong)
    assert result.returncode == 1 and 'incompatible type "str"' in result.stdout, result.stdout


def test_mypy_flags_misspelt_hyperparameters_and_types_layer_calls(tmp_path):
    """The rule's hyperparameters are keyword parameters to type checkers, not ``**kwargs``;
    a layer's call is typed by ``return_rule_state`` (two or three results, a Tensor output)."""
    wrong = tmp_path / "wrong.py"
    wrong.write_text("\n".join([
        "import torch",
        "import momentumrnn as mrnn",
        "x = torch.randn(5, 2, 3)",
        "mrnn.MomentumLSTM(3, 4, momentun=0.5)",                              # line 4
        "mrnn.MomentumOrthogonalRNN(3, 4, trivialisation=100)",                # line 5
        "mrnn.NesterovLSTMCell(3, 4, beta=0.5)",                               # line 6: not Nesterov's
        "out, rule_state = mrnn.AdamLSTM(3, 4)(x, return_rule_state=True)",    # line 7: three results
        "size: int = mrnn.MomentumGRU(3, 4)(x)[0]",                            # line 8: a Tensor
        "",
    ]))
    result = _mypy(wrong)
    lines = {int(line.split(":")[1]) for line in result.stdout.splitlines() if ": error:" in line}
    assert lines == {4, 5, 6, 7, 8}, result.stdout
    assert 'did you mean "momentum"' in result.stdout and 'did you mean "trivialization"' in result.stdout


def _declared_init(cls) -> inspect.Signature:
    """The type checkers' ``__init__`` of ``cls`` (its ``if TYPE_CHECKING:`` block), as a signature."""
    import ast
    import math
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    init = next(node for block in ast.walk(tree) if isinstance(block, ast.If) and ast.unparse(block.test) ==
                "TYPE_CHECKING" for node in block.body if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    arguments = init.args
    value = lambda node: eval(ast.unparse(node), {"math": math})    # noqa: E731
    positional = arguments.args[1:]
    defaults = [inspect.Parameter.empty] * (len(positional) - len(arguments.defaults)) + \
        [value(d) for d in arguments.defaults]
    parameters = [inspect.Parameter(a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d,
                                    annotation=ast.unparse(a.annotation)) for a, d in zip(positional, defaults)]
    parameters += [inspect.Parameter(a.arg, inspect.Parameter.KEYWORD_ONLY, default=value(d),
                                     annotation=ast.unparse(a.annotation))
                   for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults)]
    return inspect.Signature(parameters)


@pytest.mark.parametrize("cls", [c for c in CLASSES if c is not mrnn.OrthogonalRNN], ids=lambda c: c.__name__)
def test_the_type_checkers_constructor_is_the_runtime_one(cls):
    """Each class's type-only ``__init__`` lists exactly the arguments the class takes."""
    assert str(_declared_init(cls)) == str(inspect.signature(cls))
