"""A pytest plugin that runs PyTorch's own RNN tests on the momentum classes.

Loaded with ``-p torch_rnn_suite`` (``tools/`` on ``PYTHONPATH``), it puts the momentum
classes at neutral settings (``momentum=0, step_size=1``, where they compute torch's
recurrences) in the place of ``torch.nn.RNN``, ``LSTM``, ``GRU`` and their cells, before
any test file is collected: in ``torch.nn``, where ``test/test_nn.py`` finds them, and in
``module_db`` of ``torch.testing._internal.common_modules``, which ``test/test_modules.py``
runs over. The tests keep their ids. Without ``-p`` the same command is the control run
on torch's own classes. ``--momentumrnn-impl`` gives the layers' ``impl`` (default
"auto": at these settings the layers take the fused path on torch's kernels; "loop" and
"reference" run the tests through the per-step paths)::

    PYTHONPATH=tools python -m pytest -p torch_rnn_suite PYTORCH/test/test_modules.py -k "cpu and (RNN or LSTM or GRU)"
    PYTHONPATH=tools python -m pytest -p torch_rnn_suite PYTORCH/test/test_nn.py -k "rnn or lstm or gru"
    PYTHONPATH=tools python -m pytest -p torch_rnn_suite --momentumrnn-impl loop PYTORCH/test/test_modules.py ...
"""

from __future__ import annotations

import torch

import momentumrnn

NAMES = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")
#: torch's own classes, as they were before the substitution.
TORCH_CLASSES = {name: getattr(torch.nn, name) for name in NAMES}
NEUTRAL = {"momentum": 0.0, "step_size": 1.0}
#: The layers' ``impl`` (``--momentumrnn-impl``); cells have one path.
SETTINGS = {"impl": "auto"}


def _neutral(name: str) -> type:
    """``momentumrnn.Momentum<name>`` under torch's class name, at the neutral settings."""
    base = getattr(momentumrnn, "Momentum" + name)
    cell = name.endswith("Cell")

    def __init__(self, *args, **kwargs):
        base.__init__(self, *args, **NEUTRAL, **({} if cell else SETTINGS), **kwargs)

    return type(name, (base,), {"__init__": __init__, "__module__": __name__})


SUBSTITUTES = {name: _neutral(name) for name in NAMES}
globals().update(SUBSTITUTES)                  # importable by name: torch's tests pickle the modules


def pytest_addoption(parser):
    parser.addoption("--momentumrnn-impl", default="auto", choices=momentumrnn.paths.IMPLS,
                     help="the momentum layers' impl (default: auto)")


def pytest_configure(config):
    from torch.testing._internal import common_modules     # built first, on torch's classes

    SETTINGS["impl"] = config.getoption("--momentumrnn-impl")
    for name, substitute in SUBSTITUTES.items():
        setattr(torch.nn, name, substitute)
        common_modules.MODULE_CLASS_NAMES[substitute] = common_modules.get_module_common_name(TORCH_CLASSES[name])
    by_torch_class = {TORCH_CLASSES[name]: SUBSTITUTES[name] for name in NAMES}
    for info in common_modules.module_db:
        info.module_cls = by_torch_class.get(info.module_cls, info.module_cls)


def pytest_report_header(config):
    return (f"momentumrnn {momentumrnn.__version__} in place of torch.nn.{{{', '.join(NAMES)}}} "
            f"(momentum=0, step_size=1, impl={SETTINGS['impl']!r})")
